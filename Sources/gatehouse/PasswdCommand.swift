import ArgumentParser
import Foundation
import Gatehouse

/// `gatehouse passwd FILE USER`: adds or updates a bcrypt user, deletes one, or verifies a
/// password, in a file Apache's `htpasswd` can read too.
struct PasswdCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "passwd",
        abstract: "Add or update a user (bcrypt), delete one, or verify a password.",
        discussion: """
            The password is read from the terminal (twice, without echo), or from the first line of \
            standard input with --stdin. Writes are atomic: a temporary file renamed over the old one, \
            keeping its mode, so a running Gatehouse never reads half a file.
            Exit status: 0 success, 1 error, 3 --verify: wrong password or unknown user, 64 usage error.
            """
    )

    @Argument(help: "The htpasswd file (created if missing when adding a user).")
    var file: String

    @Argument(help: "The user name.")
    var user: String

    @Flag(name: .long, help: "Read the password from the first line of standard input.")
    var stdin = false

    @Flag(name: .long, help: "Delete the user.")
    var delete = false

    @Flag(name: .long, help: "Check a password against the file instead of changing it.")
    var verify = false

    @Option(name: .long, help: "bcrypt cost, 4 to 31.")
    var cost: Int = 10

    func validate() throws {
        if self.delete && self.verify { throw ValidationError("--delete and --verify cannot be combined") }
        if !(4...31).contains(self.cost) { throw ValidationError("--cost must be between 4 and 31") }
    }

    func run() async throws {
        if self.delete {
            do {
                try HtpasswdEditor.deleteUser(self.user, path: self.file)
            } catch {
                throw CommandError(error.description)
            }
            print("Deleting password for user \(self.user)")
            if let left = try? HtpasswdFile.load(path: self.file), left.users.isEmpty {
                FileHandle.standardError.write(Data("gatehouse passwd: warning: \(self.file) has no users left; a running Gatehouse now refuses every request (407)\n".utf8))
            }
            return
        }
        if self.verify {
            let password = try self.readPassword(prompt: "Enter password: ", confirm: false)
            let file: HtpasswdFile
            do {
                file = try HtpasswdFile.load(path: self.file)
            } catch {
                throw CommandError(error.description)
            }
            guard let hash = file.hash(for: self.user), hash.verify(password) else {
                FileHandle.standardError.write(Data("password verification failed\n".utf8))
                throw ExitCode(3)
            }
            print("Password for user \(self.user) correct.")
            return
        }
        let password = try self.readPassword(prompt: "New password: ", confirm: true)
        // libcrypt hashes nothing of 512 bytes or more (CRYPT_MAX_PASSPHRASE_SIZE); said as such,
        // not as the NUL characters it was blamed on.
        if password.utf8.count >= 512 {
            throw CommandError("the password is \(password.utf8.count) bytes long: libcrypt hashes at most 511")
        }
        guard let hash = PasswordHash.makeBcrypt(password: password, cost: self.cost) else {
            throw CommandError("could not hash the password (it must not contain NUL characters)")
        }
        let change: HtpasswdEditor.Change
        do {
            change = try HtpasswdEditor.setUser(self.user, hash: hash, path: self.file)
        } catch {
            throw CommandError(error.description)
        }
        print(change == .added ? "Adding password for user \(self.user)" : "Updating password for user \(self.user)")
    }

    private func readPassword(prompt: String, confirm: Bool) throws -> String {
        if self.stdin {
            guard let line = readLine(strippingNewline: true) else {
                throw CommandError("no password on standard input")
            }
            return line.hasSuffix("\r") ? String(line.dropLast()) : line
        }
        guard let first = Terminal.readSecret(prompt: prompt) else {
            throw CommandError("cannot read a password from the terminal; use --stdin")
        }
        if confirm {
            guard let second = Terminal.readSecret(prompt: "Re-type new password: ") else {
                throw CommandError("cannot read a password from the terminal; use --stdin")
            }
            guard first == second else { throw CommandError("password verification error: the passwords differ") }
        }
        return first
    }
}

/// Reads a line from the controlling terminal with echo off.
enum Terminal {
    static func readSecret(prompt: String) -> String? {
        let fd = open("/dev/tty", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var old = termios()
        guard tcgetattr(fd, &old) == 0 else { return nil }
        var silent = old
        silent.c_lflag &= ~tcflag_t(ECHO)
        _ = prompt.withCString { write(fd, $0, strlen($0)) }
        tcsetattr(fd, TCSAFLUSH, &silent)
        defer {
            tcsetattr(fd, TCSAFLUSH, &old)
            _ = write(fd, "\n", 1)
        }
        var bytes: [UInt8] = []
        var byte: UInt8 = 0
        while read(fd, &byte, 1) == 1 {
            if byte == UInt8(ascii: "\n") { return String(decoding: bytes, as: UTF8.self) }
            bytes.append(byte)
        }
        return bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self)
    }
}
