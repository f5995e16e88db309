import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Edits an htpasswd file the way Apache's `htpasswd` would, so either tool can read what the
/// other wrote: one `user:hash` line per user, other lines (comments, unknown formats) kept
/// byte for byte.
///
/// Every write is atomic: a temporary file in the same directory, `fsync`, then `rename(2)`
/// over the original, keeping its mode. A running Gatehouse that polls the file therefore sees
/// either the old or the new version, never half of one. A symbolic link is written through,
/// as Apache's `htpasswd` does: the file it points to is replaced, and the link stays.
public enum HtpasswdEditor {
    public enum EditError: Error, Sendable, Equatable, CustomStringConvertible {
        case invalidUser(String)
        case unreadable(path: String, reason: String)
        case unwritable(path: String, reason: String)
        case noSuchUser(String)

        public var description: String {
            switch self {
            case .invalidUser(let user):
                // Control characters are shown escaped, never sent to the terminal as they are.
                let shown = user.unicodeScalars.map { $0.properties.generalCategory == .control ? $0.escaped(asASCII: true) : String($0) }.joined()
                return "invalid user name \"\(shown)\": it must be non-empty UTF-8, without \":\" or control characters"
            case .unreadable(let path, let reason): return "cannot read \(path): \(reason)"
            case .unwritable(let path, let reason): return "cannot write \(path): \(reason)"
            case .noSuchUser(let user): return "user \"\(user)\" not found"
            }
        }
    }

    public enum Change: Sendable, Equatable { case added, updated, deleted }

    /// Adds the user or replaces their hash. Creates the file if it is missing, with mode 0666
    /// less the umask, as Apache's `htpasswd` does (0644 usually: a service under systemd's
    /// `DynamicUser` must be able to read it).
    @discardableResult
    public static func setUser(_ user: String, hash: PasswordHash, path: String) throws(EditError) -> Change {
        try Self.validate(user)
        return try Self.locked(path) { () throws(EditError) -> Change in try Self.setUnlocked(user, hash: hash, path: path) }
    }

    private static func setUnlocked(_ user: String, hash: PasswordHash, path: String) throws(EditError) -> Change {
        var lines = try Self.readLines(path: path, missingIsEmpty: true)
        // A file written with CRLF line ends keeps them.
        let lineEnd = lines.contains { $0.utf8.last == UInt8(ascii: "\r") } ? "\r" : ""
        let entry = "\(user):\(hash.fieldValue)" + lineEnd
        if let index = lines.firstIndex(where: { Self.user(of: $0) == user }) {
            lines[index] = entry
            try Self.write(lines, path: path)
            return .updated
        }
        lines.append(entry)
        try Self.write(lines, path: path)
        return .added
    }

    /// Removes the user.
    public static func deleteUser(_ user: String, path: String) throws(EditError) {
        try Self.validate(user)
        try Self.locked(path) { () throws(EditError) in try Self.deleteUnlocked(user, path: path) }
    }

    private static func deleteUnlocked(_ user: String, path: String) throws(EditError) {
        var lines = try Self.readLines(path: path, missingIsEmpty: false)
        let before = lines.count
        lines.removeAll { Self.user(of: $0) == user }
        guard lines.count < before else { throw .noSuchUser(user) }
        try Self.write(lines, path: path)
    }

