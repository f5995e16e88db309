import CCrypt

/// A password hash from an Apache htpasswd file, classified by format.
///
/// htpasswd files mix several formats (Apache httpd "Password Formats" documentation), and the
/// format is recognised only by the shape of the string. Classifying once at load time lets the
/// proxy report unusable entries at start-up instead of failing silently at login, and lets
/// ``verify(_:)`` pick the right algorithm without re-parsing.
///
/// * bcrypt (`$2y$`, `$2a$`, `$2b$`), SHA-256-crypt (`$5$`), SHA-512-crypt (`$6$`) and
///   traditional DES crypt are verified with libxcrypt's `crypt_r`.
/// * apr1 (`$apr1$`) is Apache's variant of the FreeBSD MD5-crypt algorithm and is not provided
///   by libxcrypt, so it is implemented here on top of OpenSSL's MD5.
/// * `{SHA}` is unsalted `base64(SHA-1(password))`, computed with OpenSSL's SHA-1.
///
/// Plain-text passwords (accepted by Apache only on Windows/NetWare) are deliberately *not*
/// supported: a 13-character string of the crypt alphabet is always treated as DES crypt.
///
/// The associated value is the full hash string as it appears in the file (secret-ish: never
/// log it).
public enum PasswordHash: Sendable, Equatable {
    /// `$2y$`, `$2a$` or `$2b$` bcrypt, verified with `crypt_r`.
    case bcrypt(String)
    /// `$apr1$salt$hash`, Apache MD5-crypt, own implementation on OpenSSL MD5.
    case apr1(String)
    /// `{SHA}` followed by base64 of the unsalted SHA-1 digest.
    case sha1(String)
    /// `$5$[rounds=N$]salt$hash`, SHA-256-crypt, verified with `crypt_r`.
    case sha256Crypt(String)
    /// `$6$[rounds=N$]salt$hash`, SHA-512-crypt, verified with `crypt_r`.
    case sha512Crypt(String)
    /// 13 characters of `[./0-9A-Za-z]`, traditional DES crypt, verified with `crypt_r`.
    case desCrypt(String)

    /// Classifies `field` (the part of an htpasswd line after the first colon) and validates its
    /// shape, so a typo or a truncated hash is reported at load time rather than at login.
    ///
    /// - Throws: ``PasswordHashError/unknownFormat(_:)`` with a short description that never
    ///   includes the hash itself.
    public init(_ field: some StringProtocol) throws(PasswordHashError) {
        let hash = String(field)
        let bytes = Array(hash.utf8)
        if Self.isBcrypt(bytes) {
            self = .bcrypt(hash)
        } else if Self.isApr1(bytes) {
            self = .apr1(hash)
        } else if Self.isSHA1(bytes) {
            self = .sha1(hash)
        } else if Self.isSHACrypt(bytes, id: "5", digestLength: 43) {
            self = .sha256Crypt(hash)
        } else if Self.isSHACrypt(bytes, id: "6", digestLength: 86) {
            self = .sha512Crypt(hash)
        } else if bytes.count == 13, bytes.allSatisfy(Self.isCryptAlphabet) {
            self = .desCrypt(hash)
        } else {
            throw .unknownFormat(Self.describeUnknown(bytes))
        }
    }

    /// Short, stable name of the format, for logs and diagnostics.
    public var formatName: String {
        switch self {
        case .bcrypt: return "bcrypt"
        case .apr1: return "apr1"
        case .sha1: return "sha1"
        case .sha256Crypt: return "sha256-crypt"
        case .sha512Crypt: return "sha512-crypt"
        case .desCrypt: return "des-crypt"
        }
    }

    /// The stored hash string exactly as it appeared in the htpasswd file.
    var storedValue: String {
        switch self {
        case .bcrypt(let value), .apr1(let value), .sha1(let value),
             .sha256Crypt(let value), .sha512Crypt(let value), .desCrypt(let value):
            return value
        }
    }

    /// Returns whether `password` matches this hash.
    ///
    /// Slow for bcrypt (and SHA-crypt with many rounds) by design: callers must run it off the
    /// event loop. The recomputed hash string is compared with the stored one in constant time
    /// (no early exit on the first differing byte) so response timing does not reveal how many
    /// leading characters of a guess were right.
    ///
    /// Passwords containing NUL are rejected: `crypt_r` takes C strings, so `"secret\0junk"`
    /// would otherwise be hashed as `"secret"`.
    public func verify(_ password: String) -> Bool {
        guard !password.utf8.contains(0) else { return false }
        let computed: String?
        switch self {
        case .bcrypt(let stored), .sha256Crypt(let stored), .sha512Crypt(let stored),
             .desCrypt(let stored):
            computed = Self.cryptR(password: password, setting: stored)
        case .apr1(let stored):
            computed = Self.apr1(password: Array(password.utf8), setting: Array(stored.utf8))
        case .sha1:
            let digest = Self.legacyDigests.sha1(Array(password.utf8))
            computed = "{SHA}" + Self.base64Encode(digest)
        }
        guard let computed else { return false }
        return Self.constantTimeEquals(computed, storedValue)
    }

