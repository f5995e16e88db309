import Foundation
import GatehouseTesting
import Testing

/// `gatehouse probe` against Gatehouse in several (mis)configurations, and against a fake
/// proxy whose challenge is malformed.
@Suite("gatehouse probe")
struct ProbeTests {
    static func probe(_ arguments: [String], timeout: String = "5s") async throws -> (status: Int32, stdout: String) {
        try await onOwnThread { try Self.probeBlocking(arguments, timeout: timeout) }
    }

    static func probeBlocking(_ arguments: [String], timeout: String) throws -> (status: Int32, stdout: String) {
        let process = Process()
        process.executableURL = CommandLineTests.executable
        process.arguments = ["probe", "--timeout", timeout] + arguments
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    static func json(_ text: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    @Test("a healthy proxy and the right credentials: every step passes, exit 0")
    func healthy() async throws {
        try await withProxyAndOrigin(configure: { $0.connectPorts = PortSet([1...65535]) }) { proxy, origin in
            let result = try await Self.probe(["--proxy", proxy.authenticatedURL, "http://127.0.0.1:\(origin.port)/hello"])
            #expect(result.status == 0, "\(result.stdout)")
            #expect(result.stdout.contains("[ok  ] challenge: 407 with a valid Basic challenge"))
            #expect(result.stdout.contains("offers Basic, realm \"Gatehouse\", charset UTF-8"))
            #expect(result.stdout.contains("[ok  ] upstream: 200 OK"))
        }
    }

    @Test("an http:// proxy URL for a TLS listener fails at the challenge with the proxy's advice (it passed, as an open proxy)")
    func tlsListenerOverPlainHTTP() async throws {
        try await withProxyAndOrigin(configure: { $0.tlsFiles = TLSFixture.files }) { proxy, origin in
            let port = try #require(proxy.tlsPort)
            let result = try await Self.probe(["--proxy", "http://\(TestUser.name):x@127.0.0.1:\(port)", "http://127.0.0.1:\(origin.port)/hello"])
            #expect(result.status != 0, "\(result.stdout)")
            #expect(result.stdout.contains("challenge: the proxy refused a well-formed request: 400 Bad Request"), "\(result.stdout)")
            #expect(result.stdout.contains("This proxy port expects TLS"))
            #expect(!result.stdout.contains("all steps passed"))
        }
    }

    @Test("an https:// proxy URL: probe speaks TLS to a TLS listener (--proxy-cacert); an untrusted certificate or a plain port fails at the challenge, saying why")
    func overTLS() async throws {
        try await withProxyAndOrigin(configure: { $0.tlsFiles = TLSFixture.files }) { proxy, origin in
            let tlsURL = try #require(proxy.tlsProxyURL(user: TestUser.name, password: TestUser.password))
            let target = "http://127.0.0.1:\(origin.port)/hello"
            let good = try await Self.probe(["--proxy", tlsURL, "--proxy-cacert", TLSFixture.certificatePath, target])
            #expect(good.status == 0, "\(good.stdout)")
            #expect(good.stdout.contains("[ok  ] credentials: accepted for user \"\(TestUser.name)\""))
            #expect(good.stdout.contains("[ok  ] upstream: 200 OK"))
            let untrusted = try await Self.probe(["--proxy", tlsURL, "--proxy-cacert", TLSFixture.otherCertificatePath, target])
            #expect(untrusted.status == 3)
            #expect(untrusted.stdout.contains("challenge: TLS with the proxy failed"), "\(untrusted.stdout)")
            #expect(untrusted.stdout.contains("--proxy-cacert"))
            let plain = try await Self.probe(["--proxy", "https://127.0.0.1:\(proxy.port)", "--proxy-cacert", TLSFixture.certificatePath, target])
            #expect(plain.status == 3)
            #expect(plain.stdout.contains("this port does not speak TLS: use an http:// proxy URL"), "\(plain.stdout)")
        }
    }

    @Test("a wrong password fails at credentials, exit 4, in JSON too")
    func wrongPassword() async throws {
        try await withProxyAndOrigin { proxy, origin in
            let result = try await Self.probe(["--json", "--proxy", proxy.proxyURL(user: TestUser.name, password: "nope"), "http://127.0.0.1:\(origin.port)/hello"])
            #expect(result.status == 4)
            let object = try Self.json(result.stdout)
            #expect(object["failed_step"] as? String == "credentials")
            #expect(object["exit_code"] as? Int == 4)
        }
    }

    @Test("a throttled login (429) is a failure at credentials, not a pass")
    func throttled() async throws {
        try await withProxyAndOrigin(configure: { $0.authThrottle = .init(failuresPerClient: 30, failuresPerUser: 2) }) { proxy, origin in
            // Different guesses: the same wrong password again counts once.
            for guess in 0..<3 { _ = try await Self.probe(["--proxy", proxy.proxyURL(user: TestUser.name, password: "nope\(guess)"), "http://127.0.0.1:\(origin.port)/hello"]) }
            let result = try await Self.probe(["--proxy", proxy.proxyURL(user: TestUser.name, password: "nope9"), "http://127.0.0.1:\(origin.port)/hello"])
            #expect(result.status == 4, "\(result.stdout)")
            #expect(result.stdout.contains("the proxy did not check the credentials: 429"), "\(result.stdout)")
            #expect(!result.stdout.contains("all steps passed"))
        }
    }

    @Test("no credentials given to a proxy that needs them: exit 4 with advice")
    func missingCredentials() async throws {
        try await withProxyAndOrigin { proxy, origin in
            let result = try await Self.probe(["--proxy", proxy.proxyURL, "http://127.0.0.1:\(origin.port)/hello"])
            #expect(result.status == 4)
            #expect(result.stdout.contains("none were given"))
        }
    }

    @Test("https to a port outside --connect-ports fails at connect, exit 5")
    func connectDenied() async throws {
        try await withProxyAndOrigin { proxy, origin in
            let result = try await Self.probe(["--proxy", proxy.authenticatedURL, "https://127.0.0.1:\(origin.port)/"])
            #expect(result.status == 5, "\(result.stdout)")
            #expect(result.stdout.contains("refused by the proxy's policy (403)"))
            #expect(result.stdout.contains("[skip] upstream"))
        }
    }

    @Test("nothing listening at the proxy address: exit 2")
    func unreachable() async throws {
        // Port 1, where nothing listens (as the other tests' refused destinations): a port
        // freed by the test could be taken at once by a server of a test running alongside.
        let result = try await Self.probe(["--proxy", "http://u:p@127.0.0.1:1", "http://127.0.0.1:1/"])
        #expect(result.status == 2)
        #expect(result.stdout.contains("Connection refused"))
    }

    @Test("a destination the proxy cannot reach fails at upstream, exit 6")
    func upstreamDown() async throws {
        try await GatehouseFixture.withProxy(users: ["u": "p"], behaviours: TestingBehaviours(upstreamFailure: .upstreamTimeout)) { proxy in
            let result = try await Self.probe(["--proxy", proxy.proxyURL(user: "u", password: "p"), "http://127.0.0.1:1/"])
            #expect(result.status == 6, "\(result.stdout)")
            #expect(result.stdout.contains("504 Gateway Timeout"))
        }
    }

    @Test("a destination slower than --timeout fails at upstream, exit 6, not at credentials")
    func slowDestination() async throws {
        try await withProxyAndOrigin { proxy, origin in
            let result = try await Self.probe(["--proxy", proxy.authenticatedURL, "http://127.0.0.1:\(origin.port)/slow?ms=3000"], timeout: "1s")
            #expect(result.status == 6, "\(result.stdout)")
            #expect(result.stdout.contains("[warn] credentials: no 407 within 1 s"), "\(result.stdout)")
            #expect(result.stdout.contains("[FAIL] upstream: no answer from 127.0.0.1:\(origin.port) through the proxy within 1 s"), "\(result.stdout)")
        }
    }

    @Test("usage errors exit 64: a duration without unit, a zero timeout, a proxy that is not http://, no --proxy", arguments: [
        ["--proxy", "http://127.0.0.1:1", "--timeout", "5"], ["--proxy", "http://127.0.0.1:1", "--timeout", "0s"], ["--proxy", "ftp://x:1"], [],
    ])
    func usageErrors(arguments: [String]) async throws {
        let result = try await Self.probe(arguments)
        #expect(result.status == 64, "\(arguments): \(result.stdout)")
    }

    @Test("a proxy that sends `Basic; realm=` is called out as malformed, exit 3")
    func malformedChallenge() async throws {
        let fake = try await RawOrigin.start(.respondAndClose(
            "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic; realm=\"corp\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
        defer { Task { await fake.stop() } }
        let result = try await Self.probe(["--proxy", "http://u:p@127.0.0.1:\(fake.port)", "http://127.0.0.1:1/"])
        #expect(result.status == 3, "\(result.stdout)")
        #expect(result.stdout.contains("is not valid RFC 9110 §11.3 syntax"))
        #expect(result.stdout.contains("\";\" after the scheme Basic is not allowed"))
    }

    @Test("several schemes offered: the probe lists them and still passes with Basic")
    func severalSchemes() async throws {
        let origin = try await TestOrigin.start()
        defer { Task { await origin.stop() } }
        let behaviours = TestingBehaviours(extraChallenges: ["Negotiate", "Digest realm=\"x\", nonce=\"n\""])
        try await GatehouseFixture.withProxy(users: ["u": "p"], behaviours: behaviours) { proxy in
            let result = try await Self.probe(["--proxy", proxy.proxyURL(user: "u", password: "p"), "http://127.0.0.1:\(origin.port)/hello"])
            #expect(result.status == 0, "\(result.stdout)")
            #expect(result.stdout.contains("offers Negotiate"))
            #expect(result.stdout.contains("offers Digest, realm \"x\""))
            #expect(result.stdout.contains("several schemes are offered"))
        }
    }

    @Test("a proxy that asks for no credentials is reported, not failed")
    func openProxy() async throws {
        let origin = try await TestOrigin.start()
        defer { Task { await origin.stop() } }
        try await GatehouseFixture.withProxy(users: ["u": "p"], behaviours: TestingBehaviours(authenticateConnectOnly: true)) { proxy in
            let result = try await Self.probe(["--proxy", proxy.proxyURL, "http://127.0.0.1:\(origin.port)/hello"])
            #expect(result.stdout.contains("[warn] challenge: the proxy answered 200 OK without asking for credentials"), "\(result.stdout)")
            #expect(result.stdout.contains("[skip] credentials"))
        }
    }
}
