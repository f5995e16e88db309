import ArgumentParser
import Foundation
import Gatehouse
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

/// `gatehouse`: an authenticating forward HTTP proxy. Serving is the default subcommand, so
/// `gatehouse --listen …` and `gatehouse serve --listen …` are the same.
struct GatehouseCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gatehouse",
        abstract: "A forward HTTP proxy that requires Proxy-Authorization: Basic, checked against an htpasswd file.",
        subcommands: [ServeCommand.self, CheckCommand.self, PasswdCommand.self, ProbeCommand.self],
        defaultSubcommand: ServeCommand.self
    )
}

/// The settings flags shared by `serve` and `check`. Every one is optional, so that a flag
/// that was not given lets the environment, the config file or the default decide.
struct SettingsOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("YAML config file (also GATEHOUSE_CONFIG).", valueName: "PATH"))
    var config: String?

    @Option(name: .long, help: ArgumentHelp("Address to listen on, HOST:PORT or [IPv6]:PORT (repeatable; default 127.0.0.1:3128).", valueName: "HOST:PORT"))
    var listen: [String] = []

    @Option(name: .long, help: ArgumentHelp("Address where clients speak TLS to the proxy (an https:// proxy URL), HOST:PORT (repeatable; needs --tls-cert and --tls-key).", valueName: "HOST:PORT"))
    var tlsListen: [String] = []

    @Option(name: .long, help: ArgumentHelp("PEM certificate chain of the TLS listeners, the server's certificate first (re-read on SIGHUP).", valueName: "PATH"))
    var tlsCert: String?

    @Option(name: .long, help: ArgumentHelp("PEM private key of the TLS listeners (re-read on SIGHUP).", valueName: "PATH"))
    var tlsKey: String?

    @Option(name: .long, help: ArgumentHelp("Apache htpasswd file with the users allowed through.", valueName: "PATH"))
    var htpasswd: String?

    @Option(name: .long, help: ArgumentHelp("How often the htpasswd file is checked for changes (default 2s, at least 100ms).", valueName: "DUR"))
    var htpasswdPollInterval: String?

    @Option(name: .long, help: ArgumentHelp("An inline user (repeatable), for tests and fixtures.", valueName: "NAME:PASSWORD"))
    var user: [String] = []

    @Option(name: .long, help: ArgumentHelp("Realm in the Proxy-Authenticate challenge (default Gatehouse).", valueName: "TEXT"))
    var realm: String?

    @Option(name: .long, help: ArgumentHelp("Access log file, - for standard output (the default), or off.", valueName: "PATH|-"))
    var accessLog: String?

    @Option(name: .long, help: ArgumentHelp("Access log format: squid (default), common or json.", valueName: "FORMAT"))
    var logFormat: String?

    @Option(name: .long, help: ArgumentHelp("Ports CONNECT may reach, e.g. 443,8443,9000-9100 (default 443).", valueName: "LIST"))
    var connectPorts: String?

    @Option(name: .long, help: ArgumentHelp("Timeout for connecting to an origin (default 10s).", valueName: "DUR"))
    var connectTimeout: String?

    @Option(name: .long, help: ArgumentHelp("How long an origin may stay silent once the request is sent (default 60s).", valueName: "DUR"))
    var upstreamTimeout: String?

    @Option(name: .long, help: ArgumentHelp("How long a client may take to send a request head, 408 after (default 20s).", valueName: "DUR"))
    var headerTimeout: String?

    @Option(name: .long, help: ArgumentHelp("How long a keep-alive client connection may sit idle, a client pause mid-upload (408 after), or take nothing of a response (default 60s).", valueName: "DUR"))
    var idleTimeout: String?

    @Option(name: .long, help: ArgumentHelp("How long a CONNECT tunnel may carry no bytes (default 10m).", valueName: "DUR"))
    var tunnelIdleTimeout: String?

    @Option(name: .long, help: ArgumentHelp("How long shutdown waits for in-flight requests and tunnels (default 30s).", valueName: "DUR"))
    var drainTimeout: String?

    @Option(name: .long, help: ArgumentHelp("Serve /metrics, /healthz and /readyz here (off by default).", valueName: "HOST:PORT"))
    var adminListen: String?

    @Option(name: .long, help: ArgumentHelp("Diagnostic log level: trace, debug, info (default), notice, warning, error.", valueName: "LEVEL"))
    var logLevel: String?

    @Option(name: .long, help: ArgumentHelp("Largest request body accepted, e.g. 100M (413 above; no limit by default).", valueName: "SIZE"))
    var maxBody: String?

    @Option(name: .long, help: ArgumentHelp("Client connections served at once; 503 with Retry-After above (default 16384).", valueName: "N"))
    var maxConnections: String?

    @Option(name: .long, help: ArgumentHelp("Client connections one address may hold (default 4096).", valueName: "N"))
    var maxConnectionsPerClient: String?

    @Option(name: .long, help: ArgumentHelp("Largest request header section, e.g. 32K (431 above; default 32K).", valueName: "SIZE"))
    var maxHeaderBytes: String?

    @Option(name: .long, help: ArgumentHelp("Most request header fields (431 above; default 100).", valueName: "N"))
    var maxHeaderFields: String?

    @Option(name: .long, help: ArgumentHelp("Longest request target (414 above; default 8192).", valueName: "N"))
    var maxUriLength: String?

    @Option(name: .long, help: ArgumentHelp("Never connect to addresses in this network (repeatable).", valueName: "CIDR"))
    var denyDestination: [String] = []

    @Option(name: .long, help: ArgumentHelp("Only connect to addresses in these networks (repeatable).", valueName: "CIDR"))
    var allowDestination: [String] = []

    @Option(name: .long, help: ArgumentHelp("Failed logins one address may make per window before 429 (default 30).", valueName: "N"))
    var authFailuresPerClient: String?

    @Option(name: .long, help: ArgumentHelp("Failed logins per user name per window before 429, for the failing addresses (default 10).", valueName: "N"))
    var authFailuresPerUser: String?

    @Option(name: .long, help: ArgumentHelp("Sliding window for the failed-login limits (default 60s).", valueName: "DUR"))
    var authFailureWindow: String?

    /// The flags as the highest-precedence settings layer.
    var flagSettings: GatehouseSettings {
        var s = GatehouseSettings()
        func v(_ value: String?, _ flag: String) -> GatehouseSettings.Value<String>? {
            value.map { GatehouseSettings.Value($0, origin: "--\(flag)") }
        }
        if !self.listen.isEmpty { s.listen = .init(self.listen, origin: "--listen") }
        if !self.user.isEmpty { s.users = .init(self.user, origin: "--user") }
        if !self.tlsListen.isEmpty { s.tlsListen = .init(self.tlsListen, origin: "--tls-listen") }
        s.tlsCert = v(self.tlsCert, "tls-cert")
        s.tlsKey = v(self.tlsKey, "tls-key")
        s.htpasswd = v(self.htpasswd, "htpasswd")
        s.htpasswdPollInterval = v(self.htpasswdPollInterval, "htpasswd-poll-interval")
        s.realm = v(self.realm, "realm")
        s.accessLog = v(self.accessLog, "access-log")
        s.logFormat = v(self.logFormat, "log-format")
        s.connectPorts = v(self.connectPorts, "connect-ports")
        s.connectTimeout = v(self.connectTimeout, "connect-timeout")
        s.upstreamTimeout = v(self.upstreamTimeout, "upstream-timeout")
        s.headerTimeout = v(self.headerTimeout, "header-timeout")
        s.idleTimeout = v(self.idleTimeout, "idle-timeout")
        s.tunnelIdleTimeout = v(self.tunnelIdleTimeout, "tunnel-idle-timeout")
        s.drainTimeout = v(self.drainTimeout, "drain-timeout")
        s.adminListen = v(self.adminListen, "admin-listen")
        s.logLevel = v(self.logLevel, "log-level")
        s.maxBody = v(self.maxBody, "max-body")
        s.maxConnections = v(self.maxConnections, "max-connections")
        s.maxConnectionsPerClient = v(self.maxConnectionsPerClient, "max-connections-per-client")
        s.maxHeaderBytes = v(self.maxHeaderBytes, "max-header-bytes")
        s.maxHeaderFields = v(self.maxHeaderFields, "max-header-fields")
        s.maxURILength = v(self.maxUriLength, "max-uri-length")
        s.authFailuresPerClient = v(self.authFailuresPerClient, "auth-failures-per-client")
        s.authFailuresPerUser = v(self.authFailuresPerUser, "auth-failures-per-user")
        s.authFailureWindow = v(self.authFailureWindow, "auth-failure-window")
        if !self.denyDestination.isEmpty { s.denyDestination = .init(self.denyDestination, origin: "--deny-destination") }
        if !self.allowDestination.isEmpty { s.allowDestination = .init(self.allowDestination, origin: "--allow-destination") }
        return s
    }

    func sources(environment: [String: String]) -> GatehouseReloader.Sources {
        GatehouseReloader.Sources(
            flags: self.flagSettings,
            environment: GatehouseSettings.fromEnvironment(environment),
            configPath: self.config ?? environment["GATEHOUSE_CONFIG"])
    }
}