    /// A fixed bcrypt (cost 10) hash of a random, discarded password, generated with
    /// `htpasswd -nbB -C 10 dummy "$(head -c 24 /dev/urandom | base64)"`.
    ///
    /// When a client names a user that does not exist, the proxy still verifies the supplied
    /// password against this hash, so the response takes about as long as for a real bcrypt
    /// user and timing does not reveal which user names exist.
    public static let dummy: PasswordHash =
        .bcrypt("$2y$10$MxoixkBLpfC2BGyCXJaQYOImvF9cLH.2IXcdRh4DeioSYYh/nBWFO")

    // MARK: - Shape validation

    /// The crypt(3) "itoa64" alphabet `./0-9A-Za-z`.
    static func isCryptAlphabet(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "."), UInt8(ascii: "/"),
             UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "A")...UInt8(ascii: "Z"),
             UInt8(ascii: "a")...UInt8(ascii: "z"):
            return true
        default:
            return false
        }
    }

    /// `$2a$`, `$2b$` or `$2y$`, two-digit cost 04–31, `$`, 22 salt + 31 hash characters.
    private static func isBcrypt(_ b: [UInt8]) -> Bool {
        guard b.count == 60,
              b[0] == UInt8(ascii: "$"), b[1] == UInt8(ascii: "2"),
              [UInt8(ascii: "a"), UInt8(ascii: "b"), UInt8(ascii: "y")].contains(b[2]),
              b[3] == UInt8(ascii: "$"), b[6] == UInt8(ascii: "$"),
              let tens = digit(b[4]), let ones = digit(b[5]),
              (4...31).contains(tens * 10 + ones)
        else { return false }
        return b[7...].allSatisfy(isCryptAlphabet)
    }

    /// `$apr1$`, 0–8 salt characters, `$`, 22 hash characters.
    private static func isApr1(_ b: [UInt8]) -> Bool {
        let magic = Array("$apr1$".utf8)
        guard b.starts(with: magic) else { return false }
        let rest = b[magic.count...]
        guard let dollar = rest.firstIndex(of: UInt8(ascii: "$")) else { return false }
        let salt = rest[..<dollar]
        let digest = rest[(dollar + 1)...]
        return salt.count <= 8 && salt.allSatisfy(isCryptAlphabet)
            && digest.count == 22 && digest.allSatisfy(isCryptAlphabet)
    }

    /// `{SHA}` followed by 28 base64 characters encoding exactly 20 bytes.
    private static func isSHA1(_ b: [UInt8]) -> Bool {
        let magic = Array("{SHA}".utf8)
        guard b.starts(with: magic), b.count == magic.count + 28 else { return false }
        return BasicCredentials.strictBase64Decode(b[magic.count...])?.count == 20
    }

    /// `$<id>$`, optional `rounds=<digits>$`, salt of 0–16 printable characters other than `$`
    /// and `:`, `$`, then `digestLength` characters of the crypt alphabet.
    private static func isSHACrypt(_ b: [UInt8], id: Unicode.Scalar, digestLength: Int) -> Bool {
        let magic: [UInt8] = [UInt8(ascii: "$"), UInt8(ascii: id), UInt8(ascii: "$")]
        guard b.starts(with: magic) else { return false }
        var rest = b[magic.count...]
        let roundsPrefix = Array("rounds=".utf8)
        if rest.starts(with: roundsPrefix) {
            let afterPrefix = rest.dropFirst(roundsPrefix.count)
            guard let dollar = afterPrefix.firstIndex(of: UInt8(ascii: "$")) else { return false }
            let number = afterPrefix[..<dollar]
            guard (1...10).contains(number.count), number.allSatisfy({ digit($0) != nil }) else {
                return false
            }
            rest = afterPrefix[(dollar + 1)...]
        }
        guard let dollar = rest.firstIndex(of: UInt8(ascii: "$")) else { return false }
        let salt = rest[..<dollar]
        let digest = rest[(dollar + 1)...]
        let saltOK = salt.count <= 16
            && salt.allSatisfy { $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: ":") }
        return saltOK && digest.count == digestLength && digest.allSatisfy(isCryptAlphabet)
    }

    private static func digit(_ byte: UInt8) -> Int? {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) ? Int(byte - UInt8(ascii: "0")) : nil
    }

    /// A description of why `b` was not recognised that never echoes the hash itself: only
    /// a recognised prefix and the length are mentioned.
    private static func describeUnknown(_ b: [UInt8]) -> String {
        let knownPrefixes: [(String, String)] = [
            ("$2", "malformed bcrypt hash"),
            ("$apr1$", "malformed apr1 hash"),
            ("{SHA}", "malformed {SHA} hash"),
            ("$5$", "malformed SHA-256-crypt hash"),
            ("$6$", "malformed SHA-512-crypt hash"),
            ("$1$", "unsupported MD5-crypt ($1$) hash"),
        ]
        for (prefix, message) in knownPrefixes where b.starts(with: Array(prefix.utf8)) {
            return message
        }
        if b.isEmpty { return "empty password hash" }
        return "unrecognised hash format"
    }

    // MARK: - crypt_r

    /// Runs libxcrypt's `crypt_r` with `setting` (the full stored hash, which encodes algorithm,
    /// cost and salt). Returns `nil` on failure: libxcrypt returns a string starting with `*`
    /// ("*0"/"*1") or NULL when the setting is invalid or the algorithm is disabled.
    ///
    /// `struct crypt_data` is ~32 KiB, too large to put on a (possibly small) thread stack, so it
    /// is heap-allocated and zeroed per call; that also makes the call thread-safe.
    private static func cryptR(password: String, setting: String) -> String? {
        let data = UnsafeMutablePointer<crypt_data>.allocate(capacity: 1)
        UnsafeMutableRawPointer(data).initializeMemory(
            as: UInt8.self, repeating: 0, count: MemoryLayout<crypt_data>.size)
        defer {
            // Scrub: crypt_data holds intermediate state derived from the password.
            UnsafeMutableRawPointer(data).initializeMemory(
                as: UInt8.self, repeating: 0, count: MemoryLayout<crypt_data>.size)
            data.deallocate()
        }
        guard let result = crypt_r(password, setting, data) else { return nil }
        let string = String(cString: result)
        guard !string.isEmpty, !string.hasPrefix("*") else { return nil }
        return string
    }

    // MARK: - apr1

    /// Apache's `$apr1$` MD5-crypt: Poul-Henning Kamp's FreeBSD md5crypt with the magic string
    /// `$apr1$` instead of `$1$` (apr-util `apr_md5_encode`). Returns the full hash string
    /// `$apr1$<salt>$<22 chars>` for comparison with the stored value.
    static func apr1(password pw: [UInt8], setting: [UInt8]) -> String? {
        let magic = Array("$apr1$".utf8)
        guard setting.starts(with: magic) else { return nil }
        // Salt: up to 8 characters after the magic, stopping at '$'.
        let afterMagic = setting[magic.count...]
        let salt = Array(afterMagic.prefix { $0 != UInt8(ascii: "$") }.prefix(8))

        let hashers = legacyDigests
        var alternate = hashers.md5(pw + salt + pw)
        var context = pw + magic + salt
        var remaining = pw.count
        while remaining > 0 {
            context += alternate.prefix(min(remaining, 16))
            remaining -= 16
        }
        var bit = pw.count
        while bit != 0 {
            // The original code appends final[0] (zeroed) for set bits and pw[0] otherwise.
            context.append((bit & 1) != 0 ? 0 : (pw.first ?? 0))
            bit >>= 1
        }
        var final = hashers.md5(context)

        // 1000 rounds to slow down brute force (as slow as it was in 1994).
        for round in 0..<1000 {
            var block: [UInt8] = []
            block += (round & 1) != 0 ? pw : final
            if round % 3 != 0 { block += salt }
            if round % 7 != 0 { block += pw }
            block += (round & 1) != 0 ? final : pw
            final = hashers.md5(block)
        }

        var out = magic + salt + [UInt8(ascii: "$")]
        func to64(_ value: UInt32, _ count: Int) {
            var v = value
            for _ in 0..<count {
                out.append(cryptAlphabet[Int(v & 0x3F)])
                v >>= 6
            }
        }
        func triple(_ a: Int, _ b: Int, _ c: Int) -> UInt32 {
            (UInt32(final[a]) << 16) | (UInt32(final[b]) << 8) | UInt32(final[c])
        }
        to64(triple(0, 6, 12), 4)
        to64(triple(1, 7, 13), 4)
        to64(triple(2, 8, 14), 4)
        to64(triple(3, 9, 15), 4)
        to64(triple(4, 10, 5), 4)
        to64(UInt32(final[11]), 2)
        // Scrub intermediate values derived from the password.
        for index in final.indices { final[index] = 0 }
        for index in alternate.indices { alternate[index] = 0 }
        return String(decoding: out, as: UTF8.self)
    }

    /// OpenSSL digests, reached through a protocol to avoid deprecation noise (see
    /// `LegacyDigestsProtocol`).
    private static var legacyDigests: any LegacyDigestsProtocol.Type { LegacyDigests.self }

    private static let cryptAlphabet: [UInt8] =
        Array("./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz".utf8)

    // MARK: - Helpers

    /// Standard RFC 4648 §4 base64 with padding, as used by htpasswd's `{SHA}` format.
    static func base64Encode(_ bytes: [UInt8]) -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var index = 0
        while index < bytes.count {
            let b0 = UInt32(bytes[index])
            let b1 = index + 1 < bytes.count ? UInt32(bytes[index + 1]) : 0
            let b2 = index + 2 < bytes.count ? UInt32(bytes[index + 2]) : 0
            let group = (b0 << 16) | (b1 << 8) | b2
            out.append(alphabet[Int((group >> 18) & 0x3F)])
            out.append(alphabet[Int((group >> 12) & 0x3F)])
            out.append(index + 1 < bytes.count ? alphabet[Int((group >> 6) & 0x3F)] : UInt8(ascii: "="))
            out.append(index + 2 < bytes.count ? alphabet[Int(group & 0x3F)] : UInt8(ascii: "="))
            index += 3
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Compares two strings' UTF-8 bytes without an early exit on the first difference, so the
    /// time taken does not depend on the length of the matching prefix. A length mismatch makes
    /// the result false, but every byte position is still visited.
    @inline(never)
    static func constantTimeEquals(_ lhs: String, _ rhs: String) -> Bool {
        let a = Array(lhs.utf8)
        let b = Array(rhs.utf8)
        var difference: UInt8 = a.count == b.count ? 0 : 1
        for index in 0..<max(a.count, b.count) {
            let x = index < a.count ? a[index] : 0
            let y = index < b.count ? b[index] : 0
            difference |= x ^ y
        }
        return difference == 0
    }
}

