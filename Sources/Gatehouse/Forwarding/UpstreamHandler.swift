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
    /// Field names the response's `Connection` listed, kept for a chunked body's trailers.
    private var responseConnectionOptions: [String] = []
    private let pool: UpstreamPool
    let key: UpstreamPool.Key
    /// Since when the origin's silence counts: the later of its last bytes and the moment the
    /// request was fully sent (or, in the pool, the moment the connection was put back). Time
    /// spent in the pool, or uploading, is not the origin's fault.
    private var quietSince = NIODeadline.now()
    private let upstreamTimeout: TimeAmount
    /// How long a client may send nothing in the middle of its upload, or take nothing of its
    /// response (its idle timeout).
    private let clientTimeout: TimeAmount
    /// When the upload last moved: bytes of it went out to the origin, or the origin's TCP
    /// acknowledged more of it (`originAcked`, see ``PeerProgress``).
    private var uploadProgress = NIODeadline.now()
    private var originAcked: UInt64?
    /// Since when the client has taken nothing while reads from the origin are paused on its
    /// account (its socket full), and how many bytes it had acknowledged then (see
    /// ``PeerProgress``).
    private var pausedSince = NIODeadline.now()
    private var clientAcked: UInt64?
    /// One scheduled callback per connection, re-armed lazily like the client's (see
    /// ProxyConnectionHandler+Timeouts): a busy connection stores a time per read instead of
    /// rescheduling, and needs no `IdleStateHandler` in its pipeline.
    private var timer: NIOScheduledCallback?

    init(
        client: ProxyConnectionHandler, pool: UpstreamPool, key: UpstreamPool.Key, upstreamTimeout: TimeAmount,
        clientTimeout: TimeAmount
    ) {
        self.client = client
        self.pool = pool
        self.key = key
        self.upstreamTimeout = upstreamTimeout
        self.clientTimeout = clientTimeout
    }

    var isWritable: Bool { self.context?.channel.isWritable ?? true }

    var channel: Channel? { self.context?.channel }

    /// The origin's address as logged, worked out once per connection rather than per exchange.
    private(set) lazy var remoteDescription: String? = self.context?.channel.remoteAddress?.gatehouseDescription

    /// Open, idle, and attached to nobody: ready for the next exchange.
    var isReusable: Bool { self.client == nil && !self.finished && (self.context?.channel.isActive ?? false) }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.armTimer(at: .now() + self.checkInterval, context: context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.timer = nil
        self.context = nil
        self.client = nil
    }

    /// The callback is never further ahead than the shorter limit, so whichever applies next
    /// (an upload starting, writability changing) is noticed in time.
    private var checkInterval: TimeAmount { min(self.upstreamTimeout, self.clientTimeout) }

    private func armTimer(at deadline: NIODeadline, context: ChannelHandlerContext) {
        self.timer = try? context.eventLoop.assumeIsolated().scheduleCallback(at: deadline, handler: UpstreamTimer(self))
    }

    /// The origin has been silent for a whole upstream timeout (or the connection idled in the
    /// pool that long): fail the exchange with 504, or let the pooled connection go.
    fileprivate func timerFired() {
        self.timer = nil
        guard let context = self.context, !self.finished else { return }
        if self.client != nil && self.readsPaused && context.channel.isActive {
            return self.checkClientReading(context: context)
        }
        if self.client != nil && !self.requestSent && context.channel.isActive {
            return self.checkUpload(context: context)
        }
        let counting = context.channel.isActive && (self.client == nil || self.requestSent)
        let due = self.quietSince + self.upstreamTimeout
        let now = NIODeadline.now()
        if !counting || now < due {
            // Still connecting or uploading (not the origin's silence), or heard from it
            // since: look again later.
            self.armTimer(at: counting ? min(due, now + self.checkInterval) : now + self.checkInterval, context: context)
            return
        }
        if self.client != nil, let queue = PeerProgress.sendQueue(of: context.channel) {
            // The request was written, but written is not received: an origin reading a large
            // upload slowly is not silent while it takes more in, and its silence starts when
            // it acknowledged the last byte, not when the proxy finished writing.
            let since = queue.draining ? (self.originTookMore(queue) ? now : nil) : queue.lastAcknowledgement
            if let since, since > self.quietSince {
                self.quietSince = since
                if now < since + self.upstreamTimeout {
                    self.armTimer(at: since + self.upstreamTimeout, context: context)
                    return
                }
            }
        }
        if self.client == nil {
            // Idle in the pool for a whole upstream timeout: let it go.
            self.finished = true
            context.close(promise: nil)
        } else {
            self.fail(reason: .upstreamTimeout)
            context.close(promise: nil)
        }
    }

    /// An upload in progress: the origin's silence does not count, but a stall does. Nothing
    /// moved for the idle timeout while the origin could take more: the client stopped
    /// sending (408 `body_timeout`). Nothing moved for the upstream timeout while the origin
    /// took nothing: the origin stopped reading (504 `upstream_timeout`). An origin that
    /// reads slowly but steadily keeps its socket full (not writable) for as long as its
    /// kernel buffers take to drain, which can be minutes: what it acknowledges is progress.
    private func checkUpload(context: ChannelHandlerContext) {
        let originReady = context.channel.isWritable
        if !originReady, let queue = PeerProgress.sendQueue(of: context.channel), self.originTookMore(queue) {
            self.uploadProgress = .now()
        }
        let since = max(self.quietSince, self.uploadProgress)
        let due = since + (originReady ? self.clientTimeout : self.upstreamTimeout)
        let now = NIODeadline.now()
        if now < due {
            // Checked again no later than the shorter limit, in case writability changes;
            // while the origin takes nothing, four times as often, so that its last progress is
            // known within a quarter of the limit (looked at once per limit, progress seen at
            // the first look put the 504 at up to twice the upstream timeout).
            let step = originReady ? self.checkInterval : .nanoseconds(self.checkInterval.nanoseconds / 4)
            self.armTimer(at: min(due, now + step), context: context)
            return
        }
        if originReady {
            self.finished = true
            let client = self.client
            self.client = nil
            client?.uploadStalled()
        } else {
            self.fail(reason: .upstreamTimeout)
        }
        context.close(promise: nil)
    }

    /// Whether the origin acknowledged more of what was sent since the last look (the first
    /// look counts); each look is the sample for the next.
    private func originTookMore(_ queue: PeerProgress.SendQueue) -> Bool {
        defer { self.originAcked = queue.acked }
        return queue.acked != self.originAcked
    }

    /// Reads from the origin are paused because the client's socket is full, so the origin's
    /// silence is not its own. The client taking nothing for its idle timeout ends the
    /// exchange as `client_stalled` (not `upstream_truncated`, which would blame the origin).
    private func checkClientReading(context: ChannelHandlerContext) {
        let now = NIODeadline.now()
        if let acked = self.client?.bytesAcknowledgedByClient(), acked != self.clientAcked {
            // Slow but moving: it took bytes without draining enough to turn writable.
            self.clientAcked = acked
            self.pausedSince = now
        }
        let due = self.pausedSince + self.clientTimeout
        if now < due {
            self.armTimer(at: min(due, now + self.checkInterval), context: context)
            return
        }
        self.finished = true
        let client = self.client
        self.client = nil
        client?.responseStalled()
        context.close(promise: nil)
    }

    /// Starts an exchange for `client` on this (possibly pooled) connection.
    func attach(client: ProxyConnectionHandler, isHead: Bool) {
        self.client = client
        self.quietSince = .now()
        self.requestIsHead = isHead
        self.requestSent = false
        self.originAcked = nil
        self.finished = false
        self.responseKeepsAlive = false
        // The client's socket may be full already: the previous responses of a client that
        // pipelines and does not read. Reading this origin's answer regardless queued it too,
        // and each completed answer let the next pipelined request through: a client that sent
        // thousands of requests and read nothing grew the proxy by every response (1.5 GB for
        // two million 1 KB GETs), and its idle timeout never struck. Paused here, the answer
        // waits for the client, which takes it or is closed as `client_stalled`.
        let clientWritable = client.isClientWritable
        self.readsPaused = false
        if !clientWritable {
            self.clientWritabilityChanged(false)
        } else if self.readPending, let context = self.context {
            self.readPending = false
            context.read()
        }
    }

    // MARK: Towards the origin

    func send(_ part: HTTPClientRequestPart, flush: Bool = false) {
        guard let context = self.context else { return }
        if case .body = part { self.uploadProgress = .now() }
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
        self.quietSince = .now()
    }

    func close() {
        self.finished = true
        self.client = nil
        self.context?.close(promise: nil)
    }

    func clientWritabilityChanged(_ writable: Bool) {
        if !writable && !self.readsPaused {
            self.pausedSince = .now()
            self.clientAcked = self.client?.bytesAcknowledgedByClient()
        }
        // Time spent paused on the client's account is not the origin's silence.
        if writable && self.readsPaused { self.quietSince = .now() }
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
        self.quietSince = .now()
        let part = self.unwrapInboundIn(data)
        guard !self.finished, let client = self.client else {
            // Bytes from an idle pooled connection: the origin broke the protocol. Drop it.
            if case .head = part { context.close(promise: nil) }
            return
        }
        switch part {
        case .head(let head):
            if head.status.code / 100 != 1 {
                let hasLength = head.headers.contains(name: "content-length")
                let chunked = !hasLength && head.headers["transfer-encoding"].last?.lowercased() == "chunked"
                let framed = hasLength || chunked || head.status.code == 204 || head.status.code == 304 || self.requestIsHead
                self.responseKeepsAlive = head.isKeepAlive && head.version == .http1_1 && framed
                // Only a chunked body can end in trailers.
                self.responseConnectionOptions = chunked ? head.headers.connectionOptionNames() : []
            }
            client.upstreamResponseHead(head)
        case .body(let buffer):
            client.upstreamResponseBody(buffer)
        case .end(let trailers):
            // `Connection` in a trailer section is not allowed (RFC 9110 §6.5.1), but NIO's
            // parser honours a `close` there and would refuse the next response on this
            // connection: a pooled connection's next user got 502.
            let reusable = self.responseKeepsAlive && self.requestSent && !(trailers?.contains(name: "connection") ?? false)
            self.client = nil
            self.readsPaused = false
            client.upstreamResponseEnd(
                trailers: trailers.flatMap { $0.forwardableTrailers(connectionOptions: self.responseConnectionOptions) })
            if reusable && context.channel.isActive {
                self.quietSince = .now()
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
        if context.channel.isWritable {
            self.client?.resumeReadingIfPossible()
        } else if self.client != nil && !self.requestSent, let queue = PeerProgress.sendQueue(of: context.channel) {
            // An upload backs up: from here the origin's acknowledgements are its progress
            // (see `checkUpload`). Without this sample the first look counted as progress, and
            // an origin that had stopped reading got its 504 after twice the upstream timeout.
            self.originAcked = queue.acked
            self.uploadProgress = .now()
            self.timer?.cancel()
            self.armTimer(at: .now() + .nanoseconds(self.checkInterval.nanoseconds / 4), context: context)
        }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if self.client == nil { self.pool.remove(self, key: self.key) }
        self.fail(reason: .upstreamClosed)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // A parse error is an invalid response, or a body cut short (`invalidEOFState`: the
        // origin closed in the middle of it).
        let parserError = error as? HTTPParserError
        self.fail(reason: parserError == nil ? .upstreamClosed : .upstreamBadResponse, cutShort: parserError == .invalidEOFState)
        context.close(promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func fail(reason: ReasonCode, cutShort: Bool = false) {
        guard !self.finished else { return }
        self.finished = true
        let client = self.client
        self.client = nil
        client?.upstreamFailed(reason: reason, cutShort: cutShort)
    }
}

/// Routes the upstream connection's scheduled callback to it (cancelled when it is removed).
private struct UpstreamTimer: NIOScheduledCallbackHandler {
    let handler: UpstreamHandler

    init(_ handler: UpstreamHandler) {
        self.handler = handler
    }

    func handleScheduledCallback(eventLoop: some EventLoop) {
        self.handler.timerFired()
    }
}
