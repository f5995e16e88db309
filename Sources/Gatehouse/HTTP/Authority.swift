#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

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

    /// Parses `host`, `host:port`, `[v6]` or `[v6]:port` (`host:` has no port). Returns `nil`
    /// for anything else, including empty hosts, ports outside 0–65535 and characters a host
    /// cannot contain.
    public init?(parsing text: Substring) {
        var text = text
        guard let authority = text.withUTF8({ Self.parse($0) }) else { return nil }
        self = authority
    }

    /// Byte-wise over the target's bytes: every accepted character is ASCII, and this runs on
    /// every request. (The String.Index version this replaced is kept as the reference the
    /// fuzz invariants compare against.)
    static func parse(_ bytes: UnsafeBufferPointer<UInt8>) -> Authority? {
        let count = bytes.count
        let hostRange: Range<Int>
        let rest: Int
        if count > 0 && bytes[0] == UInt8(ascii: "[") {
            guard let close = bytes.firstIndex(of: UInt8(ascii: "]")) else { return nil }
            let inner = UnsafeBufferPointer(rebasing: bytes[1..<close])
            guard !inner.isEmpty, inner.allSatisfy(Self.isIPv6LiteralByte), inner.contains(UInt8(ascii: ":")),
                Self.isIPv6Address(inner)
            else { return nil }
            hostRange = 1..<close
            rest = close + 1
        } else {
            let colon = bytes.lastIndex(of: UInt8(ascii: ":")) ?? count
            guard colon > 0, UnsafeBufferPointer(rebasing: bytes[0..<colon]).allSatisfy(Self.isRegNameByte) else { return nil }
            hostRange = 0..<colon
            rest = colon
        }
        let host = String(decoding: UnsafeBufferPointer(rebasing: bytes[hostRange]), as: UTF8.self)
        if rest == count { return Authority(host: host, port: nil) }
        guard bytes[rest] == UInt8(ascii: ":") else { return nil }
        // port = *DIGIT (RFC 3986 §3.2.3): empty means the scheme's default, and leading
        // zeros are allowed (`:080` is 80).
        let digits = (rest + 1)..<count
        if digits.isEmpty { return Authority(host: host, port: nil) }
        var port = 0
        for index in digits {
            let byte = bytes[index]
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
            port = port * 10 + Int(byte - UInt8(ascii: "0"))
            guard port <= 65535 else { return nil }
        }
        return Authority(host: host, port: port)
    }

    /// Whether `bytes` is an IPv6 address (RFC 4291 §2.2, as `inet_pton` reads it: at most
    /// eight groups, one `::`, an embedded IPv4 address only at the end and in four decimal
    /// parts). Checked here, not left to the resolver: `[::10001]` or `[::ffff:127.1]` went to
    /// `getaddrinfo`, asked for credentials and failed as `upstream_dns` instead of a 400.
    static func isIPv6Address(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        // INET6_ADDRSTRLEN (46) with its NUL: the longest form, IPv4 tail included.
        guard bytes.count < 46 else { return false }
        return withUnsafeTemporaryAllocation(of: CChar.self, capacity: 46) { text in
            for (index, byte) in bytes.enumerated() { text[index] = CChar(bitPattern: byte) }
            text[bytes.count] = 0
            var address = in6_addr()
            return inet_pton(AF_INET6, text.baseAddress, &address) == 1
        }
    }

    static func isIPv6LiteralByte(_ c: UInt8) -> Bool {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "a")...UInt8(ascii: "f"), UInt8(ascii: "A")...UInt8(ascii: "F"),
            UInt8(ascii: ":"), UInt8(ascii: "."):
            return true
        default:
            return false
        }
    }

    /// reg-name characters (RFC 3986 §3.2.2): unreserved / pct-encoded / sub-delims. Gatehouse is
    /// stricter than the grammar and refuses sub-delims and `%`, which no DNS name contains.
    static func isRegNameByte(_ c: UInt8) -> Bool {
        switch c {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
            UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
            return true
        default:
            return false
        }
    }

    /// `host:port` with IPv6 literals bracketed, the way it goes on the wire and in logs.
    public var description: String {
        let host = self.host.utf8.contains(UInt8(ascii: ":")) ? "[\(self.host)]" : self.host
        if let port { return "\(host):\(port)" }
        return host
    }
}
