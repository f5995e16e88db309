import CCrypt
@testable import Gatehouse
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

@Suite("Authenticator and credential cache")
struct AuthenticatorTests {
    static func header(_ credentials: String) -> String {
        "Basic " + Data(credentials.utf8).base64EncodedString()
    }

    /// A one-thread hashing pool whose thread is held until `open()`: whatever the machine's
    /// load, nothing queued on it runs (or finishes) before the test says so.
    final class Gate: Sendable {
        private let lock = ConditionLock(value: 0)
        func wait() {
            self.lock.lock(whenValue: 1)
            self.lock.unlock()
        }
        func open() {
            self.lock.lock()
            self.lock.unlock(withValue: 1)
        }
    }

    static func heldPool() -> (NIOThreadPool, Gate) {
        let pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
        let gate = Gate()
        pool.submit { _ in gate.wait() }
        return (pool, gate)
    }

    static func outcome(_ authenticator: Authenticator, _ values: [String]) async throws -> Authenticator.Outcome {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        switch authenticator.authenticate(values, on: loop) {
        case .immediate(let outcome): return outcome
        case .cached(let user): return .authenticated(user: user)
        case .pending(let future): return try await future.get()
        }
    }

    @Test("a password over 1,024 bytes is refused unhashed, even where its hash would match")
    func overlongPassword() throws {
        let setting = Array("$apr1$abcdefgh$".utf8)
        let edge = String(repeating: "x", count: CredentialStore.maximumPasswordBytes)
        let long = edge + "x"
        let edgeHash = try #require(PasswordHash.apr1(password: Array(edge.utf8), setting: setting))
        let longHash = try #require(PasswordHash.apr1(password: Array(long.utf8), setting: setting))
        let file = HtpasswdFile(contents: "edge:\(edgeHash)\nlong:\(longHash)\n", path: "test")
        let store = CredentialStore(htpasswd: file, inlineUsers: ["inline": long])
        #expect(store.verify(user: "edge", password: edge))
        #expect(!store.verify(user: "long", password: long))
        #expect(!store.verify(user: "inline", password: long))
    }

    @Test("inline passwords compare whole: trailing NULs (256 of them, say) are a different password")
    func constantTimeCompare() {
        let secret = Array("secret".utf8)
        #expect(constantTimeEquals(secret, secret))
        for padding in [1, 255, 256, 512] {
            #expect(!constantTimeEquals(secret + [UInt8](repeating: 0, count: padding), secret), "\(padding)")
            #expect(!constantTimeEquals(secret, secret + [UInt8](repeating: 0, count: padding)), "\(padding)")
        }
        #expect(!constantTimeEquals([], [0]))
        let store = CredentialStore(htpasswd: HtpasswdFile(contents: "", path: "t"), inlineUsers: ["bob": "secret"])
        #expect(store.verify(user: "bob", password: "secret"))
        #expect(!store.verify(user: "bob", password: "secret" + String(repeating: "\0", count: 256)))
    }

    @Test("user names compare byte for byte, as in Apache: a differently composed spelling is another user")
    func userNameBytes() throws {
        let composed = "jos\u{E9}"  // é as one code point
        let decomposed = "jose\u{301}"  // e + combining acute
        #expect(composed == decomposed, "Swift calls them equal, which is the trap")
        let hash = try #require(PasswordHash.makeBcrypt(password: "pw", cost: 4))
        let store = CredentialStore(
            htpasswd: HtpasswdFile(contents: "\(composed):\(hash.fieldValue)\n", path: "t"), inlineUsers: [decomposed: "inline"])
        #expect(store.verify(user: composed, password: "pw"))
        #expect(!store.verify(user: decomposed, password: "pw"))
        #expect(store.verify(user: decomposed, password: "inline"))
        #expect(!store.verify(user: composed, password: "inline"))
    }

