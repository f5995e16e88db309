import CCrypt
import NIOConcurrencyHelpers
import NIOCore

/// Remembers recently verified `Proxy-Authorization` values so that bcrypt (tens of
/// milliseconds) runs once per credential per TTL instead of once per request.
///
/// The key is HMAC-SHA-256 of the whole header value under a random key made at start-up, so
/// the cache never holds a password or anything an attacker could test guesses against
/// offline. Only successes are cached; a failure always costs a full verification.
public final class CredentialCache: Sendable {
    struct Key: Hashable, Sendable {
        var a: UInt64, b: UInt64, c: UInt64, d: UInt64
    }

    private struct Entry: Sendable {
        var user: String
        var expires: NIODeadline
    }

    private let secret: [UInt8]
    private let ttl: TimeAmount
    private let capacity: Int
    private let entries = NIOLockedValueBox([Key: Entry]())

    public init(ttl: TimeAmount, capacity: Int = 10_000) {
        var secret = [UInt8](repeating: 0, count: 32)
        if RAND_bytes(&secret, 32) != 1 {
            // RAND_bytes only fails if the OS entropy source is broken; fall back to the system RNG.
            var rng = SystemRandomNumberGenerator()
            for i in secret.indices { secret[i] = UInt8.random(in: 0...255, using: &rng) }
        }
        self.secret = secret
        self.ttl = ttl
        self.capacity = capacity
    }

    func key(for headerValue: String) -> Key {
        var digest = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        var value = Array(headerValue.utf8)
        _ = self.secret.withUnsafeBytes { secret in
            value.withUnsafeMutableBytes { data in
                HMAC(EVP_sha256(), secret.baseAddress, Int32(secret.count), data.baseAddress, data.count, &digest, &length)
            }
        }
        func word(_ i: Int) -> UInt64 {
            var w: UInt64 = 0
            for j in 0..<8 { w = (w << 8) | UInt64(digest[i * 8 + j]) }
            return w
        }
        return Key(a: word(0), b: word(1), c: word(2), d: word(3))
    }

    /// The user a cached header value belongs to, if it was verified within the TTL.
    public func user(for headerValue: String, now: NIODeadline = .now()) -> String? {
        let key = self.key(for: headerValue)
        return self.entries.withLockedValue { entries in
            guard let entry = entries[key] else { return nil }
            if entry.expires < now {
                entries[key] = nil
                return nil
            }
            return entry.user
        }
    }

    public func insert(headerValue: String, user: String, now: NIODeadline = .now()) {
        let key = self.key(for: headerValue)
        let expires = now + self.ttl
        self.entries.withLockedValue { entries in
            if entries.count >= self.capacity {
                entries = entries.filter { $0.value.expires >= now }
                if entries.count >= self.capacity { entries.removeAll(keepingCapacity: true) }
            }
            entries[key] = Entry(user: user, expires: expires)
        }
    }

    /// Forgets everything, for example after the user list changed.
    public func removeAll() {
        self.entries.withLockedValue { $0.removeAll() }
    }

    public var count: Int { self.entries.withLockedValue { $0.count } }
}
