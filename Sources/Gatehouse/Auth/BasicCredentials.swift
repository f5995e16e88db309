/// A user-id / password pair taken from a `Proxy-Authorization: Basic …` request header.
///
/// The Basic scheme (RFC 7617) carries `base64(user-id ":" password)`. Gatehouse only ever
/// needs the two halves to look a user up in an htpasswd file and verify the password, so this
/// type is a plain value with no behaviour beyond parsing.
///
/// The password is secret: never log or print a `BasicCredentials` value.
public struct BasicCredentials: Sendable, Equatable {
    /// The user-id: everything before the first `:` of the decoded credentials. May be empty;
    /// an empty user-id parses but never matches an htpasswd entry (htpasswd forbids empty names).
    public var user: String
    /// The password: everything after the first `:`. May itself contain `:` (RFC 7617 §2 only
    /// forbids a colon in the user-id, so the split must happen at the *first* colon).
    public var password: String

    public init(user: String, password: String) {
        self.user = user
        self.password = password
    }
}

/// Why a `Proxy-Authorization` value could not be turned into ``BasicCredentials``.
///
/// The cases are deliberately coarse: the proxy answers all of them with `407` and a fresh
/// challenge, and the distinction only matters for diagnostics and tests. None carries the
/// offending header text, so an error can be logged without leaking secrets.
public enum BasicCredentialsError: Error, Sendable, Equatable {
    /// The auth-scheme is not `Basic` (e.g. `Digest`, `Bearer`, `Negotiate`).
    case wrongScheme
    /// The scheme is `Basic` but the token68 is missing, empty, not separated by SP, or not
    /// strict, canonical base64.
    case malformedBase64
    /// The decoded credentials contain no `:` separator (RFC 7617 §2 requires one).
    case missingColon
    /// The decoded credentials are not valid UTF-8. Gatehouse advertises `charset="UTF-8"`
    /// (RFC 7617 §2.1), so any other encoding is rejected instead of guessed at.
    case invalidUTF8
}

extension BasicCredentials {
    /// Parses a `Proxy-Authorization` field value, RFC 7617 §2 / RFC 9110 §11.
    ///
    /// Grammar (RFC 9110 §11.4 and §11.6.2, RFC 7617 §2):
    ///
    ///     Proxy-Authorization = credentials
    ///     credentials         = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
    ///     token68             = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    ///
    /// * The auth-scheme is compared case-insensitively (RFC 9110 §11.1), so `basic` and `BASIC`
    ///   are accepted.
    /// * Optional whitespace (SP / HTAB) around the whole field value is tolerated because
    ///   RFC 9110 §5.5 says it is not part of the field value; whitespace *inside* the token is not.
    /// * The token68 must be strict RFC 4648 §4 base64 (not base64url, no line breaks, correct
    ///   padding, canonical trailing bits). Lenient decoders accept many spellings of the same
    ///   credentials, which makes behaviour depend on the decoder and complicates auditing;
    ///   being strict costs nothing for real clients, which all emit canonical base64.
    /// * The decoded octets must be UTF-8 (RFC 7617 §2.1, we send `charset="UTF-8"`).
    /// * The user-id ends at the first colon; the password may contain colons (RFC 7617 §2).
    ///
    /// - Throws: ``BasicCredentialsError``; the error never contains the field value.
    public init(proxyAuthorization value: some StringProtocol) throws(BasicCredentialsError) {
        let bytes = Array(value.utf8)

        // Trim OWS at both ends of the whole field value (RFC 9110 §5.5).
        var start = bytes.startIndex
        var end = bytes.endIndex
        while start < end, Self.isOWS(bytes[start]) { start += 1 }
        while end > start, Self.isOWS(bytes[end - 1]) { end -= 1 }

        // auth-scheme = token (RFC 9110 §11.1).
        var cursor = start
        while cursor < end, Self.isTokenChar(bytes[cursor]) { cursor += 1 }
        guard Self.isBasicScheme(bytes[start..<cursor]) else { throw .wrongScheme }

        // 1*SP, then token68. `Basic` alone, `Basic\t…` or `Basic:…` have no usable token.
        guard cursor < end, bytes[cursor] == UInt8(ascii: " ") else { throw .malformedBase64 }
        while cursor < end, bytes[cursor] == UInt8(ascii: " ") { cursor += 1 }

        guard let decoded = Self.strictBase64Decode(bytes[cursor..<end]) else {
            throw .malformedBase64
        }

        // Validate UTF-8 without Foundation: decoding repairs invalid sequences with U+FFFD,
        // so the re-encoded bytes differ from the input exactly when the input was invalid.
        let text = String(decoding: decoded, as: UTF8.self)
        guard text.utf8.elementsEqual(decoded) else { throw .invalidUTF8 }

        // Split at the FIRST colon: user-ids cannot contain ':' but passwords can (RFC 7617 §2).
        guard let colon = decoded.firstIndex(of: UInt8(ascii: ":")) else { throw .missingColon }
        // Both halves are valid UTF-8 because ':' is ASCII and cannot split a multi-byte scalar.
        self.user = String(decoding: decoded[..<colon], as: UTF8.self)
        self.password = String(decoding: decoded[(colon + 1)...], as: UTF8.self)
    }

