import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1

/// What every connection of one server shares: the current settings, users, the access log,
/// metrics, and the registry of open connections used to force-close stragglers after a drain.
final class ProxyContext: Sendable {
    /// Settings that may change on reload. Each connection takes a snapshot when it opens, so
    /// a reload never changes the rules in the middle of a connection.
    struct Snapshot: Sendable {
        let configuration: ProxyConfiguration
        /// `Basic realm="…", charset="UTF-8"`, built once per reload.
        let challenge: String
        /// Parser limits: header section size (431) and field count.
        let decoderLimits: NIOHTTPDecoderLimitConfiguration

        init(_ configuration: ProxyConfiguration) {
            self.configuration = configuration
            self.challenge = ProxyChallenge.basic(realm: configuration.realm)
            var limits = NIOHTTPDecoderLimitConfiguration()
            limits.maxHeaderFieldSize = configuration.maxHeaderBytes
            limits.maxHeaderListSize = configuration.maxHeaderBytes
            limits.maxHeaderFieldCount = 256
            self.decoderLimits = limits
        }
    }

    private let current: NIOLockedValueBox<Snapshot>
    let authenticator: Authenticator
    let accessLog: AccessLog
    let metrics: GatehouseMetrics
    let logger: Logger
    let connections: ConnectionRegistry

    init(configuration: ProxyConfiguration, authenticator: Authenticator, accessLog: AccessLog, metrics: GatehouseMetrics, logger: Logger) {
        self.current = NIOLockedValueBox(Snapshot(configuration))
        self.authenticator = authenticator
        self.accessLog = accessLog
        self.metrics = metrics
        self.logger = logger
        self.connections = ConnectionRegistry(metrics: metrics)
    }

    var snapshot: Snapshot { self.current.withLockedValue { $0 } }

    var configuration: ProxyConfiguration { self.snapshot.configuration }

    func update(_ configuration: ProxyConfiguration) {
        let snapshot = Snapshot(configuration)
        self.current.withLockedValue { $0 = snapshot }
    }

    /// Every response goes through here: one access-log line, and the metrics.
    func record(_ entry: AccessLogEntry) {
        self.accessLog.record(entry)
        self.metrics.responded(entry)
    }
}

/// The open client connections of a server, so a drain that runs out of time can close them.
final class ConnectionRegistry: Sendable {
    private let channels = NIOLockedValueBox([ObjectIdentifier: Channel]())
    private let metrics: GatehouseMetrics

    init(metrics: GatehouseMetrics) {
        self.metrics = metrics
    }

    func add(_ channel: Channel) {
        let id = ObjectIdentifier(channel)
        self.channels.withLockedValue { $0[id] = channel }
        self.metrics.connectionOpened()
        channel.closeFuture.whenComplete { _ in
            self.channels.withLockedValue { $0[id] = nil }
            self.metrics.connectionClosed()
        }
    }

    var count: Int { self.channels.withLockedValue { $0.count } }

    func closeAll() {
        let all = self.channels.withLockedValue { Array($0.values) }
        for channel in all { channel.close(promise: nil) }
    }
}
