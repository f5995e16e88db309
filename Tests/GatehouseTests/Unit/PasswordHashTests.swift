import Foundation
import Testing
@testable import Gatehouse

/// Tests for `PasswordHash` against vectors produced by Apache's `htpasswd`
/// (see `Fixtures/vectors.md` for the commands and plaintext passwords).
@Suite("PasswordHash")
struct PasswordHashTests {
    /// Loads `Fixtures/vectors.htpasswd` from the test bundle and requires that every line
    /// parsed cleanly.
    static func loadVectors() throws -> HtpasswdFile {
        let url = try #require(
            Bundle.module.url(forResource: "vectors", withExtension: "htpasswd", subdirectory: "Fixtures"))
        let contents = try String(contentsOf: url, encoding: .utf8)
        let file = HtpasswdFile(contents: contents, path: url.path)
        #expect(file.problems.isEmpty, "\(file.problems)")
        return file
    }

    /// (user, plaintext password, expected format name). Plaintexts are listed in vectors.md.
    static let vectors: [(user: String, password: String, format: String)] = [
        ("bcrypt-user", "bcrypt-secret", "bcrypt"),
        ("bcrypt10-user", "bcrypt-ten", "bcrypt"),
        ("bcrypt-2a-user", "bcrypt-secret", "bcrypt"),
        ("bcrypt-2b-user", "bcrypt-secret", "bcrypt"),
        ("apr1-user", "apr1-secret", "apr1"),
        ("sha1-user", "sha1-secret", "sha1"),
        ("sha256-user", "sha256-secret", "sha256-crypt"),
        ("sha512-user", "sha512-secret", "sha512-crypt"),
        ("sha512-rounds-user", "sha512-rounds", "sha512-crypt"),
        ("des-user", "desPass1", "des-crypt"),
        ("colon-user", "pa:ss:wo:rd", "bcrypt"),
        ("utf8-user", "pä§s wörd ✓", "apr1"),
        ("jöse", "pä§s", "bcrypt"),
    ]

    @Test func fixtureContainsExactlyTheDocumentedUsers() throws {
        let file = try Self.loadVectors()
        #expect(Set(file.users.keys) == Set(Self.vectors.map(\.user)))
    }

    @Test(arguments: vectors)
    func rightPasswordVerifiesWrongOneDoesNot(vector: (user: String, password: String, format: String)) throws {
        let file = try Self.loadVectors()
        let hash = try #require(file.hash(for: vector.user))
        #expect(hash.formatName == vector.format)
        #expect(hash.verify(vector.password))
        #expect(!hash.verify("x" + vector.password))
        #expect(!hash.verify(""))
        #expect(!hash.verify(vector.password.uppercased()))
        #expect(!hash.verify(String(vector.password.dropLast())))
    }

    @Test func bcryptVariantsAreAllBcrypt() throws {
        let body = "05$eyhstfk9lfM5fclJJoT5fuzpho1zFs/944K8vxifAoB5Ucc09U6a."
        for variant in ["2y", "2a", "2b"] {
            let hash = try PasswordHash("$\(variant)$\(body)")
            #expect(hash == .bcrypt("$\(variant)$\(body)"))
            #expect(hash.verify("bcrypt-secret"))
            #expect(!hash.verify("bcrypt-secreT"))
        }
        // $2x$ (the buggy pre-2011 crypt_blowfish variant) and plain $2$ are not accepted.
        #expect(throws: PasswordHashError.self) { try PasswordHash("$2x$\(body)") }
        #expect(throws: PasswordHashError.self) { try PasswordHash("$2$\(body)") }
    }

    @Test func classifiesEachFormat() throws {
        #expect(try PasswordHash("$apr1$4yCRZosZ$0RXjcixokb4A7k.IN5nRK.").formatName == "apr1")
        #expect(try PasswordHash("{SHA}F/WZ9PxtuIpP2yyadrWdU4eK0og=").formatName == "sha1")
        #expect(try PasswordHash("$5$uCAX7xoBvrq.9Fc8$66fRswvM28yBCrkGdX83iq2xm53ERqYGtVtWBFDzHk3").formatName
            == "sha256-crypt")
        #expect(try PasswordHash("IAgU.J5U/DWzg").formatName == "des-crypt")
        #expect(try PasswordHash("$2y$05$eyhstfk9lfM5fclJJoT5fuzpho1zFs/944K8vxifAoB5Ucc09U6a.").formatName
            == "bcrypt")
    }

    @Test(arguments: [
        "",
        "plaintext",
        "secret12345",                                              // plain text, 11 chars
        "IAgU.J5U/DWz",                                             // 12 chars: not DES
        "IAgU.J5U/DWzgg",                                           // 14 chars: not DES
        "IAgU.J5U/DW!g",                                            // 13 chars, bad alphabet
        "$1$saltsalt$2vw1eBFqvNQlnJhjA3mTU0",                        // md5-crypt: not supported
        "$2y$05$eyhstfk9lfM5fclJJoT5fuzpho1zFs/944K8vxifAoB5Ucc09U6a",  // bcrypt, one char short
        "$2y$03$eyhstfk9lfM5fclJJoT5fuzpho1zFs/944K8vxifAoB5Ucc09U6a.", // cost below 4
        "$2y$32$eyhstfk9lfM5fclJJoT5fuzpho1zFs/944K8vxifAoB5Ucc09U6a.", // cost above 31
        "$apr1$toolongsalt$0RXjcixokb4A7k.IN5nRK.",                 // salt > 8 chars
        "$apr1$4yCRZosZ$0RXjcixokb4A7k.IN5nRK",                     // digest 21 chars
        "$apr1$4yCRZosZ0RXjcixokb4A7k.IN5nRK.",                     // no second '$'
        "{SHA}F/WZ9PxtuIpP2yyadrWdU4eK0og",                         // missing padding
        "{SHA}F/WZ9PxtuIpP2yyadrWdU4eK0og=extra",
        "{SSHA}F/WZ9PxtuIpP2yyadrWdU4eK0og=",                       // salted SHA: not supported
        "$5$uCAX7xoBvrq.9Fc8$66fRswvM28yBCrkGdX83iq2xm53ERqYGtVtWBFDzHk",   // 42 chars
        "$5$rounds=$uCAX7xoBvrq.9Fc8$66fRswvM28yBCrkGdX83iq2xm53ERqYGtVtWBFDzHk3",
        "$6$NnmaURZ7q96rf0Gt$c.pHRfUALPeK8mZMc",                    // truncated
        "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g",
        " $apr1$4yCRZosZ$0RXjcixokb4A7k.IN5nRK.",                   // leading space
    ])
    func unknownFormatsAreRejectedWithoutEchoingTheHash(field: String) {
        do {
            let hash = try PasswordHash(field)
            Issue.record("unexpectedly classified as \(hash.formatName)")
        } catch {
            switch error {
            case .unknownFormat(let description):
                #expect(!description.isEmpty)
                if field.count > 6 {
                    #expect(!description.contains(field))
                    #expect(!description.contains(field.suffix(8)))
                }
            }
        }
    }

    @Test func validShapeWithWrongDigestDoesNotVerify() throws {
        // Same salts as the fixture, last digest character changed.
        let apr1 = try PasswordHash("$apr1$4yCRZosZ$0RXjcixokb4A7k.IN5nRK/")
        #expect(!apr1.verify("apr1-secret"))
        let sha1 = try PasswordHash("{SHA}F/WZ9PxtuIpP2yyadrWdU4eK0ok=")
        #expect(!sha1.verify("sha1-secret"))
        let des = try PasswordHash("IAgU.J5U/DWzh")
        #expect(!des.verify("desPass1"))
    }

    @Test func desCryptOnlyUsesFirstEightCharacters() throws {
        // Traditional DES crypt ignores everything after 8 characters (why `htpasswd -d` calls
        // it insecure). This documents the behaviour rather than endorsing it.
        let des = try PasswordHash("IAgU.J5U/DWzg")
        #expect(des.verify("desPass1"))
        #expect(des.verify("desPass1-anything"))
        #expect(!des.verify("desPass"))
    }

    @Test func apr1MatchesOpenSSLAndEmptyPassword() throws {
        // `openssl passwd -apr1 -salt 4yCRZosZ apr1-secret` gives the same string as htpasswd.
        let computed = PasswordHash.apr1(
            password: Array("apr1-secret".utf8), setting: Array("$apr1$4yCRZosZ$".utf8))
        #expect(computed == "$apr1$4yCRZosZ$0RXjcixokb4A7k.IN5nRK.")
        // `openssl passwd -apr1 -salt abc ''`
        let empty = PasswordHash.apr1(password: [], setting: Array("$apr1$abc$".utf8))
        #expect(empty == "$apr1$abc$BfqKdn9xFDWJPa3kcp/PH0")
    }

    @Test func passwordWithNULIsRejected() throws {
        // crypt_r takes C strings; "desPass1\0junk" must not be treated as "desPass1".
        let file = try Self.loadVectors()
        let des = try #require(file.hash(for: "des-user"))
        #expect(!des.verify("desPass1\u{0}junk"))
        let sha1 = try #require(file.hash(for: "sha1-user"))
        #expect(!sha1.verify("sha1-secret\u{0}"))
    }

    @Test func dummyIsBcryptAndMatchesNothingGuessable() {
        #expect(PasswordHash.dummy.formatName == "bcrypt")
        // Cost 10 so its timing resembles a real Apache bcrypt entry.
        if case .bcrypt(let value) = PasswordHash.dummy {
            #expect(value.hasPrefix("$2y$10$"))
            #expect(throws: Never.self) { try PasswordHash(value) }
        }
        for guess in ["", "password", "dummy", "admin", String(UInt64.random(in: .min ... .max))] {
            #expect(!PasswordHash.dummy.verify(guess))
        }
    }

    @Test func constantTimeEquals() {
        #expect(PasswordHash.constantTimeEquals("", ""))
        #expect(PasswordHash.constantTimeEquals("abc", "abc"))
        #expect(!PasswordHash.constantTimeEquals("abc", "abd"))
        #expect(!PasswordHash.constantTimeEquals("abc", "abcd"))
        #expect(!PasswordHash.constantTimeEquals("abcd", "abc"))
        #expect(!PasswordHash.constantTimeEquals("", "a"))
    }

    @Test func base64EncoderMatchesRFC4648Vectors() {
        // RFC 4648 §10 test vectors.
        let cases = ["": "", "f": "Zg==", "fo": "Zm8=", "foo": "Zm9v", "foob": "Zm9vYg==",
                     "fooba": "Zm9vYmE=", "foobar": "Zm9vYmFy"]
        for (plain, encoded) in cases {
            #expect(PasswordHash.base64Encode(Array(plain.utf8)) == encoded)
        }
    }
}
