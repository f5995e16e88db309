import Foundation
import GatehouseTesting
import Testing
import XCTest

@Suite("GatehouseTesting fixture behaviours")
struct FixtureBehaviourTests {
    @Test("a realm with quotes, a backslash and UTF-8 is escaped in the challenge")
    func realmEscaping() async throws {
        var configuration = ProxyConfiguration()
        configuration.realm = "Ünïcode \"quoted\" \\ realm"
        let frozen = configuration
        try await GatehouseFixture.withProxy(users: ["u": "p"], configuration: frozen) { proxy in
            let client = try await RawClient.connect(port: proxy.port)
            try await client.send("GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\n\r\n")
            let text = await client.waitFor { $0.hasSuffix(".\n") }
            #expect(text.contains("Proxy-Authenticate: Basic realm=\"Ünïcode \\\"quoted\\\" \\\\ realm\", charset=\"UTF-8\"\r\n"), "\(text)")
            await client.close()
        }
    }

    @Test("extra challenges come before Basic, and curl --proxy-anyauth still picks Basic")
    func extraChallenges() async throws {
        let origin = try await TestOrigin.start()
        defer { Task { await origin.stop() } }
        let behaviours = TestingBehaviours(extraChallenges: ["Negotiate", "Digest realm=\"Gatehouse\", nonce=\"abc\", qop=\"auth\""])
        try await GatehouseFixture.withProxy(users: ["u": "p"], behaviours: behaviours) { proxy in
            let client = try await RawClient.connect(port: proxy.port)
            try await client.send("GET http://127.0.0.1:\(origin.port)/hello HTTP/1.1\r\nHost: x\r\n\r\n")
            let text = await client.waitFor { $0.hasSuffix(".\n") }
            let challenges = text.components(separatedBy: "\r\n").filter { $0.hasPrefix("Proxy-Authenticate: ") }
            #expect(challenges.count == 3)
            #expect(challenges.first == "Proxy-Authenticate: Negotiate")
            #expect(challenges.last?.hasPrefix("Proxy-Authenticate: Basic realm=") == true)
            await client.close()
            let result = try await Curl.run(["--proxy-basic", "-x", proxy.proxyURL(user: "u", password: "p"), "http://127.0.0.1:\(origin.port)/hello"])
            #expect(result.body == "hello\n")
        }
    }

    @Test("closeAfterChallenge answers 407 with Connection: close and closes")
    func closeAfterChallenge() async throws {
        try await GatehouseFixture.withProxy(users: ["u": "p"], behaviours: TestingBehaviours(closeAfterChallenge: true)) { proxy in
            let client = try await RawClient.connect(port: proxy.port)
            try await client.send("GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\n\r\n")
            #expect(await client.waitForClose())
            #expect(client.text.hasPrefix("HTTP/1.1 407 "))
            #expect(client.text.contains("Connection: close\r\n"))
        }
    }

    @Test("authenticateConnectOnly lets plain http through without credentials but not CONNECT")
    func connectOnly() async throws {
        let origin = try await TestOrigin.start()
        defer { Task { await origin.stop() } }
        var configuration = ProxyConfiguration()
        configuration.connectPorts = try PortSet(parsing: "\(origin.port)")
        let frozen = configuration
        try await GatehouseFixture.withProxy(
            users: ["u": "p"], configuration: frozen, behaviours: TestingBehaviours(authenticateConnectOnly: true)
        ) { proxy in
            let plain = try await Curl.run(["-x", proxy.proxyURL, "http://127.0.0.1:\(origin.port)/hello"])
            #expect(plain.body == "hello\n")
            let tunnel = try await Curl.run(["-o", "/dev/null", "-w", "%{http_connect}", "-p", "-x", proxy.proxyURL, "http://127.0.0.1:\(origin.port)/hello"])
            #expect(tunnel.body == "407")
            let records = await proxy.waitForRecords(count: 2)
            #expect(records.map(\.status) == [200, 407])
            #expect(records.first?.user == nil)
        }
    }

    @Test("a scripted upstream failure answers every authenticated request", arguments: [
        (ReasonCode.upstreamRefused, "502"), (.upstreamTimeout, "504"),
    ])
    func scriptedFailure(reason: ReasonCode, status: String) async throws {
        try await GatehouseFixture.withProxy(users: ["u": "p"], behaviours: TestingBehaviours(upstreamFailure: reason)) { proxy in
            let result = try await Curl.run(["-o", "/dev/null", "-w", "%{http_code}", "-x", proxy.proxyURL(user: "u", password: "p"), "http://127.0.0.1:1/"])
            #expect(result.body == status)
            #expect(proxy.records.first?.reason == reason)
            let denied = try await Curl.run(["-o", "/dev/null", "-w", "%{http_code}", "-x", proxy.proxyURL, "http://127.0.0.1:1/"])
            #expect(denied.body == "407", "credentials are still checked first")
        }
    }

    @Test("proxy URLs percent-encode user and password")
    func urls() async throws {
        try await GatehouseFixture.withProxy(users: ["a@b": "p:w/%"]) { proxy in
            #expect(proxy.proxyURL(user: "a@b", password: "p:w/%") == "http://a%40b:p%3Aw%2F%25@127.0.0.1:\(proxy.port)")
            #expect(proxy.proxyURL == "http://127.0.0.1:\(proxy.port)")
        }
    }
}

/// The fixture from XCTest: nothing but an `async` test method is needed.
final class FixtureFromXCTest: XCTestCase {
    func testFixtureWorksFromXCTest() async throws {
        let origin = try await TestOrigin.start()
        let body = try await GatehouseFixture.withProxy(users: ["x": "y"]) { proxy in
            try await Curl.run(["-x", proxy.proxyURL(user: "x", password: "y"), "http://127.0.0.1:\(origin.port)/hello"]).body
        }
        await origin.stop()
        XCTAssertEqual(body, "hello\n")
    }
}
