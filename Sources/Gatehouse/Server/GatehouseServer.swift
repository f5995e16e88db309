import Logging
import NIOCore
import NIOConcurrencyHelpers
import NIOExtras
import NIOHTTP1
import NIOPosix
import NIOSSL
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
    ///   - tls: The certificate and key of `configuration.tlsListen`, already loaded; when nil,
    ///     they are loaded from `configuration.tlsFiles`.
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
        tls: ListenerTLS? = nil,
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
        if !configuration.tlsListen.isEmpty {
            guard let files = configuration.tlsFiles else {
                throw .tlsIncomplete("tls_listen needs tls_cert and tls_key: the certificate chain and private key (PEM files) its listeners present")
            }
            let loaded: ListenerTLS
            if let tls { loaded = tls } else { loaded = try ListenerTLS.load(files) }
            self.context.tls.withLockedValue { $0 = loaded }
        }
    }

    /// Serves `tls` to TLS connections opened from now on (a renewed certificate); open ones
    /// keep theirs.
    public func replaceTLS(_ tls: ListenerTLS) {
        self.context.tls.withLockedValue { $0 = tls }
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

    /// Closes every client connection (and with it its tunnel or origin connection) now, and
    /// waits up to `timeout` for them to be gone, so that each one's access-log line is
    /// recorded: for an operator's second SIGTERM, which does not wait for the drain. Returns
    /// whether everything closed in time. Blocks: not for an event loop.
    public func closeAllConnections(timeout: Duration) -> Bool {
        let shared = self.context
        shared.connections.closeAll()
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while clock.now < deadline {
            let open = shared.metrics.open
            if open.connections == 0 && open.tunnels == 0 { return true }
            usleep(5_000)
        }
        return false
    }

    /// Several sockets may listen on one port and share its connections (Linux's
    /// `SO_REUSEPORT`; elsewhere it does not balance, so one listener is used). Only sockets
    /// of the same user can join: the systemd unit runs under its own `DynamicUser`.
    #if os(Linux)
    static let reusePortSupported = true
    #else
    static let reusePortSupported = false
    #endif
    static let reusePort = ChannelOptions.Types.SocketOption(
        level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_REUSEPORT))

    /// Starts at 512 bytes instead of NIO's 2,048 (about a quarter of an idle connection's
    /// memory), and grows to 64 KiB under load.
    static let clientReceiveAllocator = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 512, maximum: clientReadMaximum)
    /// The most one read of a client's socket takes.
    static let clientReadMaximum = 65_536

    public func run() async throws {
        let configuration = self.context.configuration
        let logger = self.context.logger
        // NIO's quiescing helper follows one listening channel: one helper per listener.
        var quiescers: [ServerQuiescingHelper] = []
        let shared = self.context
        var channels: [Channel] = []
        var adminChannel: Channel?
        var addresses: [SocketAddress] = []
        /// How many of `addresses`, the last ones, are TLS listeners.
        var tlsBound = 0
        do {
            func bootstrap(_ group: EventLoopGroup, reusePort: Bool, tls: Bool = false) -> ServerBootstrap {
                let quiesce = ServerQuiescingHelper(group: group)
                quiescers.append(quiesce)
                var bootstrap = ServerBootstrap(group: group)
                    .serverChannelOption(.backlog, value: Self.listenBacklog)
                    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                if reusePort { bootstrap = bootstrap.serverChannelOption(Self.reusePort, value: 1) }
                return bootstrap
                    .serverChannelInitializer { channel in
                        channel.eventLoop.makeCompletedFuture {
                            try channel.pipeline.syncOperations.addHandler(AcceptPauseHandler { error in
                                if error.errnoCode == EMFILE || error.errnoCode == ENFILE {
                                    shared.reportOutOfDescriptors("accepting a connection", error: error)
                                } else {
                                    shared.logger.error("accepting a connection failed; pausing the listener", metadata: ["error": "\(error)"])
                                }
                            })
                            try channel.pipeline.syncOperations.addHandler(quiesce.makeServerChannelHandler(channel: channel))
                        }
                    }
                    .childChannelInitializer { channel in
                        channel.eventLoop.makeCompletedFuture {
                            if tls {
                                try Self.configureTLSClientPipeline(channel, shared: shared)
                            } else {
                                try Self.configureClientPipeline(channel, shared: shared)
                            }
                        }
                    }
            }
            for socket in self.inheritedSockets {
                let backlog = Self.inheritedBacklog(socket)
                let channel = try await bootstrap(self.group, reusePort: false).withBoundSocket(socket).get()
                Self.restoreBacklog(socket, to: backlog ?? Self.listenBacklog)
                channels.append(channel)
                addresses.append(contentsOf: channel.localAddress.map { [$0] } ?? [])
            }
            // Socket activation hands over the plain listeners; TLS ones are always bound here.
            let plain = self.inheritedSockets.isEmpty ? configuration.listen.map { ($0, false) } : []
            let loops = Self.reusePortSupported ? Array(self.group.makeIterator()) : []
            for (address, tls) in plain + configuration.tlsListen.map({ ($0, true) }) {
                try await Self.namingTheAddress(address) {
                    try Self.refuseIfTaken(address)
                    guard let first = loops.first else {
                        let channel = try await bootstrap(self.group, reusePort: false, tls: tls).bind(host: address.host, port: address.port).get()
                        channels.append(channel)
                        addresses.append(contentsOf: channel.localAddress.map { [$0] } ?? [])
                        if tls { tlsBound += 1 }
                        return
                    }
                    // One listener per event loop on the same port (SO_REUSEPORT): the kernel
                    // spreads new connections over them, and each connection lives on the loop
                    // that accepted it. With one listener, every other accepted connection was
                    // handed to another loop's thread, which cost a fifth of the CPU of a
                    // connection-per-request load (S2: 113 → 88 µs per request).
                    let channel = try await bootstrap(first, reusePort: true, tls: tls).bind(host: address.host, port: address.port).get()
                    channels.append(channel)
                    addresses.append(contentsOf: channel.localAddress.map { [$0] } ?? [])
                    if tls { tlsBound += 1 }
                    // Port 0 asks for any free port: the others take the one the first got.
                    let port = channel.localAddress?.port ?? address.port
                    for loop in loops.dropFirst() {
                        channels.append(try await bootstrap(loop, reusePort: true, tls: tls).bind(host: address.host, port: port).get())
                    }
                }
            }
            if let admin = self.adminListen {
                try await Self.namingTheAddress(admin) {
                    adminChannel = try await AdminServer.bind(admin, group: self.group, server: self)
                }
            }
        } catch {
            for channel in channels { try? await channel.close() }
            throw error
        }
        self.state.withLockedValue { $0 = .serving }
        shared.listeners.withLockedValue { $0 = addresses }
        for (index, address) in addresses.enumerated() {
            logger.info(index >= addresses.count - tlsBound ? "listening with TLS" : "listening", metadata: ["address": "\(address.gatehouseDescription)"])
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
        let loop = self.group.any()
        let drained = EventLoopFuture.andAllComplete(
            quiescers.map { quiesce in
                let promise = loop.makePromise(of: Void.self)
                quiesce.initiateShutdown(promise: promise)
                return promise.futureResult
            }, on: loop)
        let deadline = self.group.any().scheduleTask(in: configuration.drainTimeout) {
            shared.connections.closeAll()
        }
        try? await drained.get()
        deadline.cancel()
        try? await adminChannel?.close()
        self.state.withLockedValue { $0 = .stopped }
        shared.accessLog.flush()
        logger.info("stopped")
    }

    /// The client pipeline: raw-byte observer, NIO's HTTP/1 encoder and decoder, the
    /// `CONNECT` head watcher, pipelining assistance, and the proxy handler.
    @discardableResult
    static func configureClientPipeline(_ channel: Channel, shared: ProxyContext) throws -> ProxyConnectionHandler {
        // Set here rather than as bootstrap child options, which NIO applies one future at a
        // time: a new connection per request (S2) is where a proxy's fixed costs show.
        // No TCP_NODELAY here: NIO's ServerBootstrap sets it on the listening socket, and
        // accepted sockets inherit it. Setting it again cost two system calls per connection
        // (NIO first asks `getsockname` whether the socket is a Unix one), about 2.5% of S2.
        if let options = channel.syncOptions {
            try options.setOption(.allowRemoteHalfClosure, value: true)
            // One read (at most 64 KiB) per wake-up: what one read brings in is parsed at once,
            // and requests pipelined behind one that is held (see
            // `ProxyConnectionHandler.channelRead`) wait parsed in memory. With 16 reads, a
            // client that pipelined and read nothing left about 5 MB of parsed requests per
            // connection (without credentials).
            try options.setOption(.maxMessagesPerRead, value: 1)
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
        let encoder = OwnResponseEncoder(configuration: encoderConfiguration)
        try sync.addHandler(encoder)
        let decoder = ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes, limitConfiguration: shared.snapshot.decoderLimits))
        try sync.addHandler(decoder)
        try sync.addHandler(ConnectHeadWatcher(observer: observer))
        try sync.addHandler(HTTPServerPipelineHandler())
        // No NIOHTTPResponseHeadersValidator: every header Gatehouse writes is either its own
        // (constant, or the realm with control characters removed) or relayed from an origin
        // whose response NIO's parser already refused if a field held CR, LF or NUL.
        let handler = ProxyConnectionHandler(shared: shared, observer: observer, encoder: encoder, eventLoop: channel.eventLoop)
        handler.requestDecoder = decoder
        handler.clientIP = clientIP
        handler.clientAddress = clientAddress
        let configuration = handler.configuration
        if total > configuration.maxConnections {
            handler.rejection = .tooManyConnections
        } else if fromClient > configuration.maxConnectionsPerClient {
            handler.rejection = .clientConnectionLimit
        }
        try sync.addHandler(handler)
        return handler
    }

    /// A TLS listener's connection: TLS in front of the plain pipeline, and in front of TLS a
    /// look at whether the client speaks plain HTTP instead (see `PlainHTTPDetector`).
    static func configureTLSClientPipeline(_ channel: Channel, shared: ProxyContext) throws {
        guard let tls = shared.tls.withLockedValue({ $0 }) else {
            // Not reachable: the server does not start TLS listeners without it.
            throw ChannelError.operationUnsupported
        }
        let handler = try configureClientPipeline(channel, shared: shared)
        let sync = channel.pipeline.syncOperations
        try sync.addHandler(NIOSSLServerHandler(context: tls.context), position: .first)
        try sync.addHandler(PlainHTTPDetector { handler.plainHTTPOnTLSListener = true }, position: .first)
    }
}
