import Foundation
import Gatehouse
import GatehouseTesting
import NIOCore
import Testing

@Suite("Origin failures")
struct UpstreamFailureTests {
    @Test("a refused connection gets 502 upstream_refused, and the client connection stays open")
    func refused() async throws {
        // Bind and close a port so nothing listens on it.
        let origin = try await RawOrigin.start(.respondAndClose(""))
        let port = origin.port
        await origin.stop()
        try await withProxyAndOrigin { proxy, _ in
            let client = try await RawClient.connect(port: proxy.port)
            try await client.send("GET http://127.0.0.1:\(port)/ HTTP/1.1\r\nHost: x\r\nProxy-Authorization: \(TestUser.basic)\r\n\r\n")
            let text = await client.waitFor { $0.hasSuffix(".\n") }
            #expect(text.hasPrefix("HTTP/1.1 502 Bad Gateway\r\n"))
            #expect(text.hasSuffix("The destination refused the connection.\n"))
            #expect(!client.isClosed)
            #expect(proxy.records.first?.reason == .upstreamRefused)
            await client.close()
        }
    }

    @Test("an unresolvable host gets 502 upstream_dns")
    func dns() async throws {
        try await withProxyAndOrigin { proxy, _ in
            let result = try await Curl.run([
                "-o", "/dev/null", "-w", "%{http_code}", "-x", proxy.authenticatedURL, "http://does-not-exist.invalid/",
            ])
            #expect(result.body == "502")
            #expect(proxy.records.first?.reason == .upstreamDNS)
        }
    }

    @Test("a client that stops sending its upload gets 408 body_timeout; a slow but steady one gets through")
    func stalledUpload() async throws {
        try await withProxyAndOrigin(configure: { $0.idleTimeout = .milliseconds(1_500) }) { proxy, origin in
            let head = "POST http://127.0.0.1:\(origin.port)/upload HTTP/1.1\r\nHost: x\r\n"
                + "Proxy-Authorization: \(TestUser.basic)\r\nContent-Length: 100\r\n\r\n"
            // Steady: 100 bytes in five parts, 200 ms apart (each gap far shorter than the timeout).
            let steady = try await RawClient.connect(port: proxy.port)
            try await steady.send(head)
            for _ in 0..<5 {
                try await Task.sleep(for: .milliseconds(200))
                try await steady.send(String(repeating: "a", count: 20))
            }
            let text = await steady.waitFor { $0.hasSuffix(" 100") }
            #expect(statusCodes(in: text) == [200], "\(text)")
            await steady.close()

            // Stalled: 10 bytes, then nothing.
            let stalled = try await RawClient.connect(port: proxy.port)
            try await stalled.send(head + "0123456789")
            #expect(await stalled.waitForClose())
            #expect(statusCodes(in: stalled.text) == [408], "\(stalled.text)")
            #expect(stalled.text.contains("Connection: close\r\n"))
            #expect(proxy.records.map(\.reason) == [.forwarded, .bodyTimeout])
            #expect(proxy.records.last?.status == 408)
        }
    }

    @Test("an origin that never answers gets 504 upstream_timeout")
    func upstreamTimeout() async throws {
        let origin = try await RawOrigin.start(.respondAndHang(""))
        defer { Task { await origin.stop() } }
        try await withProxyAndOrigin(configure: { $0.upstreamTimeout = .milliseconds(500) }) { proxy, _ in
            let result = try await Curl.run([
                "-o", "/dev/null", "-w", "%{http_code}", "-x", proxy.authenticatedURL, "http://127.0.0.1:\(origin.port)/",
            ])
            #expect(result.body == "504")
            #expect(proxy.records.first?.reason == .upstreamTimeout)
            #expect(proxy.records.first?.status == 504)
        }
    }

    @Test("a connect that cannot complete gets 504 upstream_connect_timeout")
    func connectTimeout() async throws {
        // A listener whose accept queue is full: the kernel drops further SYNs, so a connect
        // to it neither succeeds nor fails until the proxy's connect timeout fires.
        let blackhole = try BlackholeListener()
        defer { blackhole.close() }
        try await withProxyAndOrigin(configure: { $0.connectTimeout = .milliseconds(300) }) { proxy, _ in
            let result = try await Curl.run([
                "-o", "/dev/null", "-w", "%{http_code}", "-x", proxy.authenticatedURL, "http://127.0.0.1:\(blackhole.port)/",
            ])
            #expect(result.body == "504")
            #expect(proxy.records.first?.reason == .upstreamConnectTimeout)
        }
    }

    @Test("an origin that cuts its body short makes the proxy close the client connection")
    func truncatedBody() async throws {
        let origin = try await RawOrigin.start(.respondAndClose("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly-ten-b"))
        defer { Task { await origin.stop() } }
        try await withProxyAndOrigin { proxy, _ in
            let curl = try await Curl.run(["-x", proxy.authenticatedURL, "http://127.0.0.1:\(origin.port)/"])
            // curl: (18) transfer closed with outstanding read data remaining
            #expect(curl.exitCode == 18, "\(curl.stderr)")
            let client = try await RawClient.connect(port: proxy.port)
            try await client.send("GET http://127.0.0.1:\(origin.port)/ HTTP/1.1\r\nHost: x\r\nProxy-Authorization: \(TestUser.basic)\r\n\r\n")
            #expect(await client.waitForClose())
            #expect(client.text.hasSuffix("only-ten-b"))
            #expect(proxy.records.map(\.reason) == [.upstreamTruncated, .upstreamTruncated])
        }
    }

    @Test("a close-delimited origin body is re-framed as chunked for an HTTP/1.1 client")
    func closeDelimited() async throws {
        let origin = try await RawOrigin.start(.respondAndClose("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil-close"))
        defer { Task { await origin.stop() } }
        try await withProxyAndOrigin { proxy, _ in
            let client = try await RawClient.connect(port: proxy.port)
            try await client.send("GET http://127.0.0.1:\(origin.port)/ HTTP/1.1\r\nHost: x\r\nProxy-Authorization: \(TestUser.basic)\r\n\r\n")
            let text = await client.waitFor { $0.hasSuffix("0\r\n\r\n") }
            #expect(text.contains("Transfer-Encoding: chunked\r\n"))
            #expect(text.contains("until-close"))
            #expect(text.hasSuffix("0\r\n\r\n"))
            #expect(!client.isClosed)
            #expect(proxy.records.first?.reason == .forwarded)
            await client.close()
        }
    }

    @Test("an invalid origin response gets 502 upstream_bad_response")
    func badResponse() async throws {
        let origin = try await RawOrigin.start(.respondAndClose("NOT-HTTP garbage\r\n\r\n"))
        defer { Task { await origin.stop() } }
        try await withProxyAndOrigin { proxy, _ in
            let result = try await Curl.run([
                "-o", "/dev/null", "-w", "%{http_code}", "-x", proxy.authenticatedURL, "http://127.0.0.1:\(origin.port)/",
            ])
            #expect(result.body == "502")
            #expect(proxy.records.first?.reason == .upstreamBadResponse)
        }
    }
}
