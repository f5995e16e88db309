// The request-target parsers as they were before they moved to byte buffers (String.Index
// over Substring.UTF8View: slower, but simple to read). Kept as the reference the fast parsers
// must agree with on every fuzz input (RequestTargetInvariants).

#if canImport(Gatehouse)
@testable import Gatehouse
#endif

enum ReferenceRequestTarget {
    enum Outcome: Equatable {
        case success(host: String, port: Int?, originForm: String, hadUserinfo: Bool)
        case originForm
        case httpsAbsoluteForm
        case invalid
    }

    static func authority(_ text: Substring) -> (host: String, port: Int?)? {
        let bytes = text.utf8
        let host: Substring
        var rest: Substring.UTF8View
        if bytes.first == UInt8(ascii: "[") {
            guard let close = bytes.firstIndex(of: UInt8(ascii: "]")) else { return nil }
            let inner = bytes[bytes.index(after: bytes.startIndex)..<close]
            guard !inner.isEmpty, inner.allSatisfy(isIPv6LiteralByte), inner.contains(UInt8(ascii: ":")),
                Array(inner).withUnsafeBufferPointer(Authority.isIPv6Address)
            else { return nil }
            host = Substring(inner)
            rest = bytes[bytes.index(after: close)...]
        } else {
            let colon = bytes.lastIndex(of: UInt8(ascii: ":")) ?? bytes.endIndex
            let name = bytes[..<colon]
            guard !name.isEmpty, name.allSatisfy(isRegNameByte) else { return nil }
            host = Substring(name)
            rest = bytes[colon...]
        }
        if rest.isEmpty { return (String(host), nil) }
        guard rest.first == UInt8(ascii: ":") else { return nil }
        rest = rest.dropFirst()
        if rest.isEmpty { return (String(host), nil) }
        let digits = rest.drop(while: { $0 == UInt8(ascii: "0") })
        guard rest.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }), digits.count <= 5 else { return nil }
        let port = digits.reduce(0) { $0 * 10 + Int($1 - UInt8(ascii: "0")) }
        guard port <= 65535 else { return nil }
        return (String(host), port)
    }

    static func absolute(_ uri: String) -> Outcome {
        let bytes = Substring(uri).utf8
        if bytes.first == UInt8(ascii: "/") || uri == "*" { return .originForm }
        guard let colon = bytes.firstIndex(of: UInt8(ascii: ":")) else { return .invalid }
        let scheme = bytes[..<colon]
        var afterScheme = bytes[bytes.index(after: colon)...]
        guard afterScheme.starts(with: "//".utf8) else { return .invalid }
        afterScheme = afterScheme.dropFirst(2)
        if equalsIgnoringCase(scheme, "https") { return .httpsAbsoluteForm }
        guard equalsIgnoringCase(scheme, "http") else { return .invalid }
        let authorityEnd = afterScheme.firstIndex(where: { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "?") || $0 == UInt8(ascii: "#") })
            ?? afterScheme.endIndex
        var authorityText = afterScheme[..<authorityEnd]
        var hadUserinfo = false
        if let at = authorityText.lastIndex(of: UInt8(ascii: "@")) {
            authorityText = authorityText[authorityText.index(after: at)...]
            hadUserinfo = true
        }
        guard let authority = authority(Substring(authorityText)), authority.port != 0 else { return .invalid }
        var pathAndQuery = afterScheme[authorityEnd...]
        if let hash = pathAndQuery.firstIndex(of: UInt8(ascii: "#")) {
            pathAndQuery = pathAndQuery[..<hash]
        }
        guard pathAndQuery.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { return .invalid }
        var originForm = String(Substring(pathAndQuery))
        if originForm.isEmpty || originForm.utf8.first == UInt8(ascii: "?") { originForm = "/" + originForm }
        return .success(host: authority.host, port: authority.port, originForm: originForm, hadUserinfo: hadUserinfo)
    }

    private static func equalsIgnoringCase(_ bytes: Substring.UTF8View, _ lowercase: StaticString) -> Bool {
        guard bytes.count == lowercase.utf8CodeUnitCount else { return false }
        return lowercase.withUTF8Buffer { expected in
            zip(bytes, expected).allSatisfy { ($0 | 0x20) == $1 }
        }
    }

    // The character classes are shared with Authority: what the reference checks is the
    // parsing around them.
    private static func isIPv6LiteralByte(_ c: UInt8) -> Bool { Authority.isIPv6LiteralByte(c) }
    private static func isRegNameByte(_ c: UInt8) -> Bool { Authority.isRegNameByte(c) }
}
