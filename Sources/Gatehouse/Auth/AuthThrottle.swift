import NIOConcurrencyHelpers
import NIOCore

/// Slows down password guessing: failed authentications are counted per client IP, and per
/// user name, over a sliding window (429 `auth_throttled` with `Retry-After` above the limit).
///
/// The per-user limit only ever applies to addresses that have themselves failed for that
/// user in the window, so an attacker hammering `alice` from one address never locks `alice`
/// out when she connects from another (nor does a botnet, each of whose addresses must fail
/// first). Only `auth_invalid` counts: a first request without credentials is normal.
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
        var operations = 0
    }

    let limits: Limits
    private let state = NIOLockedValueBox(State())
    /// Bounds memory under a flood of distinct addresses or names.
    private let maximumKeys = 100_000

    public init(limits: Limits) {
        self.limits = limits
    }

    /// Seconds until another attempt is allowed, or nil if it is allowed now.
    public func retryAfter(client: String, user: String?, now: NIODeadline = .now()) -> Int? {
        let cutoff = now - self.limits.window
        return self.state.withLockedValue { state -> Int? in
            var waits: [NIODeadline] = []
            if var times = state.byClient[client] {
                times.removeAll { $0 < cutoff }
                state.byClient[client] = times.isEmpty ? nil : times
                if times.count >= self.limits.failuresPerClient, let oldest = times.first {
                    waits.append(oldest + self.limits.window)
                }
            }
            if let user, var entries = state.byUser[user] {
                entries.removeAll { $0.time < cutoff }
                state.byUser[user] = entries.isEmpty ? nil : entries
                if entries.count >= self.limits.failuresPerUser, entries.contains(where: { $0.client == client }),
                    let oldest = entries.first
                {
                    waits.append(oldest.time + self.limits.window)
                }
            }
            guard let until = waits.max() else { return nil }
            return max(1, Int((until - now).nanoseconds / 1_000_000_000) + 1)
        }
    }

    public func recordFailure(client: String, user: String?, now: NIODeadline = .now()) {
        self.state.withLockedValue { state in
            state.operations += 1
            if state.operations % 1024 == 0 || state.byClient.count > self.maximumKeys || state.byUser.count > self.maximumKeys {
                self.prune(&state, now: now)
            }
            state.byClient[client, default: []].append(now)
            if let user { state.byUser[user, default: []].append((now, client)) }
        }
    }

    private func prune(_ state: inout State, now: NIODeadline) {
        let cutoff = now - self.limits.window
        state.byClient = state.byClient.compactMapValues { times in
            let kept = times.filter { $0 >= cutoff }
            return kept.isEmpty ? nil : kept
        }
        state.byUser = state.byUser.compactMapValues { entries in
            let kept = entries.filter { $0.time >= cutoff }
            return kept.isEmpty ? nil : kept
        }
        if state.byClient.count > self.maximumKeys { state.byClient.removeAll() }
        if state.byUser.count > self.maximumKeys { state.byUser.removeAll() }
    }
}