    @Test("outcomes for each kind of header")
    func outcomes() async throws {
        let file = HtpasswdFile(contents: "carol:{SHA}" + "W6ph5Mm5Pz8GgiULbPgzG37mj9g=" + "\n", path: "t")
        let authenticator = Authenticator(
            store: CredentialStore(htpasswd: file, inlineUsers: ["alice": "pw:with:colons"]), cacheTTL: .minutes(5),
            threadPool: .singleton)
        #expect(try await Self.outcome(authenticator, []) == .rejected(.authMissing, user: nil))
        #expect(try await Self.outcome(authenticator, ["Digest x"]) == .rejected(.authScheme, user: nil))
        #expect(try await Self.outcome(authenticator, ["Basic %%%"]) == .rejected(.authMalformed, user: nil))
        #expect(try await Self.outcome(authenticator, [Self.header("a:b"), Self.header("a:b")]) == .rejected(.authMalformed, user: nil))
        #expect(try await Self.outcome(authenticator, [Self.header("alice:pw:with:colons")]) == .authenticated(user: "alice"))
        #expect(try await Self.outcome(authenticator, [Self.header("alice:pw")]) == .rejected(.authInvalid, user: "alice"))
        #expect(try await Self.outcome(authenticator, [Self.header("carol:password")]) == .authenticated(user: "carol"))
        #expect(try await Self.outcome(authenticator, [Self.header("nobody:password")]) == .rejected(.authInvalid, user: "nobody"))
    }

    @Test("a cache hit is answered at once, only successes are cached, and replacing the users clears it")
    func cache() async throws {
        let url = try #require(Bundle.module.url(forResource: "vectors", withExtension: "htpasswd", subdirectory: "Fixtures"))
        let authenticator = Authenticator(
            store: CredentialStore(htpasswd: try HtpasswdFile.load(path: url.path)), cacheTTL: .minutes(5), threadPool: .singleton)
        let good = Self.header("bcrypt-user:bcrypt-secret")
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        guard case .pending = authenticator.authenticate([good], on: loop) else {
            Issue.record("bcrypt must run off the event loop")
            return
        }
        #expect(try await Self.outcome(authenticator, [good]) == .authenticated(user: "bcrypt-user"))
        guard case .cached(user: "bcrypt-user") = authenticator.authenticate([good], on: loop) else {
            Issue.record("a verified credential must be answered from the cache")
            return
        }
        _ = try await Self.outcome(authenticator, [Self.header("bcrypt-user:wrong")])
        #expect(authenticator.cache.count == 1)
        authenticator.replaceStore(CredentialStore(inlineUsers: ["other": "x"]))
        #expect(authenticator.cache.count == 0)
        #expect(try await Self.outcome(authenticator, [good]) == .rejected(.authInvalid, user: "bcrypt-user"))
    }

    @Test("a throttled address gets 429 for a cached password too; the user's own address is not affected")
    func throttleCoversCache() async throws {
        let authenticator = Authenticator(
            store: CredentialStore(inlineUsers: ["alice": "right"]), cacheTTL: .minutes(5), threadPool: .singleton,
            throttle: AuthThrottle.Limits(window: .seconds(60), failuresPerClient: 3, failuresPerUser: 10))
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        func outcome(_ credentials: String, from client: String) async throws -> Authenticator.Outcome {
            switch authenticator.authenticate([Self.header(credentials)], client: client, on: loop) {
            case .immediate(let outcome): return outcome
            case .cached(let user): return .authenticated(user: user)
            case .pending(let future): return try await future.get()
            }
        }
        // Alice logs in from her address: her credentials are now cached.
        #expect(try await outcome("alice:right", from: "10.0.0.1") == .authenticated(user: "alice"))
        // A guesser elsewhere reaches the limit; its next guesses are not checked...
        for guess in 0..<3 {
            #expect(try await outcome("alice:wrong\(guess)", from: "10.0.0.66") == .rejected(.authInvalid, user: "alice"))
        }
        guard case .refused(.authThrottled, _, _) = try await outcome("alice:wrong9", from: "10.0.0.66") else {
            Issue.record("a throttled guess must get 429")
            return
        }
        // ...and the right one, answered by the cache, gets the same 429: a 200 told the
        // guesser which guess was right.
        guard case .refused(.authThrottled, _, _) = try await outcome("alice:right", from: "10.0.0.66") else {
            Issue.record("a cached password from a throttled address must get 429 too")
            return
        }
        #expect(try await outcome("alice:right", from: "10.0.0.1") == .authenticated(user: "alice"))
    }

