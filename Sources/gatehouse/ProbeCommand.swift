import ArgumentParser
import Gatehouse
import NIOCore

/// `gatehouse probe`: walks the proxy handshake against any proxy and explains each step.
struct ProbeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "probe",
        abstract: "Check a proxy step by step: TCP, 407 challenge, credentials, CONNECT, upstream.",
        discussion: """
            Exit status: 0 all steps passed, 2 proxy unreachable, 3 challenge missing or malformed, \
            4 credentials missing or rejected, 5 CONNECT refused, 6 destination unreachable, 64 usage.
            """
    )

    @Option(name: .long, help: ArgumentHelp("The proxy, with credentials if it needs them; https:// for a TLS listener.", valueName: "http://[user:pass@]host:port"))
    var proxy: String

    @Option(name: .long, help: ArgumentHelp("For an https:// proxy: PEM certificates to trust for it (default: the system's).", valueName: "PATH"))
    var proxyCacert: String?

    @Argument(help: ArgumentHelp("The URL to fetch through the proxy (http:// or https://).", valueName: "URL"))
    var url: String = "http://example.com/"

    @Option(name: .long, help: ArgumentHelp("Timeout for each step.", valueName: "DUR"))
    var timeout: String = "10s"

    @Flag(name: .long, help: "Print one JSON object instead of text.")
    var json = false

    func run() async throws {
        // Usage errors exit 64, as the help says (and as ArgumentParser's own do).
        let timeout: TimeAmount
        do {
            timeout = try TimeAmount(parsing: self.timeout)
        } catch {
            throw CommandError(error.description, exitCode: ProbeReport.ExitCode.usage.rawValue)
        }
        guard timeout.nanoseconds > 0 else {
            throw CommandError("--timeout must be more than zero", exitCode: ProbeReport.ExitCode.usage.rawValue)
        }
        let probe: ProxyProbe
        do {
            probe = try ProxyProbe(proxy: self.proxy, url: self.url, timeout: timeout, proxyCACertificates: self.proxyCacert)
        } catch {
            throw CommandError(error.description, exitCode: ProbeReport.ExitCode.usage.rawValue)
        }
        let report = await probe.run()
        print(self.json ? report.json : report.text, terminator: self.json ? "\n" : "")
        if report.exitCode != .ok { throw ProbeExit(code: report.exitCode.rawValue) }
    }
}

/// Ends the process with the probe's exit status, after the report has been printed.
struct ProbeExit: Error {
    var code: Int32
}
