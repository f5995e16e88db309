import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

/// Serves one client connection: authenticates each request, then forwards it or opens a
/// `CONNECT` tunnel, and writes one access-log line per response.
///
/// The handler holds only per-connection state; every decision about the connection's life is
/// made by ``ProxyConnectionStateMachine``. It sits behind NIO's hardened HTTP/1 parser and
/// `HTTPServerPipelineHandler`, which hands it one request at a time so that pipelined requests
/// are answered in order (RFC 9112 §9.3.2).
final class ProxyConnectionHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    let shared: ProxyContext
    /// This event loop's metric counts (see ``GatehouseMetrics/LoopCounts``).
    let counts: GatehouseMetrics.LoopCounts
    /// This event loop's idle origin connections.
    let pool: UpstreamPool
    /// The server's logger (not copied per connection: an idle connection should cost little).
    var logger: Logger { self.shared.logger }
    var machine = ProxyConnectionStateMachine()
    /// The exchange in progress, if any.
    var exchange: Exchange?
    /// Request body parts that arrived before the origin connection was ready.
    var bufferedBody: [ByteBuffer] = []
    var bufferedEnd = false
    /// Request-body bytes dropped since an early answer (see `ProxyConfiguration.maxDrainBytes`).
    var drainedBytes = 0
    /// A `read()` the handler held back, to be issued once reading may resume.
    var readPending = false
    /// Whether the client's socket is read `bulkReadsPerWakeup` times per wake-up (a request
    /// body streaming to an origin, see `bulkReadsFit`) instead of once.
    var bulkReads = false
    var upstream: UpstreamHandler?
    var tunnelUpstream: Channel?
    /// Raw bytes that arrived after a `CONNECT` head, kept for the tunnel.
    var tunnelPendingReads: [NIOAny] = []
    /// A pipelined request (and what followed it), held while the client's socket is full:
    /// see ``channelRead(context:data:)``. Nil when nothing is held.
    var heldInbound: CircularBuffer<HeldInbound>?
    /// `releaseHeld` is running: what arrives meanwhile queues behind what it still holds.
    var releasingHeld = false
    /// A request part is being handled (see `channelRead`).
    var processing = false
    /// A request arrived while another was being handled, and was held for after it.
    var releaseWhenProcessed = false

    enum HeldInbound {
        case read(NIOAny)
        case inputClosed
        case error(Error)
    }
    var clientAddress = "-"
    /// The client's IP alone (the throttle's key), worked out once per connection.
    var clientIP = "-"
    var context: ChannelHandlerContext?
    let observer: RequestStartObserver
    /// Writes the client's responses; prebuilt answers go out already encoded.
    let encoder: OwnResponseEncoder
    var timer: NIOScheduledCallback?
    /// When the scheduled callback fires (nil: none is scheduled).
    var timerFiresAt: NIODeadline?
    /// When the current timeout expires (`.distantFuture`: no timeout is running).
    var timerDeadline = NIODeadline.distantFuture
    var timerKind = TimerKind.idle
    /// The idle timer's look at the client's progress (see ``clientStillReading(context:)``).
    var idleWatch = PeerProgress.IdleWatch()
    /// The client half-closed its side; answer what is in flight, then close.
    var clientInputClosed = false
    /// When the connection's current head started to arrive (for parser-error log lines).
    var headStarted = NIODeadline.now()
    /// Response bytes were written to the client since its last flush.
    var clientFlushPending = false
    /// The response in flight ends the connection (client asked, or close-delimited body).
    var closeAfterResponse = false
    /// A refused CONNECT's `.end` is still due; swap in a fresh HTTP decoder once it arrives.
    var replaceDecoderOnRequestEnd = false
    /// The last prebuilt answer written, dated (see `datedBytes(of:)`).
    var lastDatedAnswer: (second: Int, response: OwnResponse, bytes: ByteBuffer)?
    /// The HTTP decoder in front of this handler now (a refused CONNECT replaces it).
    var requestDecoder: ByteToMessageHandler<HTTPRequestDecoder>?
    /// A replacement is under way; another asked for meanwhile follows it.
    var replacingDecoder = false
    var replaceDecoderAgain = false
    /// Old decoders whose removal (and hand-over of their bytes) has not completed.
    var decoderRemovalsPending = 0
    /// Set when the client spoke plain HTTP to a TLS listener: its request gets 400
    /// `tls_required` and the connection closes.
    var plainHTTPOnTLSListener = false
    /// Set when the connection is over a connection limit: it gets a 503 and is closed.
    var rejection: ReasonCode?
    /// The settings this connection runs under, fixed when it opened.
    let settings: ProxyContext.Snapshot
    var configuration: ProxyConfiguration { self.settings.configuration }

    init(shared: ProxyContext, observer: RequestStartObserver, encoder: OwnResponseEncoder, eventLoop: EventLoop) {
        self.shared = shared
        self.counts = shared.metrics.counts(for: eventLoop)
        self.pool = shared.pools.value(for: eventLoop)
        self.settings = shared.snapshot
        self.observer = observer
        self.encoder = encoder
    }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.learnClientAddress(context: context)
        self.observer.connection = self
        if context.channel.isActive { self.connectionStarted(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.learnClientAddress(context: context)
        self.connectionStarted(context: context)
        context.fireChannelActive()
    }

    /// The pipeline's builder usually knows the client's address already.
    private func learnClientAddress(context: ChannelHandlerContext) {
        guard self.clientAddress == "-", let remote = context.channel.remoteAddress else { return }
        self.clientIP = remote.ipAddress ?? "-"
        self.clientAddress = remote.gatehouseDescription(ip: self.clientIP)
    }

    /// A connection over the global or per-client limit is answered 503 with `Retry-After`
    /// straight away, logged, and closed: it costs one write, not a slot.
    private func connectionStarted(context: ChannelHandlerContext) {
        if let reason = self.rejection {
            self.rejection = nil
            self.sendRawAndClose(status: "503 Service Unavailable", reason: reason, context: context)
            return
        }
        self.awaitRequest(context: context, first: true)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.cancelTimer()
        self.observer.connection = nil
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.cancelTimer()
        let midExchange: Bool
        switch self.machine.state {
        case .authenticating, .connecting, .forwarding: midExchange = true
        case .idle, .answered, .tunnelling, .closed: midExchange = false
        }
        self.machine.connectionClosed()
        if midExchange {
            // The client went away mid-exchange (while its credentials were checked, the origin
            // connected, or the response came): log what happened and drop the origin
            // connection. Only `forwarding` was logged; the others left no line at all.
            self.recordClientClosed()
        }
        self.upstream?.close()
        self.upstream = nil
        self.tunnelUpstream?.close(promise: nil)
        self.tunnelUpstream = nil
        context.fireChannelInactive()
    }

    /// Logs the exchange in progress, if any, as ended by the client (`client_closed`; 499 if
    /// no status was sent yet).
    ///
    /// When the proxy itself closed it (a drain that timed out, a second SIGTERM), the reason is
    /// `shutdown`, with the status sent or 0.
    func recordClientClosed() {
        guard let exchange = self.exchange else { return }
        self.exchange = nil
        // During a drain, a connection ended with a request head half arrived was ended by the
        // proxy (it closes connections without a request in progress), not by the client.
        if self.shared.connections.isClosingAll || (self.observer.quiescing && exchange.isUnparsed) {
            self.shared.record(exchange.logEntry(client: self.clientAddress, status: exchange.status, reason: .shutdown), counts: self.counts)
            return
        }
        self.shared.record(
            exchange.logEntry(client: self.clientAddress, status: exchange.status == 0 ? 499 : exchange.status,
                              reason: .clientClosed), counts: self.counts)
    }

    /// One request part, taken (see `channelRead` in ProxyConnectionHandler+Pipelining.swift).
    func process(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        switch part {
        case .head(let head):
            self.requestHead(head, context: context)
        case .body(let buffer):
            self.exchange?.bytesIn += buffer.readableBytes
            // The limit is policy, applied once the credentials are accepted (an upload
            // answered 407 is drained, within `maxDrainBytes`, not refused with 413).
            if self.machine.isAuthenticated && self.bodyOverLimit {
                return self.bodyTooLarge(context: context)
            }
            switch self.machine.requestBodyReceived() {
            case .bufferBody: self.bufferedBody.append(buffer)
            case .forwardBody:
                if self.bulkReads != self.bulkReadsFit { self.setBulkReads(!self.bulkReads, context: context) }
                self.upstream?.send(.body(.byteBuffer(buffer)))
            case .discardBody:
                // Another idle timeout for the rest (see `awaitBodyRest`).
                self.schedule(.idle, in: self.configuration.idleTimeout, context: context)
                self.drainedBytes += buffer.readableBytes
                if self.drainedBytes > self.configuration.maxDrainBytes {
                    // The answer went out long ago; reading on for the next request's sake
                    // is not worth more.
                    self.machine.connectionClosed()
                    context.close(promise: nil)
                }
            default: break
            }
        case .end(let trailers):
            self.observer.requestComplete = true
            if self.bulkReads { self.setBulkReads(false, context: context) }
            // A trailer section may not carry `Connection` (RFC 9110 §6.5.1), but NIO's parser
            // honours a `close` there and would refuse the next request as data after the
            // end (it got 400): this connection carries no more requests.
            let closesInTrailers = trailers?.contains(name: "connection") ?? false
            if closesInTrailers {
                self.exchange?.clientKeepAlive = false
                self.closeAfterResponse = true
            }
            let forwarded = trailers.flatMap {
                $0.forwardableTrailers(connectionOptions: self.exchange?.requestConnectionOptions ?? [])
            }
            switch self.machine.requestEndReceived() {
            case .bufferBody:
                self.bufferedEnd = true
                self.exchange?.bufferedTrailers = forwarded
                if let exchange = self.exchange, exchange.isConnect { self.connectRequestCompleted(context: context) }
            case .forwardEnd:
                self.upstream?.send(.end(forwarded), flush: true)
                self.upstream?.requestFinished()
            case .awaitNextRequest:
                if closesInTrailers {
                    self.machine.connectionClosed()
                    return context.close(promise: nil)
                }
                if self.replaceDecoderOnRequestEnd {
                    self.replaceDecoderOnRequestEnd = false
                    self.replaceDecoderAfterConnect(context: context)
                }
                self.awaitRequest(context: context)
            case .close:
                context.close(promise: nil)
            default: break
            }
        }
    }

    /// The request body received so far is over `--max-body`.
    var bodyOverLimit: Bool {
        guard let limit = self.configuration.maxBodyBytes, let received = self.exchange?.bytesIn else { return false }
        return received > limit
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.upstream?.flush()
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        if self.machine.clientReadsAllowed && (self.upstream?.isWritable ?? true) && self.heldInbound == nil {
            context.read()
            if self.machine.awaitingResponse && !self.observer.sawPipelinedBytes && self.exchange?.isConnect == false {
                self.observer.readThrough()
            }
        } else {
            self.readPending = true
        }
    }

    /// Issues a read that was held back, once the reason for holding it has gone.
    func resumeReadingIfPossible() {
        guard self.readPending, let context = self.context else { return }
        if self.machine.clientReadsAllowed && (self.upstream?.isWritable ?? true) && self.heldInbound == nil {
            self.readPending = false
            context.read()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        // Backpressure from the client to the origin: stop reading the origin while the
        // client's socket buffer is full.
        self.upstream?.clientWritabilityChanged(context.channel.isWritable)
        if context.channel.isWritable && self.heldInbound != nil { self.releaseHeld(context: context) }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            if self.heldInbound != nil {
                self.heldInbound?.append(.inputClosed)
            } else {
                self.inputClosed(context: context)
            }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func inputClosed(context: ChannelHandlerContext) {
        self.clientInputClosed = true
        if self.machine.isIdle { self.closeOnceWritten(context: context) }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if self.heldInbound != nil {
            // After the requests held before it (a parse error in bytes that followed them).
            self.heldInbound?.append(.error(error))
            return
        }
        self.handleError(error, context: context)
    }

    func handleError(_ error: Error, context: ChannelHandlerContext) {
        if let parserError = error as? HTTPParserError {
            self.parserError(parserError, context: context)
            return
        }
        if let decoderError = error as? ByteToMessageDecoderError, case .dataReceivedInErrorState = decoderError {
            // More bytes after a parse error. NIO's pipeline handler holds the parse error itself
            // until the answer in progress is written (it then gets its 400, and the connection
            // closes in stages, dropping what still comes), but passes these on at once.
            // Closing here reset the connection before that answer, and logged the client as
            // having left (`client_closed`). Reads stop meanwhile: the bytes wait in the socket.
            return
        }
        // The EOF that follows is the client's half-close (see `ListenerTLS.isRaggedEOF`).
        if ListenerTLS.isRaggedEOF(error) { return }
        self.logger.debug("client connection error", metadata: ["error": "\(Self.loggable(error))"])
        context.close(promise: nil)
    }

    /// An error as logged. NIO's decoder errors carry the raw bytes the client sent (their
    /// description prints up to 1 KiB of them), which may hold its `Proxy-Authorization`:
    /// only their kind and size are logged.
    static func loggable(_ error: Error) -> String {
        switch error {
        case ByteToMessageDecoderError.dataReceivedInErrorState(let underlying, let data):
            return "dataReceivedInErrorState(\(Self.loggable(underlying)), \(data.readableBytes) bytes)"
        case ByteToMessageDecoderError.leftoverDataWhenDone(let data):
            return "leftoverDataWhenDone(\(data.readableBytes) bytes)"
        default:
            return "\(error)"
        }
    }
}

extension SocketAddress {
    /// A listener's address as `--print-address` and systemd's status line give it:
    /// `ip:port` (IPv6 bracketed), or `unix:PATH` for a Unix socket handed over by systemd.
    public var listenerDescription: String {
        if case .unixDomainSocket = self { return "unix:\(self.pathname ?? "?")" }
        return self.gatehouseDescription
    }

    /// `ip:port`, with IPv6 bracketed.
    var gatehouseDescription: String {
        guard let ip = self.ipAddress else { return "\(self)" }
        return self.gatehouseDescription(ip: ip)
    }

    /// `ip:port` for an `ip` already worked out from this address.
    func gatehouseDescription(ip: String) -> String {
        guard ip != "-" else { return "\(self)" }
        let port = self.port ?? 0
        return ip.utf8.contains(UInt8(ascii: ":")) ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }
}
