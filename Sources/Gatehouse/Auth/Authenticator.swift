import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Decides whether a request's `Proxy-Authorization` lets it through (RFC 9110 §11.7.2).
///
/// Cache hits and cheap failures (no header, wrong scheme, bad base64) are answered at once on
/// the event loop. Anything that needs a password hash runs on a thread pool, because one
/// bcrypt verification takes long enough to stall every other connection on the loop.
public final class Authenticator: Sendable {
    public enum Outcome: Sendable, Equatable {
        case authenticated(user: String)
        case rejected(ReasonCode, user: String?)
    }

    public enum Decision {
        case immediate(Outcome)
        case pending(EventLoopFuture<Outcome>)
    }

    private let store: NIOLockedValueBox<CredentialStore>
    public let cache: CredentialCache
    private let threadPool: NIOThreadPool
    private let onCacheHit: (@Sendable () -> Void)?

    public init(store: CredentialStore, cacheTTL: TimeAmount, threadPool: NIOThreadPool, onCacheHit: (@Sendable () -> Void)? = nil) {
        self.store = NIOLockedValueBox(store)
        self.cache = CredentialCache(ttl: cacheTTL)
        self.threadPool = threadPool
        self.onCacheHit = onCacheHit
    }

    /// Replaces the user list and clears the cache, so removed users lose access at once.
    public func replaceStore(_ store: CredentialStore) {
        self.store.withLockedValue { $0 = store }
        self.cache.removeAll()
    }

    public var credentialStore: CredentialStore { self.store.withLockedValue { $0 } }

    /// Checks the `Proxy-Authorization` values of one request.
    public func authenticate(_ values: [String], on eventLoop: EventLoop) -> Decision {
        guard let value = values.first else { return .immediate(.rejected(.authMissing, user: nil)) }
        // Two Proxy-Authorization fields are ambiguous; refuse rather than pick one.
        guard values.count == 1 else { return .immediate(.rejected(.authMalformed, user: nil)) }
        if let user = self.cache.user(for: value) {
            self.onCacheHit?()
            return .immediate(.authenticated(user: user))
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
        let store = self.credentialStore
        let cache = self.cache
        let check: @Sendable () -> Outcome = {
            if store.verify(user: credentials.user, password: credentials.password) {
                cache.insert(headerValue: value, user: credentials.user)
                return .authenticated(user: credentials.user)
            }
            return .rejected(.authInvalid, user: credentials.user)
        }
        if store.isCheap(user: credentials.user) {
            return .immediate(check())
        }
        return .pending(self.threadPool.runIfActive(eventLoop: eventLoop, check))
    }
}
