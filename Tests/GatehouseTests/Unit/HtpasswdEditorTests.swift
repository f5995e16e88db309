import Foundation
@testable import Gatehouse
import Testing

@Suite("gatehouse passwd's file edits")
struct HtpasswdEditorTests {
    @Test("a file with CRLF line ends is edited line by line and keeps them (an edit kept only the user it changed)")
    func crlfFile() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("crlf-\(UUID().uuidString.prefix(8)).htpasswd").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let old = try #require(PasswordHash.makeBcrypt(password: "old", cost: 4))
        try Data("alice:\(old.fieldValue)\r\nbob:\(old.fieldValue)\r\ncarol:\(old.fieldValue)\r\n".utf8).write(to: URL(fileURLWithPath: path))
        let new = try #require(PasswordHash.makeBcrypt(password: "new", cost: 4))

        #expect(try HtpasswdEditor.setUser("alice", hash: new, path: path) == .updated)
        #expect(try HtpasswdEditor.setUser("carol", hash: new, path: path) == .updated, "a later user is found, not added twice")
        try HtpasswdEditor.deleteUser("bob", path: path)
        #expect(try HtpasswdEditor.setUser("dave", hash: new, path: path) == .added)
        let text = try String(contentsOfFile: path, encoding: .utf8)
        #expect(text == "alice:\(new.fieldValue)\r\ncarol:\(new.fieldValue)\r\ndave:\(new.fieldValue)\r\n")
        try HtpasswdEditor.deleteUser("alice", path: path)
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "carol:\(new.fieldValue)\r\ndave:\(new.fieldValue)\r\n")
    }

    @Test("a file with CR-only line ends is edited line by line and written back with LF (it was one line)")
    func crOnlyFile() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("cr-\(UUID().uuidString.prefix(8)).htpasswd").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let old = try #require(PasswordHash.makeBcrypt(password: "old", cost: 4))
        try Data("alice:\(old.fieldValue)\rbob:\(old.fieldValue)\r".utf8).write(to: URL(fileURLWithPath: path))
        let new = try #require(PasswordHash.makeBcrypt(password: "new", cost: 4))
        #expect(try HtpasswdEditor.setUser("bob", hash: new, path: path) == .updated)
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "alice:\(old.fieldValue)\nbob:\(new.fieldValue)\n")
    }
}
