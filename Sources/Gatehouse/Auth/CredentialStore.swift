/// The users Gatehouse accepts: an htpasswd file and/or users given inline (`--user`).
///
/// Immutable and `Sendable`: a reload builds a new store and swaps it in whole, so a request
/// never sees half of an update.
public struct CredentialStore: Sendable {
    public private(set) var hashes: [String: PasswordHash]
    public private(set) var inlinePasswords: [String: String]
    /// Problems that did not stop loading (unknown hash formats), for start-up warnings.
    public private(set) var warnings: [String]
    /// What an unknown user's password is checked against, so that the time an answer takes
    /// does not tell which names exist: the hashes of the users themselves (nil stands for an
    /// inline user's plain comparison). Each unknown name is checked against one of them,
    /// picked by a keyed hash of the name, so unknown names take times drawn from the same
    /// mix as real ones, and the same name always the same. (One dummy cost for every unknown
    /// name told them apart from every user of another format: 64 ms against an apr1
    /// user's 1 ms.)
    private let decoys: [PasswordHash?]
    /// The key of that pick, new in every process (as `Hasher`'s own seed is, unless
    /// `SWIFT_DETERMINISTIC_HASHING` is set).
    private static let decoySeed = Int.random(in: .min ... .max)

    public init(htpasswd: HtpasswdFile? = nil, inlineUsers: [String: String] = [:]) {
        self.hashes = htpasswd?.users ?? [:]
        self.inlinePasswords = inlineUsers
        self.warnings = htpasswd?.problems.filter { !$0.isFatal }.map(\.description) ?? []
        // In name order, so that a reload of the same file keeps each unknown name's pick.
        var decoys: [PasswordHash?] = self.hashes.sorted { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }.map(\.value)
        decoys += Array(repeating: nil, count: inlineUsers.count)
        self.decoys = decoys.isEmpty ? [.dummy] : decoys
    }

    /// The check that stands in for `user`'s when no such user exists (see ``decoys``).
    func decoy(for user: String) -> PasswordHash? {
        var hasher = Hasher()
        hasher.combine(Self.decoySeed)
        var name = user
        name.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
        let index = Int(UInt(bitPattern: hasher.finalize()) % UInt(self.decoys.count))
        return self.decoys[index]
    }

    public var isEmpty: Bool { self.hashes.isEmpty && self.inlinePasswords.isEmpty }

    /// The longest password that is checked at all. apr1 hashes every byte of the password a
    /// thousand times over, so a 20 KB password cost about 65 ms of CPU per attempt (as much as
    /// a bcrypt check) for anyone who knows a user name. No htpasswd tool writes longer ones:
    /// Apache's `htpasswd` refuses more than 256 bytes, bcrypt reads 72, libxcrypt's SHA-crypt
    /// at most 512. Refused before the user is looked up, so it tells nothing about users.
    public static let maximumPasswordBytes = 1_024

    /// Checks a user name and password. May run bcrypt: call it off the event loop.
    public func verify(user: String, password: String) -> Bool {
        guard password.utf8.count <= Self.maximumPasswordBytes else { return false }
        if let inline = Self.exact(user, in: self.inlinePasswords) {
            return constantTimeEquals(Array(inline.utf8), Array(password.utf8))
        }
        if let hash = Self.exact(user, in: self.hashes) {
            return hash.verify(password)
        }
        if let decoy = self.decoy(for: user) {
            _ = decoy.verify(password)
        } else {
            _ = constantTimeEquals(Array("gatehouse-decoy".utf8), Array(password.utf8))
        }
        return false
    }

    /// The entry for `user` spelled with exactly the same bytes, as Apache compares names.
    /// Swift's `String` equality (and so a dictionary lookup) treats canonically equivalent
    /// spellings as equal: a decomposed `jose\u{301}` would find the user `josé`.
    private static func exact<Value>(_ user: String, in entries: [String: Value]) -> Value? {
        guard let index = entries.index(forKey: user) else { return nil }
        let entry = entries[index]
        return entry.key.utf8.elementsEqual(user.utf8) ? entry.value : nil
    }

    /// Whether checking this user's password is cheap enough to do on an event loop.
    func isCheap(user: String) -> Bool {
        if Self.exact(user, in: self.inlinePasswords) != nil { return true }
        let hash: PasswordHash?
        if let known = Self.exact(user, in: self.hashes) {
            hash = known
        } else {
            hash = self.decoy(for: user)
        }
        switch hash {
        case .none, .sha1: return true
        default: return false
        }
    }
}

/// Compares without an early exit, so the time taken does not tell how many bytes matched.
/// Lengths that differ always count as a difference (a length folded into the byte
/// accumulator would lose all but its low 8 bits: `secret` plus 256 NULs matched `secret`).
func constantTimeEquals(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    var difference: UInt8 = 0
    let count = max(a.count, b.count)
    for i in 0..<count {
        let x = i < a.count ? a[i] : 0
        let y = i < b.count ? b[i] : 0
        difference |= x ^ y
    }
    return difference == 0 && a.count == b.count
}