    // MARK: - Lexical helpers

    /// OWS = *( SP / HTAB ), RFC 9110 §5.6.3.
    private static func isOWS(_ byte: UInt8) -> Bool {
        byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t")
    }

    /// tchar, RFC 9110 §5.6.2.
    private static func isTokenChar(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"),
             UInt8(ascii: "A")...UInt8(ascii: "Z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return Array("!#$%&'*+-.^_`|~".utf8).contains(byte)
        }
    }

    /// ASCII case-insensitive comparison with `Basic` (RFC 9110 §11.1: schemes are
    /// case-insensitive). Does not use locale-aware lowercasing on purpose.
    private static func isBasicScheme(_ scheme: ArraySlice<UInt8>) -> Bool {
        let expected = Array("basic".utf8)
        guard scheme.count == expected.count else { return false }
        return zip(scheme, expected).allSatisfy { byte, lower in
            let folded = (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte) ? byte | 0x20 : byte
            return folded == lower
        }
    }

    /// Strict RFC 4648 §4 base64 decoding.
    ///
    /// Accepts only `A-Z a-z 0-9 + /`, a length that is a non-zero multiple of four, zero to two
    /// `=` characters that appear only at the very end, and canonical encodings (the unused low
    /// bits before the padding must be zero, RFC 4648 §3.5). Returns `nil` for anything else.
    /// Written by hand instead of using Foundation so the accepted language is exactly this.
    static func strictBase64Decode(_ input: ArraySlice<UInt8>) -> [UInt8]? {
        guard !input.isEmpty, input.count % 4 == 0 else { return nil }
        var padding = 0
        if input.last == UInt8(ascii: "=") { padding += 1 }
        if input.count >= 2, input[input.endIndex - 2] == UInt8(ascii: "=") { padding += 1 }
        let dataEnd = input.endIndex - padding

        var output: [UInt8] = []
        output.reserveCapacity(input.count / 4 * 3)
        var accumulator: UInt32 = 0
        var bitCount = 0
        for byte in input[input.startIndex..<dataEnd] {
            guard let sextet = sextet(byte) else { return nil }  // also rejects inner '='
            accumulator = (accumulator << 6) | UInt32(sextet)
            bitCount += 6
            if bitCount >= 8 {
                bitCount -= 8
                output.append(UInt8(truncatingIfNeeded: accumulator >> UInt32(bitCount)))
                accumulator &= (1 << UInt32(bitCount)) - 1
            }
        }
        // With padding 1 there are 2 leftover bits, with padding 2 there are 4; both must be 0.
        guard accumulator == 0 else { return nil }
        return output
    }

    private static func sextet(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"): return byte - UInt8(ascii: "A")
        case UInt8(ascii: "a")...UInt8(ascii: "z"): return byte - UInt8(ascii: "a") + 26
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0") + 52
        case UInt8(ascii: "+"): return 62
        case UInt8(ascii: "/"): return 63
        default: return nil
        }
    }
}