/// Runs the proxy: resolves settings, runs ``GatehouseServer`` in a `ServiceGroup` (SIGTERM and
/// SIGINT drain gracefully), and handles SIGHUP (reload), SIGUSR1 (reopen the access log),
/// systemd notification, watchdog and socket activation.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "serve", abstract: "Run the proxy (the default).")

    @OptionGroup var options: SettingsOptions

    @Flag(name: .long, help: "Print HOST:PORT of each bound listener on standard output once ready.")
    var printAddress = false

    @Flag(name: .long, help: "Exit when standard input closes (so a dead test runner never leaks a proxy).")
    var exitOnStdinEof = false

    func run() async throws {
        // SIGHUP and SIGUSR1 are already ignored (see `GatehouseMain.main`) until their
        // handlers are in place, after the settings are loaded.
        let environment = ProcessInfo.processInfo.environment
        let sources = self.options.sources(environment: environment)
        let (loaded, problems) = GatehouseReloader.load(sources)
        guard let loaded else {
            // Warnings first (a skipped user may be why none is left), then one line per error.
            for warning in problems where warning.isWarning {
                FileHandle.standardError.write(Data("gatehouse: \(warning.description)\n".utf8))
            }
            throw CommandError(problems.filter { !$0.isWarning }.map(\.description).joined(separator: "\ngatehouse: error: "))
        }
        let settings = loaded.settings
        let level = Logger.Level(rawValue: settings.logLevel) ?? .info
        let journal = JournaldLogHandler.isJournalStream(environment: environment)
        LoggingSystem.bootstrap { label in
            if journal { return JournaldLogHandler(label: label, level: level) }
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "gatehouse")
        for warning in loaded.warnings { logger.warning("\(warning)") }
        // See `OpenFileLimit`: the usual soft limit of 1,024 runs out at about 500 busy clients.
        let openFiles = OpenFileLimit.raiseToHardLimit()
        let maxConnections = settings.configuration.maxConnections
        if openFiles < OpenFileLimit.needed(forConnections: maxConnections) {
            logger.warning(
                "the open-file limit (\(openFiles)) is below what max_connections \(maxConnections) can need (two per busy client); raise it (LimitNOFILE= under systemd) or lower --max-connections")
        }

        let accessLog: AccessLog
        do {
            accessLog = try AccessLog(destination: settings.accessLog, format: settings.logFormat, logger: logger)
        } catch {
            throw CommandError(error.description)
        }
        let notifier = SystemdNotifier(environment: environment)
        let inherited = SocketActivation.inheritedSockets(environment: environment)
        if !inherited.isEmpty {
            logger.info("using \(inherited.count) socket(s) from systemd socket activation")
            if let listen = settings.listenOrigin {
                logger.notice("\(listen) is not used: the sockets from systemd socket activation are")
            }
        }
        let printAddress = self.printAddress
        let server = try GatehouseServer(
            configuration: settings.configuration, credentials: loaded.credentials, accessLog: accessLog, logger: logger,
            adminListen: settings.adminListen, tls: loaded.tls, inheritedSockets: inherited,
            onServerRunning: { addresses in
                let described = addresses.map(\.listenerDescription)
                if printAddress {
                    for address in described { print(address) }
                    fflush(nil)
                }
                notifier?.send("READY=1\nSTATUS=Serving on \(described.joined(separator: ", "))")
            },
            onDrainStarted: {
                notifier?.send("STOPPING=1\nSTATUS=Draining connections")
            })
        let reloader = GatehouseReloader(sources: sources, initial: loaded, server: server, logger: logger)
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: server)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))

        // Reloads (SIGHUP) and htpasswd polls read files, which can hang (a network mount that
        // went away): they run one at a time on a thread of their own, never on an event loop
        // or the signal queue (which also takes the second SIGTERM).
        let fileThread = NIOThreadPool(numberOfThreads: 1)
        fileThread.start()
        let signals = SignalHandlers()
        signals.onHangUp {
            fileThread.submit { _ in
                notifier?.send(SystemdNotifier.reloadingMessage())
                // systemd has no way to hear that a reload failed; its status line says so.
                let status = reloader.reload()
                    ? "Reloaded; serving" : "Reload rejected (see the log); the previous settings and users stay in force"
                notifier?.send("READY=1\nSTATUS=\(status)")
            }
        }
        signals.onUser1 {
            logger.info("reopening the access log")
            accessLog.reopen()
        }
        signals.onSecondTermination {
            // The operator insists: stop now, without waiting for the drain.
            logger.warning("second termination signal: closing every connection and exiting without waiting for the drain")
            // Closed rather than abandoned, so open tunnels and exchanges get their log lines.
            if !server.closeAllConnections(timeout: .seconds(1)) {
                logger.warning("some connections did not close within a second; their log lines may be missing")
            }
            accessLog.flush()
            Foundation.exit(1)
        }
        let loop = MultiThreadedEventLoopGroup.singleton.any()
        let poller = reloader.startPolling(on: loop, thread: fileThread)
        // After a burst of connections, glibc keeps their freed memory; see MemoryTrimmer.
        let trimmer = MemoryTrimmer().start(on: loop, thread: fileThread, logger: logger)
        var watchdog: RepeatedTask?
        if let notifier, let interval = notifier.watchdogPingNanoseconds {
            watchdog = loop.scheduleRepeatedTask(initialDelay: .nanoseconds(interval), delay: .nanoseconds(interval)) { _ in
                notifier.send("WATCHDOG=1")
            }
        }
        if self.exitOnStdinEof {
            StdinWatcher.start { Task { await group.triggerGracefulShutdown() } }
        }
        defer {
            poller.cancel()
            trimmer?.cancel()
            watchdog?.cancel()
            // Not waited for: a poll hung on a dead mount must not hold the exit.
            fileThread.shutdownGracefully { _ in }
        }
        try await group.run()
        signals.waitForSecondTerminationHandler()
        accessLog.flush()
    }
}

/// An error whose message is printed as `gatehouse: error: <message>`.
struct CommandError: Error, CustomStringConvertible {
    var description: String
    /// The process's exit status: 1, or 64 for the probe's usage errors.
    var exitCode: Int32
    init(_ description: String, exitCode: Int32 = 1) {
        self.description = description
        self.exitCode = exitCode
    }
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