    @Test("a repeat of credentials that failed from the same address is refused unhashed and uncounted, until the users are replaced")
    func repeatedFailure() async throws {
        let hash = try #require(PasswordHash.makeBcrypt(password: "right", cost: 6))
        let authenticator = Authenticator(
            store: CredentialStore(htpasswd: HtpasswdFile(contents: "alice:\(hash.fieldValue)\n", path: "t")), cacheTTL: .minutes(5),
            threadPool: .singleton, throttle: AuthThrottle.Limits(window: .seconds(60), failuresPerClient: 3, failuresPerUser: 3))
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        guard case .pending(let first) = authenticator.authenticate([Self.header("alice:typo")], client: "10.0.0.1", on: loop) else {
            Issue.record("a bcrypt check runs on the pool")
            return
        }
        #expect(try await first.get() == .rejected(.authInvalid, user: "alice"))
        for _ in 0..<5 {
            guard case .immediate(.rejected(.authInvalid, user: "alice")) =
                authenticator.authenticate([Self.header("alice:typo")], client: "10.0.0.1", on: loop)
            else {
                Issue.record("a repeated failure is answered at once")
                return
            }
        }
        #expect(authenticator.throttle.retryAfter(client: "10.0.0.1", user: "alice") == nil, "one failure on record, not six")
        // From another address the same credentials are a guess of their own: hashed.
        guard case .pending(let elsewhere) = authenticator.authenticate([Self.header("alice:typo")], client: "10.0.0.2", on: loop) else {
            Issue.record("another address's attempt is verified")
            return
        }
        #expect(try await elsewhere.get() == .rejected(.authInvalid, user: "alice"))
        // A reload may have made them right: "typo" is now alice's password.
        let typo = try #require(PasswordHash.makeBcrypt(password: "typo", cost: 4))
        authenticator.replaceStore(CredentialStore(htpasswd: HtpasswdFile(contents: "alice:\(typo.fieldValue)\n", path: "t")))
        switch authenticator.authenticate([Self.header("alice:typo")], client: "10.0.0.1", on: loop) {
        case .pending(let again): #expect(try await again.get() == .authenticated(user: "alice"))
        case .immediate(let outcome): #expect(outcome == .authenticated(user: "alice"), "after a reload the credentials are verified again")
        case .cached: Issue.record("nothing was cached")
        }
    }

