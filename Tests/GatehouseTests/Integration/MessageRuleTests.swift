import Foundation
import Gatehouse
import GatehouseTesting
import NIOCore
import Testing

/// RFC 9110 rules for what a proxy does with methods, `Max-Forwards`, field bytes and status
/// codes it cannot pass on as they are.
@Suite("Message rules: methods, Max-Forwards, field bytes, status codes")
struct MessageRuleTests {
    let auth = "Proxy-Authorization: \(TestUser.basic)\r\n"

    @Test("a method the parser does not know gets 501 unknown_method; a line that is not a request line still gets 400")
    func unknownMethod() async throws {
        try await withProxyAndOrigin { proxy, origin in
            let client = try await RawClient.connect(port: proxy.port)
            try await client.send("BREW http://127.0.0.1:\(origin.port)/hello HTTP/1.1\r\nHost: x\r\n\(auth)\r\n")
            let text = await client.waitFor { $0.hasSuffix("method.\n") }
            #expect(text.hasPrefix("HTTP/1.1 501 Not Implemented\r\n"), "\(text)")
            #expect(text.hasSuffix("\r\n\r\nThis proxy does not know the request method.\n"))
            #expect(await client.waitForClose(timeout: .seconds(2)))
            await client.close()
            #expect(proxy.records.map(\.status) == [501])
            #expect(proxy.records.map(\.reason) == [.unknownMethod])
            #expect(origin.connections == 0)
            // A long one is logged cut to 64 characters, as the target is.
            let long = try await RawClient.connect(port: proxy.port)
            try await long.send(String(repeating: "X", count: 200) + " http://127.0.0.1:\(origin.port)/ HTTP/1.1\r\nHost: x\r\n\r\n")
            #expect(await long.waitForClose(timeout: .seconds(5)))
            let records = await proxy.waitForRecords(count: 2)
            #expect(records.last?.method == String(repeating: "X", count: 64) + "…", "\(records.last?.method ?? "")")
        }
    }

    @Test("TRACE with Max-Forwards: 0 is answered by the proxy with the request echoed, minus credentials; the origin sees nothing")
    func traceAtZero() async throws {
        try await withProxyAndOrigin { proxy, origin in
            let client = try await RawClient.connect(port: proxy.port)
            try await client.send(
                "TRACE http://127.0.0.1:\(origin.port)/headers HTTP/1.1\r\nHost: x\r\n\(auth)Max-Forwards: 0\r\nX-Probe: 1\r\nCookie: secret=1\r\n\r\n")
            let text = await client.waitFor { $0.hasSuffix("\r\n\r\n") && $0.contains("X-Probe") }
            #expect(text.hasPrefix("HTTP/1.1 200 OK\r\n"), "\(text)")
            #expect(text.contains("Content-Type: message/http\r\n"))
            let body = text.components(separatedBy: "\r\n\r\n").dropFirst().joined(separator: "\r\n\r\n")
            #expect(body == "TRACE http://127.0.0.1:\(origin.port)/headers HTTP/1.1\r\nHost: x\r\nMax-Forwards: 0\r\nX-Probe: 1\r\n\r\n", "\(body)")
            #expect(!text.contains("Basic "))
            #expect(proxy.records.map(\.status) == [200])
            #expect(proxy.records.map(\.reason) == [.maxForwards])
            #expect(origin.connections == 0)
            await client.close()
        }
    }

    @Test("OPTIONS at Max-Forwards: 0 is answered here; above zero it is forwarded one lower; other methods pass it unchanged; no credentials, no answer")
    func maxForwards() async throws {
        try await withProxyAndOrigin { proxy, origin in
            let client = try await RawClient.connect(port: proxy.port)
            let target = "http://127.0.0.1:\(origin.port)/headers"
            try await client.send("OPTIONS \(target) HTTP/1.1\r\nHost: x\r\n\(auth)Max-Forwards: 0\r\n\r\n")
            var text = await client.waitFor { $0.hasSuffix("answered by the proxy.\n") }
            #expect(text.hasPrefix("HTTP/1.1 200 OK\r\n"), "\(text)")
            try await client.send("OPTIONS \(target) HTTP/1.1\r\nHost: x\r\n\(auth)Max-Forwards: 3\r\n\r\n")
            text = await client.waitFor { $0.contains("max-forwards: ") }
            #expect(text.contains("max-forwards: 2\n"), "\(text)")
            try await client.send("GET \(target) HTTP/1.1\r\nHost: x\r\n\(auth)Max-Forwards: 0\r\n\r\n")
            text = await client.waitFor { $0.components(separatedBy: "max-forwards: ").count == 3 }
            #expect(text.contains("max-forwards: 0\n"), "\(text)")
            try await client.send("TRACE \(target) HTTP/1.1\r\nHost: x\r\nMax-Forwards: 0\r\n\r\n")
            text = await client.waitFor { $0.contains("407 Proxy") }
            #expect(statusCodes(in: text) == [200, 200, 200, 407])
            #expect(proxy.records.map(\.reason) == [.maxForwards, .forwarded, .forwarded, .authMissing])
            await client.close()
        }
    }

