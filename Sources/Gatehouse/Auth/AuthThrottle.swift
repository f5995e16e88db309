import NIOConcurrencyHelpers
import NIOCore
import Synchronization

/// Slows down password guessing: failed authentications are counted per client IP, and per
/// user name, over a sliding window (429 `auth_throttled` with `Retry-After` above the limit).
///
/// The per-user limit only ever applies to addresses that have themselves failed for that
/// user in the window, so an attacker hammering `alice` from one address never locks `alice`
/// out when she connects from another (nor does a botnet, each of whose addresses must fail
/// first). Only `auth_invalid` counts: a first request without credentials is normal.
///
/// Guesses are what it counts, not requests: the same wrong credentials sent again from the
/// same address (apt sends them with each of the nine or so index files of a source line) are
/// remembered for the window and refused at once, without hashing and without counting again.
/// Counted each time, one `apt-get update` with a typo used up the user's limit, and the
/// corrected password then got 429 for the rest of the window. A repeat tells a guesser
/// nothing new.
public final class AuthThrottle: Sendable {
    public struct Limits: Sendable, Equatable {
        public var window: TimeAmount
        /// Failures one client address may have in the window.
        public var failuresPerClient: Int
        /// Failures one user name may have in the window (from the addresses that failed).
        public var failuresPerUser: Int

        public init(window: TimeAmount = .seconds(60), failuresPerClient: Int = 30, failuresPerUser: Int = 10) {
            self.window = window
            self.failuresPerClient = failuresPerClient
            self.failuresPerUser = failuresPerUser
        }
    }

    private struct State {
        var byClient: [String: [NIODeadline]] = [:]
        var byUser: [String: [(time: NIODeadline, client: String)]] = [:]
        /// Verifications admitted and not yet finished, by client address.
        var runningByClient: [String: Int] = [:]
        /// The same by user name, with the address of each.
        var runningByUser: [String: [String]] = [:]
        /// Credentials that failed, by their cache key and address, with when and against
        /// which user list (a reload may have made them right).
        var failedCredentials: [FailedCredential: (time: NIODeadline, generation: Int)] = [:]
        var operations = 0
        /// When everything out of the window was last dropped.
        var pruned = NIODeadline.uptimeNanoseconds(0)
    }

    private struct FailedCredential: Hashable {
        var key: CredentialCache.Key
        var client: String
    }

    let limits: Limits
    private let state = NIOLockedValueBox(State())
    /// Whether any failure may be on record: checked without the lock by logins the cache
    /// answers, which must stay as cheap as a cache hit while nobody is guessing.
    private let failuresOnRecord = Atomic<Bool>(false)
    /// Bounds memory under a flood of distinct addresses or names.
    private let maximumKeys = 100_000

    public init(limits: Limits) {
        self.limits = limits
    }

    /// Seconds until another attempt is allowed, or nil if it is allowed now. Without
    /// `countingRunning`, only failures on record count: for a request that would join a
    /// verification already running, which costs no guess.
    public func retryAfter(client: String, user: String?, countingRunning: Bool = true, now: NIODeadline = .now()) -> Int? {
        self.state.withLockedValue { self.retryAfter(&$0, client: client, user: user, countingRunning: countingRunning, now: now) }
    }

    /// For a login the credential cache answers: refused while `client` is over a limit, as
    /// an unchecked guess is. A cached password that still got 200 from a throttled address
    /// told a guesser which guess was right, at thousands of guesses a second (429s cost no
    /// hashing) while the user's credentials were cached.
    public func retryAfterCachedLogin(client: String, user: String, now: NIODeadline = .now()) -> Int? {
        guard self.failuresOnRecord.load(ordering: .relaxed) else { return nil }
        return self.state.withLockedValue { state in
            // Until old failures are all dropped, every cached login takes the lock: drop them
            // once a window has passed, so the unlocked check applies again.
            if now - state.pruned > self.limits.window { self.prune(&state, now: now) }
            return self.retryAfter(&state, client: client, user: user, countingRunning: false, now: now)
        }
    }

    /// Admits one password verification for `user` from `client`, or says how long to wait.
    ///
    /// An admitted verification counts against the limits as a failure until ``finish`` says
    /// how it ended. Counting only finished failures let a client that sends many guesses at
    /// once (on many connections) have them all checked before the first failure was
    /// counted: hundreds of guesses against a limit of ten.
    public func admit(client: String, user: String?, now: NIODeadline = .now()) -> Int? {
        self.state.withLockedValue { state -> Int? in
            if let wait = self.retryAfter(&state, client: client, user: user, countingRunning: true, now: now) { return wait }
            state.runningByClient[client, default: 0] += 1
            if let user { state.runningByUser[user, default: []].append(client) }
            return nil
        }
    }

