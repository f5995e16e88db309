import Foundation
import Gatehouse
import GatehouseTesting
import Testing

@Suite("Proxy authentication on the wire")
struct AuthenticationIntegrationTests {
    static let challenge = "Proxy-Authenticate: Basic realm=\"Gatehouse\", charset=\"UTF-8\"\r\n"

    @Test("a request without credentials gets a well-framed 407, and a retry on the same connection succeeds")
    func challengeThenRetry() async throws {
        try await withProxyAndOrigin { proxy, origin in
            let client = try await RawClient.connect(port: proxy.port)
            let url = "http://127.0.0.1:\(origin.port)/hello"
            try await client.send("GET \(url) HTTP/1.1\r\nHost: x\r\n\r\n")
            let first = await client.waitFor { $0.hasSuffix("\n\n") || $0.contains("credentials.\n") }
            #expect(first.hasPrefix("HTTP/1.1 407 Proxy Authentication Required\r\n"))
            #expect(first.contains(Self.challenge))
            #expect(!first.contains("Basic;"))
            #expect(first.contains("Content-Length: "))
            #expect(!first.lowercased().contains("connection: close"))
            try await client.send("GET \(url) HTTP/1.1\r\nHost: x\r\nProxy-Authorization: \(TestUser.basic)\r\n\r\n")
            let both = await client.waitFor { $0.hasSuffix("hello\n") }
            #expect(statusCodes(in: both) == [407, 200])
            #expect(!client.isClosed)
            #expect(proxy.records.map(\.reason) == [.authMissing, .forwarded])
            await client.close()
        }
    }

    @Test("every kind of bad credential gets a 407 with its own reason", arguments: [
        ("", ReasonCode.authMissing),
        ("Proxy-Authorization: Bearer abc\r\n", .authScheme),
        ("Proxy-Authorization: Basic !!!notbase64\r\n", .authMalformed),
        ("Proxy-Authorization: Basic \(Data("nocolon".utf8).base64EncodedString())\r\n", .authMalformed),
        ("Proxy-Authorization: Basic \(Data("mallory:guess".utf8).base64EncodedString())\r\n", .authInvalid),
        ("Proxy-Authorization: Basic \(Data("alice:wrong".utf8).base64EncodedString())\r\n", .authInvalid),
        ("Proxy-Authorization: basic \(Data("alice:wrong".utf8).base64EncodedString())\r\n", .authInvalid),
    ])
    func rejected(header: String, reason: ReasonCode) async throws {
        try await withProxyAndOrigin { proxy, origin in
            let client = try await RawClient.connect(port: proxy.port)
            try await client.send("GET http://127.0.0.1:\(origin.port)/hello HTTP/1.1\r\nHost: x\r\n\(header)\r\n")
            let text = await client.waitFor { $0.hasSuffix(".\n") }
            #expect(text.hasPrefix("HTTP/1.1 407 "))
            #expect(text.contains(Self.challenge))
            #expect(proxy.records.first?.reason == reason)
            #expect(proxy.records.first?.status == 407)
            await client.close()
        }
    }

    @Test("an unknown user and a wrong password get byte-identical 407s")
    func noUserEnumeration() async throws {
        try await withProxyAndOrigin { proxy, origin in
            var answers: [String] = []
            for credentials in ["nobody:whatever", "\(TestUser.name):wrong-password"] {
                let client = try await RawClient.connect(port: proxy.port)
                let basic = Data(credentials.utf8).base64EncodedString()
                try await client.send(
                    "GET http://127.0.0.1:\(origin.port)/hello HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic \(basic)\r\n\r\n")
                answers.append(await client.waitFor { $0.hasSuffix(".\n") })
                await client.close()
            }
            // Identical but for the clock: the Date field may fall in different seconds.
            let withoutDate = answers.map { $0.replacingOccurrences(of: #"Date: [^\r]*\r\n"#, with: "", options: .regularExpression) }
            #expect(withoutDate[0] == withoutDate[1])
            #expect(withoutDate[0] != answers[0], "the 407 has a Date field")
            #expect(answers[0].hasPrefix("HTTP/1.1 407 "))
        }
    }

    @Test("curl --proxy-anyauth learns the scheme from the 407 and retries")
    func curlAnyAuth() async throws {
        try await withProxyAndOrigin { proxy, origin in
            let result = try await Curl.run([
                "-v", "--proxy-anyauth", "-x", proxy.proxyURL, "-U", "\(TestUser.name):\(TestUser.password)",
                "http://127.0.0.1:\(origin.port)/hello",
            ])
            #expect(result.exitCode == 0, "\(result.stderr)")
            #expect(result.body == "hello\n")
            #expect(proxy.records.map(\.status) == [407, 200])
            // The retry went out on the connection the 407 came on.
            #expect(result.stderr.contains("Re-using existing connection #0"), "\(result.stderr)")
            #expect(result.stderr.components(separatedBy: "Connected to 127.0.0.1").count == 2, "one connection only")
        }
    }

    @Test("a bcrypt user authenticates, and later requests hit the credential cache")
    func bcryptAndCache() async throws {
        let origin = try await TestOrigin.start()
        defer { Task { await origin.stop() } }
        let url = try #require(Bundle.module.url(forResource: "vectors", withExtension: "htpasswd", subdirectory: "Fixtures"))
        let file = try HtpasswdFile.load(path: url.path)
        try await GatehouseFixture.withProxy(users: [:], htpasswd: file) { proxy in
            for _ in 0..<3 {
                let result = try await Curl.run([
                    "-x", proxy.proxyURL(user: "bcrypt10-user", password: "bcrypt-ten"), "http://127.0.0.1:\(origin.port)/hello",
                ])
                #expect(result.body == "hello\n")
            }
            #expect(proxy.server.authenticator.cache.count == 1)
            let wrong = try await Curl.run([
                "-o", "/dev/null", "-w", "%{http_code}",
                "-x", proxy.proxyURL(user: "bcrypt10-user", password: "nope"), "http://127.0.0.1:\(origin.port)/hello",
            ])
            #expect(wrong.body == "407")
        }
    }
}
