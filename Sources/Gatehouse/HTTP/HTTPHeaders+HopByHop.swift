import NIOHTTP1

/// The header fields the proxy treats specially, recognised by name (case-insensitively).
///
/// A request needs about ten decisions about its fields; asking `HTTPHeaders` for each by name
/// would scan the whole header section (and allocate an array) ten times over. Classifying
/// each field once, in a single pass, costs one comparison per field.
enum FieldKind: Equatable {
    /// Describes one connection and must not be forwarded (RFC 9110 §7.6.1), or is the proxy's
    /// own (`Proxy-Authorization`, `Proxy-Authenticate`, `Proxy-Authentication-Info`; RFC 9110
    /// §11.7: they concern the next hop alone). `Connection` and the
    /// non-standard `Proxy-Connection` are listed separately because they name more fields.
    case hopByHop
    case connection
    case proxyConnection
    case proxyAuthorization
    /// Hop-by-hop, and noted: NIO's parser stops after a request that asks to upgrade.
    case upgrade
    case host
    case contentLength
    case transferEncoding
    case via
    case expect
    /// Counts down the hops a `TRACE` or `OPTIONS` may still take (RFC 9110 §7.6.2).
    case maxForwards
    /// Noted for the access log.
    case contentType
    /// A forwarded response without one gets one (RFC 9110 §6.6.1).
    case date
    case other

    init(_ name: String) {
        var name = name
        self = name.withUTF8 { Self.classify($0) }
    }

    private static func classify(_ name: UnsafeBufferPointer<UInt8>) -> FieldKind {
        // Dispatch on length first: most fields match no candidate and cost one comparison.
        switch name.count {
        case 2: return name.equalsLowercased("te") ? .hopByHop : .other
        case 3: return name.equalsLowercased("via") ? .via : .other
        case 4:
            if name.equalsLowercased("host") { return .host }
            return name.equalsLowercased("date") ? .date : .other
        case 6: return name.equalsLowercased("expect") ? .expect : .other
        // `Trailer` is end-to-end: it announces the trailer fields (RFC 9110 §6.6.2), and is not
        // in §7.6.1's list of fields to remove (RFC 2616 listed a `Trailers` there by mistake).
        case 7: return name.equalsLowercased("upgrade") ? .upgrade : .other
        case 10:
            if name.equalsLowercased("connection") { return .connection }
            return name.equalsLowercased("keep-alive") ? .hopByHop : .other
        case 12:
            if name.equalsLowercased("max-forwards") { return .maxForwards }
            return name.equalsLowercased("content-type") ? .contentType : .other
        case 14: return name.equalsLowercased("content-length") ? .contentLength : .other
        case 16: return name.equalsLowercased("proxy-connection") ? .proxyConnection : .other
        case 17: return name.equalsLowercased("transfer-encoding") ? .transferEncoding : .other
        case 18: return name.equalsLowercased("proxy-authenticate") ? .hopByHop : .other
        case 19: return name.equalsLowercased("proxy-authorization") ? .proxyAuthorization : .other
        case 25: return name.equalsLowercased("proxy-authentication-info") ? .hopByHop : .other
        default: return .other
        }
    }

    /// Not forwarded by an intermediary, whatever `Connection` says.
    var isHopByHop: Bool {
        switch self {
        case .hopByHop, .connection, .proxyConnection, .proxyAuthorization, .upgrade: return true
        default: return false
        }
    }

    /// May pass on in a trailer section: not hop-by-hop, framing, routing or credentials
    /// (RFC 9110 §6.5.1), nor `Max-Forwards` or `Expect`, which only mean something in a head.
    var isAllowedInTrailer: Bool {
        self == .other || self == .contentType || self == .date
    }

    /// Message framing and routing: a `Connection` option naming one of these is ignored
    /// (RFC 9112 §9.6 allows only hop-by-hop fields as connection options).
    var isFraming: Bool {
        switch self {
        case .contentLength, .transferEncoding, .host: return true
        default: return false
        }
    }
}

