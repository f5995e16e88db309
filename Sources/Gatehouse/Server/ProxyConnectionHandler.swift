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
    var logger: Logger
    var machine = ProxyConnectionStateMachine()
    /// The exchange in progress, if any.
    var exchange: Exchange?
    /// Request body parts that arrived before the origin connection was ready.
    var bufferedBody: [ByteBuffer] = []
    var bufferedEnd = false
    /// A `read()` the handler held back, to be issued once reading may resume.
    var readPending = false
    var upstream: UpstreamHandler?
    var tunnelUpstream: Channel?
    /// Raw bytes that arrived after a `CONNECT` head, kept for the tunnel.
    var tunnelPendingReads: [NIOAny] = []
    var clientAddress = "-"
    var context: ChannelHandlerContext?
    let observer: RequestStartObserver
    var timer: Scheduled<Void>?
    /// The client half-closed its side; answer what is in flight, then close.
    var clientInputClosed = false
    /// When the connection's current head started to arrive (for parser-error log lines).
    var headStarted = NIODeadline.now()
    /// The response in flight ends the connection (client asked, or close-delimited body).
    var closeAfterResponse = false
    /// A refused CONNECT's `.end` is still due; swap in a fresh HTTP decoder once it arrives.
    var replaceDecoderOnRequestEnd = false
    /// Set when the connection is over a connection limit: it gets a 503 and is closed.
    var rejection: ReasonCode?
    /// The request in flight went out on a pooled origin connection and can be replayed
    /// once on a fresh one if that connection turns out to be dead.
    var replayableForward: (head: HTTPRequestHead, uri: AbsoluteURI)?

    /// The settings this connection runs under, fixed when it opened.
    let settings: ProxyContext.Snapshot
    var configuration: ProxyConfiguration { self.settings.configuration }

    init(shared: ProxyContext, observer: RequestStartObserver) {
        self.shared = shared
        self.settings = shared.snapshot
        self.logger = shared.logger
        self.observer = observer
    }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if let remote = context.channel.remoteAddress {
            self.clientAddress = remote.gatehouseDescription
        }
        self.logger[metadataKey: "client"] = "\(self.clientAddress)"
        self.observer.connection = self
        if context.channel.isActive { self.connectionStarted(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        if let remote = context.channel.remoteAddress {
            self.clientAddress = remote.gatehouseDescription
        }
        self.connectionStarted(context: context)
        context.fireChannelActive()
    }

    /// A connection over the global or per-client limit is answered 503 with `Retry-After`
    /// straight away, logged, and closed: it costs one write, not a slot.
    private func connectionStarted(context: ChannelHandlerContext) {
        if let reason = self.rejection {
            self.rejection = nil
            self.sendRawAndClose(status: "503 Service Unavailable", reason: reason, context: context)
            return
        }
        self.awaitRequest(context: context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.timer = nil
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.timer = nil
        let wasForwarding: Bool
        if case .forwarding = self.machine.state { wasForwarding = true } else { wasForwarding = false }
        self.machine.connectionClosed()
        if wasForwarding, let exchange = self.exchange {
            // The client went away mid-exchange: log what happened and drop the origin connection.
            self.exchange = nil
            self.shared.record(
                exchange.logEntry(client: self.clientAddress, status: exchange.status == 0 ? 499 : exchange.status,
                                  reason: .clientClosed))
        }
        self.upstream?.close()
        self.upstream = nil
        self.tunnelUpstream?.close(promise: nil)
        self.tunnelUpstream = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .tunnelling = self.machine.state {
            // After CONNECT the HTTP decoder forwards the bytes that followed the head verbatim.
            self.tunnelPendingReads.append(data)
            return
        }
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.requestHead(head, context: context)
        case .body(let buffer):
            self.exchange?.bytesIn += buffer.readableBytes
            if let limit = self.configuration.maxBodyBytes, let received = self.exchange?.bytesIn, received > limit {
                return self.bodyTooLarge(context: context)
            }
            switch self.machine.requestBodyReceived() {
            case .bufferBody: self.bufferedBody.append(buffer)
            case .forwardBody: self.upstream?.send(.body(.byteBuffer(buffer)))
            default: break
            }
        case .end:
            switch self.machine.requestEndReceived() {
            case .bufferBody:
                self.bufferedEnd = true
                if let exchange = self.exchange, exchange.isConnect { self.connectRequestCompleted(context: context) }
            case .forwardEnd:
                self.upstream?.send(.end(nil), flush: true)
                self.upstream?.requestFinished()
            case .awaitNextRequest:
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

    func channelReadComplete(context: ChannelHandlerContext) {
        self.upstream?.flush()
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        if self.machine.clientReadsAllowed && (self.upstream?.isWritable ?? true) {
            context.read()
        } else {
            self.readPending = true
        }
    }

    /// Issues a read that was held back, once the reason for holding it has gone.
    func resumeReadingIfPossible() {
        guard self.readPending, let context = self.context else { return }
        if self.machine.clientReadsAllowed && (self.upstream?.isWritable ?? true) {
            self.readPending = false
            context.read()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        // Backpressure from the client to the origin: stop reading the origin while the
        // client's socket buffer is full.
        self.upstream?.clientWritabilityChanged(context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            self.clientInputClosed = true
            if self.machine.isIdle { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let parserError = error as? HTTPParserError {
            self.parserError(parserError, context: context)
            return
        }
        self.logger.debug("client connection error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    // MARK: Requests

    private func requestHead(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.timer = nil
        self.observer.awaitingRequest = false
        guard self.machine.requestHeadReceived() else {
            context.close(promise: nil)
            return
        }
        self.bufferedBody.removeAll(keepingCapacity: true)
        self.bufferedEnd = false
        let isConnect = head.method == .CONNECT

        // Targets are parsed before authentication, so that a browser pointed at the proxy
        // as if it were a web server learns what it is talking to.
        var exchange = Exchange(head: head, target: Self.logTarget(head.uri))
        if head.version.major != 1 {
            self.exchange = exchange
            return self.answer(.versionNotSupported, context: context, close: true)
        }
        if head.uri.utf8.count > self.configuration.maxURILength {
            exchange.target = String(exchange.target.prefix(64)) + "…"
            self.exchange = exchange
            return self.answer(.uriTooLong, context: context, close: true)
        }
        // Rules the parser leaves to the application (RFC 9112 §3.2, §6.1, §6.3).
        if head.headers["host"].count > 1 {
            self.exchange = exchange
            return self.answer(.badRequest, context: context, close: true)
        }
        let codings = head.headers["transfer-encoding"]
        if !codings.isEmpty && (codings.count != 1 || codings[0].lowercased() != "chunked" || head.version == .http1_0) {
            // Only a lone `chunked` is framing the proxy can re-encode faithfully; anything
            // else (`gzip, chunked`, a chunked HTTP/1.0 request) is a smuggling risk.
            self.exchange = exchange
            return self.answer(.badTransferEncoding, context: context, close: true)
        }
        if let limit = self.configuration.maxBodyBytes,
            let length = head.headers["content-length"].first.flatMap({ Int($0) }), length > limit
        {
            self.exchange = exchange
            return self.answer(.bodyTooLarge, context: context, close: true)
        }
        if Self.carriesVia(head.headers, pseudonym: self.configuration.viaPseudonym) {
            // Our own Via on an incoming request: it came through this proxy already.
            self.exchange = exchange
            return self.answer(.loopDetected, context: context, close: true)
        }
        let destination: Destination
        if isConnect {
            switch RequestTarget.parseConnect(head.uri) {
            case .success(let authority):
                exchange.target = authority.description
                destination = .tunnel(authority)
            case .failure:
                self.exchange = exchange
                return self.answer(.badTarget, context: context)
            }
        } else {
            switch RequestTarget.parseAbsolute(head.uri) {
            case .success(let uri):
                exchange.target = uri.logDescription
                destination = .forward(uri, head)
            case .failure(.originForm):
                self.exchange = exchange
                return self.answer(.originForm, context: context)
            case .failure(.httpsAbsoluteForm):
                destination = .refuse(.httpsAbsoluteForm)
            case .failure(.invalid):
                self.exchange = exchange
                return self.answer(.badTarget, context: context)
            }
        }
        self.exchange = exchange

        if self.configuration.testing.authenticateConnectOnly && !isConnect {
            return self.authenticationFinished(.authenticated(user: "-"), destination: destination, context: context)
        }
        let clientIP = self.context?.channel.remoteAddress?.ipAddress ?? self.clientAddress
        switch self.shared.authenticator.authenticate(head.headers["proxy-authorization"], client: clientIP, on: context.eventLoop) {
        case .immediate(let outcome):
            self.authenticationFinished(outcome, destination: destination, context: context)
        case .pending(let future):
            future.assumeIsolated().whenComplete { result in
                guard self.context != nil, case .authenticating = self.machine.state else { return }
                switch result {
                case .success(let outcome):
                    self.authenticationFinished(outcome, destination: destination, context: context)
                case .failure:
                    // The hashing pool is shutting down: treat as a failed verification.
                    self.authenticationFinished(.rejected(.authInvalid, user: nil), destination: destination, context: context)
                }
            }
        }
    }

    enum Destination {
        case forward(AbsoluteURI, HTTPRequestHead)
        case tunnel(Authority)
        case refuse(ReasonCode)
    }

    private func authenticationFinished(_ outcome: Authenticator.Outcome, destination: Destination, context: ChannelHandlerContext) {
        switch outcome {
        case .refused(let reason, let retryAfter, let user):
            self.exchange?.user = user
            let close = (self.exchange?.expectsContinue ?? false) && !self.bufferedEnd
            self.answer(reason, context: context, close: close, retryAfter: retryAfter)
        case .rejected(let reason, let user):
            self.shared.metrics.authenticated(false)
            self.exchange?.user = user
            // Without the body, a client waiting for 100-continue would never send it, and
            // the connection could not find the next message boundary: close instead.
            let close = (self.exchange?.expectsContinue ?? false) && !self.bufferedEnd
            self.answer(reason, context: context, close: close)
        case .authenticated(let user):
            if user != "-" { self.shared.metrics.authenticated(true) }
            self.exchange?.user = user == "-" ? nil : user
            self.machine.authenticated()
            switch destination {
            case .refuse(let reason):
                self.answer(reason, context: context)
            case .tunnel(let authority):
                guard self.configuration.connectPorts.contains(authority.port ?? 0) else {
                    return self.answer(.connectPortDenied, context: context)
                }
                self.openTunnel(to: authority, context: context)
            case .forward(let uri, let head):
                self.forward(head, to: uri, context: context)
            }
            self.resumeReadingIfPossible()
        }
    }

    /// The `CONNECT` request's `.end` arrived; the tunnel opens once the origin is connected too.
    private func connectRequestCompleted(context: ChannelHandlerContext) {
        if let channel = self.tunnelUpstream, case .forwarding = self.machine.state {
            self.startTunnel(with: channel, context: context)
        }
    }

    // MARK: Gatehouse's own responses

    /// Sends Gatehouse's own response for `reason`, logs it, and moves the connection on.
    func answer(_ reason: ReasonCode, context: ChannelHandlerContext, close: Bool = false, retryAfter: Int? = nil) {
        // Once the connection is closing, nothing more is said (a parse error at EOF after a
        // 408 or 505 must not produce a second response or log line).
        guard self.machine.state != .closed, context.channel.isActive else { return }
        var exchange = self.exchange ?? Exchange(unparsedAt: self.headStarted)
        let closing = close || !exchange.clientKeepAlive || self.clientInputClosed
            || (reason.status == .proxyAuthenticationRequired && self.configuration.testing.closeAfterChallenge)
        let status = reason.status
        var body = context.channel.allocator.buffer(capacity: reason.message.utf8.count + 1)
        body.writeString(reason.message)
        body.writeString("\n")
        var headers = HTTPHeaders()
        headers.reserveCapacity(5)
        if status == .proxyAuthenticationRequired {
            for challenge in self.configuration.testing.extraChallenges {
                headers.add(name: "Proxy-Authenticate", value: challenge)
            }
            headers.add(name: "Proxy-Authenticate", value: self.settings.challenge)
        }
        headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
        headers.add(name: "Content-Length", value: String(body.readableBytes))
        if let seconds = retryAfter ?? reason.defaultRetryAfter {
            headers.add(name: "Retry-After", value: String(seconds))
        }
        if closing {
            headers.add(name: "Connection", value: "close")
        } else if exchange.version == .http1_0 {
            headers.add(name: "Connection", value: "keep-alive")
        }
        let head = HTTPResponseHead(version: .http1_1, status: status, headers: headers)
        exchange.status = Int(status.code)
        exchange.bytesOut += head.wireSize + (exchange.isHead ? 0 : body.readableBytes)
        self.shared.record(exchange.logEntry(client: self.clientAddress, status: Int(status.code), reason: reason))
        self.exchange = nil
        self.bufferedBody.removeAll()
        self.upstream?.close()
        self.upstream = nil
        self.tunnelUpstream?.close(promise: nil)
        self.tunnelUpstream = nil
        // Decide the connection's next state before writing `.end`: writing it lets
        // HTTPServerPipelineHandler deliver the next pipelined request, re-entrantly.
        let action = self.machine.answered(close: closing)
        if action == .awaitNextRequest { self.awaitRequest(context: context) }
        // NIO's parser stops after a CONNECT head; a refused CONNECT leaves an HTTP connection
        // that needs a fresh decoder. The CONNECT's `.end` may still be on its way (possibly
        // re-entrantly, during the write below): swap only once it is through.
        let swapDecoderNow = action == .awaitNextRequest && exchange.isConnect
        if action == .none && exchange.isConnect { self.replaceDecoderOnRequestEnd = true }
        context.write(self.wrapOutboundOut(.head(head)), promise: nil)
        if !exchange.isHead {
            context.write(self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        }
        let written = context.writeAndFlush(self.wrapOutboundOut(.end(nil)))
        if action == .close {
            written.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        } else if swapDecoderNow {
            self.replaceDecoderAfterConnect(context: context)
        }
        self.resumeReadingIfPossible()
    }

    /// NIO's parser treats CONNECT as a protocol switch and stops parsing after its head
    /// (RFC 9112 §3.2.3). When Gatehouse refuses the CONNECT (407, 403, 502…) the connection
    /// is still HTTP, so a fresh decoder takes over; the old one hands it the bytes it held.
    private func replaceDecoderAfterConnect(context: ChannelHandlerContext) {
        let pipeline = context.pipeline.syncOperations
        do {
            let old = try pipeline.context(handlerType: ByteToMessageHandler<HTTPRequestDecoder>.self)
            let decoder = ByteToMessageHandler(
                HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes, limitConfiguration: self.settings.decoderLimits))
            try pipeline.addHandler(decoder, position: .after(old.handler))
            pipeline.removeHandler(context: old, promise: nil)
        } catch {
            context.close(promise: nil)
        }
    }

    private func parserError(_ error: HTTPParserError, context: ChannelHandlerContext) {
        let reason: ReasonCode
        switch error {
        case .headerOverflow: reason = .headerTooLarge
        case .invalidVersion: reason = .versionNotSupported
        default: reason = .badRequest
        }
        self.logger.debug("malformed request", metadata: ["error": "\(error)"])
        if self.machine.responseStarted || self.exchange?.isConnect == true {
            context.close(promise: nil)
            return
        }
        if case .forwarding = self.machine.state {
            // A bad chunk in an upload that is already streaming: the origin gets a
            // truncated request (it never sees an `.end`), and the client gets a 400.
            self.upstream?.close()
            self.upstream = nil
        }
        self.answer(reason, context: context, close: true)
    }

    // MARK: Timers

    /// Waits for the next request: idle timeout until its first byte arrives.
    func awaitRequest(context: ChannelHandlerContext) {
        if self.clientInputClosed {
            context.close(promise: nil)
            return
        }
        self.observer.awaitingRequest = true
        self.headStarted = .now()
        self.timer?.cancel()
        self.timer = context.eventLoop.assumeIsolated().scheduleTask(in: self.configuration.idleTimeout) {
            // A keep-alive connection that stayed idle: close it quietly; no response is due.
            self.timer = nil
            self.context?.close(promise: nil)
        }
    }

    /// The first byte of a request head arrived: the header timeout starts now.
    func requestBytesStarted() {
        guard let context = self.context, self.machine.isIdle else { return }
        self.headStarted = .now()
        self.timer?.cancel()
        self.timer = context.eventLoop.assumeIsolated().scheduleTask(in: self.configuration.headerTimeout) {
            self.timer = nil
            self.headerTimedOut()
        }
    }

    /// RFC 9110 §15.5.9: 408 tells the client the server closed an unfinished request.
    private func headerTimedOut() {
        guard let context = self.context, self.machine.isIdle else { return }
        self.sendRawAndClose(status: "408 Request Timeout", reason: .headerTimeout, context: context)
    }

    /// Writes a complete response below the HTTP handlers (there is no request they know of
    /// for it to answer), logs it, and closes.
    func sendRawAndClose(status: String, reason: ReasonCode, context: ChannelHandlerContext) {
        let message = reason.message + "\n"
        var text = "HTTP/1.1 \(status)\r\nContent-Type: text/plain; charset=utf-8\r\n"
        if let retry = reason.defaultRetryAfter { text += "Retry-After: \(retry)\r\n" }
        text += "Content-Length: \(message.utf8.count)\r\nConnection: close\r\n\r\n" + message
        var buffer = context.channel.allocator.buffer(capacity: text.utf8.count)
        buffer.writeString(text)
        var exchange = Exchange(unparsedAt: self.headStarted)
        exchange.bytesOut = text.utf8.count
        self.shared.record(exchange.logEntry(client: self.clientAddress, status: Int(reason.status.code), reason: reason))
        self.machine.connectionClosed()
        self.timer?.cancel()
        self.timer = nil
        if let written = self.observer.writeRaw(buffer) {
            written.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        } else {
            context.close(promise: nil)
        }
    }

    /// The upload passed `maxBodyBytes`: 413 if nothing was answered yet, else just close.
    private func bodyTooLarge(context: ChannelHandlerContext) {
        if self.machine.responseStarted || self.machine.state == .closed {
            self.upstream?.close()
            self.upstream = nil
            self.machine.connectionClosed()
            context.close(promise: nil)
            return
        }
        if case .forwarding = self.machine.state {
            // The origin has a truncated upload and no `.end`: drop that connection.
            self.upstream?.close()
            self.upstream = nil
        }
        self.answer(.bodyTooLarge, context: context, close: true)
    }

    /// Whether a `Via` field names this proxy's pseudonym (RFC 9110 §7.6.3: received-by).
    static func carriesVia(_ headers: HTTPHeaders, pseudonym: String) -> Bool {
        headers["via"].contains { value in
            value.split(separator: ",").contains { entry in
                let parts = entry.trimmingSpaces().split(separator: " ", omittingEmptySubsequences: true)
                return parts.count >= 2 && parts[1] == Substring(pseudonym)
            }
        }
    }

    // MARK: Helpers

    /// The request target as logged before it is parsed: never with userinfo.
    static func logTarget(_ uri: String) -> String {
        guard let schemeEnd = uri.firstRange(of: "://") else { return uri }
        let rest = uri[schemeEnd.upperBound...]
        let authorityEnd = rest.firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" }) ?? rest.endIndex
        guard let at = rest[..<authorityEnd].lastIndex(of: "@") else { return uri }
        return String(uri[..<schemeEnd.upperBound]) + String(rest[rest.index(after: at)...])
    }
}

extension SocketAddress {
    /// `ip:port`, with IPv6 bracketed.
    var gatehouseDescription: String {
        guard let ip = self.ipAddress else { return "\(self)" }
        let port = self.port ?? 0
        return ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }
}
