/// The request target of a proxy request, classified by its form (RFC 9112 §3.2).
///
/// A forward proxy receives absolute-form targets (`http://host/path`) and, for `CONNECT`, the
/// authority form (`host:port`). An origin-form target (`/path`) means the client thinks it is
/// talking to an origin server, and is refused with a 400 that says this is a proxy.
public enum RequestTarget: Sendable, Equatable {
    /// `http://authority/path?query`: forwarded upstream in origin form.
    case absolute(AbsoluteURI)
    /// `host:port` for `CONNECT`.
    case authority(Authority)

    public enum ParseError: Error, Sendable, Equatable {
        /// `GET /path`: the client did not know it was talking to a proxy.
        case originForm
        /// `https://…` in absolute form: Gatehouse does not originate TLS; clients use CONNECT.
        case httpsAbsoluteForm
        /// Anything else that is not a usable target.
        case invalid
    }

    /// `text` (a request target as received, or a proxy URL) without any userinfo, for logs and
    /// messages: in a URL, whatever precedes an `@` in the authority; in authority form
    /// (`CONNECT user:pass@host:port`, which is invalid), whatever precedes the last `@`.
    public static func withoutUserinfo(_ text: String) -> String {
        // Userinfo needs an "@"; nearly no request has one, so skip the string work.
        guard text.utf8.contains(UInt8(ascii: "@")) else { return text }
        guard let schemeEnd = text.firstRange(of: "://") else {
            guard !text.hasPrefix("/"), let at = text.lastIndex(of: "@") else { return text }
            return String(text[text.index(after: at)...])
        }
        let rest = text[schemeEnd.upperBound...]
        let authorityEnd = rest.firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" }) ?? rest.endIndex
        guard let at = rest[..<authorityEnd].lastIndex(of: "@") else { return text }
        return String(text[..<schemeEnd.upperBound]) + String(rest[rest.index(after: at)...])
    }

    /// A request target as received, for the log line of a request that is refused before its
    /// target parsed (or that has none that parses): everything between its start (a scheme's
    /// `://`, leading slashes) and its last `@` is dropped.
    ///
    /// Stricter than ``withoutUserinfo(_:)``, which trusts the shape of a URL: a malformed one
    /// (`//bob:pw@host/x`, `http:///bob:pw@host/`, a password holding `/`, `?` or `#`) carries
    /// its userinfo where that would not find it. An `@` in a path or query costs the part
    /// before it; the log line of a refused request loses nothing that matters.
    public static func redactedForLog(_ text: String) -> String {
        // Runs for every request: without an "@" (nearly all), the string itself, uncopied.
        guard text.utf8.contains(UInt8(ascii: "@")), let at = text.lastIndex(of: "@") else { return text }
        var start = text.startIndex
        if let scheme = text.range(of: "://"), scheme.lowerBound < at { start = scheme.upperBound }
        while start < at && text[start] == "/" { start = text.index(after: start) }
        return String(text[..<start]) + String(text[text.index(after: at)...])
    }

    /// Parses the target of a `CONNECT` request: exactly `host:port`, port required
    /// (RFC 9110 §9.3.6).
    public static func parseConnect(_ uri: String) -> Result<Authority, ParseError> {
        guard let authority = Authority(parsing: Substring(uri)), let port = authority.port, port > 0 else {
            return .failure(.invalid)
        }
        return .success(authority)
    }

    /// Parses the target of any other method, which must be in absolute form.
    public static func parseAbsolute(_ uri: String) -> Result<AbsoluteURI, ParseError> {
        var text = uri
        return text.withUTF8 { Self.parseAbsolute($0, text: uri) }
    }