    @Test("a reload during a running verification: a removed user or old password is refused, cached nowhere, joined by no one")
    func reloadDuringVerification() async throws {
        let hash = try #require(PasswordHash.makeBcrypt(password: "oldpw", cost: 4))
        let before = CredentialStore(htpasswd: HtpasswdFile(contents: "carol:\(hash.fieldValue)\n", path: "before"))
        let fresh = try #require(PasswordHash.makeBcrypt(password: "newpw", cost: 4))
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let old = Self.header("carol:oldpw")
        for after in [
            "carol:\(fresh.fieldValue)\n",  // password changed
            "dave:\(fresh.fieldValue)\n",  // carol removed
        ] {
            // A one-thread hashing pool held by a gate: the verification is taken on before the
            // reload and runs after it, whatever the machine's load.
            let (pool, gate) = Self.heldPool()
            let authenticator = Authenticator(store: before, cacheTTL: .minutes(5), threadPool: pool)
            guard case .pending(let running) = authenticator.authenticate([old], on: loop) else {
                Issue.record("a bcrypt verification runs on the pool")
                return
            }
            authenticator.replaceStore(CredentialStore(htpasswd: HtpasswdFile(contents: after, path: "after")))
            // A request arriving now must not wait for the old verification's answer.
            let joined = authenticator.authenticate([old], on: loop)
            gate.open()
            #expect(try await running.get() == .rejected(.authInvalid, user: "carol"), "\(after)")
            switch joined {
            case .pending(let future): #expect(try await future.get() == .rejected(.authInvalid, user: "carol"))
            case .immediate(let outcome): #expect(outcome == .rejected(.authInvalid, user: "carol"))
            case .cached: Issue.record("served from the cache after a reload")
            }
            #expect(authenticator.cache.count == 0)
            #expect(try await Self.outcome(authenticator, [old]) == .rejected(.authInvalid, user: "carol"))
            try await pool.shutdownGracefully()
        }
        // Without a reload the same verification succeeds (the test can fail for the right reason).
        let steady = Authenticator(store: before, cacheTTL: .minutes(5), threadPool: .singleton)
        #expect(try await Self.outcome(steady, [old]) == .authenticated(user: "carol"))
        #expect(steady.cache.count == 1)
    }

    @Test("requests with the same header arriving together share one verification")
    func singleFlight() async throws {
        // Cost 12 (a quarter of a second or so): the first verification is surely still
        // running while the other 19 requests arrive, however loaded the machine is.
        let hash = try #require(PasswordHash.makeBcrypt(password: "bcrypt-secret", cost: 12))
        let file = HtpasswdFile(contents: "bcrypt-user:\(hash.fieldValue)\n", path: "t")
        let authenticator = Authenticator(store: CredentialStore(htpasswd: file), cacheTTL: .minutes(5), threadPool: .singleton)
        let group = MultiThreadedEventLoopGroup.singleton
        for (header, expected) in [
            (Self.header("bcrypt-user:bcrypt-secret"), Authenticator.Outcome.authenticated(user: "bcrypt-user")),
            (Self.header("bcrypt-user:wrong"), .rejected(.authInvalid, user: "bcrypt-user")),
        ] {
            var futures: [EventLoopFuture<Authenticator.Outcome>] = []
            for _ in 0..<20 {
                let loop = group.next()
                guard case .pending(let future) = authenticator.authenticate([header], on: loop) else {
                    Issue.record("bcrypt must run off the event loop")
                    return
                }
                futures.append(future)
            }
            // The other 19 joined the first verification: one hash, not twenty.
            #expect(authenticator.pendingVerifications == 1)
            for future in futures {
                #expect(try await future.get() == expected)
            }
            #expect(authenticator.pendingVerifications == 0)
        }
        // The failure counted once against the throttle, not twenty times.
        #expect(authenticator.throttle.retryAfter(client: "-", user: "bcrypt-user") == nil)
    }

