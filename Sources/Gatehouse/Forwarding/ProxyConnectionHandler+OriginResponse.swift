import NIOCore
import NIOHTTP1
import NIOPosix

/// The origin's side of a forwarded exchange: its response head (framing decided for the
/// client, fields filtered, `Via` and `Date`), body and end, and what happens when the origin
/// fails or goes silent. The request's side is in `ProxyConnectionHandler+Forwarding.swift`.
extension ProxyConnectionHandler {
    func upstreamResponseHead(_ head: HTTPResponseHead) {
        guard let context = self.context, let exchange = self.exchange else { return }
        // A status code is 100–599 (RFC 9110 §15: other values are invalid). NIO's parser also
        // accepts 000–099, which would go out as a malformed status line, and 600–999.
        if head.status.code < 100 || head.status.code > 599 { return self.refuseOriginResponse() }
        if head.status.code / 100 == 1 {
            // The origin got the request and answered: should it close now, that is not a
            // stale pooled connection, and the request is not sent again (the client would get
            // the 1xx twice, and the origin the request).
            self.exchange?.replay = nil
            // 1xx: forward to HTTP/1.1 clients (RFC 9110 §15.2), e.g. 100 Continue for an
            // upload with `Expect: 100-continue`. 101 is impossible: Upgrade was stripped.
            if head.status == .switchingProtocols { return self.refuseOriginResponse() }
            if head.headers.contains(where: { $0.value.containsReplacementCharacter }) { return self.refuseOriginResponse() }
            if exchange.version == .http1_1 {
                var informational = HTTPResponseHead(version: .http1_1, status: head.status, headers: head.headers)
                informational.headers.removeHopByHopFields()
                // A 1xx has no content: framing fields on one are invalid (RFC 9110 §8.6,
                // RFC 9112 §6.1) and would confuse the client's parser.
                informational.headers.remove(name: "content-length")
                informational.headers.remove(name: "transfer-encoding")
                // Every forwarded message carries Via (RFC 9110 §7.6.3), interim ones too.
                informational.headers.add(name: "Via", value: Self.viaValue(head.version, pseudonym: self.configuration.viaPseudonym))
                exchange.bytesOut += informational.wireSize
                self.exchange = exchange
                context.writeAndFlush(self.wrapOutboundOut(.head(informational)), promise: nil)
            }
            return
        }

        // Gatehouse strips Proxy-Authenticate (it is for the next hop alone, RFC 9110 §11.7.1),
        // and a 407 without it is invalid and would read as Gatehouse refusing the client's
        // own credentials: 502 instead.
        if head.status == .proxyAuthenticationRequired { return self.refuseOriginResponse(reason: .upstreamProxyAuth) }

        // Framing towards the client is decided here, not by the encoder, because only the
        // proxy knows the request method (HEAD) and the client's HTTP version.
        let code = head.status.code
        let bodyless = exchange.isHead || code == 204 || code == 304
        var closeAfter = !exchange.clientKeepAlive || self.clientInputClosed
        // An early answer (an origin's 413 to an upload) with more of the body still to come
        // than is drained afterwards, or an unknown amount, ends the connection, said up front
        // (see `restOfBodyUndrainable`). So does one from an origin that closes: it reads no
        // more of the upload, and the client should stop sending it (direct, curl stopped after
        // about 1 MB; through the proxy it sent it all, to be dropped).
        if self.restOfBodyUndrainable(exchange) || (!self.machine.requestComplete && !head.isKeepAlive) {
            closeAfter = true
        }
        var fields: [(String, String)] = []
        fields.reserveCapacity(head.headers.count + 3)
        var hasLength = false
        var hasCoding = false
        var contentType: String?
        var replacedBytes = false
        var dates = 0
        head.headers.appendEndToEndFields(to: &fields) { kind, value in
            switch kind {
            case .contentLength: hasLength = true
            case .transferEncoding: hasCoding = true
            case .contentType: if contentType == nil { contentType = value }
            case .date:
                // One, and not empty: the origin's stands. Two, or an empty one, are replaced
                // by the proxy's below (a recipient sees one valid Date, RFC 9110 §6.6.1).
                dates += 1
                if value.isEmpty { dates += 1 }
            default: break
            }
            // A value with bytes that are not UTF-8 arrived altered (see ReasonCode.badFieldBytes).
            if value.containsReplacementCharacter { replacedBytes = true }
            return true
        }
        if replacedBytes { return self.refuseOriginResponse() }
        exchange.contentType = contentType
        if code == 204 {
            if hasLength || hasCoding { fields.removeAll { Self.isFraming($0.0) } }
        } else if bodyless {
            if hasCoding { fields.removeAll { FieldKind($0.0) == .transferEncoding } }
        } else if hasLength && !hasCoding {
            // Content-Length framing passes through unchanged.
        } else {
            // A transfer coding besides chunked (gzip, say) is part of the body's meaning, and
            // NIO's encoder can only chunk a body whose Transfer-Encoding is exactly `chunked`:
            // such a response cannot be passed on intact, so it is refused, as Squid does.
            if hasCoding && !Self.isChunkedOnly(head.headers) { return self.refuseOriginResponse() }
            if hasLength || hasCoding { fields.removeAll { Self.isFraming($0.0) } }
            if exchange.version == .http1_1 {
                fields.append(("Transfer-Encoding", "chunked"))
                exchange.chunkedResponse = true
            } else {
                // An HTTP/1.0 client cannot read chunked: the body ends when we close, and
                // the trailer fields a `Trailer` field announces cannot follow it.
                closeAfter = true
                exchange.closeDelimitedResponse = true
                fields.removeAll { $0.0.lowercased() == "trailer" }
            }
        }
        fields.append(("Via", Self.viaValue(head.version, pseudonym: self.configuration.viaPseudonym)))
        // RFC 9110 §6.6.1: a recipient with a clock MUST add `Date` to a response it forwards
        // without one.
        if dates != 1 {
            if dates > 1 { fields.removeAll { FieldKind($0.0) == .date } }
            fields.append(("Date", HTTPDate.now()))
        }
        // During a graceful shutdown too (see `answer`): else NIO's pipeline handler adds it,
        // unseen by the access log.
        if closeAfter || self.observer.quiescing {
            fields.append(("Connection", "close"))
        } else if exchange.version == .http1_0 {
            fields.append(("Connection", "keep-alive"))
        }
        let headers = HTTPHeaders(fields)
        let response = HTTPResponseHead(version: .http1_1, status: head.status, headers: headers)
        exchange.status = Int(code)
        exchange.bytesOut += response.wireSize
        self.exchange = exchange
        self.closeAfterResponse = closeAfter
        self.machine.responseHeadForwarded()
        context.write(self.wrapOutboundOut(.head(response)), promise: nil)
        self.clientFlushPending = true
    }

