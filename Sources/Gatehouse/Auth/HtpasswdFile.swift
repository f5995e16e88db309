#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// An Apache-style htpasswd file: one `user:hash` entry per line.
///
/// Gatehouse reuses the htpasswd format so operators can manage users with Apache's `htpasswd`
/// tool. Parsing is split in two so both strictness and good diagnostics are possible:
///
/// * ``init(contents:path:)`` never throws; it collects every ``Problem`` with its line number,
///   so an operator sees all mistakes at once.
/// * ``load(path:)`` reads the file and refuses to start on a *fatal* problem (a line that
///   cannot be understood, or an ambiguous duplicate user), because guessing could lock out or
///   let in the wrong person. An entry whose hash format is unknown is only *non-fatal*: that
///   one user cannot log in, which is the safe outcome, and the rest of the file stays usable.
///
/// No problem message ever contains a password hash (or anything that might be one), so problems
/// can be logged freely.
public struct HtpasswdFile: Sendable {
    /// One diagnostic about one line of the file.
    public struct Problem: Sendable, Equatable, CustomStringConvertible {
        /// The file the problem was found in, as given to ``HtpasswdFile/init(contents:path:)``.
        public var path: String
        /// 1-based line number.
        public var line: Int
        /// Human-readable explanation; never contains a hash or password.
        public var message: String
        /// Fatal problems make ``HtpasswdFile/load(path:)`` throw; non-fatal ones only disable
        /// the affected user.
        public var isFatal: Bool

        public init(path: String, line: Int, message: String, isFatal: Bool) {
            self.path = path
            self.line = line
            self.message = message
            self.isFatal = isFatal
        }

        /// `path:line: message`, the conventional compiler-style location prefix that editors
        /// and terminals can jump to.
        public var description: String { "\(path):\(line): \(message)" }
    }

    /// Where the contents came from (used in diagnostics only).
    public var path: String
    /// Usable entries, keyed by exact (case-sensitive) user name, like Apache's mod_authn_file.
    public var users: [String: PasswordHash]
    /// Every problem found, fatal and non-fatal, in line order.
    public var problems: [Problem]

    /// The first problem that makes the file unusable, if any.
    public var firstFatalProblem: Problem? { problems.first(where: \.isFatal) }

    /// Parses htpasswd `contents`. Never throws: problems are collected in ``problems``.
    ///
    /// Rules:
    /// * A leading UTF-8 byte order mark is skipped.
    /// * Lines end with LF; a trailing CR (CRLF files written on Windows) and trailing SP/HTAB
    ///   are stripped, as Apache's config line reader does. A CR on its own (classic Mac OS
    ///   line ends) also ends a line (see ``lines(of:)``).
    /// * Blank lines and lines whose first non-blank character is `#` are ignored.
    /// * Other lines are split at the *first* `:`; what follows, up to a second `:`, is the
    ///   hash. Apache's `mod_authn_file` ignores a third field (`user:hash:comment`), and so
    ///   does Gatehouse, with a warning. (Hashes never contain `:`.)
    /// * Fatal: no colon, empty user name, a user defined twice (which entry wins would be a
    ///   guess).
    /// * Non-fatal, that user is left out: an unrecognised or malformed hash, a user name with
    ///   control characters (RFC 7617 §2 allows none in a user-id) or not valid UTF-8 (no
    ///   client could send it: credentials are decoded as UTF-8). Apache's `htpasswd` writes
    ///   such names, so they must not make the whole file unusable. Spaces are allowed, as in
    ///   Apache.
    public init(contents: String, path: String) {
        self.init(bytes: Array(contents.utf8), path: path)
    }

    /// The lines of htpasswd bytes. A line ends at LF, or at a CR that an LF does not follow
    /// (a file with classic Mac OS line ends was otherwise one line: its first user's "hash"
    /// ran to the end of the file, and no one could log in). The CR of a CRLF stays at the end
    /// of its line, for the reader to strip and the editor to keep.
    static func lines(of bytes: ArraySlice<UInt8>) -> [ArraySlice<UInt8>] {
        var lines: [ArraySlice<UInt8>] = []
        var start = bytes.startIndex
        var index = bytes.startIndex
        while index < bytes.endIndex {
            let byte = bytes[index]
            let next = bytes.index(after: index)
            if byte == UInt8(ascii: "\n") || (byte == UInt8(ascii: "\r") && (next == bytes.endIndex || bytes[next] != UInt8(ascii: "\n"))) {
                lines.append(bytes[start..<index])
                start = next
            }
            index = next
        }
        lines.append(bytes[start..<bytes.endIndex])
        return lines
    }

