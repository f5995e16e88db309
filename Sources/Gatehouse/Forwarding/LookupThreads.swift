import Dispatch
import NIOConcurrencyHelpers

/// The threads `getaddrinfo` runs on for origin names (see ``PolicyResolver``).
///
/// `getaddrinfo` blocks, and for as long as the system resolver's timeouts when a DNS server
/// does not answer (5 s a try by default). Lookups run on up to ``limit`` threads at once, at
/// most ``perUser`` of them for one user; the others wait in order. So a user whose names
/// hang holds at most ``perUser`` threads, and everyone else's lookups run on the rest.
/// Before, eight serial queues were taken in turn, and about three requests a second to names
/// under a silent DNS server kept all eight busy: every user's connections waited, and failed
/// as connect timeouts.
///
/// Each thread is a serial `DispatchQueue`, kept for reuse: libdispatch gives a serial queue a
/// thread of its own while it has work, where one concurrent queue would run at most one
/// thread per core, shared with every other blocking `async` in the process.
final class LookupThreads: Sendable {
    static let shared = LookupThreads(limit: 64, perUser: 8)

    /// Lookups that run at once.
    let limit: Int
    /// Lookups one user may have running at once.
    let perUser: Int

    private struct Waiting {
        let user: String
        let work: @Sendable () -> Void
    }

    private struct State {
        var idle: [DispatchQueue] = []
        var created = 0
        var running: [String: Int] = [:]
        var waiting: [Waiting] = []
    }

    private let state = NIOLockedValueBox(State())

    init(limit: Int, perUser: Int) {
        self.limit = max(1, limit)
        self.perUser = max(1, perUser)
    }

    /// Runs `work` (a lookup for `user`) on a thread of its own, now or once a thread and the
    /// user's share allow.
    func run(for user: String, _ work: @escaping @Sendable () -> Void) {
        let queue: DispatchQueue? = self.state.withLockedValue { state in
            guard state.running[user, default: 0] < self.perUser, let queue = self.takeQueue(&state) else {
                state.waiting.append(Waiting(user: user, work: work))
                return nil
            }
            state.running[user, default: 0] += 1
            return queue
        }
        if let queue { self.start(work, for: user, on: queue) }
    }

    /// Lookups running and waiting now.
    var load: (running: Int, waiting: Int) {
        self.state.withLockedValue { state in (state.running.values.reduce(0, +), state.waiting.count) }
    }

    private func takeQueue(_ state: inout State) -> DispatchQueue? {
        if let queue = state.idle.popLast() { return queue }
        guard state.created < self.limit else { return nil }
        state.created += 1
        return DispatchQueue(label: "gatehouse.lookup.\(state.created)")
    }

    private func start(_ work: @escaping @Sendable () -> Void, for user: String, on queue: DispatchQueue) {
        queue.async {
            work()
            self.finished(user: user, queue: queue)
        }
    }

    /// The queue goes to the first waiting lookup whose user is under its share, else idle.
    private func finished(user: String, queue: DispatchQueue) {
        let next: Waiting? = self.state.withLockedValue { state in
            let left = state.running[user, default: 1] - 1
            state.running[user] = left > 0 ? left : nil
            guard let index = state.waiting.firstIndex(where: { state.running[$0.user, default: 0] < self.perUser }) else {
                state.idle.append(queue)
                return nil
            }
            let next = state.waiting.remove(at: index)
            state.running[next.user, default: 0] += 1
            return next
        }
        if let next { self.start(next.work, for: next.user, on: queue) }
    }
}
