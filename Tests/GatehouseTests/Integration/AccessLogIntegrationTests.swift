import Foundation
import Gatehouse
import GatehouseTesting
import Testing

@Suite("Access log on the wire")
struct AccessLogIntegrationTests {
    /// What a user name would add to the log if it were written raw.
    static let forged = "1764477600.000      1 10.0.0.9 TCP_MISS/200 1 GET http://forged/ admin HIER_NONE/- - reason=forwarded"

    @Test("exactly one line per response, each with its status and reason, and never the password", arguments: AccessLogFormat.allCases)
    func oneLinePerResponse(format: AccessLogFormat) async throws {
        let origin = try await TestOrigin.start()
        defer { Task { await origin.stop() } }
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("gatehouse-\(UUID().uuidString).log").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        var configuration = ProxyConfiguration()
        configuration.connectPorts = try PortSet(parsing: "\(origin.port)")
        let frozen = configuration
        let sent: [Int] = try await GatehouseFixture.withProxy(
            users: [TestUser.name: TestUser.password], configuration: frozen, accessLog: .file(path), logFormat: format
        ) { proxy in
            let client = try await RawClient.connect(port: proxy.port)
            let base = "http://127.0.0.1:\(origin.port)"
            try await client.send(
                "GET \(base)/hello HTTP/1.1\r\nHost: x\r\n\r\n"  // 407
                    // 407; the user name tries to forge a second line
                    + "GET \(base)/hello HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic \(Data("\(TestUser.name)\n\(Self.forged):wrong-\(TestUser.password)".utf8).base64EncodedString())\r\n\r\n"
                    + "GET http://\(TestUser.name):\(TestUser.password)@127.0.0.1:\(origin.port)/hello HTTP/1.1\r\nHost: x\r\nProxy-Authorization: \(TestUser.basic)\r\n\r\n"  // 200, userinfo in URL
                    + "CONNECT 127.0.0.1:1 HTTP/1.1\r\nProxy-Authorization: \(TestUser.basic)\r\n\r\n"  // 403
                    + "GET / HTTP/1.1\r\nHost: x\r\n\r\n"  // 400 origin form
                    + "GET \(base)/hello HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")  // 400 parser, close
            let text = await client.waitFor { statusCodes(in: $0).count == 6 }
            let statuses = statusCodes(in: text)
            #expect(statuses == [407, 407, 200, 403, 400, 400])
            let tunnel = try await RawClient.connect(port: proxy.port)
            try await tunnel.send(
                "CONNECT 127.0.0.1:\(origin.port) HTTP/1.1\r\nProxy-Authorization: \(TestUser.basic)\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            _ = await tunnel.waitFor { $0.hasSuffix("hello\n") }
            await tunnel.close()
            _ = await proxy.waitForRecords(count: 7)
            return statuses + [200]
        }
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map(String.init)
        #expect(lines.count == sent.count, "\(lines)")
        let encoded = Data("\(TestUser.name):\(TestUser.password)".utf8).base64EncodedString()
        for line in lines {
            #expect(!line.contains(TestUser.password), "password in log: \(line)")
            #expect(!line.contains("wrong-"), "attempted password in log: \(line)")
            #expect(!line.contains(encoded))
        }
        // Lines come in the order the responses were sent, except the tunnel, logged at close.
        let reasons = ["auth_missing", "auth_invalid", "forwarded", "connect_port_denied", "origin_form", "bad_request", "tunnel"]
        for (line, (status, reason)) in zip(lines, zip(sent, reasons)) {
            #expect(line.contains("\(status)"), "\(line)")
            #expect(line.contains(reason), "\(line)")
        }
        #expect(!lines.contains { $0.hasPrefix("1764477600.000") })
        if format != .json { #expect(lines[1].contains(" \(TestUser.name)%0A1764477600.000%20"), "\(lines[1])") }
        #expect(lines[2].contains("http://127.0.0.1:\(origin.port)/hello"))
        #expect(lines[6].contains("CONNECT"))
        if format == .squid {
            // Squid's content-type column: Gatehouse's own answers, and the origin's type.
            #expect(lines[0].hasSuffix(" HIER_NONE/- text/plain;%20charset=utf-8 reason=auth_missing"), "\(lines[0])")
            #expect(lines[2].hasSuffix(" text/plain reason=forwarded"), "\(lines[2])")
            #expect(lines[6].hasSuffix(" - reason=tunnel"), "\(lines[6])")
        }
        if format == .json {
            for line in lines {
                let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
                #expect(object?["status"] is Int)
                #expect(object?["reason"] is String)
            }
        }
    }
}
