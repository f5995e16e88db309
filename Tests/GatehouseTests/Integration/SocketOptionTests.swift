import Foundation
@testable import Gatehouse
import GatehouseTesting
import NIOCore
import Testing

@Suite("Socket options")
struct SocketOptionTests {
    /// Without `TCP_NODELAY`, a small response written while an earlier one is still
    /// unacknowledged waits for the client's delayed ACK (up to 40 ms on Linux). NIO's
    /// `ServerBootstrap` sets it once on the listening socket and accepted sockets inherit it,
    /// so Gatehouse no longer sets it per connection; this reads it back from the accepted
    /// socket itself.
    @Test("client connections have TCP_NODELAY")
    func clientNoDelay() async throws {
        try await withProxyAndOrigin { proxy, _ in
            let client = try await RawClient.connect(port: proxy.port)
            var channels: [Channel] = []
            for _ in 0..<250 where channels.isEmpty {
                channels = proxy.server.context.connections.channels
                if channels.isEmpty { try await Task.sleep(for: .milliseconds(20)) }
            }
            let channel = try #require(channels.first)
            let noDelay = try await channel.getOption(.tcpOption(.tcp_nodelay)).get()
            #expect(noDelay != 0)
            await client.close()
        }
    }
}
