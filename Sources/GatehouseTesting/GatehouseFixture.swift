@_exported import Gatehouse
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A Gatehouse proxy running in-process for the length of a test.
///
/// ```swift
/// try await GatehouseFixture.withProxy(users: ["alice": "secret"]) { proxy in
///     // point the client under test at proxy.proxyURL(user: "alice", password: "secret")
///     #expect(proxy.records.last?.status == 200)
/// }
/// ```
///
/// The proxy listens on `127.0.0.1` port 0 (an ephemeral port, so parallel tests never
/// clash), records every response it sends, and is shut down when the closure returns or
/// throws. It works from swift-testing and XCTest alike: it needs nothing but `async`.
public final class GatehouseFixture: Sendable {
    /// The port the proxy listens on.
    public let port: Int
    /// The port of its TLS listener, when `configuration.tlsFiles` is set.
    public let tlsPort: Int?
    /// Always loopback.
    public let host = "127.0.0.1"
    private let recorded: NIOLockedValueBox<[AccessLogEntry]>
    /// The access log, for tests that also want the formatted lines flushed to a file.
    public let accessLog: AccessLog
    /// The running server, for tests that reach into the authenticator.
    public let server: GatehouseServer

    init(port: Int, tlsPort: Int?, recorded: NIOLockedValueBox<[AccessLogEntry]>, accessLog: AccessLog, server: GatehouseServer) {
        self.port = port
        self.tlsPort = tlsPort
        self.recorded = recorded
        self.accessLog = accessLog
        self.server = server
    }

    /// `http://127.0.0.1:PORT`, without credentials (for testing 407 handling).
    public var proxyURL: String { "http://\(self.host):\(self.port)" }

    /// `http://user:password@127.0.0.1:PORT`, with user and password percent-encoded as
    /// RFC 3986 §3.2.1 requires (so `@`, `:` and `%` in a password survive).
    public func proxyURL(user: String, password: String) -> String {
        "http://\(Self.percentEncode(user)):\(Self.percentEncode(password))@\(self.host):\(self.port)"
    }

    /// `https://user:password@127.0.0.1:TLSPORT` for the TLS listener (nil without one); the
    /// client must trust the certificate of `configuration.tlsFiles` (curl's `--proxy-cacert`).
    public func tlsProxyURL(user: String, password: String) -> String? {
        self.tlsPort.map { "https://\(Self.percentEncode(user)):\(Self.percentEncode(password))@\(self.host):\($0)" }
    }

    /// Every response the proxy sent so far, in order: method, target, status, reason, user.
    public var records: [AccessLogEntry] { self.recorded.withLockedValue { $0 } }

    /// Waits (briefly) until at least `count` responses have been recorded. A CONNECT tunnel
    /// is recorded when it closes, which can be a moment after the client sees its end.
    public func waitForRecords(count: Int, timeout: Duration = .seconds(5)) async -> [AccessLogEntry] {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while clock.now < deadline {
            let records = self.records
            if records.count >= count { return records }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return self.records
    }

    public enum FixtureError: Error { case didNotStart }

    /// Starts a proxy, runs `body`, and stops the proxy.
    ///
    /// - Parameters:
    ///   - users: Inline users, name to password.
    ///   - htpasswd: An optional htpasswd file, used in addition to `users`.
    ///   - configuration: Anything else (timeouts, CONNECT ports, realm — quotes and UTF-8
    ///     welcome, it is escaped per RFC 9110 §5.6.4). The listen address is always replaced
    ///     with `127.0.0.1:0`, and the shutdown drain is capped at 5 s. With `tlsFiles` set, a
    ///     TLS listener is added on another port of `127.0.0.1` (``tlsPort``).
    ///   - behaviours: Deliberate deviations for testing a client's 407 and failure handling:
    ///     extra challenges beside Basic, `Connection: close` on 407, credentials on CONNECT
    ///     only, a scripted 502/504 (see ``TestingBehaviours``).
    ///   - accessLog: Where formatted lines go as well (default: nowhere; `records` has them).
    public static func withProxy<T: Sendable>(
        users: [String: String],
        htpasswd: HtpasswdFile? = nil,
        configuration: ProxyConfiguration = ProxyConfiguration(),
        behaviours: TestingBehaviours = TestingBehaviours(),
        accessLog destination: AccessLog.Destination = .none,
        logFormat: AccessLogFormat = .squid,
        logger: Logger = GatehouseFixture.quietLogger,
        _ body: @Sendable (GatehouseFixture) async throws -> T
    ) async throws -> T {
        var configuration = configuration
        configuration.listen = [ListenAddress(host: "127.0.0.1", port: 0)]
        configuration.tlsListen = configuration.tlsFiles == nil ? [] : [ListenAddress(host: "127.0.0.1", port: 0)]
        if !behaviours.isDefault { configuration.testing = behaviours }
        if configuration.drainTimeout > .seconds(5) { configuration.drainTimeout = .seconds(5) }
        let recorded = NIOLockedValueBox<[AccessLogEntry]>([])
        let accessLog = try AccessLog(destination: destination, format: logFormat) { entry in
            recorded.withLockedValue { $0.append(entry) }
        }
        let (addresses, continuation) = AsyncStream.makeStream(of: [SocketAddress].self)
        let server = try GatehouseServer(
            configuration: configuration,
            credentials: CredentialStore(htpasswd: htpasswd, inlineUsers: users),
            accessLog: accessLog,
            logger: logger,
            onServerRunning: { bound in
                continuation.yield(bound)
                continuation.finish()
            })
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                defer { continuation.finish() }
                try await server.run()
            }
            var iterator = addresses.makeAsyncIterator()
            guard let bound = await iterator.next(), let port = bound.first?.port else {
                group.cancelAll()
                throw FixtureError.didNotStart
            }
            let tlsPort = configuration.tlsListen.isEmpty ? nil : bound.last?.port
            let fixture = GatehouseFixture(port: port, tlsPort: tlsPort, recorded: recorded, accessLog: accessLog, server: server)
            do {
                let result = try await body(fixture)
                group.cancelAll()
                try await group.waitForAll()
                accessLog.flush()
                return result
            } catch {
                group.cancelAll()
                try? await group.waitForAll()
                throw error
            }
        }
    }

    /// The default fixture logger: warnings and errors only, so test output stays readable.
    public static var quietLogger: Logger {
        var logger = Logger(label: "gatehouse.fixture")
        logger.logLevel = .warning
        return logger
    }

    static func percentEncode(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"),
                UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                let hex = Array("0123456789ABCDEF")
                out.append("%")
                out.append(hex[Int(byte >> 4)])
                out.append(hex[Int(byte & 0xF)])
            }
        }
        return out
    }
}
