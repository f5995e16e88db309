import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL

/// A TCP client that sends exact bytes and collects exact bytes: for pipelining, malformed
/// requests, and checking what is on the wire rather than what a client library reports.
final class RawClient: Sendable {
    private let channel: Channel
    private let state: NIOLockedValueBox<(bytes: [UInt8], closed: Bool)>

    private init(channel: Channel, state: NIOLockedValueBox<(bytes: [UInt8], closed: Bool)>) {
        self.channel = channel
        self.state = state
    }

    /// Connects to 127.0.0.1:`port`, optionally from another loopback address (127.0.0.2, …),
    /// which the proxy sees as a different client. With `reading: false` nothing is read
    /// unless ``readSome()`` asks: a client that stopped taking its response, or a slow one.
    ///
    /// `sending` goes out from the event loop the moment the connection is up. A test that
    /// connects and then sends waits for its task to be scheduled in between, which on a
    /// loaded machine took longer than the short idle timeouts some tests set: the proxy then
    /// closed the silent connection, as it should, and the test saw an empty close.
    ///
    /// With `tls`, the bytes go inside TLS (to a TLS listener), and ``closeOutput()`` sends
    /// TLS's close_notify before the FIN. With `resettingAfter`, the connection is reset (see
    /// ``reset()``) that long after `sending` went out, timed on the event loop.
    static func connect(
        port: Int, from source: String? = nil, reading: Bool = true, readSize: Int = 65_536, sending first: String? = nil,
        tls: NIOSSLContext? = nil, resettingAfter resetDelay: TimeAmount? = nil
    ) async throws -> RawClient {
        let state = NIOLockedValueBox<(bytes: [UInt8], closed: Bool)>(([], false))
        var bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        if let source { bootstrap = bootstrap.bind(to: try SocketAddress(ipAddress: source, port: 0)) }
        let channel = try await bootstrap
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelOption(.autoRead, value: reading)
            .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: readSize))
            .channelOption(.maxMessagesPerRead, value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls { try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: tls, serverHostname: nil)) }
                    try channel.pipeline.syncOperations.addHandler(Collector(state: state))
                }
            }
            .connect(host: "127.0.0.1", port: port)
            .flatMap { channel in
                if let resetDelay {
                    channel.eventLoop.scheduleTask(in: resetDelay) { Self.reset(channel) }
                }
                guard let first else { return channel.eventLoop.makeSucceededFuture(channel) }
                return channel.writeAndFlush(ByteBuffer(string: first)).map { channel }
            }
            .get()
        return RawClient(channel: channel, state: state)
    }

    func send(_ text: String) async throws {
        try await self.channel.writeAndFlush(ByteBuffer(string: text))
    }

    func send(bytes: [UInt8]) async throws {
        try await self.channel.writeAndFlush(ByteBuffer(bytes: bytes))
    }

    /// Sends `parts` one at a time, `gap` apart, timed on the event loop (a test task's sleep
    /// can be held up for seconds while the cooperative pool is busy); returns once the last
    /// is written.
    func send(_ parts: [String], gap: TimeAmount) async throws {
        let channel = self.channel
        let done = channel.eventLoop.makePromise(of: Void.self)
        func next(_ index: Int) {
            guard index < parts.count else { return done.succeed() }
            channel.eventLoop.scheduleTask(in: gap) {
                channel.writeAndFlush(ByteBuffer(string: parts[index])).whenComplete { result in
                    if case .failure(let error) = result { return done.fail(error) }
                    next(index + 1)
                }
            }
        }
        channel.eventLoop.execute { next(0) }
        try await done.futureResult.get()
    }

    /// Queues bytes without waiting for them to get out (to a peer that may never take them).
    func queue(bytes: [UInt8]) {
        self.channel.writeAndFlush(ByteBuffer(bytes: bytes), promise: nil)
    }

    /// With `reading: false`: reads everything from now on.
    func startReading() async throws {
        try await self.channel.setOption(.autoRead, value: true)
        self.channel.read()
    }

    /// With `reading: false`: takes what the socket holds now, up to `readSize` bytes.
    func readSome() {
        self.channel.read()
    }

    /// How many bytes have been received so far.
    var byteCount: Int { self.state.withLockedValue { $0.bytes.count } }

    /// How many bytes have been received after the first response head (nil: no head yet).
    var bodyByteCount: Int? {
        self.state.withLockedValue { state in
            let end: [UInt8] = Array("\r\n\r\n".utf8)
            let window = state.bytes.prefix(16_384)
            guard window.count >= 4 else { return nil }
            for index in 0...(window.count - 4) where window[index..<(index + 4)].elementsEqual(end) {
                return state.bytes.count - index - 4
            }
            return nil
        }
    }

    /// Everything received so far, as text (lossy for binary).
    var text: String { String(decoding: self.state.withLockedValue { $0.bytes }, as: UTF8.self) }

    /// The first `count` bytes received, as text.
    func text(prefix count: Int) -> String {
        String(decoding: self.state.withLockedValue { Array($0.bytes.prefix(count)) }, as: UTF8.self)
    }
    var isClosed: Bool { self.state.withLockedValue { $0.closed } }

    /// Waits until the received text satisfies `condition` or the peer closed, up to `timeout`.
    @discardableResult
    func waitFor(timeout: Duration = .seconds(15), _ condition: @Sendable (String) -> Bool) async -> String {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while clock.now < deadline {
            let text = self.text
            if condition(text) || self.isClosed { return text }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return self.text
    }

    /// Waits until the peer closes the connection.
    func waitForClose(timeout: Duration = .seconds(15)) async -> Bool {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while clock.now < deadline {
            if self.isClosed { return true }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return false
    }

    /// Half-closes: sends FIN, keeps reading.
    func closeOutput() async throws {
        try await self.channel.close(mode: .output)
    }

    func close() async {
        try? await self.channel.close()
    }

    /// With `tls`: sends a TCP FIN without TLS's close_notify first (a "ragged" EOF, as many
    /// TLS clients end), by closing the output below the TLS handler.
    func closeOutputWithoutCloseNotify() async throws {
        let channel = self.channel
        try await channel.eventLoop.flatSubmit {
            do {
                let below = try channel.pipeline.syncOperations.context(handlerType: NIOSSLClientHandler.self)
                return below.close(mode: .output)
            } catch {
                return channel.eventLoop.makeFailedFuture(error)
            }
        }.get()
    }

    /// Closes with a reset (SO_LINGER 0), as a client that crashed or gave up does.
    func reset() async {
        let channel = self.channel
        try? await channel.eventLoop.submit { Self.reset(channel) }.get()
        _ = try? await channel.closeFuture.get()
    }

    private static func reset(_ channel: Channel) {
        guard let provider = channel as? SocketOptionProvider else { return channel.close(promise: nil) }
        provider.setSoLinger(linger(l_onoff: 1, l_linger: 0)).whenComplete { _ in channel.close(promise: nil) }
    }

    private final class Collector: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        let state: NIOLockedValueBox<(bytes: [UInt8], closed: Bool)>
        init(state: NIOLockedValueBox<(bytes: [UInt8], closed: Bool)>) { self.state = state }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let buffer = self.unwrapInboundIn(data)
            self.state.withLockedValue { $0.bytes.append(contentsOf: buffer.readableBytesView) }
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if let event = event as? ChannelEvent, event == .inputClosed {
                self.state.withLockedValue { $0.closed = true }
            }
        }

        func channelInactive(context: ChannelHandlerContext) {
            self.state.withLockedValue { $0.closed = true }
        }
    }
}

/// Splits a byte stream of HTTP/1.1 responses into status codes, for pipelining checks.
func statusCodes(in text: String) -> [Int] {
    text.components(separatedBy: "HTTP/1.1 ").dropFirst().compactMap { Int($0.prefix(3)) }
}