extension UnsafeBufferPointer<UInt8> {
    /// ASCII case-insensitive equality with an all-lowercase literal of the same length.
    fileprivate func equalsLowercased(_ literal: StaticString) -> Bool {
        guard literal.utf8CodeUnitCount == self.count else { return false }
        let other = literal.utf8Start
        for i in 0..<self.count {
            var byte = self[i]
            if byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") { byte |= 0x20 }
            if byte != other[i] { return false }
        }
        return true
    }
}

extension HTTPHeaders {
    /// The lowercased field names the `Connection` and `Proxy-Connection` fields list as
    /// connection options (RFC 9110 §7.6.1); empty (and free) when neither is present.
    func connectionOptionNames() -> [String] {
        var named: [String] = []
        for (name, value) in self {
            let kind = FieldKind(name)
            guard kind == .connection || kind == .proxyConnection else { continue }
            for token in value.split(separator: ",") {
                let option = token.trimmingSpaces().lowercased()
                if !option.isEmpty { named.append(option) }
            }
        }
        return named
    }

    /// Appends the fields an intermediary passes on to `fields`: every hop-by-hop field
    /// removed, both the fixed list and every field named as a connection option (but never
    /// framing, see ``FieldKind/isFraming``). `keep` may drop more, by kind and value; it sees
    /// each remaining field once (so a caller needs no second pass over the fields).
    func appendEndToEndFields(to fields: inout [(String, String)], keep: (FieldKind, String) -> Bool = { _, _ in true }) {
        var hasOptions = false
        for (name, value) in self {
            let kind = FieldKind(name)
            if (kind == .connection || kind == .proxyConnection) && !Self.isPlainKeepAliveOrClose(value) {
                hasOptions = true
                break
            }
        }
        let named = hasOptions ? self.connectionOptionNames() : []
        for (name, value) in self {
            let kind = FieldKind(name)
            if kind.isHopByHop { continue }
            if !named.isEmpty && !kind.isFraming && named.contains(name.lowercased()) { continue }
            if keep(kind, value) { fields.append((name, value)) }
        }
    }

    /// `keep-alive` or `close` alone: the usual `Connection` value, which names no field
    /// that is not hop-by-hop already, so there are no options to parse.
    private static func isPlainKeepAliveOrClose(_ value: String) -> Bool {
        var value = value
        return value.withUTF8 { $0.equalsLowercased("keep-alive") || $0.equalsLowercased("close") }
    }

    /// The trailer fields an intermediary passes on (RFC 9110 §6.5): none that is hop-by-hop
    /// (the fixed list, and `connectionOptions`, the names the message's `Connection` field
    /// listed: §7.6.1 removes "header or trailer fields" of those names), and none of the
    /// framing, routing or proxy-credential fields that a trailer section may not carry
    /// (§6.5.1), so a client cannot slip `Proxy-Authorization` to the origin in one. A field
    /// whose value held bytes that are not UTF-8 is dropped rather than passed on altered (see
    /// `String.containsReplacementCharacter`; a recipient may discard trailer fields, §6.5).
    /// nil when nothing is left.
    func forwardableTrailers(connectionOptions: [String]) -> HTTPHeaders? {
        var kept: [(String, String)] = []
        for (name, value) in self where FieldKind(name).isAllowedInTrailer {
            if !connectionOptions.isEmpty && connectionOptions.contains(name.lowercased()) { continue }
            if value.containsReplacementCharacter { continue }
            kept.append((name, value))
        }
        return kept.isEmpty ? nil : HTTPHeaders(kept)
    }

    /// Removes every hop-by-hop field: the fixed list and every field named in `Connection`
    /// (and `Proxy-Connection`, which some clients use the same way).
    public mutating func removeHopByHopFields() {
        var fields: [(String, String)] = []
        fields.reserveCapacity(self.count)
        self.appendEndToEndFields(to: &fields)
        self = HTTPHeaders(fields)
    }