    /// Runs one read-modify-write of the file at `path` under an exclusive `flock` on its
    /// directory, so that edits from several `gatehouse passwd` at once are applied one after
    /// the other. Unlocked, each read the same old file and the last rename won: ten users
    /// added at once left five. (The directory, not the file: every edit replaces the file, so
    /// a lock on it would be a lock on a file that is no longer there. Apache's `htpasswd` does
    /// not lock at all.)
    static func locked<T>(_ path: String, _ body: () throws(EditError) -> T) throws(EditError) -> T {
        let resolved = Self.resolvingLinks(path)
        let directory = (resolved as NSString).deletingLastPathComponent
        let fd = open(directory.isEmpty ? "." : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw .unwritable(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        // Another edit holds the lock for a moment; one that holds it for long (a stuck
        // process) is an error after 10 s, not a silent wait without end.
        var waited = 0
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            guard errno == EWOULDBLOCK || errno == EINTR else {
                throw .unwritable(path: path, reason: "cannot lock its directory: \(String(cString: strerror(errno)))")
            }
            guard waited < 10_000 else {
                throw .unwritable(path: path, reason: "another edit has held the lock on its directory for 10 s")
            }
            usleep(20_000)
            waited += 20
        }
        defer { flock(fd, LOCK_UN) }
        return try body()
    }

    static func validate(_ user: String) throws(EditError) {
        // The names HtpasswdFile reads as users: spaces are allowed (as in Apache), control
        // characters not. U+FFFD is what an argument that is not UTF-8 turns into: the name
        // typed could not be stored.
        guard !user.isEmpty, !user.contains(":"), !user.containsReplacementCharacter, !HtpasswdFile.hasControlCharacters(user)
        else { throw .invalidUser(user) }
    }

    static func user(of line: String) -> String? {
        let trimmed = line.drop { $0 == " " || $0 == "\t" }
        guard !trimmed.hasPrefix("#"), let colon = line.firstIndex(of: ":") else { return nil }
        return String(line[..<colon])
    }

    static func readLines(path: String, missingIsEmpty: Bool) throws(EditError) -> [String] {
        guard FileManager.default.fileExists(atPath: path) else {
            if missingIsEmpty { return [] }
            throw .unreadable(path: path, reason: "No such file or directory")
        }
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw .unreadable(path: path, reason: error.localizedDescription)
        }
        // Split at LF bytes, not Characters: in Swift "\r\n" is one Character, so a file with
        // CRLF line ends was one line, and an edit kept only the user it changed (the others
        // were lost, or a later user was "not found" and added twice). A CR stays at the end
        // of its line (see `user(of:)`), so the file keeps its line ends. A file with CR-only
        // line ends is split as the proxy reads it, and written back with LF.
        var lines = HtpasswdFile.lines(of: Array(text.utf8)[...]).map { String(decoding: $0, as: UTF8.self) }
        if lines.last == "" { lines.removeLast() }
        return lines
    }

    static func write(_ lines: [String], path given: String) throws(EditError) {
        let path = Self.resolvingLinks(given)
        var info = stat()
        let mode: mode_t
        if stat(path, &info) == 0 {
            mode = info.st_mode & 0o7777
        } else {
            let mask = umask(0)
            umask(mask)
            mode = 0o666 & ~mask
        }
        let directory = (path as NSString).deletingLastPathComponent
        var template = Array(((directory.isEmpty ? "." : directory) + "/.htpasswd.XXXXXX").utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { throw .unwritable(path: path, reason: String(cString: strerror(errno))) }
        let temporary = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        var ok = false
        defer {
            if !ok { unlink(temporary) }
        }
        let text = lines.isEmpty ? "" : lines.joined(separator: "\n") + "\n"
        var bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 {
                if errno == EINTR { continue }
                let reason = String(cString: strerror(errno))
                close(fd)
                throw .unwritable(path: path, reason: reason)
            }
            offset += n
        }
        fchmod(fd, mode)
        if geteuid() == 0, stat(path, &info) == 0 { fchown(fd, info.st_uid, info.st_gid) }
        guard fsync(fd) == 0, close(fd) == 0 else { throw .unwritable(path: path, reason: String(cString: strerror(errno))) }
        guard rename(temporary, path) == 0 else { throw .unwritable(path: path, reason: String(cString: strerror(errno))) }
        ok = true
        let dir = open(directory.isEmpty ? "." : directory, O_RDONLY | O_DIRECTORY)
        if dir >= 0 {
            fsync(dir)
            close(dir)
        }
    }

    /// The file a symbolic link at `path` points to, through any chain of links, whether or
    /// not that file exists yet (a dangling link gets its target created, as with Apache's
    /// `htpasswd -c`); `path` itself when it is no link.
    static func resolvingLinks(_ path: String) -> String {
        var current = path
        for _ in 0..<40 {  // the kernel's own limit on a chain of links
            var info = stat()
            guard lstat(current, &info) == 0, info.st_mode & S_IFMT == S_IFLNK else { return current }
            var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            let length = readlink(current, &buffer, buffer.count - 1)
            guard length > 0 else { return current }
            let target = String(decoding: buffer[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if target.hasPrefix("/") {
                current = target
            } else {
                let directory = (current as NSString).deletingLastPathComponent
                current = directory.isEmpty ? target : directory + "/" + target
            }
        }
        return current
    }
}
