import Foundation
import Testing
@testable import Gatehouse

/// Tests for `HtpasswdFile` parsing and loading.
@Suite("HtpasswdFile")
struct HtpasswdFileTests {
    static let bcrypt = "$2y$05$eyhstfk9lfM5fclJJoT5fuzpho1zFs/944K8vxifAoB5Ucc09U6a."  // bcrypt-secret
    static let apr1 = "$apr1$4yCRZosZ$0RXjcixokb4A7k.IN5nRK."                         // apr1-secret
    static let sha1 = "{SHA}F/WZ9PxtuIpP2yyadrWdU4eK0og="                              // sha1-secret

    @Test func commentsBlankLinesAndCRLF() throws {
        let contents = "# users\r\n\r\n   \r\n  # indented comment\r\nalice:\(Self.bcrypt)\r\n\t\nbob:\(Self.apr1)\r\n"
        let file = HtpasswdFile(contents: contents, path: "users.htpasswd")
        #expect(file.problems.isEmpty)
        #expect(file.users.count == 2)
        #expect(file.hash(for: "alice") == .bcrypt(Self.bcrypt))
        #expect(file.hash(for: "bob") == .apr1(Self.apr1))
        #expect(try #require(file.hash(for: "bob")).verify("apr1-secret"))
        #expect(file.hash(for: "carol") == nil)
        #expect(file.hash(for: "Alice") == nil, "user names are case-sensitive")
    }

    @Test("CR-only line ends (classic Mac OS) end lines too; the file was one line and no one could log in")
    func crOnlyLineEnds() throws {
        let file = HtpasswdFile(contents: "# users\ralice:\(Self.bcrypt)\r\rbob:\(Self.apr1)\rcarol:x\r", path: "p")
        #expect(file.users.count == 2)
        #expect(file.hash(for: "alice") == .bcrypt(Self.bcrypt))
        #expect(try #require(file.hash(for: "bob")).verify("apr1-secret"))
        #expect(file.problems.map(\.line) == [5], "carol's hash is unrecognised, on her own line")
        #expect(HtpasswdFile.lines(of: Array("a\r\nb\rc\r".utf8)[...]).map { String(decoding: $0, as: UTF8.self) } == ["a\r", "b", "c", ""])
    }

    @Test("a FIFO or a device in the file's place is refused at once (a FIFO blocked the event loop that polls the file)")
    func notARegularFile() throws {
        let fifo = FileManager.default.temporaryDirectory.appendingPathComponent("fifo-\(UUID().uuidString.prefix(8))").path
        #expect(mkfifo(fifo, 0o600) == 0)
        defer { unlink(fifo) }
        for path in [fifo, "/dev/null"] {
            #expect(throws: HtpasswdError.unreadable(path: path, reason: "it is not a regular file")) { try HtpasswdFile.load(path: path) }
        }
        let settings = GatehouseSettings.load(path: fifo)
        #expect(settings.problems.map(\.message) == ["cannot read the config file: it is a FIFO"])
    }

    @Test func noTrailingNewlineAndByteOrderMark() {
        let file = HtpasswdFile(contents: "\u{FEFF}alice:\(Self.sha1)", path: "p")
        #expect(file.problems.isEmpty)
        #expect(file.hash(for: "alice") == .sha1(Self.sha1))
    }

    @Test func trailingWhitespaceAfterHashIsIgnored() {
        let file = HtpasswdFile(contents: "alice:\(Self.sha1) \t\n", path: "p")
        #expect(file.problems.isEmpty)
        #expect(file.hash(for: "alice") == .sha1(Self.sha1))
    }

    @Test("a third field is ignored, as Apache's mod_authn_file does (user:hash:comment), with a warning")
    func thirdFieldIgnored() throws {
        // Hashes never contain ':', so "alice:x:y" is the user "alice" (not "alice:x") with
        // the hash "x"; it was skipped, which locked out users of files Apache accepts.
        let file = HtpasswdFile(contents: "alice:\(Self.sha1):comment\n", path: "p")
        #expect(file.hash(for: "alice") == .sha1(Self.sha1))
        let problem = try #require(file.problems.first)
        #expect(problem.isFatal == false)
        #expect(problem.message.contains("second ':'"))
        #expect(problem.line == 1)
    }

