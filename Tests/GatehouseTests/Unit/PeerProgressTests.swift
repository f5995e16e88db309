@testable import Gatehouse
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

@Suite("PeerProgress: telling a slow reader from a stalled one")
struct PeerProgressTests {
    @Test("the idle timer closes an idle connection, and keeps one whose client is still taking a queued response")
    func idleDecision() {
        // Nothing on its way (in NIO or the kernel): idle, whatever the counts say.
        #expect(PeerProgress.idleDecision(draining: false, acked: 10, previous: 5) == (false, nil))
        // Queued, first look: one more period, remembering where the client stood.
        #expect(PeerProgress.idleDecision(draining: true, acked: 10, previous: nil) == (true, 10))
        // Queued, and the client took more since: one more period.
        #expect(PeerProgress.idleDecision(draining: true, acked: 20, previous: 10) == (true, 20))
        // Queued, and the client took nothing for a whole period: close.
        #expect(PeerProgress.idleDecision(draining: true, acked: 20, previous: 20) == (false, 20))
        // No TCP_INFO: no way to see progress, so idleness as before.
        #expect(PeerProgress.idleDecision(draining: true, acked: nil, previous: 20) == (false, nil))
    }

    @Test("tcpi_bytes_acked is read at the right offset: it equals the bytes the peer took (plus the SYN)")
    func bytesAcknowledged() async throws {
        let received = NIOLockedValueBox(0)
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Counter(received: received))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let port = server.localAddress?.port ?? 0
        let client = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: "127.0.0.1", port: port).get()
        let sent = 300_000
        try await client.writeAndFlush(ByteBuffer(repeating: 0x61, count: sent))

        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(5)
        var acked: UInt64?
        while clock.now < deadline {
            acked = try await client.eventLoop.submit { PeerProgress.bytesAcknowledged(by: client) }.get()
            // The kernel counts the SYN as one byte acknowledged.
            if received.withLockedValue({ $0 }) == sent && acked == UInt64(sent + 1) { break }
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(received.withLockedValue { $0 } == sent)
        #expect(acked == UInt64(sent + 1))
        // Everything acknowledged: nothing draining, and the last acknowledgement is recent.
        let queue = try await client.eventLoop.submit { PeerProgress.sendQueue(of: client) }.get()
        #expect(queue?.acked == UInt64(sent + 1))
        #expect(queue?.draining == false)
        if let last = queue?.lastAcknowledgement {
            #expect(NIODeadline.now() - last < .seconds(5))
        }
        // Off the channel's event loop there is no synchronous answer.
        #expect(PeerProgress.bytesAcknowledged(by: client) == nil)
        try await client.close()
        try await server.close()
    }

    private final class Counter: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let received: NIOLockedValueBox<Int>
        init(received: NIOLockedValueBox<Int>) { self.received = received }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let count = self.unwrapInboundIn(data).readableBytes
            self.received.withLockedValue { $0 += count }
        }
    }
}
