import Logging
import NIOCore
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

    /// - Parameters:
    ///   - configuration: Listen addresses, timeouts and policy.
    ///   - credentials: The users allowed through. An empty store is refused: Gatehouse never
    ///     runs as an open proxy.
    ///   - accessLog: Where each response's log line goes.
    ///   - onServerRunning: Called with the bound addresses once every listener accepts.
    public init(
        configuration: ProxyConfiguration,
        credentials: CredentialStore,
        accessLog: AccessLog,
        logger: Logger,
        eventLoopGroup: EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        threadPool: NIOThreadPool = .singleton,
        onServerRunning: OnServerRunning? = nil
    ) throws(ConfigurationError) {
        guard !credentials.isEmpty else { throw .noCredentialSource }
        let authenticator = Authenticator(store: credentials, cacheTTL: configuration.credentialCacheTTL, threadPool: threadPool)
        self.context = ProxyContext(configuration: configuration, authenticator: authenticator, accessLog: accessLog, logger: logger)
        self.group = eventLoopGroup
        self.threadPool = threadPool
        self.onServerRunning = onServerRunning
    }

    public var authenticator: Authenticator { self.context.authenticator }

    public func run() async throws {
        let configuration = self.context.configuration
        let logger = self.context.logger
        let quiesce = ServerQuiescingHelper(group: self.group)
        let shared = self.context
        var channels: [Channel] = []
        do {
            for address in configuration.listen {
                let channel = try await ServerBootstrap(group: self.group)
                    .serverChannelOption(.backlog, value: 1024)
                    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                    .serverChannelInitializer { channel in
                        channel.eventLoop.makeCompletedFuture {
                            try channel.pipeline.syncOperations.addHandler(quiesce.makeServerChannelHandler(channel: channel))
                        }
                    }
                    .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                    .childChannelOption(.allowRemoteHalfClosure, value: true)
                    .childChannelOption(.maxMessagesPerRead, value: 16)
                    .childChannelInitializer { channel in
                        channel.eventLoop.makeCompletedFuture {
                            try Self.configureClientPipeline(channel, shared: shared)
                        }
                    }
                    .bind(host: address.host, port: address.port)
                    .get()
                channels.append(channel)
            }
        } catch {
            for channel in channels { try? await channel.close() }
            throw error
        }
        let addresses = channels.compactMap(\.localAddress)
        for address in addresses {
            logger.info("listening", metadata: ["address": "\(address.gatehouseDescription)"])
        }
        await self.onServerRunning?(addresses)

        // Serve until graceful shutdown (SIGTERM in a ServiceGroup) or task cancellation.
        try? await gracefulShutdown()

        logger.info("shutting down: draining connections", metadata: ["open": "\(shared.connections.count)"])
        let drained = self.group.any().makePromise(of: Void.self)
        quiesce.initiateShutdown(promise: drained)
        let deadline = self.group.any().scheduleTask(in: configuration.drainTimeout) {
            shared.connections.closeAll()
        }
        try? await drained.futureResult.get()
        deadline.cancel()
        shared.accessLog.flush()
        logger.info("stopped")
    }

    /// The client pipeline: raw-byte observer, NIO's HTTP/1 encoder and decoder, pipelining
    /// assistance, response header validation, and the proxy handler.
    static func configureClientPipeline(_ channel: Channel, shared: ProxyContext) throws {
        shared.connections.add(channel)
        var encoderConfiguration = HTTPResponseEncoder.Configuration()
        // Framing is decided by the proxy, which knows the request method and client version.
        encoderConfiguration.automaticallySetFramingHeaders = false
        let observer = RequestStartObserver()
        let sync = channel.pipeline.syncOperations
        try sync.addHandler(observer)
        try sync.addHandler(HTTPResponseEncoder(configuration: encoderConfiguration))
        try sync.addHandler(
            ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes, limitConfiguration: shared.decoderLimits)))
        try sync.addHandler(HTTPServerPipelineHandler())
        try sync.addHandler(NIOHTTPResponseHeadersValidator())
        try sync.addHandler(ProxyConnectionHandler(shared: shared, observer: observer))
    }
}
