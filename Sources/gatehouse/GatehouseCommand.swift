import ArgumentParser
import Gatehouse
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `gatehouse`: an authenticating forward HTTP proxy. Serving is the default subcommand, so
/// `gatehouse --listen …` and `gatehouse serve --listen …` are the same.
struct GatehouseCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gatehouse",
        abstract: "A forward HTTP proxy that requires Proxy-Authorization: Basic, checked against an htpasswd file.",
        subcommands: [ServeCommand.self, ProbeCommand.self],
        defaultSubcommand: ServeCommand.self
    )
}

/// Turns flags into a ``ProxyConfiguration`` and runs ``GatehouseServer`` in a `ServiceGroup`,
/// which maps SIGTERM and SIGINT to a graceful drain.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run the proxy (the default)."
    )

    @Option(name: .long, help: ArgumentHelp("Address to listen on, HOST:PORT or [IPv6]:PORT (repeatable; default 127.0.0.1:3128).", valueName: "HOST:PORT"))
    var listen: [String] = []

    @Option(name: .long, help: ArgumentHelp("Apache htpasswd file with the users allowed through.", valueName: "PATH"))
    var htpasswd: String?

    @Option(name: .long, help: ArgumentHelp("An inline user (repeatable), for tests and fixtures.", valueName: "NAME:PASSWORD"))
    var user: [String] = []

    @Option(name: .long, help: ArgumentHelp("Realm in the Proxy-Authenticate challenge.", valueName: "TEXT"))
    var realm: String = "Gatehouse"

    @Option(name: .long, help: ArgumentHelp("Access log file, or - for standard output.", valueName: "PATH|-"))
    var accessLog: String = "-"

    @Option(name: .long, help: ArgumentHelp("Access log format: squid, common or json.", valueName: "FORMAT"))
    var logFormat: String = "squid"

    @Option(name: .long, help: ArgumentHelp("Ports CONNECT may reach, e.g. 443,8443,9000-9100.", valueName: "LIST"))
    var connectPorts: String = "443"

    @Option(name: .long, help: ArgumentHelp("Timeout for connecting to an origin (e.g. 10s).", valueName: "DUR"))
    var connectTimeout: String = "10s"

    @Option(name: .long, help: ArgumentHelp("How long an origin may stay silent once the request is sent.", valueName: "DUR"))
    var upstreamTimeout: String = "60s"

    @Option(name: .long, help: ArgumentHelp("How long a client may take to send a request head (408 after).", valueName: "DUR"))
    var headerTimeout: String = "20s"

    @Option(name: .long, help: ArgumentHelp("How long a keep-alive client connection may sit idle.", valueName: "DUR"))
    var idleTimeout: String = "60s"

    @Option(name: .long, help: ArgumentHelp("How long a CONNECT tunnel may carry no bytes.", valueName: "DUR"))
    var tunnelIdleTimeout: String = "10m"

    @Option(name: .long, help: ArgumentHelp("How long shutdown waits for in-flight requests and tunnels.", valueName: "DUR"))
    var drainTimeout: String = "30s"

    @Flag(name: .long, help: "Print HOST:PORT of each bound listener on standard output once ready.")
    var printAddress = false

    @Flag(name: .long, help: "Exit when standard input closes (so a dead test runner never leaks a proxy).")
    var exitOnStdinEof = false

    @Option(name: .long, help: ArgumentHelp("Diagnostic log level: trace, debug, info, notice, warning, error.", valueName: "LEVEL"))
    var logLevel: String = "info"

    func run() async throws {
        let (configuration, credentials) = try self.resolve()
        let level = Logger.Level(rawValue: self.logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "gatehouse")
        for warning in credentials.warnings {
            logger.warning("\(warning)")
        }
        guard let format = AccessLogFormat(rawValue: self.logFormat) else {
            throw CommandError("invalid --log-format \"\(self.logFormat)\": expected squid, common or json")
        }
        let accessLog: AccessLog
        do {
            accessLog = try AccessLog(destination: self.accessLog == "-" ? .standardOutput : .file(self.accessLog), format: format)
        } catch {
            throw CommandError(error.description)
        }
        let printAddress = self.printAddress
        let server = try GatehouseServer(
            configuration: configuration, credentials: credentials, accessLog: accessLog, logger: logger,
            onServerRunning: { addresses in
                guard printAddress else { return }
                for address in addresses {
                    let ip = address.ipAddress ?? "\(address)"
                    let host = ip.contains(":") ? "[\(ip)]" : ip
                    print("\(host):\(address.port ?? 0)")
                }
                fflush(nil)
            })
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: server)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        if self.exitOnStdinEof {
            StdinWatcher.start { Task { await group.triggerGracefulShutdown() } }
        }
        try await group.run()
        accessLog.flush()
    }

    /// Turns the flags into configuration, or a one-line error.
    func resolve() throws -> (ProxyConfiguration, CredentialStore) {
        do {
            var configuration = ProxyConfiguration()
            if !self.listen.isEmpty {
                configuration.listen = try self.listen.map { text throws(ConfigurationError) in try ListenAddress(parsing: text) }
            }
            configuration.realm = self.realm
            configuration.connectPorts = try PortSet(parsing: self.connectPorts)
            configuration.connectTimeout = try TimeAmount(parsing: self.connectTimeout)
            configuration.upstreamTimeout = try TimeAmount(parsing: self.upstreamTimeout)
            configuration.headerTimeout = try TimeAmount(parsing: self.headerTimeout)
            configuration.idleTimeout = try TimeAmount(parsing: self.idleTimeout)
            configuration.tunnelIdleTimeout = try TimeAmount(parsing: self.tunnelIdleTimeout)
            configuration.drainTimeout = try TimeAmount(parsing: self.drainTimeout)

            var inline: [String: String] = [:]
            for entry in self.user {
                guard let colon = entry.firstIndex(of: ":"), colon != entry.startIndex else {
                    throw ConfigurationError.invalidInlineUser(entry)
                }
                inline[String(entry[..<colon])] = String(entry[entry.index(after: colon)...])
            }
            var file: HtpasswdFile?
            if let path = self.htpasswd {
                do {
                    file = try HtpasswdFile.load(path: path)
                } catch {
                    throw ConfigurationError.htpasswd(error.description)
                }
            }
            if file == nil && inline.isEmpty { throw ConfigurationError.noCredentialSource }
            let store = CredentialStore(htpasswd: file, inlineUsers: inline)
            if store.isEmpty {
                throw ConfigurationError.htpasswd("\(self.htpasswd ?? "htpasswd"): no usable users: Gatehouse never runs as an open proxy")
            }
            return (configuration, store)
        } catch let error as ConfigurationError {
            throw CommandError(error.description)
        }
    }
}

/// An error whose whole message is one line for the terminal.
struct CommandError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Watches standard input on a thread of its own and calls back once it reaches EOF.
enum StdinWatcher {
    static func start(onEOF: @escaping @Sendable () -> Void) {
        let thread = NIOThreadPool(numberOfThreads: 1)
        thread.start()
        thread.submit { _ in
            var byte: UInt8 = 0
            while true {
                let n = read(STDIN_FILENO, &byte, 1)
                if n == 0 || (n < 0 && errno != EINTR) { break }
            }
            onEOF()
        }
    }
}