    @Test("OPTIONS for a target with an empty path goes upstream as OPTIONS * (RFC 9112 §3.2.4); with a path or query it keeps them")
    func optionsAsterisk() async throws {
        let origin = try await RawOrigin.start(.captureUntil(" HTTP/1.1\r\n", then: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
        defer { Task { await origin.stop() } }
        try await withProxyAndOrigin { proxy, _ in
            for target in ["http://127.0.0.1:\(origin.port)", "http://127.0.0.1:\(origin.port)?x", "http://127.0.0.1:\(origin.port)/"] {
                let client = try await RawClient.connect(port: proxy.port)
                try await client.send("OPTIONS \(target) HTTP/1.1\r\nHost: x\r\n\(auth)\r\n")
                _ = await client.waitFor { statusCodes(in: $0).count == 1 }
                await client.close()
            }
            let lines = origin.received.map { $0.components(separatedBy: "\r\n").first ?? "" }
            #expect(lines == ["OPTIONS * HTTP/1.1", "OPTIONS /?x HTTP/1.1", "OPTIONS / HTTP/1.1"], "\(lines)")
        }
    }

    @Test("a request field with bytes that are not UTF-8 gets 400 bad_field_bytes rather than reaching the origin altered")
    func requestFieldBytes() async throws {
        try await withProxyAndOrigin { proxy, origin in
            let client = try await RawClient.connect(port: proxy.port)
            let head = Array("GET http://127.0.0.1:\(origin.port)/headers HTTP/1.1\r\nHost: x\r\n\(auth)X-Name: caf".utf8)
                + [0xE9] + Array("\r\n\r\n".utf8)
            try await client.send(bytes: head)
            let text = await client.waitFor { $0.hasSuffix("unaltered.\n") }
            #expect(text.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(text)")
            #expect(text.contains("Connection: close\r\n"))
            #expect(await client.waitForClose(timeout: .seconds(2)))
            await client.close()
            #expect(proxy.records.map(\.reason) == [.badFieldBytes])
            #expect(origin.connections == 0)
        }
    }

    @Test("an origin response with a field that is not UTF-8, or a status outside 100-599, gets 502; a 1xx carries Via")
    func originResponses() async throws {
        let latin1 = try await RawOrigin.start(.respondBytesAndClose(
            Array("HTTP/1.1 200 OK\r\nContent-Disposition: attachment; filename=\"r".utf8) + [0xE9]
                + Array("sum.pdf\"\r\nContent-Length: 2\r\n\r\nok".utf8)))
        let lowStatus = try await RawOrigin.start(.respondAndClose("HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nok"))
        let highStatus = try await RawOrigin.start(.respondAndClose("HTTP/1.1 600 Odd\r\nContent-Length: 2\r\n\r\nok"))
        let interim = try await RawOrigin.start(.respondAndClose(
            // Framing fields on a 1xx are invalid (RFC 9110 §8.6, RFC 9112 §6.1) and are removed.
            "HTTP/1.1 103 Early Hints\r\nContent-Length: 20\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
        defer { Task { await latin1.stop(); await lowStatus.stop(); await highStatus.stop(); await interim.stop() } }
        try await withProxyAndOrigin { proxy, _ in
            for origin in [latin1, lowStatus, highStatus] {
                let client = try await RawClient.connect(port: proxy.port)
                try await client.send("GET http://127.0.0.1:\(origin.port)/ HTTP/1.1\r\nHost: x\r\n\(auth)\r\n")
                let text = await client.waitFor { $0.hasSuffix("invalid HTTP response.\n") }
                #expect(text.hasPrefix("HTTP/1.1 502 Bad Gateway\r\n"), "\(text)")
                await client.close()
            }
            let client = try await RawClient.connect(port: proxy.port)
            try await client.send("GET http://127.0.0.1:\(interim.port)/ HTTP/1.1\r\nHost: x\r\n\(auth)\r\n")
            let text = await client.waitFor { $0.hasSuffix("\r\n\r\nok") }
            // NIO keeps no reason phrase for 103 (an empty one is valid, RFC 9112 §4).
            #expect(text.hasPrefix("HTTP/1.1 103 \r\nLink: </s.css>; rel=preload\r\nVia: 1.1 gatehouse\r\n\r\nHTTP/1.1 200 OK\r\n"), "\(text)")
            await client.close()
            #expect(proxy.records.map(\.reason) == [.upstreamBadResponse, .upstreamBadResponse, .upstreamBadResponse, .forwarded])
        }
    }

    @Test("a request trailer field with bytes that are not UTF-8 is dropped; the others pass")
    func trailerFieldBytes() async throws {
        let origin = try await RawOrigin.start(.captureUntil("\r\n0\r\n", then: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
        defer { Task { await origin.stop() } }
        try await withProxyAndOrigin { proxy, _ in
            let client = try await RawClient.connect(port: proxy.port)
            let request = Array(("POST http://127.0.0.1:\(origin.port)/ HTTP/1.1\r\nHost: x\r\n\(auth)"
                + "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Good: 1\r\nX-Bad: caf").utf8) + [0xE9] + Array("\r\n\r\n".utf8)
            try await client.send(bytes: request)
            let text = await client.waitFor { $0.contains("\r\n\r\n") }
            #expect(text.hasPrefix("HTTP/1.1 200 OK\r\n"), "\(text)")
            let received = origin.received.first ?? ""
            #expect(received.hasSuffix("3\r\nabc\r\n0\r\nX-Good: 1\r\n\r\n"), "\(received)")
            await client.close()
            #expect(proxy.records.map(\.reason) == [.forwarded])
        }
    }

    @Test("an HTTP/1.1 request without Host gets 400 missing_host (RFC 9112 §3.2); HTTP/1.0 and CONNECT need none")
    func missingHost() async throws {
        try await withProxyAndOrigin { proxy, origin in
            let client = try await RawClient.connect(port: proxy.port)
            try await client.send("GET http://127.0.0.1:\(origin.port)/hello HTTP/1.1\r\n\(auth)\r\n")
            #expect(await client.waitForClose())
            #expect(client.text.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(client.text)")
            #expect(client.text.hasSuffix("An HTTP/1.1 request must carry a Host header field.\n"))
            let old = try await RawClient.connect(port: proxy.port)
            try await old.send("GET http://127.0.0.1:\(origin.port)/hello HTTP/1.0\r\n\(auth)\r\n")
            #expect(await old.waitForClose())
            #expect(old.text.hasPrefix("HTTP/1.1 200 OK\r\n"), "\(old.text)")
            let connect = try await RawClient.connect(port: proxy.port)
            try await connect.send("CONNECT 127.0.0.1:9 HTTP/1.1\r\n\(auth)\r\n")
            let text = await connect.waitFor { $0.hasSuffix("\n") && $0.contains("\r\n\r\n") }
            #expect(text.hasPrefix("HTTP/1.1 403 Forbidden\r\n"), "past the Host rule to the port rule: \(text)")
            await connect.close()
            #expect(proxy.records.map(\.reason) == [.missingHost, .forwarded, .connectPortDenied])
            #expect(origin.connections == 1)
        }
    }

    @Test("an origin's 407 becomes 502 upstream_proxy_auth: its challenge is for a hop the client does not talk to")
    func originProxyAuthentication() async throws {
        let upstream = try await RawOrigin.start(.respondAndClose(
            "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"upstream\"\r\nContent-Length: 0\r\n\r\n"))
        defer { Task { await upstream.stop() } }
        try await withProxyAndOrigin { proxy, _ in
            let client = try await RawClient.connect(port: proxy.port)
            try await client.send("GET http://127.0.0.1:\(upstream.port)/ HTTP/1.1\r\nHost: x\r\n\(auth)\r\n")
            let text = await client.waitFor { $0.hasSuffix("through this proxy.\n") }
            #expect(text.hasPrefix("HTTP/1.1 502 Bad Gateway\r\n"), "\(text)")
            #expect(!text.contains("Proxy-Authenticate"))
            await client.close()
            #expect(proxy.records.map(\.reason) == [.upstreamProxyAuth])
        }
    }

    @Test("an HTTP/1.0 client of a chunked response gets no Trailer field: the trailers cannot follow a close-delimited body")
    func trailerFieldForHTTP10() async throws {
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n2\r\nok\r\n0\r\nX-Sum: 1\r\n\r\n"
        let upstream = try await RawOrigin.start(.respondAndClose(chunked))
        defer { Task { await upstream.stop() } }
        try await withProxyAndOrigin { proxy, _ in
            let old = try await RawClient.connect(port: proxy.port)
            try await old.send("GET http://127.0.0.1:\(upstream.port)/ HTTP/1.0\r\n\(auth)\r\n")
            #expect(await old.waitForClose())
            #expect(old.text.hasPrefix("HTTP/1.1 200 OK\r\n"), "\(old.text)")
            #expect(!old.text.contains("Trailer"), "\(old.text)")
            #expect(old.text.hasSuffix("\r\n\r\nok"))
            let client = try await RawClient.connect(port: proxy.port)
            try await client.send("GET http://127.0.0.1:\(upstream.port)/ HTTP/1.1\r\nHost: x\r\n\(auth)\r\n")
            let text = await client.waitFor { $0.hasSuffix("X-Sum: 1\r\n\r\n") }
            #expect(text.contains("\r\nTrailer: X-Sum\r\n"), "an HTTP/1.1 client gets both: \(text)")
            await client.close()
        }
    }


    /// The times in a response's Date fields.
    static func dates(_ text: String) -> [Date] {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss 'GMT'"
        return text.components(separatedBy: "\r\n").filter { $0.hasPrefix("Date: ") }.compactMap { formatter.date(from: String($0.dropFirst(6))) }
    }

    static func isNow(_ date: Date?) -> Bool { date.map { abs($0.timeIntervalSinceNow) < 10 } ?? false }

    @Test("Date (RFC 9110 §6.6.1): added to a forwarded response without one, kept when the origin sent one, on Gatehouse's own answers too")
    func dateField() async throws {
        let dated = try await RawOrigin.start(.respondAndClose("HTTP/1.1 200 OK\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nContent-Length: 2\r\n\r\nok"))
        let twice = try await RawOrigin.start(.respondAndClose(
            "HTTP/1.1 200 OK\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nDate: Tue, 02 Jan 2024 00:00:00 GMT\r\nContent-Length: 2\r\n\r\nok"))
        let empty = try await RawOrigin.start(.respondAndClose("HTTP/1.1 200 OK\r\nDate:\r\nContent-Length: 2\r\n\r\nok"))
        defer { Task { await dated.stop(); await twice.stop(); await empty.stop() } }
        try await withProxyAndOrigin { proxy, origin in
            // The test origin sends no Date.
            let undated = try await Curl.run(["-s", "-D", "-", "-o", "/dev/null", "-x", proxy.authenticatedURL, "http://127.0.0.1:\(origin.port)/hello"])
            #expect(Self.dates(undated.body).count == 1 && Self.isNow(Self.dates(undated.body).first), "\(undated.body)")
            let kept = try await Curl.run(["-s", "-D", "-", "-o", "/dev/null", "-x", proxy.authenticatedURL, "http://127.0.0.1:\(dated.port)/"])
            #expect(kept.body.components(separatedBy: "\r\n").filter { $0.hasPrefix("Date: ") } == ["Date: Mon, 01 Jan 2024 00:00:00 GMT"], "\(kept.body)")
            // Two, or an empty one: replaced by one of the proxy's.
            for origin in [twice, empty] {
                let replaced = try await Curl.run(["-s", "-D", "-", "-o", "/dev/null", "-x", proxy.authenticatedURL, "http://127.0.0.1:\(origin.port)/"])
                #expect(replaced.body.lowercased().components(separatedBy: "date:").count == 2, "\(replaced.body)")
                #expect(Self.dates(replaced.body).count == 1 && Self.isNow(Self.dates(replaced.body).first), "\(replaced.body)")
            }
            // Own answers: a prebuilt 407 (stored bytes), a HEAD one, one that closes (built anew).
            for (method, extra) in [("GET", ""), ("HEAD", ""), ("GET", "Connection: close\r\n")] {
                let client = try await RawClient.connect(port: proxy.port)
                try await client.send("\(method) http://127.0.0.1:\(origin.port)/ HTTP/1.1\r\nHost: x\r\n\(extra)\r\n")
                let text = await client.waitFor { $0.contains("\r\n\r\n") }
                #expect(text.hasPrefix("HTTP/1.1 407 "), "\(text)")
                #expect(Self.dates(text).count == 1 && Self.isNow(Self.dates(text).first), "\(method) \(extra): \(text)")
                await client.close()
            }
        }
    }
}
