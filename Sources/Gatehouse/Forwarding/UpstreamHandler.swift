import NIOCore
import NIOHTTP1

/// The origin side of a forwarded exchange: relays the origin's response to the client
/// connection, and carries backpressure both ways.
///
/// It lives on the same event loop as its client connection, so the two call each other
/// directly. Reads from the origin pause while the client's socket is full; the client stops
/// reading its upload while this channel is not writable.
final class UpstreamHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    private weak var client: ProxyConnectionHandler?
    private var context: ChannelHandlerContext?
    private var readsPaused = false
    private var readPending = false
    private var requestSent = false
    private var finished = false

    init(client: ProxyConnectionHandler) {
        self.client = client
    }

    var isWritable: Bool { self.context?.channel.isWritable ?? true }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
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
        guard !self.finished, let client = self.client else { return }
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            client.upstreamResponseHead(head)
        case .body(let buffer):
            client.upstreamResponseBody(buffer)
        case .end:
            self.finished = true
            self.client = nil
            client.upstreamResponseEnd()
            context.close(promise: nil)
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
            // An upload in progress is not the origin's silence.
            if self.requestSent {
                self.fail(reason: .upstreamTimeout)
                context.close(promise: nil)
            }
            return
        }
        if let event = event as? ChannelEvent, event == .inputClosed {
            // The origin half-closed: the decoder has already seen EOF (a close-delimited
            // body ends here); nothing more will come.
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
