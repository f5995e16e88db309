import Foundation
import Testing
@testable import Gatehouse

/// Replays the libFuzzer corpora kept in `Fixtures/fuzz-corpus/<target>/` (grown by
/// `Scripts/fuzz.sh`) through the same parsers and the same invariants as the fuzz targets in
/// `Scripts/fuzz/`, so every input the fuzzer ever found interesting stays a regression test.
/// A `crash-*` file in a corpus is a reproducer for a bug that the fuzzer found.
///
/// Keep the checks here in step with `Scripts/fuzz/Fuzz<target>.swift`.
@Suite("Fuzz corpus")
struct FuzzCorpusTests {
    // MARK: - Corpus loading

    static func corpus(_ target: String) throws -> [(name: String, bytes: [UInt8])] {
        // Directory lookup through Bundle; fall back to the directory of a known fixture file.
        let root = try #require(
            Bundle.module.url(forResource: "fuzz-corpus", withExtension: nil, subdirectory: "Fixtures")
                ?? Bundle.module.url(forResource: "vectors", withExtension: "htpasswd", subdirectory: "Fixtures")?
                .deletingLastPathComponent().appendingPathComponent("fuzz-corpus", isDirectory: true))
        let directory = root.appendingPathComponent(target, isDirectory: true)
        let names = try FileManager.default.contentsOfDirectory(atPath: directory.path)
            .filter { !$0.hasPrefix(".") }
            .sorted()
        #expect(!names.isEmpty, "the \(target) corpus is empty")
        return try names.map { name in
            (name, Array(try Data(contentsOf: directory.appendingPathComponent(name))))
        }
    }

    // MARK: - BasicCredentials

    @Test func basicCredentialsCorpus() throws {
        for (name, bytes) in try Self.corpus("BasicCredentials") {
            Self.checkBasicCredentials(bytes, name: name)
        }
    }

    /// Independent RFC 4648 §4 base64 encoder, so round trips do not depend on the code under test.
    static func base64(_ bytes: [UInt8]) -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        var out: [UInt8] = []
        var index = 0
        while index < bytes.count {
            let remaining = bytes.count - index
            let b0 = UInt32(bytes[index])
            let b1 = remaining > 1 ? UInt32(bytes[index + 1]) : 0
            let b2 = remaining > 2 ? UInt32(bytes[index + 2]) : 0
            let group = b0 << 16 | b1 << 8 | b2
            out.append(alphabet[Int(group >> 18 & 0x3F)])
            out.append(alphabet[Int(group >> 12 & 0x3F)])
            out.append(remaining > 1 ? alphabet[Int(group >> 6 & 0x3F)] : UInt8(ascii: "="))
            out.append(remaining > 2 ? alphabet[Int(group & 0x3F)] : UInt8(ascii: "="))
            index += 3
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func checkBasicCredentials(_ bytes: [UInt8], name: String) {
        let text = String(decoding: bytes, as: UTF8.self)

        // 1. The input as a Proxy-Authorization field value.
        if let credentials = try? BasicCredentials(proxyAuthorization: text) {
            #expect(!credentials.user.utf8.contains(UInt8(ascii: ":")), "user contains ':' (\(name))")
            let trimmed = Array(text.utf8.drop { $0 == 0x20 || $0 == 0x09 })
            #expect(String(decoding: trimmed.prefix(6), as: UTF8.self).lowercased() == "basic ",
                    "accepted a scheme other than Basic (\(name))")
            let reencoded = "Basic " + base64(Array((credentials.user + ":" + credentials.password).utf8))
            #expect((try? BasicCredentials(proxyAuthorization: reencoded)) == credentials,
                    "re-encoded credentials do not round-trip (\(name))")
        }

        // 2. The input as decoded credentials: accepted iff UTF-8 with a colon, split at the first one.
        let isUTF8 = text.utf8.elementsEqual(bytes)
        do {
            let credentials = try BasicCredentials(proxyAuthorization: "Basic " + base64(bytes))
            #expect(!bytes.isEmpty && isUTF8, "accepted empty or non-UTF-8 credentials (\(name))")
            let colon = bytes.firstIndex(of: UInt8(ascii: ":"))
            #expect(colon != nil, "accepted credentials without a colon (\(name))")
            if let colon {
                #expect(Array(credentials.user.utf8) == Array(bytes[..<colon]), "user (\(name))")
                #expect(Array(credentials.password.utf8) == Array(bytes[(colon + 1)...]), "password (\(name))")
            }
        } catch {
            switch error {
            case .malformedBase64: #expect(bytes.isEmpty, "canonical base64 rejected (\(name))")
            case .invalidUTF8: #expect(!isUTF8, "valid UTF-8 rejected (\(name))")
            case .missingColon:
                #expect(isUTF8 && !bytes.contains(UInt8(ascii: ":")), "colon present but missingColon (\(name))")
            case .wrongScheme: Issue.record("Basic scheme rejected (\(name))")
            }
        }

        // 3. The strict decoder accepts exactly the canonical encodings.
        if let decoded = BasicCredentials.strictBase64Decode(bytes[...]) {
            #expect(base64(decoded) == text && isUTF8, "non-canonical base64 accepted (\(name))")
        }
        #expect(BasicCredentials.strictBase64Decode(Array(base64(bytes).utf8)[...]) == (bytes.isEmpty ? nil : bytes),
                "canonical base64 not decoded (\(name))")
    }

    // MARK: - Htpasswd

    @Test func htpasswdCorpus() throws {
        for (name, bytes) in try Self.corpus("Htpasswd") {
            Self.checkHtpasswd(bytes, name: name)
        }
    }

    static let hashReasons = [
        "malformed bcrypt hash", "malformed apr1 hash", "malformed {SHA} hash",
        "malformed SHA-256-crypt hash", "malformed SHA-512-crypt hash",
        "unsupported MD5-crypt ($1$) hash", "empty password hash", "unrecognised hash format",
    ]

    /// Fixed message pieces left once the quoted user name and "(first defined on line N)" are cut
    /// out; a hash equal to (part of) one of them can appear in a message without being echoed.
    static let messageTemplates: Set<String> = Set([
        "expected \"user:hash\" but the line has no ':' separator",
        "empty user name",
        "user name contains whitespace or control characters",
        "user ", " is defined again ", "",
    ] + hashReasons + hashReasons.map { ": \($0); this user cannot log in" })

    static func quoted(_ user: String) -> String {
        var out = "\""
        for character in user {
            if character == "\"" || character == "\\" { out.append("\\") }
            out.append(character)
        }
        return out + "\""
    }

    /// Whether `message` contains `secret` outside the `allowed` parts and the fixed template text.
    static func leaks(_ message: String, _ secret: String, allowed: [String] = []) -> Bool {
        if secret.isEmpty { return false }
        var fragments = [message[...]]
        for separator in allowed where !separator.isEmpty {
            fragments = fragments.flatMap { $0.split(separator: separator, omittingEmptySubsequences: false) }
        }
        return fragments.contains { !messageTemplates.contains(String($0)) && $0.contains(secret) }
    }

    struct ModelLine {
        var number: Int
        var user: String?  // nil: the line has no colon
        var hash: String
    }

    /// Reference model of the line rules documented on `HtpasswdFile.init(contents:path:)`.
    static func modelLines(_ contents: String) -> [ModelLine] {
        var body = Array(contents.utf8)[...]
        if body.starts(with: [0xEF, 0xBB, 0xBF]) { body = body.dropFirst(3) }
        var result: [ModelLine] = []
        var number = 0
        for raw in body.split(separator: 0x0A, omittingEmptySubsequences: false) {
            number += 1
            var line = raw
            while let last = line.last, last == 0x0D || last == 0x20 || last == 0x09 { line = line.dropLast() }
            guard let first = line.first(where: { $0 != 0x20 && $0 != 0x09 }), first != UInt8(ascii: "#") else {
                continue
            }
            if let colon = line.firstIndex(of: UInt8(ascii: ":")) {
                result.append(ModelLine(number: number,
                                        user: String(decoding: line[..<colon], as: UTF8.self),
                                        hash: String(decoding: line[(colon + 1)...], as: UTF8.self)))
            } else {
                result.append(ModelLine(number: number, user: nil, hash: String(decoding: line, as: UTF8.self)))
            }
        }
        return result
    }

    static func validUserName(_ user: String) -> Bool {
        !user.isEmpty && !user.unicodeScalars.contains {
            $0.properties.isWhitespace || $0.properties.generalCategory == .control
        }
    }

    static func checkPasswordHash(_ field: String, name: String) {
        do {
            let hash = try PasswordHash(field)
            #expect(hash.storedValue == field, "storedValue (\(name))")
            #expect(!field.utf8.contains(UInt8(ascii: ":")), "a hash containing ':' was accepted (\(name))")
            #expect((try? PasswordHash(hash.storedValue)) == hash, "reclassification (\(name))")
            let prefixes: [String: [String]] = [
                "bcrypt": ["$2a$", "$2b$", "$2y$"], "apr1": ["$apr1$"], "sha1": ["{SHA}"],
                "sha256-crypt": ["$5$"], "sha512-crypt": ["$6$"], "des-crypt": [""],
            ]
            #expect(prefixes[hash.formatName]?.contains { field.hasPrefix($0) } == true,
                    "format \(hash.formatName) does not match the prefix (\(name))")
            switch hash {
            case .sha1, .desCrypt:
                _ = hash.verify(field)
                #expect(!hash.verify("\u{0}" + field), "password with NUL verified (\(name))")
            case .apr1, .bcrypt, .sha256Crypt, .sha512Crypt:
                break  // slow; not run for every corpus file
            }
        } catch {
            switch error {
            case .unknownFormat(let reason):
                #expect(!leaks(reason, field), "unknownFormat reason contains the hash (\(name))")
            }
        }
    }

    static func checkHtpasswd(_ bytes: [UInt8], name: String) {
        let text = String(decoding: bytes, as: UTF8.self)
        checkPasswordHash(text, name: name)

        let file = HtpasswdFile(contents: text, path: "fuzz.htpasswd")
        let lines = modelLines(text)
        let byNumber = Dictionary(lines.map { ($0.number, $0) }, uniquingKeysWith: { first, _ in first })
        var definitions: [String: [ModelLine]] = [:]
        for line in lines {
            if let user = line.user, validUserName(user) { definitions[user, default: []].append(line) }
        }

        var previousLine = 0
        for problem in file.problems {
            #expect(problem.path == "fuzz.htpasswd", "problem path (\(name))")
            #expect(problem.line >= previousLine, "problems out of line order (\(name))")
            previousLine = problem.line
            guard let line = byNumber[problem.line] else {
                Issue.record("problem reported for blank/comment/nonexistent line \(problem.line) (\(name))")
                continue
            }
            var allowed: [String] = []
            if let user = line.user {
                allowed.append(quoted(user))
                if let first = definitions[user]?.first, first.number != line.number {
                    allowed.append("(first defined on line \(first.number))")
                }
            }
            #expect(!leaks(problem.message, line.hash, allowed: allowed),
                    "problem message on line \(problem.line) contains the line's hash text (\(name))")
            if line.user == nil {
                #expect(problem.isFatal, "a line without ':' is not fatal (\(name))")
            }
            #expect(problem.description.hasPrefix("fuzz.htpasswd:\(problem.line): "), "description (\(name))")
        }
        #expect(file.firstFatalProblem == file.problems.first(where: \.isFatal), "firstFatalProblem (\(name))")

        for line in lines where line.user == nil {
            #expect(file.problems.contains { $0.line == line.number && $0.isFatal },
                    "line \(line.number) without ':' not reported (\(name))")
        }
        var expectedUsers: [String: PasswordHash] = [:]
        for (user, defs) in definitions {
            if defs.count == 1, let hash = try? PasswordHash(defs[0].hash) { expectedUsers[user] = hash }
            for duplicate in defs.dropFirst() {
                #expect(file.problems.contains { $0.line == duplicate.number && $0.isFatal },
                        "duplicate user on line \(duplicate.number) not reported as fatal (\(name))")
            }
        }
        #expect(file.users == expectedUsers, "users differ from the reference model (\(name))")
        for (user, hash) in file.users {
            #expect(file.hash(for: user) == hash, "hash(for:) (\(name))")
            #expect(!user.utf8.contains(UInt8(ascii: ":")) && validUserName(user), "invalid user name accepted (\(name))")
            checkPasswordHash(hash.storedValue, name: name)
        }
    }

    // MARK: - RequestTarget / Authority

    @Test func requestTargetCorpus() throws {
        for (name, bytes) in try Self.corpus("RequestTarget") {
            Self.checkRequestTarget(bytes, name: name)
        }
    }

    static func checkAuthority(_ authority: Authority, name: String) {
        #expect(!authority.host.isEmpty, "empty host (\(name))")
        #expect(authority.port.map { (0...65535).contains($0) } ?? true, "port out of range (\(name))")
        // The host goes to the resolver and into the upstream Host header: printable ASCII only.
        #expect(authority.host.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F },
                "host contains non-ASCII, space or control bytes (\(name))")
        #expect(!authority.host.contains("[") && !authority.host.contains("]") && !authority.host.contains("@")
                && !authority.host.contains("/"), "host contains a delimiter (\(name))")
        #expect(Authority(parsing: Substring(authority.description)) == authority,
                "description does not re-parse to the same authority (\(name))")
    }

    static func checkRequestTarget(_ bytes: [UInt8], name: String) {
        let text = String(decoding: bytes, as: UTF8.self)

        if let authority = Authority(parsing: Substring(text)) {
            checkAuthority(authority, name: name)
        }

        switch RequestTarget.parseConnect(text) {
        case .success(let authority):
            checkAuthority(authority, name: name)
            #expect(authority.port.map { $0 > 0 } == true, "CONNECT target without a non-zero port (\(name))")
            #expect(RequestTarget.parseConnect(authority.description) == .success(authority),
                    "CONNECT description round-trip (\(name))")
        case .failure(let error):
            #expect(error == .invalid, "parseConnect failed with \(error) (\(name))")
        }

        switch RequestTarget.parseAbsolute(text) {
        case .success(let uri):
            checkAuthority(uri.authority, name: name)
            #expect(uri.authority.port != 0, "port 0 accepted (\(name))")
            #expect(uri.originForm.hasPrefix("/"), "originForm does not start with '/' (\(name))")
            #expect(uri.originForm.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F },
                    "originForm contains bytes <= 0x20 or non-ASCII (\(name))")
            #expect(!uri.originForm.contains("#"), "originForm contains a fragment (\(name))")
            #expect(text.lowercased().hasPrefix("http://"), "accepted a non-http scheme (\(name))")
            #expect(uri.hadUserinfo == text.dropFirst(7).prefix { $0 != "/" && $0 != "?" && $0 != "#" }.contains("@"),
                    "hadUserinfo (\(name))")
            #expect(uri.port == (uri.authority.port ?? 80), "effective port (\(name))")
            let host = Authority(parsing: Substring(uri.hostHeader))
            #expect(host?.host == uri.authority.host && (host?.port ?? 80) == uri.port,
                    "hostHeader does not re-parse (\(name))")
            switch RequestTarget.parseAbsolute(uri.logDescription) {
            case .success(let again):
                #expect(again.authority.host == uri.authority.host && again.port == uri.port
                        && again.originForm == uri.originForm && !again.hadUserinfo,
                        "logDescription round-trip differs (\(name))")
            case .failure(let error):
                Issue.record("logDescription does not re-parse: \(error) (\(name))")
            }
        case .failure(let error):
            switch error {
            case .originForm:
                #expect(text.hasPrefix("/") || text == "*", "originForm error for a non-origin-form target (\(name))")
            case .httpsAbsoluteForm:
                #expect(text.lowercased().hasPrefix("https://"), "httpsAbsoluteForm for a non-https target (\(name))")
            case .invalid:
                break
            }
        }
    }
}
