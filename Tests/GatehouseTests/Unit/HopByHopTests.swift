@testable import Gatehouse
import NIOHTTP1
import Testing

@Suite("Hop-by-hop header stripping (RFC 9110 §7.6.1)")
struct HopByHopTests {
    @Test("the fixed list and every field Connection names are removed; end-to-end fields stay")
    func strips() {
        var headers = HTTPHeaders([
            ("Host", "example.com"), ("Connection", "keep-alive, X-Foo"), ("Connection", "x-bar"), ("X-Foo", "1"),
            ("X-Bar", "2"), ("Keep-Alive", "timeout=5"), ("TE", "trailers"), ("Trailer", "X-T"), ("Upgrade", "h2c"),
            ("Proxy-Authorization", "Basic abc"), ("Proxy-Connection", "keep-alive"), ("Accept", "*/*"),
            ("Transfer-Encoding", "chunked"),
        ])
        headers.removeHopByHopFields()
        #expect(headers.map(\.name) == ["Host", "Trailer", "Accept", "Transfer-Encoding"])
    }

    @Test("Connection cannot make the proxy drop message framing")
    func framingSurvives() {
        var headers = HTTPHeaders([("Connection", "content-length, host"), ("Content-Length", "5"), ("Host", "x")])
        headers.removeHopByHopFields()
        #expect(headers["content-length"] == ["5"])
        #expect(headers["host"] == ["x"])
    }

    @Test("field names are classified case-insensitively, by exact name only")
    func classification() {
        #expect(FieldKind("Host") == .host)
        #expect(FieldKind("HOST") == .host)
        #expect(FieldKind("Hosts") == .other)
        #expect(FieldKind("Content-Length") == .contentLength)
        #expect(FieldKind("content-lengtH") == .contentLength)
        #expect(FieldKind("Content_Length") == .other)
        #expect(FieldKind("Transfer-Encoding") == .transferEncoding)
        #expect(FieldKind("PROXY-AUTHORIZATION") == .proxyAuthorization)
        #expect(FieldKind("Proxy-Connection") == .proxyConnection)
        #expect(FieldKind("Connection") == .connection)
        for name in ["TE", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authentication-Info"] {
            #expect(FieldKind(name) == .hopByHop, "\(name)")
        }
        #expect(FieldKind("UPGRADE") == .upgrade && FieldKind.upgrade.isHopByHop)
        // End-to-end: it announces the trailer fields (RFC 9110 §6.6.2).
        #expect(FieldKind("Trailer") == .other)
        // Same length as a known name, one byte off: `{` is `[` | 0x20, which a sloppy
        // case fold would take for a letter.
        #expect(FieldKind("Vi{") == .other)
        #expect(FieldKind("Via") == .via)
        #expect(FieldKind("") == .other)
    }

    @Test("the request summary gathers every field the proxy decides on, in one pass")
    func requestFields() {
        let fields = RequestFields(HTTPHeaders([
            ("Host", "a"), ("host", "b"), ("Transfer-Encoding", "chunked"), ("Content-Length", "5"),
            ("Via", "1.1 x"), ("Proxy-Authorization", "Basic abc"), ("Proxy-Connection", "Keep-Alive"),
            ("Expect", "100-Continue"),
        ]))
        #expect(fields.hostCount == 2)
        #expect(fields.transferEncodings == ["chunked"])
        #expect(fields.contentLengths == ["5"])
        #expect(fields.via == ["1.1 x"])
        #expect(fields.proxyAuthorization == ["Basic abc"])
        #expect(fields.proxyConnectionKeepAlive)
        #expect(fields.expectsContinue)
        #expect(fields.isFramed)
        let empty = RequestFields(HTTPHeaders([("Accept", "*/*")]))
        #expect(!empty.isFramed && empty.hostCount == 0 && !empty.expectsContinue)
    }

    @Test("the declared length: trailing spaces are not part of it, one too large for an Int counts as Int.max, junk as none")
    func declaredLength() {
        func length(_ value: String) -> Int? { RequestFields(HTTPHeaders([("Content-Length", value)])).declaredLength }
        #expect(length("20000000") == 20_000_000)
        #expect(length("20000000 ") == 20_000_000, "NIO's parser leaves trailing spaces in")
        #expect(length("0020") == 20)
        #expect(length("9223372036854775808") == Int.max)
        #expect(length("18446744073709551615  ") == Int.max)
        #expect(length("") == nil)
        #expect(length("5,5") == nil)
        #expect(RequestFields(HTTPHeaders([("Accept", "*/*")])).declaredLength == nil)
    }

    @Test("a plain `Connection: keep-alive` names no options; a list with one still does")
    func plainKeepAlive() {
        var headers = HTTPHeaders([("Connection", "Keep-Alive"), ("X-Keep", "1")])
        headers.removeHopByHopFields()
        #expect(headers.map(\.name) == ["X-Keep"])
        headers = HTTPHeaders([("Connection", "keep-alive, x-drop"), ("X-Drop", "1"), ("X-Keep", "1")])
        headers.removeHopByHopFields()
        #expect(headers.map(\.name) == ["X-Keep"])
    }