    /// An origin response head Gatehouse cannot pass on: its connection is dropped and the
    /// client gets 502 `upstream_bad_response` (nothing of the response was written yet).
    private func refuseOriginResponse(reason: ReasonCode = .upstreamBadResponse) {
        self.upstream?.close()
        self.upstream = nil
        self.upstreamFailed(reason: reason)
    }

    /// The response's Transfer-Encoding is `chunked` alone, the only transfer coding Gatehouse
    /// passes on (NIO's decoder removes it; the body is chunked anew or sent close-delimited).
    static func isChunkedOnly(_ headers: HTTPHeaders) -> Bool {
        let codings = headers[canonicalForm: "transfer-encoding"]
        return codings.count == 1 && codings[0].lowercased() == "chunked"
    }

    private static func isFraming(_ name: String) -> Bool {
        let kind = FieldKind(name)
        return kind == .contentLength || kind == .transferEncoding
    }

    func upstreamResponseBody(_ buffer: ByteBuffer) {
        guard let context = self.context, self.machine.responseStarted else { return }
        guard let exchange = self.exchange, !exchange.isHead else { return }
        exchange.bytesOut += buffer.readableBytes
        if exchange.chunkedResponse { exchange.bytesOut += ChunkFraming.overhead(ofPart: buffer.readableBytes) }
        context.write(self.wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        self.clientFlushPending = true
    }

    func upstreamReadComplete() {
        // Only if something was written since the last flush: an empty flush still walks the
        // whole outbound pipeline.
        if self.clientFlushPending {
            self.clientFlushPending = false
            self.context?.flush()
        }
    }

    /// The origin's response is complete; `trailers` are its trailer fields, already filtered
    /// (NIO's encoder writes them only if the client's response is chunked).
    func upstreamResponseEnd(trailers: HTTPHeaders?) {
        guard let context = self.context, let exchange = self.exchange, self.machine.responseStarted else { return }
        self.upstream = nil
        self.exchange = nil
        if exchange.chunkedResponse { exchange.bytesOut += ChunkFraming.endSize(trailers: trailers) }
        self.shared.record(exchange.logEntry(client: self.clientAddress, status: exchange.status, reason: .forwarded), counts: self.counts)
        // An origin that answered before the upload ended (its 413, say) and closes: the
        // client may still be sending.
        let clientMaySend = !self.machine.requestComplete
        // Decide first: writing `.end` may deliver the next pipelined request re-entrantly.
        let action = self.machine.responseEnded(keepAlive: !self.closeAfterResponse)
        if action == .awaitNextRequest { self.awaitRequest(context: context) }
        if action == .none { self.awaitBodyRest(context: context) }
        self.clientFlushPending = false
        if action == .close {
            let written = context.writeAndFlush(self.wrapOutboundOut(.end(trailers)))
            self.closeAfterWrite(written, lingering: clientMaySend, context: context)
        } else {
            context.writeAndFlush(self.wrapOutboundOut(.end(trailers)), promise: nil)
        }
        self.resumeReadingIfPossible()
    }

    /// The client stopped sending its upload (see UpstreamHandler): 408 if nothing was
    /// answered yet, else close (the origin's response cannot be completed honestly either).
    func uploadStalled() {
        guard let context = self.context else { return }
        self.upstream = nil
        if self.machine.responseStarted {
            self.endExchangeAndClose(reason: .bodyTimeout, context: context)
        } else {
            self.answer(.bodyTimeout, context: context, close: true)
        }
    }

    /// Whether the client's channel takes more writes now (its outbound buffer is below the
    /// high-water mark).
    var isClientWritable: Bool { self.context?.channel.isWritable ?? true }

    /// Bytes of its responses the client's TCP has acknowledged so far (see ``PeerProgress``).
    func bytesAcknowledgedByClient() -> UInt64? {
        self.context.flatMap { PeerProgress.bytesAcknowledged(by: $0.channel) }
    }

    /// The client took none of the response for its idle timeout (see UpstreamHandler): log
    /// the exchange as `client_stalled` and close; the response cannot be completed.
    func responseStalled() {
        guard let context = self.context else { return }
        self.upstream = nil
        self.endExchangeAndClose(reason: .clientStalled, context: context)
    }

    /// Logs the exchange in progress (with the status already sent) and closes the connection.
    /// What was written is flushed first: responses are flushed once per origin read, so a
    /// fault in the same read as the head (a bad chunk size) would otherwise leave the client
    /// an empty reply instead of a response it can see was cut short.
    ///
    /// With `reset`, the connection ends in a TCP reset (`SO_LINGER` 0) instead: a response
    /// whose end is the close itself would otherwise look complete to the client (RFC 9112
    /// §8: an incomplete close-delimited message can only be told by how the connection
    /// ends). The reset may discard the tail still queued for the client; the body was cut
    /// short anyway.
    private func endExchangeAndClose(reason: ReasonCode, context: ChannelHandlerContext, reset: Bool = false) {
        if let exchange = self.exchange {
            self.exchange = nil
            self.shared.record(
                exchange.logEntry(client: self.clientAddress, status: exchange.status, reason: reason), counts: self.counts)
        }
        self.machine.connectionClosed()
        context.flush()
        if reset, let provider = context.channel as? SocketOptionProvider {
            _ = provider.setSoLinger(linger(l_onoff: 1, l_linger: 0))
        }
        context.close(promise: nil)
    }

    /// The origin connection failed: before the response head, answer 502/504; after it, the
    /// client must not mistake a truncated body for a complete one, so close the connection.
    /// `cutShort`: the origin's connection ended in the middle of a message.
    func upstreamFailed(reason: ReasonCode, cutShort: Bool = false) {
        guard let context = self.context else { return }
        self.upstream = nil
        if let replay = self.exchange?.replay, reason == .upstreamClosed, self.machine.retryingUpstream() {
            // The pooled connection was already dead (the origin closed it while idle). Not
            // after a bad response: the origin received the request and answered it.
            self.exchange?.replay = nil
            self.logger.debug("reused origin connection failed; retrying on a new one", metadata: ["reason": "\(reason.rawValue)"])
            return self.connectUpstream(replay.head, to: replay.uri, replayable: true, context: context, reuse: false)
        }
        switch self.machine.upstreamFailed() {
        case .sendError:
            self.answer(reason, context: context)
        case .close:
            // An origin that went silent in the middle of its body is logged as the timeout it
            // is, and one whose body the parser refused (a chunk size it does not take) as the
            // bad response it is, not as a cut (all close the client connection).
            let logged: ReasonCode =
                switch reason {
                case .upstreamTimeout: .upstreamTimeout
                case .upstreamBadResponse where !cutShort: .upstreamBadResponse
                default: .upstreamTruncated
                }
            self.endExchangeAndClose(reason: logged, context: context, reset: self.exchange?.closeDelimitedResponse ?? false)
        case .ignore:
            break
        }
    }
}