    /// Whether the `Connection` field carries the given option (case-insensitive).
    func hasConnectionOption(_ option: String) -> Bool {
        self["connection"].contains { value in
            value.split(separator: ",").contains { $0.trimmingSpaces().lowercased() == option }
        }
    }
}

/// What the proxy decides on in a request's header section, gathered in one pass.
struct RequestFields {
    var hostCount = 0
    var transferEncodings: [String] = []
    var contentLengths: [String] = []
    var via: [String] = []
    var proxyAuthorization: [String] = []
    var proxyConnectionKeepAlive = false
    var expectsContinue = false
    /// The request asks to switch protocols (`Upgrade`, RFC 9110 §7.8).
    var upgrade = false
    /// The `Max-Forwards` values, if any.
    var maxForwards: [String] = []
    /// A value held bytes that are not UTF-8 (see `String.containsReplacementCharacter`).
    var hasReplacedBytes = false

    init(_ headers: HTTPHeaders) {
        for (name, value) in headers {
            if value.containsReplacementCharacter { self.hasReplacedBytes = true }
            switch FieldKind(name) {
            case .host: self.hostCount += 1
            case .transferEncoding: self.transferEncodings.append(value)
            case .contentLength: self.contentLengths.append(value)
            case .via: self.via.append(value)
            case .proxyAuthorization: self.proxyAuthorization.append(value)
            case .proxyConnection:
                if value.lowercased() == "keep-alive" { self.proxyConnectionKeepAlive = true }
            case .expect:
                if value.lowercased() == "100-continue" { self.expectsContinue = true }
            case .maxForwards:
                self.maxForwards.append(value)
            case .upgrade:
                self.upgrade = true
            default: break
            }
        }
    }

    /// The first `Content-Length` as a number; one too large for an `Int` (NIO's parser takes
    /// up to 2^64 - 1) counts as `Int.max`, not as none: `Int("9223372036854775808")` is nil,
    /// and such a request got past `--max-body`'s up-front check. Trailing spaces, which the
    /// parser accepts and leaves in the value, are not part of it (`20000000 ` got past too).
    var declaredLength: Int? {
        guard let first = self.contentLengths.first else { return nil }
        let value = withoutTrailingSpaces(first)
        if let length = Int(value) { return length }
        return !value.isEmpty && value.utf8.allSatisfy { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") } ? Int.max : nil
    }

    /// The request has a body whose length is not known in advance (chunked).
    var bodyOfUnknownLength: Bool { !self.transferEncodings.isEmpty }

    /// Whether the request says it has a body (RFC 9112 §6.3).
    var isFramed: Bool { !self.contentLengths.isEmpty || !self.transferEncodings.isEmpty }

    /// Whether the request announces content: any transfer coding, or a length other than 0.
    /// (`Content-Length: 0`, which some clients send on every request, announces none.)
    var announcesContent: Bool { !self.transferEncodings.isEmpty || self.contentLengths.contains { $0 != "0" } }

    /// The hops a `TRACE` or `OPTIONS` request may still take: `Max-Forwards` as a number
    /// (RFC 9110 §7.6.2, `1*DIGIT`), nil for any other method, or when the field is absent or
    /// not a number (then the request is forwarded as it is).
    func remainingForwards(for method: HTTPMethod) -> Int? {
        // Two fields (which should not happen) count as the fewer hops.
        guard method == .TRACE || method == .OPTIONS else { return nil }
        return self.maxForwards.compactMap(Self.hops(in:)).min()
    }

    /// A `Max-Forwards` value as a number; nil if it is not one (a value too large for `Int`
    /// counts as `Int.max`).
    static func hops(in value: String) -> Int? {
        let digits = Substring(value).trimmingSpaces()
        guard !digits.isEmpty, digits.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else { return nil }
        return Int(digits) ?? Int.max
    }
}

/// `value` without the spaces at its end: NIO's parser leaves a field value's trailing
/// whitespace in, though it is not part of the value (RFC 9110 §5.5).
func withoutTrailingSpaces(_ value: String) -> Substring {
    var value = value[...]
    while value.last == " " { value.removeLast() }
    return value
}