    @Test func malformedLineIsFatalWithLineNumber() {
        let contents = "# header\nalice:\(Self.bcrypt)\n\nthis line has no colon\nbob:\(Self.apr1)\n"
        let file = HtpasswdFile(contents: contents, path: "/etc/gatehouse/users")
        #expect(file.problems.count == 1)
        let problem = file.problems.first
        #expect(problem?.line == 4)
        #expect(problem?.isFatal == true)
        #expect(problem?.path == "/etc/gatehouse/users")
        #expect(problem?.description.hasPrefix("/etc/gatehouse/users:4: ") == true)
        #expect(problem?.message.contains("this line") == false, "line content is not echoed")
        #expect(file.firstFatalProblem == problem)
        // Parsing continues so every problem is reported; valid users are still collected.
        #expect(file.users.count == 2)
    }

    @Test(arguments: [
        (":\(bcrypt)", "empty user name", true),
        ("al\u{1}ice:\(bcrypt)", "control characters; this user cannot log in", false),
        ("al\tice:\(bcrypt)", "control characters; this user cannot log in", false),
    ])
    func invalidUserNames(line: String, expectedFragment: String, fatal: Bool) {
        let file = HtpasswdFile(contents: "ok:\(Self.sha1)\n\(line)\n", path: "p")
        #expect(file.problems.count == 1)
        #expect(file.problems.first?.line == 2)
        #expect(file.problems.first?.isFatal == fatal)
        #expect(file.problems.first?.message.contains(expectedFragment) == true)
        #expect(file.hash(for: "ok") != nil)
        #expect(file.users.count == 1)
    }

    @Test("names with spaces are users, as in Apache's htpasswd (htpasswd -b file 'sp ace' pw)")
    func spacesInUserNames() {
        let file = HtpasswdFile(contents: "sp ace:\(Self.sha1)\n alice:\(Self.sha1)\n", path: "p")
        #expect(file.problems.isEmpty)
        #expect(file.users.keys.sorted() == [" alice", "sp ace"])
    }

    @Test func unknownFormatIsNonFatalAndUserExcluded() {
        let secretLooking = "$1$saltsalt$2vw1eBFqvNQlnJhjA3mTU0"
        let contents = "alice:\(Self.bcrypt)\nbob:\(secretLooking)\ncarol:plaintextpassword\n"
        let file = HtpasswdFile(contents: contents, path: "users")
        #expect(file.users.keys.sorted() == ["alice"])
        #expect(file.problems.count == 2)
        #expect(file.problems.allSatisfy { !$0.isFatal })
        #expect(file.firstFatalProblem == nil)
        #expect(file.problems.map(\.line) == [2, 3])
        #expect(file.problems[0].message.contains("user \"bob\""))
        #expect(file.problems[0].message.contains("cannot log in"))
        #expect(file.problems[1].message.contains("user \"carol\""))
    }

    @Test func duplicateUserIsFatalAndNamesFirstLine() {
        let contents = "alice:\(Self.bcrypt)\n# comment\nalice:\(Self.apr1)\n"
        let file = HtpasswdFile(contents: contents, path: "users")
        #expect(file.problems.count == 1)
        let problem = file.problems.first
        #expect(problem?.isFatal == true)
        #expect(problem?.line == 3)
        #expect(problem?.message.contains("\"alice\"") == true)
        #expect(problem?.message.contains("line 1") == true)
        #expect(file.hash(for: "alice") == nil, "an ambiguous user cannot log in")
    }

