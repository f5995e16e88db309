import ArgumentParser

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Entry point. Errors are printed as one line (`gatehouse: error: …`) with a non-zero exit, so
/// scripts and the journal show exactly what was wrong; `--help` still prints the full usage.
@main
enum GatehouseMain {
    static func main() async {
        // SIGHUP and SIGUSR1 terminate by default: ignored before anything else (argument
        // parsing, loading the settings) for every subcommand, so that a logrotate's SIGUSR1 or
        // a reload sent while a new proxy starts does not kill it. (Before `main`, the dynamic
        // loader and the Swift runtime take most of the ~25 ms after exec; nothing can run
        // sooner.) `serve` installs its handlers once the settings are loaded.
        signal(SIGHUP, SIG_IGN)
        signal(SIGUSR1, SIG_IGN)
        do {
            var command = try GatehouseCommand.parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let error as CommandError {
            writeStandardError("gatehouse: error: \(error.description)\n")
            exit(error.exitCode)
        } catch let error as ExitCode {
            exit(error.rawValue)
        } catch let exit as ProbeExit {
            Glibc.exit(exit.code)
        } catch {
            let code = GatehouseCommand.exitCode(for: error)
            if code == .success {
                print(GatehouseCommand.fullMessage(for: error))
                exit(0)
            }
            let message = GatehouseCommand.message(for: error).split(separator: "\n").first.map(String.init) ?? "invalid arguments"
            writeStandardError("gatehouse: error: \(message)\n")
            exit(code.rawValue == 0 ? 2 : code.rawValue)
        }
    }

    static func writeStandardError(_ text: String) {
        var bytes = Array(text.utf8)
        _ = bytes.withUnsafeMutableBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
    }
}
