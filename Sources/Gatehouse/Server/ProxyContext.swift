import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1

/// What every connection of one server shares: the current settings, users, the access log,
/// metrics, and the registry of open connections used to force-close stragglers after a drain.
final class ProxyContext: Sendable {
    /// Settings that may change on reload. Each connection takes a snapshot when it opens, so
    /// a reload never changes the rules in the middle of a connection.
    final class Snapshot: Sendable {
        let configuration: ProxyConfiguration
        /// `Basic realm="…", charset="UTF-8"`, built once per reload.
        let challenge: String
        /// The `Proxy-Authenticate` fields of a 407, in order (a fixture may add some first).
        let challenges: [String]
        /// Gatehouse's own responses on a kept-alive HTTP/1.1 connection, built once.
        let keepAliveResponses: [ReasonCode: OwnResponse]
        /// Parser limits: header section size (431) and field count.
        let decoderLimits: NIOHTTPDecoderLimitConfiguration

        init(_ configuration: ProxyConfiguration) {
            self.configuration = configuration
            self.challenge = ProxyChallenge.basic(realm: configuration.realm)
            self.challenges = configuration.testing.extraChallenges + [self.challenge]
            self.keepAliveResponses = OwnResponse.keepAliveResponses(challenges: self.challenges)
            var limits = NIOHTTPDecoderLimitConfiguration()
            limits.maxHeaderFieldSize = configuration.maxHeaderBytes
            limits.maxHeaderListSize = configuration.maxHeaderBytes
            limits.maxHeaderFieldCount = configuration.maxHeaderFields
            self.decoderLimits = limits
        }
    }

    private let current: NIOLockedValueBox<Snapshot>
    let authenticator: Authenticator
    let accessLog: AccessLog
    let metrics: GatehouseMetrics
    let logger: Logger
    let connections: ConnectionRegistry
    /// Idle keep-alive origin connections, one pool per event loop.
    let pools = PerEventLoop { UpstreamPool(eventLoop: $0) }
    /// The TLS listeners' certificate and key; replaced on reload, read once per TLS connection.
    let tls = NIOLockedValueBox<ListenerTLS?>(nil)
    /// The addresses this server listens on, for loop detection.
    let listeners = NIOLockedValueBox([SocketAddress]())
    /// When running out of file descriptors was last reported (see `reportOutOfDescriptors`).
    private let lastDescriptorReport = NIOLockedValueBox<NIODeadline?>(nil)

    /// Says on stderr, at most every 10 seconds, that the process ran out of file descriptors
    /// (`what` failed): the access log alone showed clients' 503s, and accepting that failed
    /// showed nowhere at all.
    func reportOutOfDescriptors(_ what: String, error: Error) {
        let now = NIODeadline.now()
        let due = self.lastDescriptorReport.withLockedValue { last -> Bool in
            if let last, now - last < .seconds(10) { return false }
            last = now
            return true
        }
        guard due else { return }
        self.logger.error(
            "out of file descriptors: \(what) failed; raise the limit (LimitNOFILE= under systemd) or lower --max-connections",
            metadata: ["error": "\(error)", "limit": "\(OpenFileLimit.current.soft)"])
    }

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

    /// Why a connection to `remote` (made from `local`) must not be used, if it must not:
    /// the destination policy, or a loop back into one of this proxy's own listeners.
    ///
    /// Checked on every resolved address before connecting (`local` is nil then; see
    /// ``PolicyResolver``) and again on the connected socket. A wildcard listener (`0.0.0.0`,
    /// `::`) is reached through any loopback address (`127.9.9.9` too), the unspecified
    /// address, and any of the host's own addresses, which only the connected socket's local
    /// address reveals.
    ///
    /// The destination policy is the current one, not the one a connection opened under: a
    /// reload that denies a network applies at once to every client connection (a kept-alive
    /// client reached a newly denied address).
    func refusal(remote: SocketAddress?, local: SocketAddress?) -> ReasonCode? {
        guard let remote else { return nil }
        let configuration = self.configuration
        for listener in self.listeners.withLockedValue({ $0 }) where listener.port == remote.port {
            let remoteIP = CIDRBlock.unmappedIP(remote)
            let listenerIP = CIDRBlock.unmappedIP(listener) ?? ""
            if listenerIP == remoteIP { return .loopDetected }
            if listenerIP == "0.0.0.0" || listenerIP == "::" {
                if CIDRBlock.isLocalHost(remote) || (local != nil && remoteIP == local.flatMap(CIDRBlock.unmappedIP)) { return .loopDetected }
            } else if listener.protocol == remote.protocol, CIDRBlock.unspecified.contains(where: { $0.contains(remote) }),
                CIDRBlock.isLocalHost(listener)
            {
                // 0.0.0.0:PORT connects to the loopback listener on PORT.
                return .loopDetected
            }
        }
        return configuration.destinations.permits(remote) ? nil : .destinationDenied
    }

    /// A resolver for a new origin connection of `user` that leaves out what
    /// ``refusal(remote:local:)`` refuses.
    func resolver(on loop: EventLoop, user: String) -> PolicyResolver {
        PolicyResolver(loop: loop, user: user) { address in
            self.refusal(remote: address, local: nil)
        }
    }

    /// Every response goes through here: one access-log line, and the metrics.
    func record(_ entry: AccessLogEntry, counts: GatehouseMetrics.LoopCounts) {
        self.accessLog.record(entry)
        counts.responded(entry)
    }
}

/// The open client connections of a server, so a drain that runs out of time can close them.
final class ConnectionRegistry: Sendable {
    private struct State {
        var channels: [ObjectIdentifier: Channel] = [:]
        var perClient: [String: Int] = [:]
        var closingAll = false
    }

    private let state = NIOLockedValueBox(State())
    private let metrics: GatehouseMetrics

    init(metrics: GatehouseMetrics) {
        self.metrics = metrics
    }

    /// Registers a new connection; returns how many are open in all, and from its address.
    @discardableResult
    func add(_ channel: Channel, client: String) -> (total: Int, fromClient: Int) {
        let id = ObjectIdentifier(channel)
        let counts = self.state.withLockedValue { state -> (Int, Int) in
            state.channels[id] = channel
            state.perClient[client, default: 0] += 1
            return (state.channels.count, state.perClient[client] ?? 0)
        }
        self.metrics.connectionOpened()
        channel.closeFuture.whenComplete { _ in
            self.state.withLockedValue { state in
                state.channels[id] = nil
                let left = (state.perClient[client] ?? 1) - 1
                state.perClient[client] = left > 0 ? left : nil
            }
            self.metrics.connectionClosed()
        }
        return counts
    }

    var count: Int { self.state.withLockedValue { $0.channels.count } }

    /// The open client connections' channels.
    var channels: [Channel] { self.state.withLockedValue { Array($0.channels.values) } }

    /// Whether ``closeAll()`` has begun: connections closing now were closed by the proxy.
    var isClosingAll: Bool { self.state.withLockedValue { $0.closingAll } }

    func closeAll() {
        let all = self.state.withLockedValue { state -> [Channel] in
            state.closingAll = true
            return Array(state.channels.values)
        }
        for channel in all { channel.close(promise: nil) }
    }
}
