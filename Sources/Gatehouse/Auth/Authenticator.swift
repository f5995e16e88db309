import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Decides whether a request's `Proxy-Authorization` lets it through (RFC 9110 §11.7.2).
///
/// Cache hits and cheap failures (no header, wrong scheme, bad base64) are answered at once on
/// the event loop, and never wait behind anything. Anything that needs a password hash runs on
/// a thread pool, because one bcrypt verification takes long enough to stall every other
/// connection on the loop. That pool has a bounded queue: when it is full, the answer is 503
/// `auth_busy` rather than an ever-growing backlog (a flood of bad passwords must not turn
/// into unbounded memory and latency). Failed attempts feed the ``AuthThrottle``.
public final class Authenticator: Sendable {
    public enum Outcome: Sendable, Equatable {
        case authenticated(user: String)
        case rejected(ReasonCode, user: String?)
        /// 429 `auth_throttled` or 503 `auth_busy`, with seconds for `Retry-After`.
        case refused(ReasonCode, retryAfter: Int, user: String?)
    }

    public enum Decision {
        case immediate(Outcome)
        /// Authenticated from the cache (the common case; counted separately in the metrics).
        case cached(user: String)
        case pending(EventLoopFuture<Outcome>)
    }

    /// The user list, and how many times it has been replaced.
    private let store: NIOLockedValueBox<(list: CredentialStore, generation: Int)>
    public let cache: CredentialCache
    public let throttle: AuthThrottle
    private let threadPool: NIOThreadPool
    private let pending = NIOLockedValueBox(0)
    /// Verifications running, by cache key, for requests with the same header to join.
    private let inFlight = NIOLockedValueBox([CredentialCache.Key: EventLoopFuture<Outcome>]())
    private let maxPending: Int
    /// A verification that waited longer than this for the hashing pool is not run: its client
    /// has most likely given up (under a flood of wrong passwords, the queue's tail waited 30 s
    /// and more, and the hashing went on for clients long gone), and it is answered 503
    /// `auth_busy` with `Retry-After` instead.
    let maximumQueueWait: TimeAmount

    public init(
        store: CredentialStore, cacheTTL: TimeAmount, threadPool: NIOThreadPool,
        throttle: AuthThrottle.Limits = AuthThrottle.Limits(), maxPendingVerifications: Int = 256,
        maximumQueueWait: TimeAmount = .seconds(5)
    ) {
        self.maximumQueueWait = maximumQueueWait
        self.store = NIOLockedValueBox((store, 0))
        self.cache = CredentialCache(ttl: cacheTTL)
        self.throttle = AuthThrottle(limits: throttle)
        self.threadPool = threadPool
        self.maxPending = maxPendingVerifications
    }

    /// Replaces the user list and clears the cache, so removed users and old passwords lose
    /// access at once: also those whose verification was already running (it is redone against
    /// the new list, and its result is not cached under the old one), and requests arriving
    /// now do not wait for such a verification.
    public func replaceStore(_ store: CredentialStore) {
        let generation = self.store.withLockedValue { current -> Int in
            current = (store, current.generation + 1)
            return current.generation
        }
        self.inFlight.withLockedValue { $0.removeAll() }
        self.cache.removeAll(generation: generation)
    }

    public var credentialStore: CredentialStore { self.store.withLockedValue { $0.list } }

    /// How many attempts a verification makes while the user list keeps being replaced under
    /// it, before it gives up (refused, as a wrong password).
    static let verificationAttempts = 3

    /// Verifications waiting for or running on the hashing pool.
    public var pendingVerifications: Int { self.pending.withLockedValue { $0 } }

