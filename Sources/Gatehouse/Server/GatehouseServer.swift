import Logging
import NIOCore
import NIOConcurrencyHelpers
import NIOExtras
import NIOHTTP1
import NIOPosix
import ServiceLifecycle

/// The Gatehouse proxy as a `Service`: binds its listeners, serves until graceful shutdown or
/// cancellation, then drains.
///
/// Run it in a `ServiceGroup` (the `gatehouse` executable does, with SIGTERM/SIGINT wired to
/// graceful shutdown), or call ``run()`` from a task and cancel the task to stop it.
public final class GatehouseServer: Service, Sendable {
    public typealias OnServerRunning = @Sendable ([SocketAddress]) async -> Void

    let context: ProxyContext
    private let group: EventLoopGroup
    private let threadPool: NIOThreadPool
    private let onServerRunning: OnServerRunning?
    private let onDrainStarted: (@Sendable () -> Void)?
    private let adminListen: ListenAddress?
    private let inheritedSockets: [CInt]
    private let state = NIOLockedValueBox(State.starting)
    /// The proxy's metrics (served on `--admin-listen` as `/metrics`).
    public let metrics: GatehouseMetrics

    enum State { case starting, serving, draining, stopped }

    /// - Parameters:
    ///   - configuration: Listen addresses, timeouts and policy.
    ///   - credentials: The users allowed through. An empty store is refused: Gatehouse never
    ///     runs as an open proxy.
    ///   - accessLog: Where each response's log line goes.
    ///   - adminListen: Where `/metrics`, `/healthz` and `/readyz` are served; off when nil.
    ///   - inheritedSockets: Listening sockets handed over by systemd socket activation; when
    ///     present they replace `configuration.listen`.
    ///   - onServerRunning: Called with the bound addresses once every listener accepts.
    ///   - onDrainStarted: Called when graceful shutdown begins.
    public init(
        configuration: ProxyConfiguration,
        credentials: CredentialStore,
        accessLog: AccessLog,
        logger: Logger,
        eventLoopGroup: EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        threadPool: NIOThreadPool = .singleton,
        adminListen: ListenAddress? = nil,
        inheritedSockets: [CInt] = [],
        onServerRunning: OnServerRunning? = nil,
        onDrainStarted: (@Sendable () -> Void)? = nil
    ) throws(ConfigurationError) {
        guard !credentials.isEmpty else { throw .noCredentialSource }
        let metrics = GatehouseMetrics()
        let authenticator = Authenticator(
            store: credentials, cacheTTL: configuration.credentialCacheTTL, threadPool: threadPool,
            throttle: configuration.authThrottle, maxPendingVerifications: configuration.maxPendingVerifications)
        self.metrics = metrics
        self.context = ProxyContext(
            configuration: configuration, authenticator: authenticator, accessLog: accessLog, metrics: metrics, logger: logger)
        self.group = eventLoopGroup
        self.threadPool = threadPool
        self.onServerRunning = onServerRunning
        self.onDrainStarted = onDrainStarted
        self.adminListen = adminListen
        self.inheritedSockets = inheritedSockets
    }

    public var authenticator: Authenticator { self.context.authenticator }

    /// Whether the server accepts new connections (for `/readyz`).
    public var isReady: Bool { self.state.withLockedValue { $0 == .serving } }

    /// Applies new settings to connections opened from now on; open ones keep theirs.
    public func update(configuration: ProxyConfiguration) {
        self.context.update(configuration)
    }

    /// Replaces the users and clears the credential cache.
    public func replaceCredentials(_ store: CredentialStore) {
        self.context.authenticator.replaceStore(store)
    }

    public var configuration: ProxyConfiguration { self.context.configuration }