    @Test func noProblemMessageContainsHashText() {
        let hashes = [
            Self.bcrypt, Self.apr1, Self.sha1,
            "$2y$05$eyhstfk9lfM5fclJJoT5fuzpho1zFs/944K8vxifAoB5Ucc09U6a",
            "$apr1$4yCRZosZ$0RXjcixokb4A7k.IN5nRK",
            "{SHA}F/WZ9PxtuIpP2yyadrWdU4eK0og",
            "$6$NnmaURZ7q96rf0Gt$c.pHRfUALPeK8mZMc",
            "$1$saltsalt$2vw1eBFqvNQlnJhjA3mTU0",
            "hunter2-plaintext",
        ]
        var lines: [String] = []
        for (index, hash) in hashes.enumerated() {
            lines.append("user\(index):\(hash)")   // unknown formats (and later duplicates)
            lines.append("user\(index):\(hash)")   // duplicate
            lines.append(hash)                      // no colon for the ones without ':'
            lines.append("x\u{1}\(index):\(hash)")  // invalid user name (a control character)
        }
        let file = HtpasswdFile(contents: lines.joined(separator: "\n"), path: "p")
        #expect(!file.problems.isEmpty)
        for problem in file.problems {
            for hash in hashes {
                #expect(!problem.message.contains(hash))
                #expect(!problem.message.contains(hash.suffix(10)))
                #expect(!problem.description.contains(hash.suffix(10)))
            }
        }
    }

    @Test func loadMissingFileIsUnreadable() {
        let path = "/nonexistent-\(UInt64.random(in: .min ... .max))/users.htpasswd"
        do {
            _ = try HtpasswdFile.load(path: path)
            Issue.record("load unexpectedly succeeded")
        } catch {
            guard case .unreadable(let errorPath, let reason) = error else {
                Issue.record("unexpected error \(error)")
                return
            }
            #expect(errorPath == path)
            #expect(!reason.isEmpty)
            #expect(error.description.hasPrefix("cannot read \(path): "))
        }
    }

    @Test func loadThrowsFirstFatalProblem() throws {
        let url = FileManager.default.temporaryDirectory
            .appendingPathComponent("gatehouse-htpasswd-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: url) }
        try "bob:nonsense\nalice:\(Self.bcrypt)\nbroken\nalice:\(Self.apr1)\n"
            .write(to: url, atomically: true, encoding: .utf8)
        #expect(throws: HtpasswdError.malformed(
            HtpasswdFile.Problem(path: url.path, line: 3,
                                 message: "expected \"user:hash\" but the line has no ':' separator",
                                 isFatal: true))) {
            try HtpasswdFile.load(path: url.path)
        }
    }

    @Test func loadSucceedsWithOnlyNonFatalProblems() throws {
        let url = FileManager.default.temporaryDirectory
            .appendingPathComponent("gatehouse-htpasswd-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: url) }
        try "bob:nonsense\r\nalice:\(Self.bcrypt)\r\n".write(to: url, atomically: true, encoding: .utf8)
        let file = try HtpasswdFile.load(path: url.path)
        #expect(file.path == url.path)
        #expect(file.users.keys.sorted() == ["alice"])
        #expect(file.problems.count == 1)
        #expect(file.problems.first?.isFatal == false)
        #expect(file.problems.first?.description.hasPrefix("\(url.path):1: user \"bob\"") == true)
    }

    @Test("a user name that is not UTF-8 leaves out that user, not the whole file")
    func loadSkipsNonUTF8Names() throws {
        let url = FileManager.default.temporaryDirectory
            .appendingPathComponent("gatehouse-htpasswd-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: url) }
        try Data(Array("ok:\(Self.sha1)\n".utf8) + [0x62, 0xFF, 0x64, 0x3A] + Array("\(Self.sha1)\n".utf8)).write(to: url)
        let file = try HtpasswdFile.load(path: url.path)
        #expect(file.users.keys.sorted() == ["ok"])
        #expect(file.problems.map(\.description) == ["\(url.path):2: user name is not valid UTF-8; this user cannot log in"])
    }

    @Test func fixtureLoads() throws {
        let url = try #require(
            Bundle.module.url(forResource: "vectors", withExtension: "htpasswd", subdirectory: "Fixtures"))
        let file = try HtpasswdFile.load(path: url.path)
        #expect(file.problems.isEmpty)
        #expect(file.hash(for: "jöse")?.formatName == "bcrypt")
        #expect(file.hash(for: "des-user") == .desCrypt("IAgU.J5U/DWzg"))
    }
}
