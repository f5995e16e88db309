@testable import Gatehouse
import Testing

@Suite("Proxy-Authenticate syntax (RFC 9110 §11.3)")
struct AuthChallengeTests {
    @Test("Gatehouse's own challenge parses to Basic with realm and charset")
    func own() throws {
        let parsed = try AuthChallenge.parse(ProxyChallenge.basic(realm: "My \"realm\"")).get()
        #expect(parsed == [AuthChallenge(scheme: "Basic", parameters: ["realm": "My \"realm\"", "charset": "UTF-8"])])
    }

    @Test("several challenges in one field, token68, and parameters split across commas")
    func lists() throws {
        let parsed = try AuthChallenge.parse(#"Negotiate, Digest realm="x", nonce="a,b", qop=auth, Basic realm="y", Bearer abc123=="#).get()
        #expect(parsed.map(\.scheme) == ["Negotiate", "Digest", "Basic", "Bearer"])
        #expect(parsed[1].parameters == ["realm": "x", "nonce": "a,b", "qop": "auth"])
        #expect(parsed[2].parameters == ["realm": "y"])
        #expect(parsed[3].token68 == "abc123==")
    }

    @Test("malformed challenges are rejected with a reason", arguments: [
        (#"Basic; realm="x""#, "\";\" after the scheme"),
        (#"Basic realm="x"#, "unterminated"),
        (#"Basic realm="#, "expected a token or a quoted string"),
        (#"Basic realm=x realm2=y"#, "expected \",\""),
        (#"Basic realm="a", realm="b""#, "twice"),
        (#"=x"#, "auth-scheme"),
        ("Basic\trealm=x", "space"),
    ])
    func malformed(value: String, fragment: String) {
        switch AuthChallenge.parse(value) {
        case .success(let parsed):
            Issue.record("accepted \(value) as \(parsed)")
        case .failure(let error):
            #expect(error.description.contains(fragment), "\(error)")
        }
    }
}