    /// Whether these credentials (by their cache key) already failed from `client` within the
    /// window, against the user list of `generation`.
    func failedBefore(_ key: CredentialCache.Key, client: String, generation: Int, now: NIODeadline = .now()) -> Bool {
        guard self.failuresOnRecord.load(ordering: .relaxed) else { return false }
        return self.state.withLockedValue { state in
            guard let failure = state.failedCredentials[FailedCredential(key: key, client: client)] else { return false }
            return failure.generation == generation && now - failure.time <= self.limits.window
        }
    }

    /// Ends a verification ``admit`` let through; a failed one is counted in the window, and
    /// its credentials (`key`, verified against the user list of `generation`) remembered.
    public func finish(client: String, user: String?, failed: Bool, now: NIODeadline = .now()) {
        self.finish(client: client, user: user, failed: failed, credentials: nil, now: now)
    }

    func finish(
        client: String, user: String?, failed: Bool, credentials: (key: CredentialCache.Key, generation: Int)?,
        now: NIODeadline = .now()
    ) {
        self.state.withLockedValue { state in
            if failed, let credentials {
                state.failedCredentials[FailedCredential(key: credentials.key, client: client)] = (now, credentials.generation)
            }
            if let running = state.runningByClient[client] {
                state.runningByClient[client] = running > 1 ? running - 1 : nil
            }
            if let user, var clients = state.runningByUser[user], let index = clients.firstIndex(of: client) {
                clients.remove(at: index)
                state.runningByUser[user] = clients.isEmpty ? nil : clients
            }
            if failed { self.recordFailure(&state, client: client, user: user, now: now) }
        }
    }

    private func recordFailure(_ state: inout State, client: String, user: String?, now: NIODeadline) {
        state.operations += 1
        if state.operations % 1024 == 0 || state.byClient.count > self.maximumKeys || state.byUser.count > self.maximumKeys
            || state.failedCredentials.count > self.maximumKeys
        {
            self.prune(&state, now: now)
        }
        state.byClient[client, default: []].append(now)
        if let user { state.byUser[user, default: []].append((now, client)) }
        self.failuresOnRecord.store(true, ordering: .relaxed)
    }

    private func retryAfter(_ state: inout State, client: String, user: String?, countingRunning: Bool, now: NIODeadline) -> Int? {
        let cutoff = now - self.limits.window
        // Until a running verification ends, a limit it fills is retried after a second.
        var waits: [NIODeadline] = []
        var times = state.byClient[client] ?? []
        times.removeAll { $0 < cutoff }
        state.byClient[client] = times.isEmpty ? nil : times
        let runningHere = countingRunning ? state.runningByClient[client] ?? 0 : 0
        if times.count + runningHere >= self.limits.failuresPerClient {
            waits.append(times.count >= self.limits.failuresPerClient ? times[0] + self.limits.window : now + .seconds(1))
        }
        if let user {
            var entries = state.byUser[user] ?? []
            entries.removeAll { $0.time < cutoff }
            state.byUser[user] = entries.isEmpty ? nil : entries
            let running = countingRunning ? state.runningByUser[user] ?? [] : []
            // Only for addresses that have failed, or are guessing, for this user themselves.
            if entries.count + running.count >= self.limits.failuresPerUser,
                entries.contains(where: { $0.client == client }) || running.contains(client)
            {
                waits.append(entries.count >= self.limits.failuresPerUser ? entries[0].time + self.limits.window : now + .seconds(1))
            }
        }
        if state.byClient.isEmpty && state.byUser.isEmpty { self.failuresOnRecord.store(false, ordering: .relaxed) }
        guard let until = waits.max() else { return nil }
        return max(1, Int((until - now).nanoseconds / 1_000_000_000) + 1)
    }

    private func prune(_ state: inout State, now: NIODeadline) {
        state.pruned = now
        let cutoff = now - self.limits.window
        state.byClient = state.byClient.compactMapValues { times in
            let kept = times.filter { $0 >= cutoff }
            return kept.isEmpty ? nil : kept
        }
        state.byUser = state.byUser.compactMapValues { entries in
            let kept = entries.filter { $0.time >= cutoff }
            return kept.isEmpty ? nil : kept
        }
        state.failedCredentials = state.failedCredentials.filter { $0.value.time >= cutoff }
        if state.failedCredentials.count > self.maximumKeys { state.failedCredentials.removeAll() }
        if state.byClient.count > self.maximumKeys { state.byClient.removeAll() }
        if state.byUser.count > self.maximumKeys { state.byUser.removeAll() }
        if state.byClient.isEmpty && state.byUser.isEmpty { self.failuresOnRecord.store(false, ordering: .relaxed) }
    }
}
