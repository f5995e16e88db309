import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// The operator's endpoints, on their own address (never the proxy port, and off by default):
/// `/metrics` (Prometheus text format), `/healthz` (the process is up) and `/readyz` (it
/// accepts proxy connections; 503 while starting or draining, so a load balancer stops
/// sending new clients before the drain ends).
///
/// Its connections are bounded like the proxy's: at most ``maximumConnections`` at once (more
/// are closed at once) and ``idleTimeout`` without a request. Unbounded, idle connections to
/// it used up the process's file descriptors, and the proxy port stopped accepting.
enum AdminServer {
    static let maximumConnections = 64
    static let idleTimeout = TimeAmount.seconds(10)

    static func bind(_ address: ListenAddress, group: EventLoopGroup, server: GatehouseServer) async throws -> Channel {
        // Said as plainly as for the proxy's own port (NIO's bind error is cryptic).
        try GatehouseServer.refuseIfTaken(address)
        let open = NIOLockedValueBox(0)
        let context = server.context
        return try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                // Out of descriptors, this listener spun a core like the proxy's (see AcceptPauseHandler).
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(AcceptPauseHandler { error in
                        context.reportOutOfDescriptors("accepting an admin connection", error: error)
                    })
                }
            }
            .childChannelInitializer { channel in
                let admitted = open.withLockedValue { count -> Bool in
                    guard count < Self.maximumConnections else { return false }
                    count += 1
                    return true
                }
                guard admitted else { return channel.close() }
                channel.closeFuture.whenComplete { _ in open.withLockedValue { $0 -= 1 } }
                return channel.eventLoop.makeCompletedFuture {
                    // A client's half-close after its request (`printf … | nc -N`) is an EOF
                    // to answer before closing, not a close at once (it got no answer).
                    try channel.syncOptions?.setOption(.allowRemoteHalfClosure, value: true)
                    // No more reads while answers wait for a client that does not take them: one
                    // that pipelined requests and read nothing grew the process by gigabytes.
                    try channel.pipeline.syncOperations.addHandler(BackPressureHandler())
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(IdleStateHandler(allTimeout: Self.idleTimeout))
                    try channel.pipeline.syncOperations.addHandler(AdminHandler(server: server))
                }
            }
            .bind(host: address.host, port: address.port)
            .get()
    }

    private final class AdminHandler: ChannelInboundHandler {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart

        let server: GatehouseServer
        var head: HTTPRequestHead?
        /// Requests taken and not yet answered (see `channelRead`).
        var unanswered = 0
        /// The client half-closed: close once the last answer is written.
        var inputClosed = false

        init(server: GatehouseServer) { self.server = server }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if event is IdleStateHandler.IdleStateEvent {
                context.close(promise: nil)
            } else if let event = event as? ChannelEvent, event == .inputClosed {
                self.inputClosed = true
                if self.unanswered == 0 { context.close(promise: nil) }
            } else {
                context.fireUserInboundEventTriggered(event)
            }
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch self.unwrapInboundIn(data) {
            case .head(let head): self.head = head
            case .body: break
            case .end:
                guard let head = self.head else { return }
                self.head = nil
                // Answered from the event loop, not here: the pipeline handler hands over the
                // next pipelined request inside the write of this answer, so answering at once
                // went one stack frame deeper per request (a crash, with enough of them behind
                // a /metrics that answers later).
                self.unanswered += 1
                let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
                context.eventLoop.execute {
                    let (handler, context) = bound.value
                    handler.answer(head, context: context)
                }
            }
        }

        private func answer(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
            guard context.channel.isActive else { return }
            let path = String(head.uri.prefix { $0 != "?" })
            switch (head.method, path) {
            case (.GET, "/metrics"), (.HEAD, "/metrics"):
                // Each event loop's counts are flushed first, so the scrape sees every response.
                let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
                self.server.metrics.renderFlushed(on: context.eventLoop).whenSuccess { text in
                    let (handler, context) = bound.value
                    handler.respond(context, head, .ok, text, type: "text/plain; version=0.0.4; charset=utf-8")
                }
            case (.GET, "/healthz"), (.HEAD, "/healthz"):
                self.respond(context, head, .ok, "ok\n")
            case (.GET, "/readyz"), (.HEAD, "/readyz"):
                if self.server.isReady {
                    self.respond(context, head, .ok, "ready\n")
                } else {
                    self.respond(context, head, .serviceUnavailable, "not ready\n")
                }
            case (_, "/metrics"), (_, "/healthz"), (_, "/readyz"):
                self.respond(context, head, .methodNotAllowed, "method not allowed: use GET or HEAD\n", allow: true)
            default:
                self.respond(context, head, .notFound, "not found: try /metrics, /healthz or /readyz\n")
            }
        }

        private func respond(
            _ context: ChannelHandlerContext, _ request: HTTPRequestHead, _ status: HTTPResponseStatus, _ body: String,
            type: String = "text/plain; charset=utf-8", allow: Bool = false
        ) {
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: type)
            headers.add(name: "Content-Length", value: String(body.utf8.count))
            headers.add(name: "Date", value: HTTPDate.now())
            if allow { headers.add(name: "Allow", value: "GET, HEAD") }
            // `Connection: close`, or HTTP/1.0 without keep-alive, ends the connection after the
            // answer (RFC 9112 §9.6); it stayed open for the idle timeout, holding one of the
            // 64 places.
            let closing = !request.isKeepAlive || self.inputClosed && self.unanswered == 1
            if !request.isKeepAlive { headers.add(name: "Connection", value: "close") }
            context.write(self.wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: status, headers: headers))), promise: nil)
            if request.method != .HEAD {
                context.write(self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: body)))), promise: nil)
            }
            self.unanswered -= 1
            let written = context.writeAndFlush(self.wrapOutboundOut(.end(nil)))
            if closing { written.assumeIsolated().whenComplete { _ in context.close(promise: nil) } }
        }
    }
}