    /// Checks the `Proxy-Authorization` values of one request from `client` (an IP address).
    public func authenticate(_ values: [String], client: String = "-", on eventLoop: EventLoop) -> Decision {
        guard let value = values.first else { return .immediate(.rejected(.authMissing, user: nil)) }
        // Two Proxy-Authorization fields are ambiguous; refuse rather than pick one.
        guard values.count == 1 else { return .immediate(.rejected(.authMalformed, user: nil)) }
        let key = self.cache.key(for: value)
        if let user = self.cache.user(forKey: key) {
            if let wait = self.throttle.retryAfterCachedLogin(client: client, user: user) {
                return .immediate(.refused(.authThrottled, retryAfter: wait, user: user))
            }
            return .cached(user: user)
        }

        let credentials: BasicCredentials
        do {
            credentials = try BasicCredentials(proxyAuthorization: value)
        } catch {
            switch error {
            case .wrongScheme: return .immediate(.rejected(.authScheme, user: nil))
            case .malformedBase64, .missingColon, .invalidUTF8: return .immediate(.rejected(.authMalformed, user: nil))
            }
        }
        // Failures on record only: a request joining a running verification is no new guess
        // (running ones count when a new verification is admitted, below).
        if let wait = self.throttle.retryAfter(client: client, user: credentials.user, countingRunning: false) {
            return .immediate(.refused(.authThrottled, retryAfter: wait, user: credentials.user))
        }
        let current = self.store
        let store = current.withLockedValue { $0 }
        let cache = self.cache
        let throttle = self.throttle
        let user = credentials.user
        // The same wrong credentials again from this address: refused as before, without
        // hashing, and not counted again (see `AuthThrottle`).
        if throttle.failedBefore(key, client: client, generation: store.generation) {
            return .immediate(.rejected(.authInvalid, user: user))
        }
        // One verification; it ends the throttle's admission (see `AuthThrottle.admit`).
        let check: @Sendable () -> Outcome = {
            var list = store
            for _ in 0..<Self.verificationAttempts {
                let verified = list.list.verify(user: user, password: credentials.password)
                let now = current.withLockedValue { $0 }
                guard now.generation == list.generation else {
                    // The users were replaced while this ran: its answer is about a list that
                    // no longer applies. Check again against the current one.
                    list = now
                    continue
                }
                throttle.finish(client: client, user: user, failed: !verified, credentials: (key, list.generation))
                if verified {
                    cache.insert(headerValue: value, user: user, generation: list.generation)
                    return .authenticated(user: user)
                }
                return .rejected(.authInvalid, user: user)
            }
            // The list kept changing under every attempt: refused, but not counted as a
            // failed login (the password may well be right).
            throttle.finish(client: client, user: user, failed: false)
            return .rejected(.authInvalid, user: user)
        }
        if store.list.isCheap(user: user) {
            if let wait = throttle.admit(client: client, user: user) {
                return .immediate(.refused(.authThrottled, retryAfter: wait, user: user))
            }
            return .immediate(check())
        }
        // The same header value already being verified (a client opening many connections at
        // once, each sending the same credentials first): wait for that answer instead of
        // hashing again. With a bcrypt user, 50 connections starting together would otherwise
        // cost 50 verifications before the cache could help.
        if let existing = self.inFlight.withLockedValue({ $0[key] }) {
            return .pending(existing.hop(to: eventLoop))
        }
        // Admitted before it is queued: guesses sent all at once count against the limits
        // while they wait and run, not only once they have failed.
        if let wait = throttle.admit(client: client, user: user) {
            return .immediate(.refused(.authThrottled, retryAfter: wait, user: user))
        }
        let promise = eventLoop.makePromise(of: Outcome.self)
        let existing = self.inFlight.withLockedValue { inFlight -> EventLoopFuture<Outcome>? in
            if let existing = inFlight[key] { return existing }
            inFlight[key] = promise.futureResult
            return nil
        }
        if let existing {
            // Another request started the same verification meanwhile: join it.
            throttle.finish(client: client, user: user, failed: false)
            promise.fail(CancellationError())  // never handed out
            return .pending(existing.hop(to: eventLoop))
        }
        let inFlight = self.inFlight
        let mine = promise.futureResult
        promise.futureResult.whenComplete { _ in
            // Only its own entry: after a reload the key may belong to a newer verification.
            inFlight.withLockedValue { if $0[key] === mine { $0[key] = nil } }
        }
        let admitted = self.pending.withLockedValue { pending -> Bool in
            guard pending < self.maxPending else { return false }
            pending += 1
            return true
        }
        guard admitted else {
            throttle.finish(client: client, user: user, failed: false)
            promise.succeed(.refused(.authBusy, retryAfter: 1, user: user))
            return .immediate(.refused(.authBusy, retryAfter: 1, user: user))
        }
        let counter = self.pending
        let queued = NIODeadline.now()
        let maximumWait = self.maximumQueueWait
        let future = self.threadPool.runIfActive(eventLoop: eventLoop) { () -> Outcome in
            defer { counter.withLockedValue { $0 -= 1 } }
            guard NIODeadline.now() - queued <= maximumWait else {
                throttle.finish(client: client, user: user, failed: false)
                return .refused(.authBusy, retryAfter: 1, user: user)
            }
            return check()
        }
        future.whenFailure { _ in
            // The pool is shutting down: the check never ran.
            counter.withLockedValue { $0 = max(0, $0 - 1) }
            throttle.finish(client: client, user: user, failed: false)
        }
        future.cascade(to: promise)
        return .pending(promise.futureResult)
    }
}
