import ArgumentParser
import Foundation
import Gatehouse

/// `gatehouse check`: validates the settings (flags, environment, config file) and the
/// htpasswd file without starting anything. Prints each problem as `file:line: message`.
struct CheckCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Validate the config and the htpasswd file; print each problem as file:line.",
        discussion: "Exit status: 0 when there is nothing wrong (warnings are printed but allowed), 1 on any error, 64 usage error."
    )

    @OptionGroup var options: SettingsOptions

    func run() async throws {
        let sources = self.options.sources(environment: ProcessInfo.processInfo.environment)
        var (loaded, problems) = GatehouseReloader.load(sources)
        if let settings = loaded?.settings, case .file(let path) = settings.accessLog,
            let problem = AccessLog.openingProblem(path: path)
        {
            // `serve` would stop here: so does `check`.
            problems.append(SettingsProblem(origin: settings.accessLogOrigin ?? "access_log", message: problem))
            loaded = nil
        }
        for problem in problems {
            print(problem.description)
        }
        guard let loaded else {
            let errors = problems.filter { !$0.isWarning }.count
            print("\(errors) error\(errors == 1 ? "" : "s") found")
            throw ExitCode(1)
        }
        let users = loaded.credentials.hashes.count + loaded.credentials.inlinePasswords.count
        let configuration = loaded.settings.configuration
        let listen = (configuration.listen.map(\.description) + configuration.tlsListen.map { "\($0) (TLS)" }).joined(separator: ", ")
        print("ok: \(users) user\(users == 1 ? "" : "s"), listening on \(listen)" + (sources.configPath.map { ", config \($0)" } ?? ""))
    }
}
