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
        #expect(headers.map(\.name) == ["Host", "Accept", "Transfer-Encoding"])
    }

    @Test("Connection cannot make the proxy drop message framing")
    func framingSurvives() {
        var headers = HTTPHeaders([("Connection", "content-length, host"), ("Content-Length", "5"), ("Host", "x")])
        headers.removeHopByHopFields()
        #expect(headers["content-length"] == ["5"])
        #expect(headers["host"] == ["x"])
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
    }
}
