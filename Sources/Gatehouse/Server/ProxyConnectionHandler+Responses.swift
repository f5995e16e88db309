import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

extension ProxyConnectionHandler {
    // MARK: Gatehouse's own responses

    /// Sends Gatehouse's own response for `reason`, logs it, and moves the connection on.
    func answer(_ reason: ReasonCode, context: ChannelHandlerContext, close: Bool = false, retryAfter: Int? = nil) {
        // Once the connection is closing, nothing more is said (a parse error at EOF after a
        // 408 or 505 must not produce a second response or log line).
        guard self.machine.state != .closed, context.channel.isActive else { return }
        let exchange = self.exchange ?? Exchange(unparsedAt: self.headStarted)
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
    func replaceDecoderAfterConnect(context: ChannelHandlerContext) {
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

    func parserError(_ error: HTTPParserError, context: ChannelHandlerContext) {
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

    func sendRawAndClose(status: String, reason: ReasonCode, context: ChannelHandlerContext) {
        let message = reason.message + "\n"
        var text = "HTTP/1.1 \(status)\r\nContent-Type: text/plain; charset=utf-8\r\n"
        if let retry = reason.defaultRetryAfter { text += "Retry-After: \(retry)\r\n" }
        text += "Content-Length: \(message.utf8.count)\r\nConnection: close\r\n\r\n" + message
        var buffer = context.channel.allocator.buffer(capacity: text.utf8.count)
        buffer.writeString(text)
        let exchange = Exchange(unparsedAt: self.headStarted)
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
    func bodyTooLarge(context: ChannelHandlerContext) {
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
}
