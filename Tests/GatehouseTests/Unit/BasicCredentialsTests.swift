import Testing
@testable import Gatehouse

/// Tests for `BasicCredentials(proxyAuthorization:)`, RFC 7617 §2 / RFC 9110 §11.
@Suite("BasicCredentials")
struct BasicCredentialsTests {
    /// `base64` of the UTF-8 bytes of `text`, using the module's own encoder.
    private func b64(_ text: String) -> String {
        PasswordHash.base64Encode(Array(text.utf8))
    }

    @Test func parsesRFC7617Example() throws {
        // RFC 7617 §2 example: "Aladdin:open sesame".
        let credentials = try BasicCredentials(proxyAuthorization: "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")
        #expect(credentials == BasicCredentials(user: "Aladdin", password: "open sesame"))
    }

    @Test(arguments: ["basic", "BASIC", "Basic", "bAsIc"])
    func schemeIsCaseInsensitive(scheme: String) throws {
        let credentials = try BasicCredentials(proxyAuthorization: "\(scheme) \(b64("alice:secret"))")
        #expect(credentials.user == "alice")
        #expect(credentials.password == "secret")
    }

    @Test func toleratesOuterWhitespaceAndMultipleSpaces() throws {
        let credentials = try BasicCredentials(proxyAuthorization: " \tBasic   \(b64("alice:secret"))\t ")
        #expect(credentials == BasicCredentials(user: "alice", password: "secret"))
    }

    @Test func acceptsSubstring() throws {
        let field = "xxBasic \(b64("alice:secret"))"
        let credentials = try BasicCredentials(proxyAuthorization: field.dropFirst(2))
        #expect(credentials.user == "alice")
    }

    @Test func passwordMayContainColons() throws {
        let credentials = try BasicCredentials(proxyAuthorization: "Basic \(b64("alice:pa:ss:wo:rd"))")
        #expect(credentials.user == "alice")
        #expect(credentials.password == "pa:ss:wo:rd")
    }

    @Test func emptyPasswordAndEmptyUserParse() throws {
        let noPassword = try BasicCredentials(proxyAuthorization: "Basic \(b64("alice:"))")
        #expect(noPassword == BasicCredentials(user: "alice", password: ""))
        let noUser = try BasicCredentials(proxyAuthorization: "Basic \(b64(":secret"))")
        #expect(noUser == BasicCredentials(user: "", password: "secret"))
    }

    @Test func utf8UserAndPassword() throws {
        // "jöse:pä§s" as UTF-8, spelled out so the test does not depend on the encoder.
        let credentials = try BasicCredentials(proxyAuthorization: "Basic asO2c2U6cMOkwqdz")
        #expect(credentials.user == "jöse")
        #expect(credentials.password == "pä§s")
    }

    @Test(arguments: [
        "Digest username=\"alice\", realm=\"x\"",
        "Bearer abc.def.ghi",
        "Negotiate YWxpY2U6c2VjcmV0",
        "Basicx YWxpY2U6c2VjcmV0",
        "",
        "   ",
        "YWxpY2U6c2VjcmV0",
    ])
    func otherSchemesAreWrongScheme(value: String) {
        #expect(throws: BasicCredentialsError.wrongScheme) {
            try BasicCredentials(proxyAuthorization: value)
        }
    }

    @Test(arguments: ["Basic", "basic ", "Basic    ", "Basic\tYWxpY2U6c2VjcmV0", "Basic:YWxpY2U6c2VjcmV0"])
    func basicWithoutTokenIsMalformed(value: String) {
        #expect(throws: BasicCredentialsError.malformedBase64) {
            try BasicCredentials(proxyAuthorization: value)
        }
    }

    @Test(arguments: [
        "Basic YWxpY2U6c2VjcmV0!",       // bad character
        "Basic YWxpY2U6c2VjcmV-",         // base64url alphabet
        "Basic YWxpY2U6c2VjcmV_",         // base64url alphabet
        "Basic YWxpY2U6c2VjcmV0=",        // length not a multiple of 4
        "Basic YWxpY2U6c2VjcmU",          // missing padding
        "Basic YWxpY2U6c2VjcmU==",        // too much padding for the length
        "Basic YWxpY2U6c2Vj=mV0",         // padding in the middle
        "Basic YWxpY2U6c2VjcmV0====",     // four padding characters
        "Basic ====",                     // only padding
        "Basic QQ=A",                     // data after padding
        "Basic QR==",                     // non-canonical: unused bits set
        "Basic YWxp Y2U6c2VjcmV0",        // whitespace inside the token
        "Basic YWxpY2U6\tc2VjcmV0",       // tab inside the token
        "Basic YWxpY2U6c2VjcmV0 extra",   // trailing garbage
        "Basic YWxpY2U6c2VjcmV0, realm=x",// auth-params are not Basic credentials
    ])
    func badBase64IsMalformed(value: String) {
        #expect(throws: BasicCredentialsError.malformedBase64) {
            try BasicCredentials(proxyAuthorization: value)
        }
    }

    @Test func missingColon() {
        #expect(throws: BasicCredentialsError.missingColon) {
            try BasicCredentials(proxyAuthorization: "Basic \(b64("alicesecret"))")
        }
    }

    @Test func invalidUTF8() {
        // 0xFF 0x3A 0x78 = <invalid byte> ":" "x"
        let token = PasswordHash.base64Encode([0xFF, 0x3A, 0x78])
        #expect(token == "/zp4")
        #expect(throws: BasicCredentialsError.invalidUTF8) {
            try BasicCredentials(proxyAuthorization: "Basic \(token)")
        }
        // Truncated multi-byte sequence (first byte of "ö" only).
        #expect(throws: BasicCredentialsError.invalidUTF8) {
            try BasicCredentials(proxyAuthorization: "Basic \(PasswordHash.base64Encode([0x61, 0x3A, 0xC3]))")
        }
    }

    @Test func strictDecoderRoundTrips() {
        for length in 0...40 {
            let bytes = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
            let encoded = Array(PasswordHash.base64Encode(bytes).utf8)
            if length == 0 {
                #expect(BasicCredentials.strictBase64Decode(encoded[...]) == nil)
            } else {
                #expect(BasicCredentials.strictBase64Decode(encoded[...]) == bytes)
            }
        }
    }
}