    /// Parses htpasswd bytes, which need not all be UTF-8 (see ``init(contents:path:)``).
    public init(bytes: [UInt8], path: String) {
        self.path = path
        self.users = [:]
        self.problems = []

        // A UTF-8 byte order mark (some Windows editors add one) is not part of the first user name.
        var body = bytes[...]
        if body.starts(with: [0xEF, 0xBB, 0xBF]) { body = body.dropFirst(3) }

        var firstDefinition: [String: Int] = [:]
        var lineNumber = 0
        for rawLine in Self.lines(of: body) {
            lineNumber += 1
            var line = rawLine[...]
            while let last = line.last,
                  last == UInt8(ascii: "\r") || last == UInt8(ascii: " ") || last == UInt8(ascii: "\t") {
                line = line.dropLast()
            }
            let firstNonBlank = line.first { $0 != UInt8(ascii: " ") && $0 != UInt8(ascii: "\t") }
            if firstNonBlank == nil || firstNonBlank == UInt8(ascii: "#") { continue }

            func report(_ message: String, fatal: Bool) {
                problems.append(Problem(path: path, line: lineNumber, message: message, isFatal: fatal))
            }

            // The line content is never echoed: a line without a colon may be a stray hash.
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else {
                report("expected \"user:hash\" but the line has no ':' separator", fatal: true)
                continue
            }
            let userBytes = line[..<colon]
            var hashBytes = line[line.index(after: colon)...]
            if let second = hashBytes.firstIndex(of: UInt8(ascii: ":")) {
                hashBytes = hashBytes[..<second]
                report("text after a second ':' is ignored, as Apache does", fatal: false)
            }

            guard !userBytes.isEmpty else {
                report("empty user name", fatal: true)
                continue
            }
            guard let user = String(validating: userBytes, as: UTF8.self) else {
                report("user name is not valid UTF-8; this user cannot log in", fatal: false)
                continue
            }
            guard !Self.hasControlCharacters(user) else {
                report("user name contains control characters; this user cannot log in", fatal: false)
                continue
            }
            if let first = firstDefinition[user] {
                report("user \(Self.quoted(user)) is defined again (first defined on line \(first))", fatal: true)
                users[user] = nil  // ambiguous: the user cannot log in with either entry
                continue
            }
            firstDefinition[user] = lineNumber

            do {
                users[user] = try PasswordHash(String(decoding: hashBytes, as: UTF8.self))
            } catch {
                let reason: String
                switch error {
                case .unknownFormat(let why): reason = why
                }
                report("user \(Self.quoted(user)): \(reason); this user cannot log in", fatal: false)
            }
        }
    }

    /// Reads and parses the htpasswd file at `path`.
    ///
    /// - Throws: ``HtpasswdError/unreadable(path:reason:)`` if the file cannot be read,
    ///   ``HtpasswdError/malformed(_:)`` with the first fatal problem otherwise. Non-fatal
    ///   problems are returned in ``problems`` for the caller to log.
    public static func load(path: String) throws(HtpasswdError) -> HtpasswdFile {
        let file = try Self.loadAll(path: path)
        if let fatal = file.firstFatalProblem { throw .malformed(fatal) }
        return file
    }

    /// Reads and parses the htpasswd file at `path`, with every problem, fatal or not, in
    /// ``problems``. - Throws: ``HtpasswdError/unreadable(path:reason:)``.
    public static func loadAll(path: String) throws(HtpasswdError) -> HtpasswdFile {
        HtpasswdFile(bytes: try readAll(path: path), path: path)
    }

    /// The hash for `user`, or `nil` if the user is unknown or unusable. Callers should then
    /// verify against ``PasswordHash/dummy`` so timing does not reveal which users exist.
    public func hash(for user: String) -> PasswordHash? {
        users[user]
    }

    // MARK: - Helpers

    /// RFC 7617 §2 forbids control characters in the user-id (a tab among them); a client
    /// cannot send such a name.
    static func hasControlCharacters(_ user: String) -> Bool {
        user.unicodeScalars.contains { $0.properties.generalCategory == .control }
    }

    /// `"name"` with `"` and `\` escaped, for unambiguous messages.
    private static func quoted(_ user: String) -> String {
        var out = "\""
        for character in user {
            if character == "\"" || character == "\\" { out.append("\\") }
            out.append(character)
        }
        return out + "\""
    }

    /// The most an htpasswd file may hold: a million users at about 70 bytes each. A device
    /// given as the file (`/dev/zero`) was read until memory ran out.
    static let maximumSize = 64 << 20

    /// Reads a whole file with POSIX calls so the error reason is the plain `strerror` text
    /// (e.g. "No such file or directory") rather than a verbose Foundation description.
    private static func readAll(path: String) throws(HtpasswdError) -> [UInt8] {
        // Opened without blocking and then required to be a regular file: a FIFO put in the
        // file's place blocked the open, on the event loop that polls the file, and half of
        // all new connections hung.
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw .unreadable(path: path, reason: errnoDescription()) }
        defer { _ = close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else {
            throw .unreadable(path: path, reason: "it is not a regular file")
        }

        var result: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw .unreadable(path: path, reason: errnoDescription())
            }
            if count == 0 { break }
            result += chunk[0..<count]
            if result.count > Self.maximumSize {
                throw .unreadable(path: path, reason: "it is larger than \(Self.maximumSize >> 20) MiB (is it an htpasswd file?)")
            }
        }
        return result
    }

    private static func errnoDescription() -> String {
        guard let message = strerror(errno) else { return "error \(errno)" }
        return String(cString: message)
    }
}

/// Why an htpasswd file could not be loaded.
public enum HtpasswdError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The file could not be opened or read.
    case unreadable(path: String, reason: String)
    /// The file contains at least one fatal problem; this is the first one.
    case malformed(HtpasswdFile.Problem)

    public var description: String {
        switch self {
        case .unreadable(let path, let reason): return "cannot read \(path): \(reason)"
        case .malformed(let problem): return problem.description
        }
    }
}