    /// Byte-wise over the target's bytes (on every request; everything accepted is ASCII).
    private static func parseAbsolute(_ bytes: UnsafeBufferPointer<UInt8>, text uri: String) -> Result<AbsoluteURI, ParseError> {
        let count = bytes.count
        if count > 0 && bytes[0] == UInt8(ascii: "/") || (count == 1 && bytes[0] == UInt8(ascii: "*")) {
            return .failure(.originForm)
        }
        guard let colon = bytes.firstIndex(of: UInt8(ascii: ":")) else { return .failure(.invalid) }
        let scheme = UnsafeBufferPointer(rebasing: bytes[0..<colon])
        guard colon + 2 < count,
            bytes[colon + 1] == UInt8(ascii: "/"), bytes[colon + 2] == UInt8(ascii: "/")
        else { return .failure(.invalid) }
        let authorityStart = colon + 3
        if Self.equalsIgnoringCase(scheme, "https") { return .failure(.httpsAbsoluteForm) }
        guard Self.equalsIgnoringCase(scheme, "http") else { return .failure(.invalid) }
        var authorityEnd = authorityStart
        while authorityEnd < count {
            let byte = bytes[authorityEnd]
            if byte == UInt8(ascii: "/") || byte == UInt8(ascii: "?") || byte == UInt8(ascii: "#") { break }
            authorityEnd += 1
        }
        var hostStart = authorityStart
        var hadUserinfo = false
        if let at = UnsafeBufferPointer(rebasing: bytes[authorityStart..<authorityEnd]).lastIndex(of: UInt8(ascii: "@")) {
            // Userinfo in an http URI is deprecated (RFC 9110 §4.2.4); it is dropped and never logged.
            hostStart = authorityStart + at + 1
            hadUserinfo = true
        }
        let authorityBytes = UnsafeBufferPointer(rebasing: bytes[hostStart..<authorityEnd])
        guard let authority = Authority.parse(authorityBytes), authority.port != 0 else { return .failure(.invalid) }
        var pathEnd = authorityEnd
        while pathEnd < count && bytes[pathEnd] != UInt8(ascii: "#") {
            // A fragment is never sent to the origin (RFC 9110 §4.2.5).
            guard bytes[pathEnd] > 0x20 && bytes[pathEnd] < 0x7F else { return .failure(.invalid) }
            pathEnd += 1
        }
        let path = UnsafeBufferPointer(rebasing: bytes[authorityEnd..<pathEnd])
        var originForm = String(decoding: path, as: UTF8.self)
        if path.isEmpty || path[0] == UInt8(ascii: "?") { originForm = "/" + originForm }
        var result = AbsoluteURI(authority: authority, originForm: originForm, hadUserinfo: hadUserinfo)
        result.hadEmptyPath = path.isEmpty
        // Most targets are already written the way they are logged (lowercase scheme, no
        // userinfo or fragment, a path, no `:80`, no leading zeros in the port): keep the
        // text rather than rebuild it for every log line.
        let portColon = authorityBytes.last == UInt8(ascii: "]") ? nil : authorityBytes.lastIndex(of: UInt8(ascii: ":"))
        if scheme.elementsEqual("http".utf8), !hadUserinfo, pathEnd == count,
            !path.isEmpty, path[0] == UInt8(ascii: "/"), authority.port != 80,
            portColon.map({ $0 + 1 < authorityBytes.count && authorityBytes[$0 + 1] != UInt8(ascii: "0") }) ?? true
        {
            result.canonicalText = uri
        }
        return .success(result)
    }

    static func equalsIgnoringCase(_ bytes: UnsafeBufferPointer<UInt8>, _ lowercase: StaticString) -> Bool {
        guard bytes.count == lowercase.utf8CodeUnitCount else { return false }
        return lowercase.withUTF8Buffer { expected in
            zip(bytes, expected).allSatisfy { ($0 | 0x20) == $1 }
        }
    }
}

/// An `http://` absolute URI split into what the upstream request needs.
public struct AbsoluteURI: Sendable, Equatable {
    public var authority: Authority { didSet { self.canonicalText = nil } }
    /// Path and query, the origin-form target sent upstream (RFC 9112 §3.2.1).
    public var originForm: String { didSet { self.canonicalText = nil } }
    public var hadUserinfo: Bool
    /// Nothing followed the authority (`http://host:8001`): an `OPTIONS` for it goes upstream
    /// as `OPTIONS *` (RFC 9112 §3.2.4).
    public var hadEmptyPath = false
    /// The target as received, when that is exactly ``logDescription``.
    fileprivate(set) var canonicalText: String?

    public init(authority: Authority, originForm: String, hadUserinfo: Bool) {
        self.authority = authority
        self.originForm = originForm
        self.hadUserinfo = hadUserinfo
    }

    public static func == (lhs: AbsoluteURI, rhs: AbsoluteURI) -> Bool {
        lhs.authority == rhs.authority && lhs.originForm == rhs.originForm && lhs.hadUserinfo == rhs.hadUserinfo
    }

    /// The port to connect to: explicit, or 80 for `http`.
    public var port: Int { self.authority.port ?? 80 }

    /// The `Host` header for the upstream request: the URI's authority without userinfo, and
    /// without the port when it is the default (RFC 9110 §7.2).
    public var hostHeader: String {
        if let text = self.canonicalText {
            // Canonical: "http://" + exactly the Host value + a path starting with "/".
            let utf8 = text.utf8.dropFirst(7)
            return String(Substring(utf8.prefix { $0 != UInt8(ascii: "/") }))
        }
        var authority = self.authority
        if authority.port == 80 { authority.port = nil }
        return authority.description
    }

    /// The URL as logged: scheme, authority and path, never userinfo.
    public var logDescription: String {
        self.canonicalText ?? "http://\(self.hostHeader)\(self.originForm)"
    }
}
