import Dispatch
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

@testable import Gatehouse

@Suite("Name lookups")
struct PolicyResolverTests {
    /// Blocks lookups until released, and records the order they ran in.
    final class Gate: Sendable {
        let semaphore = DispatchSemaphore(value: 0)
        let started = NIOLockedValueBox<[String]>([])

        func work(_ name: String) -> @Sendable () -> Void {
            { self.started.withLockedValue { $0.append(name) }; self.semaphore.wait() }
        }

        func release(_ count: Int) { for _ in 0..<count { self.semaphore.signal() } }

        func waitUntilStarted(_ count: Int) async {
            for _ in 0..<500 where self.started.withLockedValue({ $0.count }) < count {
                try? await Task.sleep(for: .milliseconds(10))
            }
        }
    }

    @Test("a user whose lookups hang holds at most its share of the threads; another user's lookup runs at once")
    func perUserShare() async throws {
        let threads = LookupThreads(limit: 4, perUser: 2)
        let gate = Gate()
        for index in 0..<5 { threads.run(for: "mallory", gate.work("mallory-\(index)")) }
        await gate.waitUntilStarted(2)
        #expect(threads.load == (2, 3))
        threads.run(for: "alice", gate.work("alice"))
        await gate.waitUntilStarted(3)
        #expect(gate.started.withLockedValue { $0 }.last == "alice", "alice waited behind mallory's hanging lookups")
        #expect(threads.load == (3, 3))
        // Once one of mallory's ends, the next of mallory's (in order) takes its place.
        gate.release(1)
        await gate.waitUntilStarted(4)
        #expect(gate.started.withLockedValue { $0 }.last == "mallory-2")
        gate.release(10)
        for _ in 0..<500 where threads.load != (0, 0) { try await Task.sleep(for: .milliseconds(10)) }
        #expect(threads.load == (0, 0))
        #expect(gate.started.withLockedValue { $0 }.count == 6)
    }

    @Test("no more lookups run at once than the limit, whoever asks")
    func limit() async throws {
        let threads = LookupThreads(limit: 2, perUser: 8)
        let gate = Gate()
        for user in ["a", "b", "c"] { threads.run(for: user, gate.work(user)) }
        await gate.waitUntilStarted(2)
        try await Task.sleep(for: .milliseconds(50))
        #expect(threads.load == (2, 1))
        gate.release(3)
        for _ in 0..<500 where threads.load != (0, 0) { try await Task.sleep(for: .milliseconds(10)) }
        // a and b start at once, on threads of their own, in either order; c after them.
        let started = gate.started.withLockedValue { $0 }
        #expect(Set(started.prefix(2)) == ["a", "b"] && started.last == "c", "\(started)")
    }

    @Test("an IP address, in any spelling getaddrinfo reads, resolves at once without waiting for a lookup thread")
    func ipAddressesNeverWait() async throws {
        // Every lookup thread is taken by a lookup that hangs.
        let threads = LookupThreads(limit: 1, perUser: 1)
        let gate = Gate()
        threads.run(for: "mallory", gate.work("hang"))
        await gate.waitUntilStarted(1)
        defer { gate.release(10) }
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        for (host, expected) in [("127.0.0.1", "127.0.0.1"), ("127.1", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("::1", "::1"), ("2130706433", "127.0.0.1")] {
            let resolver = PolicyResolver(loop: loop, user: "alice", threads: threads) { _ in nil }
            let v6 = resolver.initiateAAAAQuery(host: host, port: 80)
            let v4 = resolver.initiateAQuery(host: host, port: 80)
            guard threads.load == (1, 0) else {
                Issue.record("\(host) waits for a lookup thread")
                return
            }
            let addresses = try await v4.get() + v6.get()
            #expect(addresses.map(\.ipAddress) == [expected], "\(host)")
        }
        // A name does wait, and a connect timeout meanwhile is a DNS timeout.
        let resolver = PolicyResolver(loop: loop, user: "alice", threads: threads) { _ in nil }
        let pending = resolver.initiateAAAAQuery(host: "localhost", port: 80)
        #expect(threads.load == (1, 1))
        #expect(resolver.reason(for: ChannelError.connectTimeout(.seconds(1))) == .upstreamDNSTimeout)
        // NIO gives up on it: it does not take a thread once one is free.
        resolver.cancelQueries()
        gate.release(1)
        await #expect(throws: PolicyResolver.LookupError.self) { try await pending.get() }
        #expect(resolver.reason(for: ChannelError.connectTimeout(.seconds(1))) == .upstreamConnectTimeout)
    }
}
