import NIOCore
import NIOHTTP1

/// The origin side of a forwarded exchange: relays the origin's response to the client
/// connection, and carries backpressure both ways.
///
/// It lives on the same event loop as its client connection, so the two call each other
/// directly. Reads from the origin pause while the client's socket is full; the client stops
/// reading its upload while this channel is not writable. Between exchanges it may rest in the
/// ``UpstreamPool``, attached to no client.
final class UpstreamHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    /// Strong (a weak reference would put the client handler's refcounting on the slow path);
    /// cleared whenever the exchange ends, fails, or this connection goes away.
    private var client: ProxyConnectionHandler?
    private var context: ChannelHandlerContext?
    private var readsPaused = false
    private var readPending = false
    private var requestSent = false
    private var finished = false
    /// Whether the response in progress leaves the connection reusable (see ``UpstreamPool``).
    private var responseKeepsAlive = false
    private var requestIsHead = false
    private let pool: UpstreamPool
    let key: UpstreamPool.Key
    /// When the current exchange began; an idle event about silence from before it (while the
    /// connection rested in the pool) is not the origin's fault.
    private var attachedAt = NIODeadline.now()
    private let upstreamTimeout: TimeAmount

    init(client: ProxyConnectionHandler, pool: UpstreamPool, key: UpstreamPool.Key, upstreamTimeout: TimeAmount) {
        self.client = client
        self.pool = pool
        self.key = key
        self.upstreamTimeout = upstreamTimeout
    }

    var isWritable: Bool { self.context?.channel.isWritable ?? true }

    var channel: Channel? { self.context?.channel }

    /// The origin's address as logged, worked out once per connection rather than per exchange.
    private(set) lazy var remoteDescription: String? = self.context?.channel.remoteAddress?.gatehouseDescription

    /// Open, idle, and attached to nobody: ready for the next exchange.
    var isReusable: Bool { self.client == nil && !self.finished && (self.context?.channel.isActive ?? false) }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        self.client = nil
    }

    /// Starts an exchange for `client` on this (possibly pooled) connection.
    func attach(client: ProxyConnectionHandler, isHead: Bool) {
        self.client = client
        self.attachedAt = .now()
        self.requestIsHead = isHead
        self.requestSent = false
        self.finished = false
        self.responseKeepsAlive = false
        self.readsPaused = false
        if self.readPending, let context = self.context {
            self.readPending = false
            context.read()
        }
    }

    // MARK: Towards the origin

    func send(_ part: HTTPClientRequestPart, flush: Bool = false) {
        guard let context = self.context else { return }
        if flush {
            context.writeAndFlush(self.wrapOutboundOut(part), promise: nil)
        } else {
            context.write(self.wrapOutboundOut(part), promise: nil)
        }
    }

    func flush() {
        self.context?.flush()
    }

    /// The whole request has been sent: from now on, silence from the origin counts against
    /// the upstream timeout.
    func requestFinished() {
        self.requestSent = true
    }

    func close() {
        self.finished = true
        self.client = nil
        self.context?.close(promise: nil)
    }

    func clientWritabilityChanged(_ writable: Bool) {
        self.readsPaused = !writable
        if writable, self.readPending, let context = self.context {
            self.readPending = false
            context.read()
        }
    }

    func read(context: ChannelHandlerContext) {
        if self.readsPaused {
            self.readPending = true
        } else {
            context.read()
        }
    }

    // MARK: From the origin

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = self.unwrapInboundIn(data)
        guard !self.finished, let client = self.client else {
            // Bytes from an idle pooled connection: the origin broke the protocol. Drop it.
            if case .head = part { context.close(promise: nil) }
            return
        }
        switch part {
        case .head(let head):
            if head.status.code / 100 != 1 {
                let framed = head.headers.contains(name: "content-length")
                    || head.headers["transfer-encoding"].last?.lowercased() == "chunked"
                    || head.status.code == 204 || head.status.code == 304 || self.requestIsHead
                self.responseKeepsAlive = head.isKeepAlive && head.version == .http1_1 && framed
            }
            client.upstreamResponseHead(head)
        case .body(let buffer):
            client.upstreamResponseBody(buffer)
        case .end:
            let reusable = self.responseKeepsAlive && self.requestSent
            self.client = nil
            self.readsPaused = false
            client.upstreamResponseEnd()
            if reusable && context.channel.isActive {
                self.pool.release(self, key: self.key)
            } else {
                self.finished = true
                context.close(promise: nil)
            }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.client?.upstreamReadComplete()
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { self.client?.resumeReadingIfPossible() }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if self.client == nil { self.pool.remove(self, key: self.key) }
        self.fail(reason: .upstreamClosed)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // A parse error is an invalid response (or a body cut short: HTTPParserError at EOF).
        self.fail(reason: error is HTTPParserError ? .upstreamBadResponse : .upstreamClosed)
        context.close(promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? IdleStateHandler.IdleStateEvent, event == .read {
            if self.client == nil {
                // Idle in the pool for a whole upstream timeout: let it go.
                self.finished = true
                context.close(promise: nil)
            } else if self.requestSent && (NIODeadline.now() - self.attachedAt).nanoseconds >= self.upstreamTimeout.nanoseconds * 9 / 10 {
                // An upload in progress is not the origin's silence, nor is time spent idle
                // in the pool before this exchange (the handler fires again a timeout later).
                self.fail(reason: .upstreamTimeout)
                context.close(promise: nil)
            }
            return
        }
        if let event = event as? ChannelEvent, event == .inputClosed {
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func fail(reason: ReasonCode) {
        guard !self.finished else { return }
        self.finished = true
        let client = self.client
        self.client = nil
        client?.upstreamFailed(reason: reason)
    }
}