    @Test("the upstream request: origin form, Host from the URI, Via added, credentials gone")
    func upstreamHead() throws {
        let uri = try RequestTarget.parseAbsolute("http://origin.test:8080/p?q").get()
        let head = HTTPRequestHead(
            version: .http1_1, method: .POST, uri: "http://origin.test:8080/p?q",
            headers: HTTPHeaders([("Host", "spoofed"), ("Proxy-Authorization", "Basic abc"), ("Via", "1.1 other")]))
        let upstream = ProxyConnectionHandler.upstreamRequestHead(head, uri: uri, via: "gatehouse")
        #expect(upstream.uri == "/p?q")
        #expect(upstream.headers["host"] == ["origin.test:8080"])
        #expect(upstream.headers["via"] == ["1.1 other", "1.1 gatehouse"])
        #expect(upstream.headers["proxy-authorization"].isEmpty)
        #expect(upstream.headers["content-length"] == ["0"], "a POST without framing has an empty body")
        #expect(upstream.headers.first?.name == "Host", "Host leads the header section")
        let framed = HTTPRequestHead(
            version: .http1_0, method: .PUT, uri: "http://origin.test:8080/p",
            headers: HTTPHeaders([("content-length", "3"), ("Connection", "x-opt"), ("X-Opt", "1")]))
        let forwarded = ProxyConnectionHandler.upstreamRequestHead(framed, uri: uri, via: "gatehouse")
        #expect(forwarded.headers["content-length"] == ["3"])
        #expect(forwarded.headers["x-opt"].isEmpty)
        #expect(forwarded.headers["via"] == ["1.0 gatehouse"])
    }
    @Test("Max-Forwards counts down on TRACE and OPTIONS only; junk is left alone")
    func maxForwards() {
        func fields(_ value: String) -> RequestFields { RequestFields(HTTPHeaders([("Max-Forwards", value)])) }
        #expect(fields("0").remainingForwards(for: .TRACE) == 0)
        #expect(fields(" 7 ").remainingForwards(for: .OPTIONS) == 7)
        #expect(fields("0").remainingForwards(for: .GET) == nil)
        #expect(fields("-1").remainingForwards(for: .TRACE) == nil)
        #expect(fields("1e3").remainingForwards(for: .TRACE) == nil)
        #expect(fields("99999999999999999999999").remainingForwards(for: .TRACE) == Int.max)
        #expect(RequestFields(HTTPHeaders()).remainingForwards(for: .TRACE) == nil)
        let two = RequestFields(HTTPHeaders([("Max-Forwards", "3"), ("Max-Forwards", "0")]))
        #expect(two.remainingForwards(for: .TRACE) == 0, "two fields: the fewer hops")
        var both: [(String, String)] = [("Max-Forwards", "3"), ("Max-Forwards", "2")]
        ProxyConnectionHandler.decrementMaxForwards(&both)
        #expect(both.map(\.1) == ["2", "1"])
        for (method, value, sent) in [(HTTPMethod.OPTIONS, "5", "4"), (.TRACE, "1", "0"), (.GET, "5", "5"), (.TRACE, "x", "x")] {
            let head = HTTPRequestHead(version: .http1_1, method: method, uri: "http://o/", headers: HTTPHeaders([("Max-Forwards", value)]))
            let uri = try? RequestTarget.parseAbsolute("http://o/").get()
            let forwarded = uri.map { ProxyConnectionHandler.upstreamRequestHead(head, uri: $0, via: "gatehouse") }
            #expect(forwarded?.headers["max-forwards"] == [sent], "\(method) \(value)")
        }
    }

    @Test("U+FFFD, what NIO's parser leaves of bytes that are not UTF-8, is found wherever it is")
    func replacementCharacter() {
        #expect(!"".containsReplacementCharacter)
        #expect(!"plain ascii value".containsReplacementCharacter)
        #expect(!"caf\u{E9} \u{EF}\u{BF}".containsReplacementCharacter, "valid UTF-8 with bytes EF and BF elsewhere")
        #expect("\u{FFFD}".containsReplacementCharacter)
        #expect("caf\u{FFFD}".containsReplacementCharacter)
        #expect("\u{FFFD}tail".containsReplacementCharacter)
        #expect(String(decoding: Array("v=".utf8) + [0x80, 0xFF], as: UTF8.self).containsReplacementCharacter)
        var fields = RequestFields(HTTPHeaders([("X-Name", String(decoding: [0x63, 0xE9], as: UTF8.self))]))
        #expect(fields.hasReplacedBytes)
        fields = RequestFields(HTTPHeaders([("X-Name", "caf\u{E9}")]))
        #expect(!fields.hasReplacedBytes)
    }
}
