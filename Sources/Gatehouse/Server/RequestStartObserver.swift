import NIOCore

/// Sits next to the socket and notices the first byte of each request head.
///
/// The HTTP decoder only reports a request once its head is complete, but the header timeout
/// (the slowloris defence) must start at the head's first byte, and the idle timeout must stop
/// there. This handler sees raw bytes, tells the connection handler when a new request begins,
/// and lets it write a raw `408` that does not disturb the HTTP handlers' own bookkeeping
/// (there is no request for the 408 to answer, as far as they know).
///
/// Being the first handler, it also holds back two events the HTTP handlers would act on too
/// early: the client's EOF while a `CONNECT` awaits its tunnel, and graceful shutdown while a
/// response tail is still queued.
final class RequestStartObserver: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = NIOAny

    /// A `read()` held while the connection holds a request (see `read(context:)`).
    private var readHeld = false

    /// No read reaches the socket while the connection holds a pipelined request for a client
    /// whose socket is full: not the connection handler's (it holds its own), and not NIO's
    /// pipeline handler's, which issues the read it held once an answer ends. Each read let in
    /// up to a quarter of a megabyte of requests, parsed and queued at once: a client that
    /// pipelined and read nothing held 6 MB of the proxy per connection, without credentials.
    func read(context: ChannelHandlerContext) {
        if let connection = self.connection, connection.heldInbound != nil {
            self.readHeld = true
            return
        }
        context.read()
    }

    /// A close of the whole connection from the handlers behind (NIO's pipeline handler when
    /// a graceful shutdown completes, the connection handler) may go in stages instead (see
    /// `ProxyConnectionHandler.closeInStagesWhileQuiescing`). This handler's own closes go
    /// straight to the socket and do not pass here.
    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if mode == .all, let connection = self.connection, connection.closeInStagesWhileQuiescing(promise: promise) { return }
        context.close(mode: mode, promise: promise)
    }

    /// The connection no longer holds a request: a read held meanwhile goes out.
    func releaseHeldRead() {
        guard self.readHeld, let context = self.context else { return }
        self.readHeld = false
        context.read()
    }

    /// Set by the connection handler while it waits for a request head.
    var awaitingRequest = true
    /// Strong, not weak: a weak reference gives the connection handler a side table, which
    /// sends every retain and release of it down the runtime's slow path. The cycle is broken
    /// when the pipeline goes away (both handlers' `handlerRemoved`).
    var connection: ProxyConnectionHandler?
    private var context: ChannelHandlerContext?

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        self.connection = nil
    }

    /// What the first line of the current request looked like, for telling apart the parse
    /// errors llhttp reports alike (see ``FirstLine``). Noted from the first read of each
    /// request, and forgotten once a head parses, so a later request that was pipelined into
    /// the same read is judged by the defaults (400).
    private(set) var firstLine = FirstLine()

    struct FirstLine: Equatable {
        /// Bytes of the line seen so far: up to its LF, or every byte read if it has not
        /// ended yet (see ``RequestStartObserver/lineStillOpen``).
        var length = 0
        /// Bytes of the method at its start (what is not the target, with the version).
        var methodLength = 0
        /// The line ended in LF alone. llhttp reports that as an invalid version, which is a
        /// malformed request (400), not an unsupported version (505).
        var endsInBareLF = false
        /// The line has a request line's shape: a method token and a space, something, and a
        /// space and `HTTP/x.y` at its end. llhttp knows a fixed list of methods and reports
        /// any other as an invalid method: with this shape that is an unknown method (501),
        /// otherwise garbage (400). Only the method and the line's last nine bytes are looked
        /// at, not the target between them: this runs for every request.
        var isRequestLine = false
    }

    static func firstLine(of buffer: ByteBuffer) -> FirstLine {
        buffer.withUnsafeReadableBytes { bytes in
            var methodLength = 0
            while methodLength < bytes.count && Self.isTokenByte(bytes[methodLength]) { methodLength += 1 }
            guard let lf = bytes.firstIndex(of: UInt8(ascii: "\n")) else {
                return FirstLine(length: bytes.count, methodLength: methodLength)
            }
            var line = FirstLine(length: lf, methodLength: methodLength)
            line.endsInBareLF = lf == 0 || bytes[lf - 1] != UInt8(ascii: "\r")
            let end = line.endsInBareLF ? lf : lf - 1
            let method = min(methodLength, end)
            // `METHOD SP … SP HTTP/x.y`: the version's space lies past the method's, with a
            // target (not a space) right after the spaces that follow the method.
            let version = end - 9
            guard method > 0, version > method, bytes[method] == UInt8(ascii: " "), bytes[version] == UInt8(ascii: " ")
            else { return line }
            let target = bytes[(method + 1)..<version].firstIndex { $0 != UInt8(ascii: " ") }
            line.isRequestLine = target != nil && bytes[(version + 1)..<(version + 6)].elementsEqual("HTTP/".utf8)
            return line
        }
    }

    /// tchar (RFC 9110 §5.6.2), the characters of a method name.
    static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return "!#$%&'*+-.^_`|~".utf8.contains(byte)
        }
    }

    /// A head parsed: what the first line looked like no longer matters.
    func forgetFirstLine() {
        self.firstLine = FirstLine()
        self.lineStillOpen = false
        self.unparsedStart = nil
    }

    /// The start of the current request while its head has not parsed (cleared by
    /// ``forgetFirstLine()``): the first read itself while the decoder works on it (for an
    /// error in that read, a 501), then a copy of at most `keptLineBytes` of it.
    private var unparsedStart: ByteBuffer?
    static let keptLineBytes = 256

    /// The method and target of a request whose head never parsed (a 408, a 431), for its
    /// log line, from the start of its first line; nil when that was not a request line.
    var unparsedRequestLine: (method: String, target: String)? {
        guard let start = self.unparsedStart,
            let line = start.getString(at: start.readerIndex, length: min(self.firstLine.length, Self.keptLineBytes, start.readableBytes))
        else { return nil }
        let parts = line.split(separator: " ", omittingEmptySubsequences: true)
        // A method is whole once something follows it ("G" of a head cut short is no method).
        guard let method = parts.first, method.utf8.allSatisfy(Self.isTokenByte), line.utf8.count > method.utf8.count else { return nil }
        // The target only from a whole line that was kept entire and has a request line's
        // three parts: in a cut or odd one (a raw space in a password), what looks like the
        // target may be the start of a userinfo that is not recognisable as one.
        let whole = !self.lineStillOpen && line.utf8.count == self.firstLine.length
            && parts.count == 3 && parts[2].hasPrefix("HTTP/")
        let loggedMethod = method.utf8.count > 64 ? String(method.prefix(64)) + "…" : String(method)
        return (loggedMethod, whole ? Self.loggableTarget(parts[1]) : "-")
    }

    /// A request target as logged for an unparsed request: redacted (see
    /// `RequestTarget.redactedForLog`) and at most 64 characters.
    static func loggableTarget(_ target: Substring) -> String {
        let clean = RequestTarget.redactedForLog(String(target))
        return clean.count > 64 ? String(clean.prefix(64)) + "…" : clean
    }

    /// A graceful shutdown has begun (see `ProxyConnectionHandler.closeInStagesWhileQuiescing`).
    private(set) var quiescing = false

    /// Set by the connection handler once the current request has fully arrived.
    var requestComplete = false
    /// Bytes arrived while a complete request awaited its response: the client pipelines.
    private(set) var sawPipelinedBytes = false

    /// The current request's first line had not ended in the bytes read so far: a request
    /// target longer than a read. Its bytes are counted on until its LF, so that a target too
    /// long even for the header-size limit is still answered 414, not 431.
    private(set) var lineStillOpen = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if self.linger != nil {
            // Gatehouse has answered and closed its side: what the client still sends is read
            // and dropped, in front of an HTTP decoder that may be in an error state.
            self.linger?.lastRead = context.eventLoop.now
            return
        }
        if self.awaitingRequest {
            self.awaitingRequest = false
            let buffer = self.unwrapInboundIn(data)
            self.firstLine = Self.firstLine(of: buffer)
            self.lineStillOpen = self.firstLine.length == buffer.readableBytes
            self.connection?.requestBytesStarted()
            self.unparsedStart = buffer
            context.fireChannelRead(data)
            if let start = self.unparsedStart {
                // The head did not parse in this read (a slow or oversized one, which may end
                // in a 408 or 431): keep the start of its first line for that log line, copied,
                // so that NIO can reuse its receive buffer.
                let kept = min(self.firstLine.length, Self.keptLineBytes, start.readableBytes)
                self.unparsedStart = ByteBuffer(bytes: start.readableBytesView.prefix(kept))
            }
            return
        } else if self.lineStillOpen {
            let bytes = self.unwrapInboundIn(data).readableBytesView
            if let lf = bytes.firstIndex(of: UInt8(ascii: "\n")) {
                self.lineStillOpen = false
                self.firstLine.length += lf - bytes.startIndex
            } else {
                self.firstLine.length += bytes.count
            }
        } else if self.requestComplete {
            self.sawPipelinedBytes = true
        }
        context.fireChannelRead(data)
    }

    /// Asks the socket for more bytes directly, past `HTTPServerPipelineHandler`.
    ///
    /// That handler holds every `read()` while a response is outstanding, so that a client
    /// that pipelines cannot make it buffer without bound. Holding a read makes NIO drop the
    /// socket's read interest from epoll and add it back once the response is out: two
    /// `epoll_ctl` calls per proxied request, about 5% of its CPU. Clients that do not pipeline
    /// (most: curl, browsers, wrk) send nothing until the response is out anyway, so for them
    /// the connection handler keeps read interest on with this. The first time bytes arrive
    /// while a request awaits its response (``sawPipelinedBytes``), this stops for good and
    /// the pipeline handler's hold applies, so the buffering stays bounded by one read.
    func readThrough() {
        self.context?.read()
    }

    /// Whether the client's end of input is held here, in front of the HTTP decoder: while a
    /// `CONNECT` the decoder handed on (counted by `ConnectHeadWatcher`, whether the proxy
    /// handler has taken it yet or it waits behind another request) is not settled yet.
    /// Once NIO's decoder sees EOF after a `CONNECT` head it drops the bytes that followed the
    /// head (it forwards them only when removed without EOF), so a client that sends its first
    /// tunnel bytes and half-closes at once (`nc -N`, a scripted request) would lose them. The
    /// tunnel passes the held EOF on to the origin itself, after those bytes; a refused
    /// `CONNECT` releases it into the HTTP pipeline (``releaseEndOfInput()``).
    var holdsEndOfInput: Bool { self.connectHeadsDecoded > self.connectHeadsSettled }
    /// The client's EOF arrived while held.
    private(set) var heldEndOfInput = false
    /// `CONNECT` heads the decoder handed on.
    var connectHeadsDecoded = 0
    /// `CONNECT` heads the proxy handler has taken (see ``settleConnects(upTo:)``).
    var connectHeadsTaken = 0
    /// How many of the decoded `CONNECT` heads are settled: refused, or the tunnel.
    private var connectHeadsSettled = 0

    /// Every `CONNECT` so far is settled: the tunnel takes the held EOF, or the connection closes.
    func settleConnects() {
        self.connectHeadsSettled = self.connectHeadsDecoded
    }

    /// Closing in stages (see `closeLingering`): when the stages end at the latest, how long
    /// the client may send nothing, when bytes last came, and the one timer for both limits.
    private struct Linger {
        var deadline: NIODeadline
        var idle: TimeAmount
        var lastRead: NIODeadline
        var timer: Scheduled<Void>?
        var due: NIODeadline { min(self.deadline, self.lastRead + self.idle) }
    }
    /// Set while closing in stages.
    private var linger: Linger?

    /// Closes the connection in stages, once Gatehouse's last response is written, for a
    /// client that may still be sending (an upload refused with 413, a header section cut
    /// off with 431).
    ///
    /// Closing a socket with unread bytes in it makes the kernel send a reset, which can
    /// destroy the response before the client has read it: a client still writing its
    /// upload sees "connection reset" instead of the 413. RFC 9112 §9.6 asks a server to
    /// half-close instead: shut its sending side (the client sees the response end), read and
    /// drop what the client still sends until it closes its side, and close then. The wait
    /// lasts at most `total`, and ends sooner once the client sent nothing for `idle` (as
    /// nginx's `lingering_time` and `lingering_timeout`; see `ProxyConfiguration.lingerTime`).
    func closeLingering(total: TimeAmount, idle: TimeAmount) {
        guard let context = self.context, self.linger == nil else { return }
        self.settleConnects()
        if self.heldEndOfInput {
            // The client's EOF already came (held for a CONNECT): nothing more will arrive.
            context.close(promise: nil)
            return
        }
        let now = context.eventLoop.now
        self.linger = Linger(deadline: now + total, idle: idle, lastRead: now)
        context.close(mode: .output, promise: nil)
        self.armLingerTimer(context: context)
        // Reads go straight to the socket: the HTTP handlers behind may be holding theirs.
        context.read()
    }

    /// One timer for both limits, re-armed when it fires early (a read moved the idle limit
    /// on): no timer work per read.
    private func armLingerTimer(context: ChannelHandlerContext) {
        guard let due = self.linger?.due else { return }
        self.linger?.timer = context.eventLoop.assumeIsolated().scheduleTask(deadline: due) {
            guard let linger = self.linger else { return }
            if context.eventLoop.now >= linger.due {
                context.close(promise: nil)
            } else {
                self.armLingerTimer(context: context)
            }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if self.linger != nil {
            context.read()
            return
        }
        context.fireChannelReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.linger?.timer?.cancel()
        self.linger?.timer = nil
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if self.linger != nil {
            // The client has closed its side too (or shut down): the stages are done.
            if let event = event as? ChannelEvent, event == .inputClosed { context.close(promise: nil) }
            return
        }
        if self.holdsEndOfInput, let event = event as? ChannelEvent, event == .inputClosed {
            self.heldEndOfInput = true
            return
        }
        if event is ChannelShouldQuiesceEvent { self.quiescing = true }
        if event is ChannelShouldQuiesceEvent,
            let queued = try? context.channel.syncOptions?.getOption(.bufferedWritableBytes), queued > 0
        {
            // Graceful shutdown: HTTPServerPipelineHandler closes an idle connection at once,
            // which would drop a response tail still queued for a slow reader. An empty write
            // completes once everything before it is written; the drain timeout bounds the wait.
            context.writeAndFlush(NIOAny(ByteBuffer())).assumeIsolated().whenComplete { _ in
                context.fireUserInboundEventTriggered(event)
            }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// The `CONNECT`s taken up to `taken` (``connectHeadsTaken`` when their refusal began) are
    /// settled: refused. One taken later, or still waiting, is not: settling all of them, a
    /// refused `CONNECT`'s late release (see ``releaseEndOfInput()``) let the EOF past the
    /// one behind it.
    func settleConnects(upTo taken: Int) {
        self.connectHeadsSettled = max(self.connectHeadsSettled, taken)
    }

    /// The connection is HTTP again after refused `CONNECT`s: the client's EOF, if it came,
    /// is passed on, unless another `CONNECT` is not settled yet (its tunnel or refusal takes it).
    func releaseEndOfInput() {
        guard self.heldEndOfInput, !self.holdsEndOfInput else { return }
        self.heldEndOfInput = false
        self.context?.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
    }

    /// Writes bytes straight to the socket, below the HTTP encoder.
    func writeRaw(_ buffer: ByteBuffer) -> EventLoopFuture<Void>? {
        guard let context = self.context else { return nil }
        return context.writeAndFlush(NIOAny(buffer))
    }
}