    /// Starts at 512 bytes instead of NIO's 2,048 (about a quarter of an idle connection's
    /// memory), and grows to 64 KiB under load.
    static let clientReceiveAllocator = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 512, maximum: 65_536)

    public func run() async throws {
        let configuration = self.context.configuration
        let logger = self.context.logger
        let quiesce = ServerQuiescingHelper(group: self.group)
        let shared = self.context
        var channels: [Channel] = []
        var adminChannel: Channel?
        do {
            let bootstrap = ServerBootstrap(group: self.group)
                .serverChannelOption(.backlog, value: 1024)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .serverChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(quiesce.makeServerChannelHandler(channel: channel))
                    }
                }
                .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try Self.configureClientPipeline(channel, shared: shared)
                    }
                }
            if self.inheritedSockets.isEmpty {
                for address in configuration.listen {
                    channels.append(try await bootstrap.bind(host: address.host, port: address.port).get())
                }
            } else {
                for socket in self.inheritedSockets {
                    channels.append(try await bootstrap.withBoundSocket(socket).get())
                }
            }
            if let admin = self.adminListen {
                adminChannel = try await AdminServer.bind(admin, group: self.group, server: self)
            }
        } catch {
            for channel in channels { try? await channel.close() }
            throw error
        }
        self.state.withLockedValue { $0 = .serving }
        let addresses = channels.compactMap(\.localAddress)
        shared.listeners.withLockedValue { $0 = addresses }
        for address in addresses {
            logger.info("listening", metadata: ["address": "\(address.gatehouseDescription)"])
        }
        if let address = adminChannel?.localAddress {
            logger.info("admin endpoints listening", metadata: ["address": "\(address.gatehouseDescription)"])
        }
        await self.onServerRunning?(addresses)

        // Serve until graceful shutdown (SIGTERM in a ServiceGroup) or task cancellation.
        try? await gracefulShutdown()

        self.state.withLockedValue { $0 = .draining }
        self.onDrainStarted?()
        logger.info("shutting down: draining connections", metadata: ["open": "\(shared.connections.count)"])
        let drained = self.group.any().makePromise(of: Void.self)
        quiesce.initiateShutdown(promise: drained)
        let deadline = self.group.any().scheduleTask(in: configuration.drainTimeout) {
            shared.connections.closeAll()
        }
        try? await drained.futureResult.get()
        deadline.cancel()
        try? await adminChannel?.close()
        self.state.withLockedValue { $0 = .stopped }
        shared.accessLog.flush()
        logger.info("stopped")
    }

    /// The client pipeline: raw-byte observer, NIO's HTTP/1 encoder and decoder, pipelining
    /// assistance, and the proxy handler.
    static func configureClientPipeline(_ channel: Channel, shared: ProxyContext) throws {
        // Set here rather than as bootstrap child options, which NIO applies one future at a
        // time: a new connection per request (S2) is where a proxy's fixed costs show.
        if let options = channel.syncOptions {
            try options.setOption(.allowRemoteHalfClosure, value: true)
            try options.setOption(.maxMessagesPerRead, value: 16)
            // NIO keeps each channel's last receive buffer for reuse, so its size is memory
            // every idle keep-alive connection holds. Request heads are a few hundred bytes;
            // uploads and tunnels grow the buffer as reads fill it.
            try options.setOption(.recvAllocator, value: Self.clientReceiveAllocator)
        }
        // The client's address, worked out once (each lookup takes the channel's lock and
        // formats the address anew).
        let remote = channel.remoteAddress
        let clientIP = remote?.ipAddress ?? "-"
        let clientAddress = remote.map { $0.gatehouseDescription(ip: clientIP) } ?? "-"
        let (total, fromClient) = shared.connections.add(channel, client: clientIP)
        var encoderConfiguration = HTTPResponseEncoder.Configuration()
        // Framing is decided by the proxy, which knows the request method and client version.
        encoderConfiguration.automaticallySetFramingHeaders = false
        let observer = RequestStartObserver()
        let sync = channel.pipeline.syncOperations
        try sync.addHandler(observer)
        try sync.addHandler(HTTPResponseEncoder(configuration: encoderConfiguration))
        try sync.addHandler(
            ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes, limitConfiguration: shared.snapshot.decoderLimits)))
        try sync.addHandler(HTTPServerPipelineHandler())
        // No NIOHTTPResponseHeadersValidator: every header Gatehouse writes is either its own
        // (constant, or the realm with control characters removed) or relayed from an origin
        // whose response NIO's parser already refused if a field held CR, LF or NUL.
        let handler = ProxyConnectionHandler(shared: shared, observer: observer, eventLoop: channel.eventLoop)
        handler.clientIP = clientIP
        handler.clientAddress = clientAddress
        let configuration = handler.configuration
        if total > configuration.maxConnections {
            handler.rejection = .tooManyConnections
        } else if fromClient > configuration.maxConnectionsPerClient {
            handler.rejection = .clientConnectionLimit
        }
        try sync.addHandler(handler)
    }
}
