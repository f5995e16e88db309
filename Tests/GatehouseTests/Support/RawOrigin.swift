import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A scripted TCP origin: reads until the end of a request head, then answers with fixed
/// bytes, and then either closes or stays silent. For the origin faults an HTTP library would
/// never produce: bodies cut short, close-delimited bodies, responses that never come.
final class RawOrigin: Sendable {
    enum Behaviour: Sendable {
        /// Send these bytes, then close the connection.
        case respondAndClose(String)
        /// The same with raw bytes (ones that are not UTF-8, say).
        case respondBytesAndClose([UInt8])
        /// Send these bytes, then keep the connection open and say nothing more.
        case respondAndHang(String)
        /// Read until EOF (the peer's half-close), then send `received N` and close.
        case respondOnEOF
        /// Answer the first request on each connection with these bytes and keep the
        /// connection open; close without answering any later request on it (a keep-alive
        /// connection that went stale), after sending `thenSend` (garbage, say) if not empty.
        /// ``received`` has each request line.
        case keepAliveOnce(String, thenSend: String = "")
        /// Answer every request with these bytes and keep the connection open, except requests
        /// with `method`: close without answering them. ``received`` has each request line.
        case keepAliveClosingOn(method: String, answer: String)
        /// Read at most `chunk` bytes every `every` (a slow but steady reader of an upload);
        /// once the head and `bodyBytes` after it have arrived, send `reply` and close.
        case slowReader(chunk: Int, every: TimeAmount, bodyBytes: Int, reply: String)
        /// Write back every byte read, reading only while the writes get out (a TCP echo
        /// server with backpressure: it stops reading while its peer takes nothing).
        case echo
        /// Read until the first string has arrived and a blank line after it (the last chunk
        /// of a chunked body and its trailers), then send the second and close.
        /// ``received`` has what arrived.
        case captureUntil(String, then: String)
        /// Accept and never read (an origin that stopped taking an upload), with a small
        /// receive buffer so that little of what is sent fits in its kernel.
        case readNothing
        /// Read until the end of a request head, then wait for ``release()``: send these bytes
        /// (none: say nothing) and close. For an answer at a moment the test chooses.
        case respondOnRelease(String)
    }

    let channel: Channel
    private let captured: NIOLockedValueBox<[String]>
    /// Connections of `respondOnRelease` waiting for ``release()``.
    private let waiting: NIOLockedValueBox<[(Channel, String)]>
    var port: Int { self.channel.localAddress?.port ?? 0 }
    /// What each `captureUntil` connection received, or the request lines of the keep-alive
    /// behaviours, in order.
    var received: [String] { self.captured.withLockedValue { $0 } }

    private init(channel: Channel, captured: NIOLockedValueBox<[String]>, waiting: NIOLockedValueBox<[(Channel, String)]>) {
        self.channel = channel
        self.captured = captured
        self.waiting = waiting
    }

    /// `respondOnRelease`: how many connections have sent a whole request head and wait.
    var waitingCount: Int { self.waiting.withLockedValue { $0.count } }

    /// `respondOnRelease`: answers every connection waiting, and closes it.
    func release() {
        let waiting = self.waiting.withLockedValue { waiting in
            defer { waiting.removeAll() }
            return waiting
        }
        for (channel, text) in waiting {
            channel.writeAndFlush(ByteBuffer(string: text)).whenComplete { _ in channel.close(promise: nil) }
        }
    }

