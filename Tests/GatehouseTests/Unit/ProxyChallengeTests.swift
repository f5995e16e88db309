import Testing
@testable import Gatehouse

/// Tests for the `Proxy-Authenticate` challenge, RFC 7617 §2 / §2.1 and RFC 9110 §5.6.4.
@Suite("ProxyChallenge")
struct ProxyChallengeTests {
    @Test func exactDefaultChallenge() {
        #expect(ProxyChallenge.basic(realm: "Gatehouse") == #"Basic realm="Gatehouse", charset="UTF-8""#)
    }

    @Test func escapesQuoteAndBackslash() {
        #expect(ProxyChallenge.basic(realm: #"a "quoted" \ realm"#)
            == #"Basic realm="a \"quoted\" \\ realm", charset="UTF-8""#)
    }

    @Test func preservesUTF8Realm() {
        #expect(ProxyChallenge.basic(realm: "Gätehaus ✓ 門") == "Basic realm=\"Gätehaus ✓ 門\", charset=\"UTF-8\"")
    }

    @Test func removesControlCharactersButKeepsTab() {
        #expect(ProxyChallenge.basic(realm: "evil\r\nSet-Cookie: x\u{0}\u{7F}\tend")
            == "Basic realm=\"evilSet-Cookie: x\tend\", charset=\"UTF-8\"")
    }

    @Test func emptyRealm() {
        #expect(ProxyChallenge.basic(realm: "") == #"Basic realm="", charset="UTF-8""#)
    }

    @Test func usesSpaceNotSemicolonAfterScheme() {
        let challenge = ProxyChallenge.basic(realm: "x")
        #expect(challenge.hasPrefix("Basic realm="))
        #expect(!challenge.contains("Basic;"))
        #expect(!challenge.contains("\r") && !challenge.contains("\n"))
    }
}