    @Test("guesses sent all at once count against the throttle while they run: the right password among them is refused too")
    func parallelGuesses() async throws {
        let hash = try #require(PasswordHash.makeBcrypt(password: "right", cost: 6))
        let file = HtpasswdFile(contents: "victim:\(hash.fieldValue)\nother:\(hash.fieldValue)\n", path: "t")
        // A one-thread pool held by a gate: no verification finishes until the gate opens,
        // whatever the machine's load.
        let (pool, gate) = Self.heldPool()
        let authenticator = Authenticator(store: CredentialStore(htpasswd: file), cacheTTL: .minutes(5), threadPool: pool)
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        var pending: [EventLoopFuture<Authenticator.Outcome>] = []
        var throttled = 0
        // 40 different passwords for one user from one address, all before any has finished;
        // the right one is the 25th. Before, all 40 were hashed and the 25th got in.
        for guess in 0..<40 {
            let password = guess == 24 ? "right" : "guess-\(guess)"
            switch authenticator.authenticate([Self.header("victim:\(password)")], client: "10.0.0.1", on: loop) {
            case .pending(let future): pending.append(future)
            case .immediate(.refused(.authThrottled, _, _)): throttled += 1
            default: Issue.record("unexpected decision for guess \(guess)")
            }
        }
        #expect(pending.count == 10, "the per-user limit, counting running verifications")
        #expect(throttled == 30)
        // The same header as one already running joins it: no new guess, so not refused.
        guard case .pending(let joined) = authenticator.authenticate([Self.header("victim:guess-0")], client: "10.0.0.1", on: loop) else {
            Issue.record("a request joining a running verification must not be throttled")
            return
        }
        pending.append(joined)
        gate.open()
        for future in pending {
            #expect(try await future.get() == .rejected(.authInvalid, user: "victim"))
        }
        // Now ten failures are on record: still refused, with the window's Retry-After.
        guard case .immediate(.refused(.authThrottled, let wait, _)) =
            authenticator.authenticate([Self.header("victim:right")], client: "10.0.0.1", on: loop)
        else {
            Issue.record("the guessing address must stay throttled")
            return
        }
        #expect(wait > 1)
        let elsewhere = try await Self.outcome(authenticator, [Self.header("victim:right")])
        #expect(elsewhere == .authenticated(user: "victim"), "another address is not locked out")
        // Spraying: one guess each for many users from one address stops at the per-address limit.
        let sprayer = Authenticator(
            store: CredentialStore(htpasswd: file), cacheTTL: .minutes(5), threadPool: .singleton,
            throttle: .init(failuresPerClient: 5, failuresPerUser: 10))
        var admitted = 0
        for guess in 0..<12 {
            let user = guess % 2 == 0 ? "victim" : "other"
            if case .pending = sprayer.authenticate([Self.header("\(user):g\(guess)")], client: "10.0.0.2", on: loop) { admitted += 1 }
        }
        #expect(admitted == 5)
        try await pool.shutdownGracefully()
    }

    @Test("an unknown name is checked against a user's own hash, picked per name: unknown names take the times real users take")
    func unknownUserDecoys() throws {
        let bcrypt = try #require(PasswordHash.makeBcrypt(password: "pw", cost: 4))
        let sha = "{SHA}" + Data(Array(repeating: UInt8(1), count: 20)).base64EncodedString()
        let mixed = CredentialStore(htpasswd: HtpasswdFile(contents: "b:\(bcrypt.fieldValue)\ns:\(sha)\n", path: "t"))
        let names = (0..<200).map { "nobody-\($0)" }
        let cheap = names.filter { mixed.isCheap(user: $0) }.count
        // About half of the unknown names cost what the {SHA} user costs, the rest a bcrypt check.
        #expect(cheap > 50 && cheap < 150, "\(cheap) of 200")
        #expect(names.allSatisfy { mixed.isCheap(user: $0) == mixed.isCheap(user: $0) }, "the same name, the same pick")
        #expect(!mixed.verify(user: "nobody-1", password: "pw"), "a decoy never lets anyone in, even with its password")
        // A file of {SHA} users only: unknown names are as cheap as they are (before: a bcrypt
        // dummy, 60 times slower than any real user, told every unknown name apart).
        let shaOnly = CredentialStore(htpasswd: HtpasswdFile(contents: "s:\(sha)\n", path: "t"))
        #expect(names.allSatisfy { shaOnly.isCheap(user: $0) })
        let inlineOnly = CredentialStore(inlineUsers: ["bob": "pw"])
        #expect(names.allSatisfy { inlineOnly.isCheap(user: $0) })
        #expect(!inlineOnly.verify(user: "nobody", password: "gatehouse-decoy"))
        let bcryptOnly = CredentialStore(htpasswd: HtpasswdFile(contents: "b:\(bcrypt.fieldValue)\n", path: "t"))
        #expect(!names.contains { bcryptOnly.isCheap(user: $0) })
    }

