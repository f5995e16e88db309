import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

/// One of Gatehouse's own responses: a short plain-text body saying why, with the framing and
/// `Connection` fields the client needs to read it and carry on (or not). A class: the prebuilt
/// ones are shared, and handing one out is a single retain rather than a copy of its head and
/// body (2% of the CPU of a 407).
final class OwnResponse: Sendable {
    let head: HTTPResponseHead
    let body: ByteBuffer
    /// Bytes the status line and fields take on the wire, for the access log.
    let headSize: Int
    /// Its `Content-Type`, for the access log.
    let contentType: String
    /// A prebuilt response as it goes on the wire (see `OwnResponseEncoder`); its first
    /// `headSize` bytes are the head alone, for HEAD requests. Its `Date` is a placeholder
    /// until it is written: the value's 29 bytes start at `dateOffset`.
    let encoded: ByteBuffer?
    let dateOffset: Int

    /// The `Content-Type` of the reason's plain-text message.
    static let plainText = "text/plain; charset=utf-8"

    /// A body other than the reason's plain-text message (a `TRACE` echo).
    struct Content {
        var type: String
        var text: String
    }

    init(
        reason: ReasonCode, challenges: [String], closing: Bool, version: HTTPVersion, retryAfter: Int?,
        prebuilt: Bool = false, content: Content? = nil, date: String = HTTPDate.placeholder
    ) {
        let message = content?.text ?? reason.message + "\n"
        var body = ByteBufferAllocator().buffer(capacity: message.utf8.count)
        body.writeString(message)
        var headers = HTTPHeaders()
        headers.reserveCapacity(5 + challenges.count)
        if reason.status == .proxyAuthenticationRequired {
            for challenge in challenges {
                headers.add(name: "Proxy-Authenticate", value: challenge)
            }
        }
        self.contentType = content?.type ?? Self.plainText
        headers.add(name: "Content-Type", value: self.contentType)
        headers.add(name: "Content-Length", value: String(body.readableBytes))
        if let seconds = retryAfter {
            headers.add(name: "Retry-After", value: String(seconds))
        }
        if closing {
            headers.add(name: "Connection", value: "close")
        } else if version == .http1_0 {
            headers.add(name: "Connection", value: "keep-alive")
        }
        // Last, so that its place in the stored bytes is found from the end of the head.
        headers.add(name: "Date", value: date)
        self.head = HTTPResponseHead(version: .http1_1, status: reason.status, headers: headers)
        self.body = body
        self.headSize = self.head.wireSize
        // The value, then CRLF ending the field and CRLF ending the head.
        self.dateOffset = self.headSize - 4 - HTTPDate.placeholder.utf8.count
        if prebuilt {
            var whole = Self.encode(self.head)
            whole.writeImmutableBuffer(body)
            self.encoded = whole
        } else {
            self.encoded = nil
        }
    }

    /// The stored bytes with the current time in their `Date` field.
    func encoded(at date: String) -> ByteBuffer? {
        guard var bytes = self.encoded else { return nil }
        bytes.setString(date, at: bytes.readerIndex + self.dateOffset)
        return bytes
    }

    /// The head as NIO's encoder writes it (`ResponseWireSizeTests` compares the two).
    private static func encode(_ head: HTTPResponseHead) -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: 256)
        buffer.writeString("HTTP/\(head.version.major).\(head.version.minor) \(head.status.code) \(head.status.reasonPhrase)\r\n")
        for (name, value) in head.headers {
            buffer.writeString(name)
            buffer.writeString(": ")
            buffer.writeString(value)
            buffer.writeString("\r\n")
        }
        buffer.writeString("\r\n")
        return buffer
    }

    /// The response for every reason as sent on a kept-alive HTTP/1.1 connection (the usual
    /// case, and every 407 of a client that has not yet sent credentials), built once per
    /// reload rather than once per answer.
    static func keepAliveResponses(challenges: [String]) -> [ReasonCode: OwnResponse] {
        var responses: [ReasonCode: OwnResponse] = [:]
        for reason in ReasonCode.allCases {
            responses[reason] = OwnResponse(
                reason: reason, challenges: challenges, closing: false, version: .http1_1,
                retryAfter: reason.defaultRetryAfter, prebuilt: true)
        }
        return responses
    }
}

extension ProxyConnectionHandler {
    // MARK: Gatehouse's own responses

