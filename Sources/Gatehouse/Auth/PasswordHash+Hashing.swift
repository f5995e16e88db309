import CCrypt

#if canImport(Glibc)
import Glibc
#endif

extension PasswordHash {
    /// A new bcrypt hash (`$2y$`, as Apache's `htpasswd -B` writes) with a fresh random salt
    /// from libxcrypt's `crypt_gensalt_rn`, which reads the kernel's entropy source.
    /// Returns nil if the password contains NUL (crypt would cut it short) or crypt fails.
    public static func makeBcrypt(password: String, cost: Int = 10) -> PasswordHash? {
        guard !password.utf8.contains(0), (4...31).contains(cost) else { return nil }
        var setting = [CChar](repeating: 0, count: Int(CRYPT_GENSALT_OUTPUT_SIZE))
        guard crypt_gensalt_rn("$2y$", UInt(cost), nil, 0, &setting, Int32(setting.count)) != nil else { return nil }
        let data = UnsafeMutablePointer<crypt_data>.allocate(capacity: 1)
        defer { data.deallocate() }
        memset(data, 0, MemoryLayout<crypt_data>.size)
        guard let result = crypt_r(password, setting, data) else { return nil }
        let hash = String(cString: result)
        guard hash.hasPrefix("$2y$") else { return nil }
        return try? PasswordHash(hash)
    }

    /// The hash as written in an htpasswd file.
    public var fieldValue: String {
        switch self {
        case .bcrypt(let s), .apr1(let s), .sha1(let s), .sha256Crypt(let s), .sha512Crypt(let s), .desCrypt(let s): return s
        }
    }
}