    static func start(_ behaviour: Behaviour, onConnection: (@Sendable () -> Void)? = nil) async throws -> RawOrigin {
        let captured = NIOLockedValueBox<[String]>([])
        let waiting = NIOLockedValueBox<[(Channel, String)]>([])
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    onConnection?()
                    if case .echo = behaviour, let options = channel.syncOptions {
                        try options.setOption(.autoRead, value: false)
                    }
                    if case .readNothing = behaviour, let options = channel.syncOptions {
                        try options.setOption(.autoRead, value: false)
                        try options.setOption(.socketOption(.so_rcvbuf), value: 4_096)
                    }
                    if case .slowReader(let chunk, _, _, _) = behaviour, let options = channel.syncOptions {
                        try options.setOption(.autoRead, value: false)
                        try options.setOption(.maxMessagesPerRead, value: 1)
                        try options.setOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: chunk))
                        // A small receive buffer: what the origin's TCP acknowledges is then
                        // close to what it has read.
                        try options.setOption(.socketOption(.so_rcvbuf), value: 65_536)
                    }
                    try channel.pipeline.syncOperations.addHandler(ScriptHandler(behaviour: behaviour, captured: captured, waiting: waiting))
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        return RawOrigin(channel: channel, captured: captured, waiting: waiting)
    }

    func stop() async { try? await self.channel.close() }

    private final class ScriptHandler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let behaviour: Behaviour
        let captured: NIOLockedValueBox<[String]>
        let waiting: NIOLockedValueBox<[(Channel, String)]>
        var received = ""
        var answered = false

        init(behaviour: Behaviour, captured: NIOLockedValueBox<[String]>, waiting: NIOLockedValueBox<[(Channel, String)]>) {
            self.behaviour = behaviour
            self.captured = captured
            self.waiting = waiting
        }

        var receivedBytes = 0
        var headBytes: Int?
        var reads: RepeatedTask?

        var echoReadPending = false

        func channelReadComplete(context: ChannelHandlerContext) {
            if case .echo = self.behaviour {
                context.flush()
                if context.channel.isWritable { context.read() } else { self.echoReadPending = true }
            }
            context.fireChannelReadComplete()
        }

        func channelWritabilityChanged(context: ChannelHandlerContext) {
            if case .echo = self.behaviour, context.channel.isWritable, self.echoReadPending {
                self.echoReadPending = false
                context.read()
            }
            context.fireChannelWritabilityChanged()
        }

        func channelActive(context: ChannelHandlerContext) {
            if case .echo = self.behaviour { context.read() }
            if case .slowReader(_, let every, _, _) = self.behaviour {
                let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
                self.reads = context.eventLoop.scheduleRepeatedTask(initialDelay: every, delay: every) { _ in
                    bound.value.read()
                }
            }
            context.fireChannelActive()
        }

        func channelInactive(context: ChannelHandlerContext) {
            self.reads?.cancel()
            context.fireChannelInactive()
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            if case .echo = self.behaviour {
                context.write(data, promise: nil)
                return
            }
            if case .slowReader(_, _, let bodyBytes, let reply) = self.behaviour {
                let buffer = self.unwrapInboundIn(data)
                if self.headBytes == nil, let end = String(buffer: buffer).range(of: "\r\n\r\n") {
                    self.headBytes = self.receivedBytes + String(buffer: buffer)[..<end.upperBound].utf8.count
                }
                self.receivedBytes += buffer.readableBytes
                if let head = self.headBytes, self.receivedBytes >= head + bodyBytes, !self.answered {
                    self.answered = true
                    self.reads?.cancel()
                    context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(string: reply))).assumeIsolated().whenComplete { _ in
                        context.close(promise: nil)
                    }
                }
                return
            }
            var buffer = self.unwrapInboundIn(data)
            self.received += buffer.readString(length: buffer.readableBytes) ?? ""
            if case .respondOnEOF = self.behaviour { return }
            if case .captureUntil(let marker, let reply) = self.behaviour {
                guard !self.answered, let start = self.received.range(of: marker),
                    self.received[start.upperBound...].contains("\r\n\r\n") || self.received.hasSuffix(marker + "\r\n")
                else { return }
                self.answered = true
                let text = self.received
                self.captured.withLockedValue { $0.append(text) }
                context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(string: reply))).assumeIsolated().whenComplete { _ in
                    context.close(promise: nil)
                }
                return
            }
            if case .keepAliveOnce(let text, let thenSend) = self.behaviour {
                guard self.received.contains("\r\n\r\n") else { return }
                self.recordRequestLine()
                if self.answered {
                    context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(string: thenSend))).assumeIsolated().whenComplete { _ in
                        context.close(promise: nil)
                    }
                } else {
                    self.answered = true
                    context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(string: text)), promise: nil)
                }
                return
            }
            if case .keepAliveClosingOn(let method, let text) = self.behaviour {
                guard self.received.contains("\r\n\r\n") else { return }
                let line = self.recordRequestLine()
                if line.hasPrefix(method + " ") {
                    context.close(promise: nil)
                } else {
                    context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(string: text)), promise: nil)
                }
                return
            }
            guard !self.answered, self.received.contains("\r\n\r\n") else { return }
            self.answered = true
            switch self.behaviour {
            case .respondAndClose(let text):
                context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(string: text))).assumeIsolated().whenComplete { _ in
                    context.close(promise: nil)
                }
            case .respondBytesAndClose(let bytes):
                context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(bytes: bytes))).assumeIsolated().whenComplete { _ in
                    context.close(promise: nil)
                }
            case .respondAndHang(let text):
                if !text.isEmpty { context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(string: text)), promise: nil) }
            case .respondOnRelease(let text):
                let channel = context.channel
                self.waiting.withLockedValue { $0.append((channel, text)) }
            case .respondOnEOF, .keepAliveOnce, .keepAliveClosingOn, .captureUntil, .slowReader, .echo, .readNothing:
                break
            }
        }

        /// Notes the request line of the (bodyless) request received and starts on the next.
        @discardableResult
        private func recordRequestLine() -> String {
            let line = String(self.received[..<(self.received.range(of: "\r\n")?.lowerBound ?? self.received.endIndex)])
            self.received = ""
            self.captured.withLockedValue { $0.append(line) }
            return line
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            guard case .respondOnEOF = self.behaviour, let event = event as? ChannelEvent, event == .inputClosed else { return }
            let reply = ByteBuffer(string: "received \(self.received.utf8.count)")
            context.writeAndFlush(self.wrapOutboundOut(reply)).assumeIsolated().whenComplete { _ in
                context.close(promise: nil)
            }
        }
    }
}
