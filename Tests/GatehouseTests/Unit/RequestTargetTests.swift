@testable import Gatehouse
import Testing

@Suite("Request targets and authorities")
struct RequestTargetTests {
    @Test("absolute-form http URIs split into origin form and Host")
    func absolute() throws {
        let uri = try RequestTarget.parseAbsolute("http://Example.com:8080/a/b?q=1#frag").get()
        #expect(uri.authority.host == "Example.com")
        #expect(uri.port == 8080)
        #expect(uri.originForm == "/a/b?q=1")
        #expect(uri.hostHeader == "Example.com:8080")
        let bare = try RequestTarget.parseAbsolute("HTTP://example.com").get()
        #expect(bare.originForm == "/")
        #expect(bare.port == 80)
        #expect(bare.hostHeader == "example.com")
        let query = try RequestTarget.parseAbsolute("http://example.com?x").get()
        #expect(query.originForm == "/?x")
    }

    @Test("userinfo is dropped and never logged")
    func userinfo() throws {
        let uri = try RequestTarget.parseAbsolute("http://bob:hunter2@example.com/x").get()
        #expect(uri.hadUserinfo)
        #expect(uri.logDescription == "http://example.com/x")
        #expect(!ProxyConnectionHandler.logTarget("http://bob:hunter2@example.com/x").contains("hunter2"))
    }

    @Test("IPv6 literals keep their brackets out of the host")
    func ipv6() throws {
        let uri = try RequestTarget.parseAbsolute("http://[::1]:8080/").get()
        #expect(uri.authority.host == "::1")
        #expect(uri.hostHeader == "[::1]:8080")
        let connect = try RequestTarget.parseConnect("[2001:db8::1]:443").get()
        #expect(connect.host == "2001:db8::1")
        #expect(connect.port == 443)
    }

    @Test("origin form, https and junk are told apart", arguments: [
        ("/index.html", RequestTarget.ParseError.originForm),
        ("*", .originForm),
        ("https://example.com/", .httpsAbsoluteForm),
        ("ftp://example.com/", .invalid),
        ("http://", .invalid),
        ("http://exa mple.com/", .invalid),
        ("http://example.com:99999/", .invalid),
        ("http://example.com:0/", .invalid),
        ("http://[::1/", .invalid),
        ("http://example.com/\u{7F}", .invalid),
    ])
    func rejected(uri: String, error: RequestTarget.ParseError) {
        #expect(throws: error) { try RequestTarget.parseAbsolute(uri).get() }
    }

    @Test("CONNECT needs host:port", arguments: ["example.com", "example.com:", ":443", "example.com:0", "a b:443", "http://x:443"])
    func connectRejected(uri: String) {
        #expect(throws: RequestTarget.ParseError.invalid) { try RequestTarget.parseConnect(uri).get() }
    }
}