    /// Sends Gatehouse's own response for `reason`, logs it, and moves the connection on.
    func answer(
        _ reason: ReasonCode, context: ChannelHandlerContext, close: Bool = false, retryAfter: Int? = nil,
        content: OwnResponse.Content? = nil
    ) {
        // Once the connection is closing, nothing more is said (a parse error at EOF after a
        // 408 or 505 must not produce a second response or log line).
        guard self.machine.state != .closed, context.channel.isActive else { return }
        // A request that could not be parsed may have more on its way.
        let unparsed = self.exchange == nil
        let exchange = self.exchange ?? self.unparsedExchange()
        // A refused CONNECT leaves an HTTP connection. The client's EOF, held for the tunnel,
        // stays held until a fresh decoder has taken the bytes that followed the CONNECT (see
        // `replaceDecoderAfterConnect`): let go here, it overtook them, and requests pipelined
        // behind the CONNECT by a client that then half-closed went unanswered.
        // A body still to come that is longer than what is drained after an early answer
        // (see `ProxyConfiguration.maxDrainBytes`) ends the connection: said up front with
        // `Connection: close`, not as a reset once the drain gives up.
        let undrainable = !unparsed && self.restOfBodyUndrainable(exchange)
        // A client waiting for 100-continue that gets a final answer instead may send its body
        // or not (RFC 9110 §10.1.1 allows both; curl does not), so where its next request would
        // start is unknown: close. (Read as the body, the next request got no answer.)
        let awaitingContinue = !unparsed && exchange.expectsContinue && !self.machine.requestComplete && exchange.bytesIn == 0
        let closing = close || !exchange.clientKeepAlive || self.clientInputClosed || undrainable || awaitingContinue
            || (reason.status == .proxyAuthenticationRequired && self.configuration.testing.closeAfterChallenge)
        let status = reason.status
        // During a graceful shutdown the connection ends after this answer; the head says so
        // itself. Otherwise NIO's pipeline handler adds `connection: close` below Gatehouse,
        // 19 bytes the access log and the byte counter did not see. (Whether the connection
        // closes, and how, stays with `closing` and the drain.)
        let saysClose = closing || self.observer.quiescing
        let response: OwnResponse
        if !saysClose && exchange.version == .http1_1 && retryAfter == nil && content == nil,
            let prebuilt = self.settings.keepAliveResponses[reason]
        {
            response = prebuilt
        } else {
            response = OwnResponse(
                reason: reason, challenges: self.settings.challenges, closing: saysClose, version: exchange.version,
                retryAfter: retryAfter ?? reason.defaultRetryAfter, content: content, date: HTTPDate.now())
        }
        let head = response.head
        exchange.status = Int(status.code)
        exchange.contentType = response.contentType
        exchange.bytesOut += response.headSize + (exchange.isHead ? 0 : response.body.readableBytes)
        self.shared.record(exchange.logEntry(client: self.clientAddress, status: Int(status.code), reason: reason), counts: self.counts)
        self.exchange = nil
        self.bufferedBody.removeAll()
        self.upstream?.close()
        self.upstream = nil
        self.tunnelUpstream?.close(promise: nil)
        self.tunnelUpstream = nil
        // A request still arriving means the client may still be sending when this answer
        // closes the connection; so may a refused CONNECT's client (its announced content, or
        // tunnel bytes sent before the answer).
        let clientMaySend = unparsed || !self.machine.requestComplete || exchange.isConnect
        // Decide the connection's next state before writing `.end`: writing it lets
        // HTTPServerPipelineHandler deliver the next pipelined request, re-entrantly.
        let action = self.machine.answered(close: closing)
        if action == .awaitNextRequest { self.awaitRequest(context: context) }
        if action == .none { self.awaitBodyRest(context: context) }
        // NIO's parser stops after a CONNECT head; a refused CONNECT leaves an HTTP connection
        // that needs a fresh decoder. The CONNECT's `.end` may still be on its way (possibly
        // re-entrantly, during the write below): swap only once it is through.
        let swapDecoderNow = action == .awaitNextRequest && exchange.isConnect
        if action == .none && exchange.isConnect { self.replaceDecoderOnRequestEnd = true }
        if let encoded = self.datedBytes(of: response) {
            let bytes = exchange.isHead ? encoded.getSlice(at: encoded.readerIndex, length: response.headSize) : encoded
            if let bytes { self.encoder.offerEncoded(bytes, fieldCount: head.headers.count) }
        }
        context.write(self.wrapOutboundOut(.head(head)), promise: nil)
        if !exchange.isHead {
            context.write(self.wrapOutboundOut(.body(.byteBuffer(response.body))), promise: nil)
        }
        if action == .close {
            let written = context.writeAndFlush(self.wrapOutboundOut(.end(nil)))
            self.closeAfterWrite(written, lingering: clientMaySend, context: context)
        } else {
            // No promise unless someone waits on it: each one is an allocation.
            context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
            if swapDecoderNow { self.replaceDecoderAfterConnect(context: context) }
        }
        self.resumeReadingIfPossible()
    }

