/// One challenge from a `Proxy-Authenticate` (or `WWW-Authenticate`) field, and a parser that
/// checks the field against RFC 9110 §11.3 and §11.6.1:
///
/// ```
/// Proxy-Authenticate = #challenge
/// challenge          = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
/// auth-param         = token BWS "=" BWS ( token / quoted-string )
/// ```
///
/// `gatehouse probe` uses it to tell people *why* their client ignores a challenge: the
/// `Basic; realm="x"` form circulating in articles, for instance, is not valid syntax.
public struct AuthChallenge: Sendable, Equatable {
    public var scheme: String
    /// Parameter names lowercased (they are case-insensitive), values unquoted.
    public var parameters: [String: String]
    public var token68: String?

    public init(scheme: String, parameters: [String: String] = [:], token68: String? = nil) {
        self.scheme = scheme
        self.parameters = parameters
        self.token68 = token68
    }

    public struct SyntaxError: Error, Sendable, Equatable, CustomStringConvertible {
        public var position: Int
        public var message: String
        public var description: String { "at character \(self.position + 1): \(self.message)" }
    }

    /// Parses one field value, which may hold several comma-separated challenges.
    public static func parse(_ value: String) -> Result<[AuthChallenge], SyntaxError> {
        var parser = Parser(Array(value.utf8))
        do {
            return .success(try parser.challenges())
        } catch {
            return .failure(error)
        }
    }

    private struct Parser {
        let bytes: [UInt8]
        var i = 0
        init(_ bytes: [UInt8]) { self.bytes = bytes }

        var atEnd: Bool { self.i >= self.bytes.count }
        var peek: UInt8? { self.atEnd ? nil : self.bytes[self.i] }

        static func isTChar(_ c: UInt8) -> Bool {
            switch c {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
                return true
            default:
                return Array("!#$%&'*+-.^_`|~".utf8).contains(c)
            }
        }

        static func isToken68Char(_ c: UInt8) -> Bool {
            switch c {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
                return true
            default:
                return Array("-._~+/".utf8).contains(c)
            }
        }

        mutating func skipOWS() {
            while let c = self.peek, c == UInt8(ascii: " ") || c == UInt8(ascii: "\t") { self.i += 1 }
        }

        mutating func token() -> String {
            let start = self.i
            while let c = self.peek, Self.isTChar(c) { self.i += 1 }
            return String(decoding: self.bytes[start..<self.i], as: UTF8.self)
        }

        func fail(_ message: String) -> SyntaxError { SyntaxError(position: self.i, message: message) }

        /// Whether the input at `i` looks like `token BWS "="` followed by something other than
        /// another "=" (which would make it the padding of a token68).
        func looksLikeParameter() -> Bool {
            var j = self.i
            let start = j
            while j < self.bytes.count, Self.isTChar(self.bytes[j]) { j += 1 }
            if j == start { return false }
            while j < self.bytes.count, self.bytes[j] == UInt8(ascii: " ") || self.bytes[j] == UInt8(ascii: "\t") { j += 1 }
            guard j < self.bytes.count, self.bytes[j] == UInt8(ascii: "=") else { return false }
            j += 1
            return j >= self.bytes.count || self.bytes[j] != UInt8(ascii: "=")
        }

        mutating func challenges() throws(SyntaxError) -> [AuthChallenge] {
            var result: [AuthChallenge] = []
            while true {
                // Empty list elements are allowed (RFC 9110 §5.6.1.2).
                while let c = self.peek, c == UInt8(ascii: ",") || c == UInt8(ascii: " ") || c == UInt8(ascii: "\t") { self.i += 1 }
                if self.atEnd { break }
                let scheme = self.token()
                if scheme.isEmpty { throw self.fail("expected an auth-scheme (a token such as Basic)") }
                var challenge = AuthChallenge(scheme: scheme)
                if self.peek == UInt8(ascii: ";") {
                    throw self.fail("\";\" after the scheme \(scheme) is not allowed; parameters follow the scheme after a space, as in: \(scheme) realm=\"...\"")
                }
                if self.atEnd || self.peek == UInt8(ascii: ",") {
                    result.append(challenge)
                    continue
                }
                guard self.peek == UInt8(ascii: " ") else { throw self.fail("expected a space after the scheme \(scheme)") }
                self.skipOWS()
                if self.atEnd || self.peek == UInt8(ascii: ",") {
                    result.append(challenge)
                    continue
                }
                if self.looksLikeParameter() {
                    try self.parameters(into: &challenge)
                } else {
                    let start = self.i
                    while let c = self.peek, Self.isToken68Char(c) { self.i += 1 }
                    while self.peek == UInt8(ascii: "=") { self.i += 1 }
                    if self.i == start { throw self.fail("expected a token68 or name=value parameters after \(scheme)") }
                    challenge.token68 = String(decoding: self.bytes[start..<self.i], as: UTF8.self)
                    self.skipOWS()
                    if !self.atEnd && self.peek != UInt8(ascii: ",") {
                        throw self.fail("unexpected character after the token68 of \(scheme)")
                    }
                }
                result.append(challenge)
            }
            return result
        }

        mutating func parameters(into challenge: inout AuthChallenge) throws(SyntaxError) {
            while true {
                let name = self.token().lowercased()
                self.skipOWS()
                guard self.peek == UInt8(ascii: "=") else { throw self.fail("expected \"=\" after the parameter name \(name)") }
                self.i += 1
                self.skipOWS()
                let value: String
                if self.peek == UInt8(ascii: "\"") {
                    value = try self.quotedString()
                } else {
                    value = self.token()
                    if value.isEmpty { throw self.fail("expected a token or a quoted string as the value of \(name)") }
                }
                if challenge.parameters[name] != nil {
                    throw self.fail("the parameter \(name) appears twice in one challenge")
                }
                challenge.parameters[name] = value
                self.skipOWS()
                if self.atEnd { return }
                guard self.peek == UInt8(ascii: ",") else {
                    throw self.fail("expected \",\" between parameters of \(challenge.scheme)")
                }
                // A comma either separates parameters or starts the next challenge.
                let mark = self.i
                self.i += 1
                while let c = self.peek, c == UInt8(ascii: ",") || c == UInt8(ascii: " ") || c == UInt8(ascii: "\t") { self.i += 1 }
                if self.atEnd { return }
                if !self.looksLikeParameter() {
                    self.i = mark
                    return
                }
            }
        }

        mutating func quotedString() throws(SyntaxError) -> String {
            self.i += 1
            var out: [UInt8] = []
            while let c = self.peek {
                self.i += 1
                if c == UInt8(ascii: "\"") { return String(decoding: out, as: UTF8.self) }
                if c == UInt8(ascii: "\\") {
                    guard let next = self.peek else { break }
                    self.i += 1
                    out.append(next)
                } else if c < 0x20 && c != UInt8(ascii: "\t") || c == 0x7F {
                    throw self.fail("control character inside a quoted string")
                } else {
                    out.append(c)
                }
            }
            throw self.fail("unterminated quoted string")
        }
    }
}