    @Test("a verification that waited too long for the hashing pool is answered 503 auth_busy, not hashed for a client long gone")
    func staleQueuedVerification() async throws {
        let hash = try #require(PasswordHash.makeBcrypt(password: "pw", cost: 4))
        let store = CredentialStore(htpasswd: HtpasswdFile(contents: "erin:\(hash.fieldValue)\n", path: "t"))
        let (pool, gate) = Self.heldPool()
        let authenticator = Authenticator(
            store: store, cacheTTL: .minutes(5), threadPool: pool, maximumQueueWait: .milliseconds(200))
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        guard case .pending(let stale) = authenticator.authenticate([Self.header("erin:pw")], client: "10.0.0.9", on: loop) else {
            Issue.record("a bcrypt verification runs on the pool")
            return
        }
        try await Task.sleep(for: .milliseconds(400))
        gate.open()
        #expect(try await stale.get() == .refused(.authBusy, retryAfter: 1, user: "erin"))
        #expect(authenticator.cache.count == 0)
        // Nothing left counted against the address, and a fresh attempt is verified.
        #expect(authenticator.throttle.retryAfter(client: "10.0.0.9", user: "erin") == nil)
        guard case .pending(let fresh) = authenticator.authenticate([Self.header("erin:pw")], client: "10.0.0.9", on: loop) else {
            Issue.record("a bcrypt verification runs on the pool")
            return
        }
        #expect(try await fresh.get() == .authenticated(user: "erin"))
        try await pool.shutdownGracefully()
    }

    @Test("the cache key is a keyed hash: different per process, never the header itself")
    func cacheKey() {
        let a = CredentialCache(ttl: .seconds(1))
        let b = CredentialCache(ttl: .seconds(1))
        let value = Self.header("alice:secret")
        #expect(a.key(for: value) == a.key(for: value))
        #expect(a.key(for: value) != b.key(for: value))
        #expect(a.key(for: value) != a.key(for: Self.header("alice:secreT")))
    }

    @Test("the precomputed HMAC-SHA-256 equals OpenSSL's HMAC() (RFC 2104), for short and long values")
    func cacheKeyIsHMAC() {
        let secret = (0..<32).map { UInt8($0 * 7 & 0xFF) }
        let cache = CredentialCache(ttl: .seconds(1), secret: secret)
        for value in ["", "Basic YWxpY2U6c2VjcmV0", String(repeating: "x", count: 200), "Basic ünïcødé"] {
            var digest = [UInt8](repeating: 0, count: 32)
            var length: UInt32 = 0
            let message = Array(value.utf8)
            _ = secret.withUnsafeBytes { key in
                message.withUnsafeBytes { data in
                    HMAC(EVP_sha256(), key.baseAddress, Int32(key.count), data.baseAddress, data.count, &digest, &length)
                }
            }
            let words = digest.withUnsafeBytes { raw in (0..<4).map { raw.loadUnaligned(fromByteOffset: $0 * 8, as: UInt64.self) } }
            let key = cache.key(for: value)
            #expect([key.a, key.b, key.c, key.d] == words, "\(value.prefix(20))")
        }
    }

    @Test("entries expire after the TTL")
    func expiry() {
        let cache = CredentialCache(ttl: .seconds(10))
        let now = NIODeadline.now()
        cache.insert(headerValue: "v", user: "u", now: now)
        #expect(cache.user(for: "v", now: now + .seconds(9)) == "u")
        #expect(cache.user(for: "v", now: now + .seconds(11)) == nil)
    }

    @Test("an empty credential store is refused: never an open proxy")
    func emptyStoreRefused() throws {
        #expect(throws: ConfigurationError.noCredentialSource) {
            try GatehouseServer(
                configuration: ProxyConfiguration(), credentials: CredentialStore(),
                accessLog: try AccessLog(destination: .none, format: .squid), logger: .init(label: "t"))
        }
    }
}