    /// After an early answer, whether the rest of the request body is more than is drained to
    /// keep the connection (`maxDrainBytes`), or of unknown length (chunked). The answer then
    /// says `Connection: close`, and the connection closes in stages: a client that reads
    /// while it sends stops, and one that reads only once it has sent everything is taken the
    /// rest for a while (see `ProxyConfiguration.lingerTime`). Kept open, a chunked upload
    /// went on for up to 64 MiB and then met a reset (curl: "send failure").
    func restOfBodyUndrainable(_ exchange: Exchange) -> Bool {
        guard !self.machine.requestComplete else { return false }
        if let declared = exchange.declaredLength { return declared - exchange.bytesIn > self.configuration.maxDrainBytes }
        return exchange.bodyOfUnknownLength
    }

    /// A prebuilt answer's stored bytes with the time in their `Date`. The last one is kept
    /// for the rest of its second: a client that keeps getting the same answer (a 407 to each
    /// request, S7) gets the same bytes, without the clock's lock or a copy per answer.
    func datedBytes(of response: OwnResponse) -> ByteBuffer? {
        guard response.encoded != nil else { return nil }
        let second = Int(time(nil))
        if let last = self.lastDatedAnswer, last.second == second, last.response === response { return last.bytes }
        let bytes = response.encoded(at: HTTPDate.now())
        self.lastDatedAnswer = bytes.map { (second, response, $0) }
        return bytes
    }

