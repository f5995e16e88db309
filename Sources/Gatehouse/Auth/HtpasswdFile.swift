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
    ///   are stripped, as Apache's config line reader does.
    /// * Blank lines and lines whose first non-blank character is `#` are ignored.
    /// * Other lines are split at the *first* `:`; everything after it is the hash. (Hashes
    ///   never contain `:`, so a second colon makes the hash unrecognisable rather than being
    ///   silently ignored.)
    /// * Fatal: no colon, empty user name, a user name containing whitespace or control
    ///   characters, a user defined twice (which entry wins would be a guess).
    /// * Non-fatal: an unrecognised or malformed hash; that user is left out.
    public init(contents: String, path: String) {
        self.path = path
        self.users = [:]
        self.problems = []

        // A UTF-8 byte order mark (some Windows editors add one) is not part of the first user name.
        var body = contents.utf8[...]
        if body.starts(with: [0xEF, 0xBB, 0xBF]) { body = body.dropFirst(3) }

        var firstDefinition: [String: Int] = [:]
        var lineNumber = 0
        for rawLine in body.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
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
            let hashBytes = line[line.index(after: colon)...]

            guard !userBytes.isEmpty else {
                report("empty user name", fatal: true)
                continue
            }
            let user = String(decoding: userBytes, as: UTF8.self)
            guard !user.unicodeScalars.contains(where: Self.isForbiddenInUserName) else {
                report("user name contains whitespace or control characters", fatal: true)
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
    /// - Throws: ``HtpasswdError/unreadable(path:reason:)`` if the file cannot be read or is not
    ///   UTF-8, ``HtpasswdError/malformed(_:)`` with the first fatal problem otherwise. Non-fatal
    ///   problems are returned in ``problems`` for the caller to log.
    public static func load(path: String) throws(HtpasswdError) -> HtpasswdFile {
        let bytes = try readAll(path: path)
        let contents = String(decoding: bytes, as: UTF8.self)
        guard contents.utf8.elementsEqual(bytes) else {
            throw .unreadable(path: path, reason: "file is not valid UTF-8")
        }
        let file = HtpasswdFile(contents: contents, path: path)
        if let fatal = file.firstFatalProblem { throw .malformed(fatal) }
        return file
    }

    /// The hash for `user`, or `nil` if the user is unknown or unusable. Callers should then
    /// verify against ``PasswordHash/dummy`` so timing does not reveal which users exist.
    public func hash(for user: String) -> PasswordHash? {
        users[user]
    }

    // MARK: - Helpers

    /// Whitespace or control characters would make the name impossible to type in a
    /// `Proxy-Authorization` header reliably (RFC 7617 §2 forbids control characters in the
    /// user-id) and usually indicate a broken file.
    private static func isForbiddenInUserName(_ scalar: Unicode.Scalar) -> Bool {
        scalar.properties.isWhitespace || scalar.properties.generalCategory == .control
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

    /// Reads a whole file with POSIX calls so the error reason is the plain `strerror` text
    /// (e.g. "No such file or directory") rather than a verbose Foundation description.
    private static func readAll(path: String) throws(HtpasswdError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .unreadable(path: path, reason: errnoDescription()) }
        defer { _ = close(fd) }

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
    /// The file could not be opened or read, or is not UTF-8.
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