/// Why an htpasswd password field could not be classified.
public enum PasswordHashError: Error, Sendable, Equatable {
    /// The field matches no supported format. The payload is a short human-readable reason such
    /// as "unrecognised hash format"; it never contains the hash itself, so it is safe to log.
    case unknownFormat(String)
}

// MARK: - OpenSSL low-level digests

/// Indirection for OpenSSL's low-level `MD5_*` / `SHA1` functions.
///
/// OpenSSL 3 marks these deprecated in favour of EVP, but the CCrypt shim only exposes
/// `<openssl/md5.h>` and `<openssl/sha.h>`. The functions remain fully supported in OpenSSL 3.x,
/// and MD5/SHA-1 are required here only for compatibility with existing apr1 and `{SHA}` hashes.
/// Calling them from `@available(*, deprecated)` witnesses reached through a protocol keeps the
/// build free of deprecation warnings without hiding any other diagnostics.
private protocol LegacyDigestsProtocol {
    static func md5(_ bytes: [UInt8]) -> [UInt8]
    static func sha1(_ bytes: [UInt8]) -> [UInt8]
}

private enum LegacyDigests: LegacyDigestsProtocol {
    @available(*, deprecated, message: "uses OpenSSL's low-level MD5 API (deprecated in OpenSSL 3)")
    static func md5(_ bytes: [UInt8]) -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: Int(MD5_DIGEST_LENGTH))
        var context = MD5_CTX()
        _ = MD5_Init(&context)
        bytes.withUnsafeBytes { buffer in
            _ = MD5_Update(&context, buffer.baseAddress, buffer.count)
        }
        digest.withUnsafeMutableBufferPointer { buffer in
            _ = MD5_Final(buffer.baseAddress, &context)
        }
        return digest
    }

    @available(*, deprecated, message: "uses OpenSSL's low-level SHA1 API (deprecated in OpenSSL 3)")
    static func sha1(_ bytes: [UInt8]) -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: Int(SHA_DIGEST_LENGTH))
        var context = SHA_CTX()
        _ = SHA1_Init(&context)
        bytes.withUnsafeBytes { buffer in
            _ = SHA1_Update(&context, buffer.baseAddress, buffer.count)
        }
        digest.withUnsafeMutableBufferPointer { buffer in
            _ = SHA1_Final(buffer.baseAddress, &context)
        }
        return digest
    }
}