    /// NIO's parser treats CONNECT as a protocol switch and stops parsing after its head
    /// (RFC 9112 §3.2.3). When Gatehouse refuses the CONNECT (407, 403, 502…) the connection
    /// is still HTTP, so a fresh decoder takes over; the old one hands it the bytes it held.
    ///
    /// Handing over the bytes parses them at once: if they hold another refused CONNECT,
    /// this is asked for again while the old decoder is still being removed. That request is
    /// carried out after the current replacement, not inside it: nested, the second replacement
    /// took the old decoder (looked up by type) for the current one and left two decoders in a
    /// row, and the next request head reached the second as a decoded part where it expected
    /// bytes, a fatal error (two refused CONNECTs in one packet, then any request: a crash
    /// without credentials).
    func replaceDecoderAfterConnect(context: ChannelHandlerContext) {
        if self.replacingDecoder {
            self.replaceDecoderAgain = true
            return
        }
        self.replacingDecoder = true
        defer { self.replacingDecoder = false }
        let pipeline = context.pipeline.syncOperations
        repeat {
            self.replaceDecoderAgain = false
            // The CONNECTs refused by now; one taken later is not.
            let refused = self.observer.connectHeadsTaken
            do {
                guard let current = self.requestDecoder else { return context.close(promise: nil) }
                let old = try pipeline.context(handler: current)
                let decoder = ByteToMessageHandler(
                    HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes, limitConfiguration: self.settings.decoderLimits))
                try pipeline.addHandler(decoder, position: .after(old.handler))
                self.requestDecoder = decoder
                // The old decoder hands over its bytes once its removal completes (later, if
                // it is still delivering the CONNECT's end): only then may the EOF follow.
                self.decoderRemovalsPending += 1
                let removed = context.eventLoop.makePromise(of: Void.self)
                removed.futureResult.assumeIsolated().whenComplete { _ in
                    self.decoderRemovalsPending -= 1
                    self.observer.settleConnects(upTo: refused)
                    if self.decoderRemovalsPending == 0 { self.observer.releaseEndOfInput() }
                }
                pipeline.removeHandler(context: old, promise: removed)
            } catch {
                return context.close(promise: nil)
            }
        } while self.replaceDecoderAgain && context.channel.isActive
    }

    /// The answer to a `TRACE` or `OPTIONS` whose `Max-Forwards` reached zero (RFC 9110
    /// §7.6.2). `TRACE` gets the request back as `message/http` (§9.3.8), without the fields
    /// that carry credentials (the final recipient "SHOULD exclude" them); `OPTIONS` gets the
    /// plain-text reason.
    static func maxForwardsContent(for head: HTTPRequestHead) -> OwnResponse.Content? {
        guard head.method == .TRACE else { return nil }
        var text = "TRACE \(RequestTarget.withoutUserinfo(head.uri)) HTTP/\(head.version.major).\(head.version.minor)\r\n"
        for (name, value) in head.headers {
            switch name.lowercased() {
            case "proxy-authorization", "authorization", "cookie": continue
            default: text += "\(name): \(value)\r\n"
            }
        }
        text += "\r\n"
        return OwnResponse.Content(type: "message/http", text: text)
    }

    func parserError(_ error: HTTPParserError, context: ChannelHandlerContext) {
        let reason: ReasonCode
        switch error {
        case .headerOverflow:
            // llhttp counts the request line against the header-size limit, so a long target
            // trips it before the target's own limit is checked (RFC 9110 §15.5.15: 414). So
            // 414 when the overflow came inside the request line (it has not ended, or is
            // longer than the limit by itself), or after a target over its own limit.
            let line = self.observer.firstLine
            let inLine = self.observer.lineStillOpen || line.length >= self.configuration.maxHeaderBytes
            let version = self.observer.lineStillOpen ? 0 : " HTTP/1.1\r".utf8.count
            let target = line.length - line.methodLength - 1 - version
            reason = inLine || target > self.configuration.maxURILength ? .uriTooLong : .headerTooLarge
        case .invalidMethod: reason = self.observer.firstLine.isRequestLine ? .unknownMethod : .badRequest
        case .invalidVersion: reason = self.observer.firstLine.endsInBareLF ? .badRequest : .versionNotSupported
        default: reason = .badRequest
        }
        self.logger.debug("malformed request", metadata: ["error": "\(error)"])
        if self.plainHTTPOnTLSListener, error != .invalidEOFState {
            // Whatever it is, it was not TLS: say what to change rather than what was wrong.
            return self.answer(.tlsRequired, context: context, close: true)
        }
        if error == .invalidEOFState, self.exchange == nil, self.machine.isIdle {
            // The client closed its side in the middle of its request head: an abandoned
            // request rather than a malformed one (it was logged 400 `bad_request`). Logged as
            // the client closing (499), as a half-close in the middle of an upload is; there
            // is no request to answer.
            self.exchange = self.unparsedExchange()
            self.recordClientClosed()
            self.machine.connectionClosed()
            context.close(promise: nil)
            return
        }
        if error == .invalidEOFState, let exchange = self.exchange, !exchange.isConnect {
            // The client closed its side in the middle of its request body: not a malformed
            // request but an abandoned one. Logged as the client closing, as when it goes
            // away entirely; the origin, if any, gets a truncated request.
            self.recordClientClosed()
            self.machine.connectionClosed()
            self.upstream?.close()
            self.upstream = nil
            context.close(promise: nil)
            return
        }
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

    /// The log's exchange for a request whose head never parsed, with its method and target
    /// when its first line was a request line (see `RequestStartObserver.unparsedRequestLine`).
    func unparsedExchange() -> Exchange {
        let exchange = Exchange(unparsedAt: self.headStarted)
        if let line = self.observer.unparsedRequestLine {
            exchange.method = line.method
            exchange.target = line.target
        }
        return exchange
    }

    func sendRawAndClose(status: String, reason: ReasonCode, context: ChannelHandlerContext) {
        let message = reason.message + "\n"
        var text = "HTTP/1.1 \(status)\r\nContent-Type: \(OwnResponse.plainText)\r\n"
        if let retry = reason.defaultRetryAfter { text += "Retry-After: \(retry)\r\n" }
        // Like every answer of the proxy's own, with `Date` (RFC 9110 §6.6.1).
        text += "Content-Length: \(message.utf8.count)\r\nConnection: close\r\nDate: \(HTTPDate.now())\r\n\r\n" + message
        var buffer = context.channel.allocator.buffer(capacity: text.utf8.count)
        buffer.writeString(text)
        let exchange = self.unparsedExchange()
        exchange.bytesOut = text.utf8.count
        exchange.contentType = OwnResponse.plainText
        self.shared.record(exchange.logEntry(client: self.clientAddress, status: Int(reason.status.code), reason: reason), counts: self.counts)
        self.machine.connectionClosed()
        self.cancelTimer()
        if let written = self.observer.writeRaw(buffer) {
            // A client cut off by the header timeout may still be trickling its head; one over
            // a connection limit is closed at once (lingering would hold the slot it is denied).
            self.closeAfterWrite(written, lingering: reason == .headerTimeout, context: context)
        } else {
            context.close(promise: nil)
        }
    }

    /// The upload passed `maxBodyBytes`: 413 if nothing was answered yet, else just close.
    func bodyTooLarge(context: ChannelHandlerContext) {
        if self.machine.responseStarted || self.machine.state == .closed {
            // Too late for a 413 (an origin answered before reading the upload): the connection
            // ends mid-response. Logged with the status sent and why, not as `client_closed`.
            if self.machine.responseStarted, let exchange = self.exchange {
                self.exchange = nil
                self.shared.record(
                    exchange.logEntry(client: self.clientAddress, status: exchange.status, reason: .bodyTooLarge), counts: self.counts)
            }
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
}
