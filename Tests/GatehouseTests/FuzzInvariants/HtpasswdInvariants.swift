// Invariants of the Htpasswd parsers, checked by the libFuzzer target Scripts/fuzz/FuzzHtpasswd.swift
// on every generated input and by FuzzCorpusTests on the saved corpus.

#if canImport(Gatehouse)
@testable import Gatehouse
#endif


/// Reasons `PasswordHash` gives for an unknown format.
private let hashReasons = [
    "malformed bcrypt hash", "malformed apr1 hash", "malformed {SHA} hash",
    "malformed SHA-256-crypt hash", "malformed SHA-512-crypt hash",
    "unsupported MD5-crypt ($1$) hash", "empty password hash", "unrecognised hash format",
]

/// The fixed pieces a problem message is made of once the quoted user name and the
/// "(first defined on line N)" part are cut out. A hash equal to (part of) one of these can
/// appear in a message without having been echoed.
private let messageTemplates: Set<String> = Set([
    "expected \"user:hash\" but the line has no ':' separator",
    "empty user name",
    "user name contains control characters; this user cannot log in",
    "user name is not valid UTF-8; this user cannot log in",
    "user ", " is defined again ", "",
    "text after a second ':' is ignored, as Apache does",
] + hashReasons + hashReasons.map { ": \($0); this user cannot log in" })

/// `"name"` with `"` and `\` escaped, as `HtpasswdFile` quotes user names in messages.
private func quoted(_ user: String) -> String {
    var out = "\""
    for character in user {
        if character == "\"" || character == "\\" { out.append("\\") }
        out.append(character)
    }
    return out + "\""
}

/// One non-blank, non-comment line as the reference model sees it.
private struct ModelLine {
    var number: Int
    var user: String?   // nil: no colon
    var hash: String
}

/// Reference model of the line splitting rules documented on `HtpasswdFile.init(contents:path:)`.
private func modelLines(_ contents: String) -> [ModelLine] {
    var body = Array(contents.utf8)[...]
    if body.starts(with: [0xEF, 0xBB, 0xBF]) { body = body.dropFirst(3) }
    var result: [ModelLine] = []
    var number = 0
    // Lines end at LF, and at a CR that no LF follows (classic Mac OS line ends); the CR of a
    // CRLF stays on its line and is stripped below.
    var raws: [ArraySlice<UInt8>] = []
    var start = body.startIndex
    for index in body.indices {
        let next = index + 1
        if body[index] == 0x0A || (body[index] == 0x0D && (next == body.endIndex || body[next] != 0x0A)) {
            raws.append(body[start..<index])
            start = next
        }
    }
    raws.append(body[start...])
    for raw in raws {
        number += 1
        var line = raw
        while let last = line.last, last == 0x0D || last == 0x20 || last == 0x09 { line = line.dropLast() }
        guard let first = line.first(where: { $0 != 0x20 && $0 != 0x09 }), first != UInt8(ascii: "#") else { continue }
        if let colon = line.firstIndex(of: UInt8(ascii: ":")) {
            // The hash ends at a second colon, if any (Apache ignores a third field).
            let rest = line[(colon + 1)...]
            let hash = rest.firstIndex(of: UInt8(ascii: ":")).map { rest[..<$0] } ?? rest
            result.append(ModelLine(number: number,
                                    user: String(decoding: line[..<colon], as: UTF8.self),
                                    hash: String(decoding: hash, as: UTF8.self)))
        } else {
            result.append(ModelLine(number: number, user: nil, hash: String(decoding: line, as: UTF8.self)))
        }
    }
    return result
}

private func validUserName(_ user: String) -> Bool {
    !user.isEmpty && !user.unicodeScalars.contains { $0.properties.generalCategory == .control }
}

/// Whether `message` contains `secret` anywhere except in the parts it may legitimately repeat
/// (`allowed`: the quoted user name, the line reference) and in fixed template text.
private func leaks(_ message: String, _ secret: String, allowed: [String] = []) -> Bool {
    if secret.isEmpty { return false }
    var fragments = [message[...]]
    for separator in allowed where !separator.isEmpty {
        fragments = fragments.flatMap { $0.split(separator: separator, omittingEmptySubsequences: false) }
    }
    return fragments.contains { !messageTemplates.contains(String($0)) && $0.contains(secret) }
}

