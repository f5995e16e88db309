/// The `host[:port]` part of a URI (RFC 3986 §3.2.2–3.2.3), as found in absolute-form request
/// targets and in the authority-form target of `CONNECT` (RFC 9112 §3.2.3).
///
/// IPv6 literals keep their brackets out of ``host`` (`[::1]:443` → host `::1`), so the host can
/// go straight to the resolver. Userinfo is not part of an authority here: the caller strips it
/// (and never logs it).
public struct Authority: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int?

    public init(host: String, port: Int?) {
        self.host = host
        self.port = port
    }

    /// Parses `host`, `host:port`, `[v6]` or `[v6]:port`. Returns `nil` for anything else,
    /// including empty hosts, ports outside 0–65535 and characters a host cannot contain.
    public init?(parsing text: Substring) {
        var rest = text
        let host: Substring
        if rest.first == "[" {
            guard let close = rest.firstIndex(of: "]") else { return nil }
            host = rest[rest.index(after: rest.startIndex)..<close]
            guard !host.isEmpty, host.allSatisfy({ $0.isASCII && ($0.isHexDigit || $0 == ":" || $0 == ".") }), host.contains(":")
            else { return nil }
            rest = rest[rest.index(after: close)...]
        } else {
            let colon = rest.lastIndex(of: ":") ?? rest.endIndex
            host = rest[rest.startIndex..<colon]
            guard !host.isEmpty, host.allSatisfy(Self.isRegNameCharacter) else { return nil }
            rest = rest[colon...]
        }
        if rest.isEmpty {
            self.init(host: String(host), port: nil)
            return
        }
        guard rest.first == ":" else { return nil }
        let digits = rest.dropFirst()
        guard !digits.isEmpty, digits.count <= 5, digits.allSatisfy({ $0.isASCII && $0.isNumber }),
            let port = Int(digits), port <= 65535
        else { return nil }
        self.init(host: String(host), port: port)
    }

    /// reg-name characters (RFC 3986 §3.2.2): unreserved / pct-encoded / sub-delims. Gatehouse is
    /// stricter than the grammar and refuses sub-delims and `%`, which no DNS name contains.
    private static func isRegNameCharacter(_ c: Character) -> Bool {
        guard c.isASCII else { return false }
        return c.isLetter || c.isNumber || c == "-" || c == "." || c == "_" || c == "~"
    }

    /// `host:port` with IPv6 literals bracketed, the way it goes on the wire and in logs.
    public var description: String {
        let host = self.host.contains(":") ? "[\(self.host)]" : self.host
        if let port { return "\(host):\(port)" }
        return host
    }
}
