@testable import Gatehouse
import NIOCore
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

    @Test("the logged URL: the received text when already canonical, rebuilt otherwise")
    func logDescription() throws {
        let cases = [
            ("http://example.com/x?y", "http://example.com/x?y"),
            ("http://Example.com:8080/a", "http://Example.com:8080/a"),
            ("http://[::1]/", "http://[::1]/"),
            ("http://[::1]:81/", "http://[::1]:81/"),
            ("HTTP://example.com/x", "http://example.com/x"),
            ("http://example.com:80/x", "http://example.com/x"),
            ("http://example.com:080/x", "http://example.com/x"),
            ("http://example.com:0081/x", "http://example.com:81/x"),
            ("http://example.com/x#frag", "http://example.com/x"),
            ("http://example.com", "http://example.com/"),
            ("http://example.com?q", "http://example.com/?q"),
            ("http://u:p@example.com/x", "http://example.com/x"),
            // port = *DIGIT (RFC 3986 §3.2.3): empty is the default, leading zeros are allowed.
            ("http://example.com:/x", "http://example.com/x"),
            ("http://example.com:000000081/x", "http://example.com:81/x"),
            ("http://[::1]:/x", "http://[::1]/x"),
        ]
        for (target, logged) in cases {
            #expect(try RequestTarget.parseAbsolute(target).get().logDescription == logged, "\(target)")
        }
        var edited = try RequestTarget.parseAbsolute("http://example.com/x").get()
        edited.originForm = "/y"
        #expect(edited.logDescription == "http://example.com/y", "an edited URI is rebuilt")
    }

    @Test("an empty port is the default one, with no colon in Host")
    func emptyPort() throws {
        let uri = try RequestTarget.parseAbsolute("http://example.com:/x").get()
        #expect(uri.port == 80)
        #expect(uri.hostHeader == "example.com")
        #expect(try RequestTarget.parseAbsolute("http://example.com:0080/").get().hostHeader == "example.com")
    }

    @Test("userinfo is dropped and never logged")
    func userinfo() throws {
        let uri = try RequestTarget.parseAbsolute("http://bob:hunter2@example.com/x").get()
        #expect(uri.hadUserinfo)
        #expect(uri.logDescription == "http://example.com/x")
        #expect(RequestTarget.withoutUserinfo("http://bob:hunter2@example.com/x") == "http://example.com/x")
        // Unparseable targets are logged too (400 bad_target): a CONNECT with userinfo.
        #expect(RequestTarget.withoutUserinfo("u:hunter2@example.com:443") == "example.com:443")
        #expect(RequestTarget.withoutUserinfo("http://example.com/a@b") == "http://example.com/a@b")
        #expect(RequestTarget.withoutUserinfo("/path@x") == "/path@x")
    }

    @Test("IPv6 literals keep their brackets out of the host")
    func ipv6() throws {
        let uri = try RequestTarget.parseAbsolute("http://[::1]:8080/").get()
        #expect(uri.authority.host == "::1")
        #expect(uri.hostHeader == "[::1]:8080")
        let connect = try RequestTarget.parseConnect("[2001:db8::1]:443").get()
        #expect(connect.host == "2001:db8::1")
        #expect(connect.port == 443)
        for valid in ["::", "::ffff:127.0.0.1", "1:2:3:4:5:6:7:8", "0:0:0:0:0:0:0:1", "fe80::1", "::FFFF:7f00:1"] {
            #expect((try? RequestTarget.parseAbsolute("http://[\(valid)]:80/").get()) != nil, "\(valid)")
        }
    }

    @Test(
        "bracketed text that is not an IPv6 address is a bad target, not a name for the resolver (they got 407, then 502 upstream_dns)",
        arguments: ["::10001", "00000::1", "1:2:3:4:5:6:7:8:9", "::1::", ":::1", "::ffff:256.0.0.1", "::ffff:127.1", "::ffff:0177.0.0.1", "1:2"])
    func malformedIPv6(inner: String) {
        #expect(throws: RequestTarget.ParseError.invalid) { try RequestTarget.parseAbsolute("http://[\(inner)]:80/").get() }
        #expect(throws: RequestTarget.ParseError.invalid) { try RequestTarget.parseConnect("[\(inner)]:443").get() }
    }

    @Test("origin form, https and junk are told apart", arguments: [
        ("/index.html", RequestTarget.ParseError.originForm),
        ("*", .originForm),
        ("https://example.com/", .httpsAbsoluteForm),
        ("ftp://example.com/", .invalid),
        ("http://", .invalid),
        ("http://exa mple.com/", .invalid),
        ("http://example.com:99999/", .invalid),
        ("http://example.com:0065536/", .invalid),
        ("http://example.com:99999999999999999999999/", .invalid),
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

    @Test("a listener is described as --print-address and systemd's status line give it: ip:port, [v6]:port, unix:PATH")
    func listenerDescriptions() throws {
        #expect(try SocketAddress(ipAddress: "127.0.0.1", port: 3128).listenerDescription == "127.0.0.1:3128")
        #expect(try SocketAddress(ipAddress: "::1", port: 3128).listenerDescription == "[::1]:3128")
        #expect(try SocketAddress(unixDomainSocketPath: "/run/gatehouse.sock").listenerDescription == "unix:/run/gatehouse.sock")
    }

}