private func checkPasswordHash(_ field: String, _ v: FuzzViolations) {
    do {
        let hash = try PasswordHash(field)
        v.check(hash.storedValue == field, "storedValue differs from the classified field")
        v.check(!field.utf8.contains(UInt8(ascii: ":")), "a hash containing ':' was accepted")
        v.check((try? PasswordHash(hash.storedValue)) == hash, "reclassification differs")
        let prefixes: [String: [String]] = [
            "bcrypt": ["$2a$", "$2b$", "$2y$"], "apr1": ["$apr1$"], "sha1": ["{SHA}"],
            "sha256-crypt": ["$5$"], "sha512-crypt": ["$6$"], "des-crypt": [""],
        ]
        v.check(prefixes[hash.formatName]?.contains { field.hasPrefix($0) } == true, "format does not match prefix")
        switch hash {
        case .sha1, .desCrypt:
            // Cheap formats: verify must not crash, and a wrong password must not match.
            _ = hash.verify(field)
            v.check(!hash.verify("\u{0}" + field), "password with NUL verified")
        case .apr1, .bcrypt, .sha256Crypt, .sha512Crypt:
            break  // 1000 MD5 rounds / deliberately slow: too slow to run on every input
        }
    } catch {
        switch error {
        case .unknownFormat(let reason):
            v.check(!leaks(reason, field), "unknownFormat reason contains the hash")
        }
    }
}

enum HtpasswdInvariants {
    /// Every invariant the input breaks; empty when all hold.
    static func violations(_ bytes: [UInt8]) -> [String] {
        FuzzViolations.collect { run(bytes, $0) }
    }
}

private func run(_ bytes: [UInt8], _ v: FuzzViolations) {
    let text = String(decoding: bytes, as: UTF8.self)

    // 1. The whole input as a password-hash field.
    checkPasswordHash(text, v)

    // 2. The whole input as an htpasswd file.
    let file = HtpasswdFile(contents: text, path: "fuzz.htpasswd")
    let lines = modelLines(text)
    let byNumber = Dictionary(lines.map { ($0.number, $0) }, uniquingKeysWith: { first, _ in first })

    // Model: a user is usable iff its name is valid, it is defined on exactly one line (counting
    // only lines with a valid name) and that line's hash classifies.
    var definitions: [String: [ModelLine]] = [:]
    for line in lines {
        if let user = line.user, validUserName(user) { definitions[user, default: []].append(line) }
    }
    var previousLine = 0
    for problem in file.problems {
        v.check(problem.path == "fuzz.htpasswd", "problem path")
        v.check(problem.line >= previousLine, "problems out of line order")
        previousLine = problem.line
        guard let line = byNumber[problem.line] else {
            v.check(false, "problem reported for blank/comment/nonexistent line \(problem.line)")
            continue
        }
        var allowed: [String] = []
        if let user = line.user {
            allowed.append(quoted(user))
            if let first = definitions[user]?.first, first.number != line.number {
                allowed.append("(first defined on line \(first.number))")
            }
        }
        v.check(!leaks(problem.message, line.hash, allowed: allowed), "problem message contains the line's hash text")
        if line.user == nil {
            // No colon: the whole line may be a stray hash and must not be echoed.
            v.check(problem.isFatal, "a line without ':' is not fatal")
        }
        v.check(problem.description.hasPrefix("fuzz.htpasswd:\(problem.line): "), "description prefix")
    }
    v.check(file.firstFatalProblem == file.problems.first(where: \.isFatal), "firstFatalProblem")

    for line in lines where line.user == nil {
        v.check(file.problems.contains { $0.line == line.number && $0.isFatal }, "line without ':' not reported")
    }
    var expectedUsers: [String: PasswordHash] = [:]
    for (user, defs) in definitions {
        if defs.count == 1, let hash = try? PasswordHash(defs[0].hash) { expectedUsers[user] = hash }
        for duplicate in defs.dropFirst() {
            v.check(file.problems.contains { $0.line == duplicate.number && $0.isFatal }, "duplicate user not reported as fatal")
        }
    }
    v.check(file.users == expectedUsers, "users differ from the reference model")
    for (user, hash) in file.users {
        v.check(file.hash(for: user) == hash, "hash(for:)")
        v.check(!user.utf8.contains(UInt8(ascii: ":")) && validUserName(user), "invalid user name accepted")
        checkPasswordHash(hash.storedValue, v)
    }
}
