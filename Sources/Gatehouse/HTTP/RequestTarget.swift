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
        // Byte-wise, on every request: everything accepted is ASCII.
        let bytes = Substring(uri).utf8
        if bytes.first == UInt8(ascii: "/") || uri == "*" { return .failure(.originForm) }
        guard let colon = bytes.firstIndex(of: UInt8(ascii: ":")) else { return .failure(.invalid) }
        let scheme = bytes[..<colon]
        var afterScheme = bytes[bytes.index(after: colon)...]
        guard afterScheme.starts(with: "//".utf8) else { return .failure(.invalid) }
        afterScheme = afterScheme.dropFirst(2)
        if Self.equalsIgnoringCase(scheme, "https") { return .failure(.httpsAbsoluteForm) }
        guard Self.equalsIgnoringCase(scheme, "http") else { return .failure(.invalid) }
        let authorityEnd = afterScheme.firstIndex(where: { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "?") || $0 == UInt8(ascii: "#") })
            ?? afterScheme.endIndex
        var authorityText = afterScheme[..<authorityEnd]
        var hadUserinfo = false
        if let at = authorityText.lastIndex(of: UInt8(ascii: "@")) {
            // Userinfo in an http URI is deprecated (RFC 9110 §4.2.4); it is dropped and never logged.
            authorityText = authorityText[authorityText.index(after: at)...]
            hadUserinfo = true
        }
        guard let authority = Authority(parsing: Substring(authorityText)), authority.port != 0 else { return .failure(.invalid) }
        var pathAndQuery = afterScheme[authorityEnd...]
        if let hash = pathAndQuery.firstIndex(of: UInt8(ascii: "#")) {
            // A fragment is never sent to the origin (RFC 9110 §4.2.5).
            pathAndQuery = pathAndQuery[..<hash]
        }
        guard pathAndQuery.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { return .failure(.invalid) }
        var originForm = String(Substring(pathAndQuery))
        if originForm.isEmpty || originForm.utf8.first == UInt8(ascii: "?") { originForm = "/" + originForm }
        return .success(AbsoluteURI(authority: authority, originForm: originForm, hadUserinfo: hadUserinfo))
    }

    static func equalsIgnoringCase(_ bytes: Substring.UTF8View, _ lowercase: StaticString) -> Bool {
        guard bytes.count == lowercase.utf8CodeUnitCount else { return false }
        return lowercase.withUTF8Buffer { expected in
            zip(bytes, expected).allSatisfy { ($0 | 0x20) == $1 }
        }
    }
}

/// An `http://` absolute URI split into what the upstream request needs.
public struct AbsoluteURI: Sendable, Equatable {
    public var authority: Authority
    /// Path and query, the origin-form target sent upstream (RFC 9112 §3.2.1).
    public var originForm: String
    public var hadUserinfo: Bool

    /// The port to connect to: explicit, or 80 for `http`.
    public var port: Int { self.authority.port ?? 80 }

    /// The `Host` header for the upstream request: the URI's authority without userinfo, and
    /// without the port when it is the default (RFC 9110 §7.2).
    public var hostHeader: String {
        var authority = self.authority
        if authority.port == 80 { authority.port = nil }
        return authority.description
    }

    /// The URL as logged: scheme, authority and path, never userinfo.
    public var logDescription: String {
        "http://\(self.hostHeader)\(self.originForm)"
    }
}
