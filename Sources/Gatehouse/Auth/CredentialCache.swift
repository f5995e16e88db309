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

    /// SHA-256 states after the HMAC key's inner and outer pads (RFC 2104): each lookup only
    /// hashes the header value and one digest, instead of rebuilding the whole HMAC. OpenSSL's
    /// one-shot `HMAC()` set up its contexts per call and cost about 3% of a proxied request.
    private let innerState: SHA256_CTX
    private let outerState: SHA256_CTX
    private let ttl: TimeAmount
    private let capacity: Int
    /// The entries, and the generation of the user list they were verified against: an
    /// insert from a verification that began before the list was replaced is dropped.
    private struct Contents {
        var entries: [Key: Entry] = [:]
        var generation = 0
    }

    private let contents = NIOLockedValueBox(Contents())

    public convenience init(ttl: TimeAmount, capacity: Int = 10_000) {
        var secret = [UInt8](repeating: 0, count: 32)
        if RAND_bytes(&secret, 32) != 1 {
            // RAND_bytes only fails if the OS entropy source is broken; fall back to the system RNG.
            var rng = SystemRandomNumberGenerator()
            for i in secret.indices { secret[i] = UInt8.random(in: 0...255, using: &rng) }
        }
        self.init(ttl: ttl, capacity: capacity, secret: secret)
    }

    /// With a given HMAC key (at most one SHA-256 block, 64 bytes), for tests.
    init(ttl: TimeAmount, capacity: Int = 10_000, secret: [UInt8]) {
        precondition(secret.count <= 64)
        let key = secret + [UInt8](repeating: 0, count: 64 - secret.count)
        self.innerState = (HMACSHA256.self as any HMACSHA256Protocol.Type).absorb(key.map { $0 ^ 0x36 })
        self.outerState = (HMACSHA256.self as any HMACSHA256Protocol.Type).absorb(key.map { $0 ^ 0x5c })
        self.ttl = ttl
        self.capacity = capacity
    }

    func key(for headerValue: String) -> Key {
        var value = headerValue
        let digest = value.withUTF8 { bytes in
            (HMACSHA256.self as any HMACSHA256Protocol.Type).finish(inner: self.innerState, outer: self.outerState, message: bytes)
        }
        return Key(a: digest.0, b: digest.1, c: digest.2, d: digest.3)
    }

    /// The user a cached header value belongs to, if it was verified within the TTL.
    public func user(for headerValue: String, now: NIODeadline = .now()) -> String? {
        self.user(forKey: self.key(for: headerValue), now: now)
    }

    func user(forKey key: Key, now: NIODeadline = .now()) -> String? {
        self.contents.withLockedValue { contents in
            guard let entry = contents.entries[key] else { return nil }
            if entry.expires < now {
                contents.entries[key] = nil
                return nil
            }
            return entry.user
        }
    }

    /// Remembers a verified header value; not if it was verified against a user list other
    /// than the current one (`generation`, see ``removeAll(generation:)``).
    public func insert(headerValue: String, user: String, now: NIODeadline = .now(), generation: Int? = nil) {
        let key = self.key(for: headerValue)
        let expires = now + self.ttl
        self.contents.withLockedValue { contents in
            if let generation, generation != contents.generation { return }
            if contents.entries.count >= self.capacity {
                contents.entries = contents.entries.filter { $0.value.expires >= now }
                if contents.entries.count >= self.capacity { contents.entries.removeAll(keepingCapacity: true) }
            }
            contents.entries[key] = Entry(user: user, expires: expires)
        }
    }

    /// Forgets everything, for example after the user list changed; from now on only inserts
    /// for `generation` (when given) are kept.
    public func removeAll(generation: Int? = nil) {
        self.contents.withLockedValue { contents in
            contents.entries.removeAll()
            if let generation { contents.generation = generation }
        }
    }

    public var count: Int { self.contents.withLockedValue { $0.entries.count } }
}

// MARK: - HMAC-SHA-256 on OpenSSL's low-level SHA-256

/// See `LegacyDigestsProtocol` in PasswordHash.swift: OpenSSL 3 marks the `SHA256_*` functions
/// deprecated (they remain supported); reaching them through deprecated witnesses of a
/// protocol keeps the build free of deprecation warnings without hiding other diagnostics.
private protocol HMACSHA256Protocol {
    static func absorb(_ block: [UInt8]) -> SHA256_CTX
    static func finish(inner: SHA256_CTX, outer: SHA256_CTX, message: UnsafeBufferPointer<UInt8>) -> (UInt64, UInt64, UInt64, UInt64)
}

private enum HMACSHA256: HMACSHA256Protocol {
    @available(*, deprecated, message: "uses OpenSSL's low-level SHA-256 API (deprecated in OpenSSL 3)")
    static func absorb(_ block: [UInt8]) -> SHA256_CTX {
        var context = SHA256_CTX()
        _ = SHA256_Init(&context)
        block.withUnsafeBytes { _ = SHA256_Update(&context, $0.baseAddress, $0.count) }
        return context
    }

    @available(*, deprecated, message: "uses OpenSSL's low-level SHA-256 API (deprecated in OpenSSL 3)")
    static func finish(inner: SHA256_CTX, outer: SHA256_CTX, message: UnsafeBufferPointer<UInt8>) -> (UInt64, UInt64, UInt64, UInt64) {
        var digest: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        withUnsafeMutableBytes(of: &digest) { out in
            let bytes = out.bindMemory(to: UInt8.self)
            var context = inner
            _ = SHA256_Update(&context, message.baseAddress, message.count)
            _ = SHA256_Final(bytes.baseAddress, &context)
            context = outer
            _ = SHA256_Update(&context, bytes.baseAddress, 32)
            _ = SHA256_Final(bytes.baseAddress, &context)
        }
        return digest
    }
}
