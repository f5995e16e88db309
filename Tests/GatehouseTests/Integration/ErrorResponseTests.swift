import Foundation
import Gatehouse
import GatehouseTesting
import NIOCore
import Testing

@Suite("Gatehouse's own error responses")
struct ErrorResponseTests {
    /// Sends `request` on a fresh connection and returns everything received until the proxy
    /// closes (or the condition holds).
    func exchange(_ proxy: GatehouseFixture, _ request: String, until: @escaping @Sendable (String) -> Bool = { _ in false }) async throws -> (String, closed: Bool) {
        let client = try await RawClient.connect(port: proxy.port)
        try await client.send(request)
        let text = await client.waitFor(timeout: .seconds(10), until)
        let closed = await client.waitForClose(timeout: .milliseconds(300))
        await client.close()
        return (text, closed)
    }

    @Test("a malformed request gets 400 with Connection: close and a log line; nothing reaches the origin", arguments: [
        "GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        "GET http://127.0.0.1:1/ HTTP/1.1\r\nHo st: x\r\n\r\n",
        "GARBAGE\r\n\r\n",
    ])
    func malformed(request: String) async throws {
        try await withProxyAndOrigin { proxy, _ in
            let (text, closed) = try await exchange(proxy, request)
            #expect(text.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(text)")
            #expect(text.contains("Connection: close\r\n"))
            #expect(text.hasSuffix("Malformed HTTP request.\n"))
            #expect(closed)
            #expect(proxy.records.map(\.status) == [400])
            #expect(proxy.records.first?.reason == .badRequest)
        }
    }

    @Test("a header section over the limit gets 431")
    func headerTooLarge() async throws {
        try await withProxyAndOrigin(configure: { $0.maxHeaderBytes = 4096 }) { proxy, _ in
            let big = String(repeating: "a", count: 8000)
            let (text, closed) = try await exchange(proxy, "GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\nX-Big: \(big)\r\n\r\n")
            #expect(text.hasPrefix("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "\(text)")
            #expect(closed)
            #expect(proxy.records.first?.reason == .headerTooLarge)
        }
    }

    @Test("a request target over the limit gets 414")
    func uriTooLong() async throws {
        try await withProxyAndOrigin { proxy, _ in
            let path = String(repeating: "p", count: 9000)
            let (text, closed) = try await exchange(proxy, "GET http://127.0.0.1:1/\(path) HTTP/1.1\r\nHost: x\r\n\r\n")
            #expect(text.hasPrefix("HTTP/1.1 414 URI Too Long\r\n"), "\(text.prefix(200))")
            #expect(closed)
            #expect(proxy.records.first?.reason == .uriTooLong)
            #expect((proxy.records.first?.target.count ?? 0) < 100, "the log line must not carry the whole URI")
        }
    }

    @Test("a request target longer than the whole header-size limit still gets 414, not 431")
    func uriOverHeaderLimit() async throws {
        try await withProxyAndOrigin { proxy, _ in
            // 40,000 bytes: past both the 8,192-byte target limit and the 32 KiB header limit,
            // which NIO's parser trips first; it arrives over many reads.
            let path = String(repeating: "p", count: 40_000)
            let (text, closed) = try await exchange(proxy, "GET http://127.0.0.1:1/\(path) HTTP/1.1\r\nHost: x\r\n\r\n")
            #expect(text.hasPrefix("HTTP/1.1 414 URI Too Long\r\n"), "\(text.prefix(200))")
            #expect(closed)
            #expect(proxy.records.map(\.reason) == [.uriTooLong])
        }
    }

    @Test("a header section over the limit after a target under its limit is still 431")
    func headerOverflowAfterLongTarget() async throws {
        try await withProxyAndOrigin(configure: { $0.maxHeaderBytes = 4096; $0.maxURILength = 3000 }) { proxy, _ in
            let path = String(repeating: "p", count: 2900)
            let big = String(repeating: "a", count: 3000)
            let (text, _) = try await exchange(proxy, "GET http://127.0.0.1:1/\(path) HTTP/1.1\r\nHost: x\r\nX-Big: \(big)\r\n\r\n")
            #expect(text.hasPrefix("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "\(text.prefix(200))")
            #expect(proxy.records.map(\.reason) == [.headerTooLarge])
        }
    }

    @Test("an HTTP version other than 1.x gets 505")
    func versionNotSupported() async throws {
        try await withProxyAndOrigin { proxy, _ in
            let (text, _) = try await exchange(proxy, "GET http://127.0.0.1:1/ HTTP/2.0\r\nHost: x\r\n\r\n")
            #expect(text.hasPrefix("HTTP/1.1 505 HTTP Version Not Supported\r\n"), "\(text)")
            #expect(proxy.records.first?.reason == .versionNotSupported)
            #expect(proxy.records.count == 1)
        }
    }

    @Test("a request line ending in a bare LF is malformed (400), not an unsupported version (505)")
    func bareLF() async throws {
        try await withProxyAndOrigin { proxy, _ in
            let (text, _) = try await exchange(proxy, "GET http://127.0.0.1:1/ HTTP/1.1\nHost: x\n\n")
            #expect(text.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(text)")
            #expect(proxy.records.map(\.reason) == [.badRequest])
        }
    }

    @Test("a client that trickles its header gets 408 and is closed; an idle one is closed quietly")
    func timeouts() async throws {
        // The header timeout also bounds a new connection's wait for its first byte: long
        // enough here for a loaded test machine to connect and send.
        try await withProxyAndOrigin(configure: {
            $0.headerTimeout = .seconds(2)
            $0.idleTimeout = .seconds(8)
        }) { proxy, _ in
            let slow = try await RawClient.connect(port: proxy.port, sending: "GET http://127.0.0.1:1/ HTTP/1.1\r\nHo")
            #expect(await slow.waitForClose())
            #expect(slow.text.hasPrefix("HTTP/1.1 408 Request Timeout\r\n"))
            #expect(slow.text.contains("\r\nDate: "))
            #expect(slow.text.contains("Connection: close\r\n"))

            // A new connection that sends nothing gets the header timeout, not the idle one: it
            // would otherwise hold its slot for the whole idle timeout (8 s here).
            let clock = ContinuousClock()
            let opened = clock.now
            let idle = try await RawClient.connect(port: proxy.port)
            #expect(await idle.waitForClose())
            #expect(clock.now - opened < .seconds(5), "\(clock.now - opened)")
            #expect(idle.text.isEmpty)
            #expect(proxy.records.map(\.status) == [408])
            #expect(proxy.records.first?.reason == .headerTimeout)
            #expect(proxy.records.first?.method == "GET", "the request line arrived: the log line says what it was")
            #expect(proxy.records.first?.target == "http://127.0.0.1:1/")
            #expect(proxy.records.first?.contentType == "text/plain; charset=utf-8", "the log names what the 408 carried")
        }
    }

    @Test("a client that closes in the middle of its request head is logged as closing (499), not as a malformed request")
    func closedMidHead() async throws {
        try await withProxyAndOrigin { proxy, origin in
            let client = try await RawClient.connect(port: proxy.port)
            try await client.send("GET http://127.0.0.1:\(origin.port)/hello HTTP/1.1\r\nHost: x\r\nProxy-Auth")
            try await client.closeOutput()
            #expect(await client.waitForClose())
            #expect(client.text.isEmpty, "\(client.text)")
            let records = await proxy.waitForRecords(count: 1)
            #expect(records.map(\.reason) == [.clientClosed])
            #expect(records.first?.status == 499)
            #expect(records.first?.method == "GET")
            #expect(origin.connections == 0)
            // A method cut short ("G") is no method: logged as "-".
            let cut = try await RawClient.connect(port: proxy.port, sending: "G")
            try await cut.closeOutput()
            #expect(await cut.waitForClose())
            let both = await proxy.waitForRecords(count: 2)
            #expect(both.last?.method == "-", "\(both.last?.method ?? "")")
            await cut.close()
        }
    }

    @Test("the log line of a request whose head never parsed names its method and target, without userinfo, and never a cut one")
    func unparsedRequestLines() async throws {
        try await withProxyAndOrigin(configure: { $0.maxHeaderBytes = 4096 }) { proxy, _ in
            let big = String(repeating: "a", count: 600)
            let heads = [
                // 431 over several reads, with credentials in the target.
                "GET http://bob:hunter2@127.0.0.1:1/p?q=1 HTTP/1.1\r\nHost: x\r\n" + (0..<10).map { "X-\($0): \(big)\r\n" }.joined(),
                // 501 in the first read.
                "BREW http://127.0.0.1:1/pot HTTP/1.1\r\nHost: x\r\n\r\n",
                // A line longer than what is kept, cut inside the userinfo: no target.
                "GET http://\(String(repeating: "u", count: 300)):hunter2@127.0.0.1:1/ HTTP/1.1\r\n" + (0..<10).map { "X-\($0): \(big)\r\n" }.joined(),
            ]
            for head in heads {
                let client = try await RawClient.connect(port: proxy.port)
                try await client.send(head)
                #expect(await client.waitForClose())
                await client.close()
            }
            let records = await proxy.waitForRecords(count: 3)
            #expect(records.map(\.status) == [431, 501, 431])
            #expect(records.map(\.method) == ["GET", "BREW", "GET"])
            #expect(records.map(\.target) == ["http://127.0.0.1:1/p?q=1", "http://127.0.0.1:1/pot", "-"])
            #expect(!records.map(\.target).joined().contains("hunter2"))
        }
    }

    @Test("no part of a password reaches the log from a malformed target: parsed but refused, or never parsed")
    func malformedTargetsKeepPasswordsOut() async throws {
        try await withProxyAndOrigin { proxy, _ in
            let heads = [
                "GET //bob:SECRETPW@127.0.0.1:1/x HTTP/1.1\r\nHost: a\r\n\r\n",  // 400 origin_form
                "GET http:///bob:SECRETPW@127.0.0.1/x HTTP/1.1\r\nHost: a\r\n\r\n",  // 400 bad_target
                "GET http://bob:SEC RETPW@h/ HTTP/1.1\r\n\r\n",  // 400, a raw space: never parsed
                "GET http://bob:SE/CRETPW@h/ HTTP/2.0\r\nHost: a\r\n\r\n",  // 505
            ]
            for head in heads {
                let client = try await RawClient.connect(port: proxy.port)
                try await client.send(head)
                _ = await client.waitFor(timeout: .seconds(5)) { $0.contains("\r\n\r\n") && $0.hasSuffix("\n") }
                await client.close()
            }
            let records = await proxy.waitForRecords(count: 4)
            #expect(records.count == 4)
            for record in records {
                #expect(!record.target.contains("SEC") && !record.target.contains("RETPW") && !record.target.contains("CRET"), "\(record.target)")
            }
        }
    }

    @Test("a long target under its limit with an oversized header section is 431; a target past the header limit, whatever the URI limit, is 414")
    func longTargetBoundaries() async throws {
        try await withProxyAndOrigin { proxy, _ in
            // 8,185 characters (under 8,192) followed by a 30 KB field: the fields overflow.
            let path = String(repeating: "a", count: 8185 - "http://127.0.0.1:1/".count)
            let client = try await RawClient.connect(port: proxy.port)
            try await client.send("GET http://127.0.0.1:1/\(path) HTTP/1.1\r\nHost: a\r\nX: \(String(repeating: "b", count: 30_000))\r\n\r\n")
            #expect(await client.waitForClose())
            #expect(client.text.hasPrefix("HTTP/1.1 431 "), "\(client.text.prefix(100))")
        }
        try await withProxyAndOrigin(configure: { $0.maxHeaderBytes = 4096; $0.maxURILength = 100_000 }) { proxy, _ in
            let client = try await RawClient.connect(port: proxy.port)
            try await client.send("GET http://127.0.0.1:1/\(String(repeating: "a", count: 5000)) HTTP/1.1\r\nHost: a\r\n\r\n")
            #expect(await client.waitForClose())
            #expect(client.text.hasPrefix("HTTP/1.1 414 "), "the request line alone overflowed: \(client.text.prefix(100))")
        }
    }

    @Test("between requests a kept-alive connection gets the idle timeout, not the header timeout")
    func idleAfterRequest() async throws {
        try await withProxyAndOrigin(configure: {
            $0.headerTimeout = .seconds(2)
            $0.idleTimeout = .seconds(6)
        }) { proxy, origin in
            let client = try await RawClient.connect(
                port: proxy.port, sending: "GET http://127.0.0.1:\(origin.port)/hello HTTP/1.1\r\nHost: x\r\nProxy-Authorization: \(TestUser.basic)\r\n\r\n")
            let text = await client.waitFor { $0.hasSuffix("hello\n") }
            #expect(text.hasSuffix("hello\n"))
            #expect(!(await client.waitForClose(timeout: .seconds(3))), "still open after 3 s (past the header timeout)")
            #expect(await client.waitForClose(timeout: .seconds(8)))
            await client.close()
        }
    }

    @Test("a 407 to an upload that waits for 100-continue closes the connection instead of waiting for a body that will not come")
    func expectContinueRejected() async throws {
        try await withProxyAndOrigin { proxy, origin in
            let (text, closed) = try await exchange(
                proxy,
                "POST http://127.0.0.1:\(origin.port)/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n")
            #expect(text.hasPrefix("HTTP/1.1 407 "))
            #expect(text.contains("Connection: close\r\n"))
            #expect(closed)
        }
    }

    @Test("any answer of Gatehouse's own to an upload waiting for 100-continue closes the connection (a 501 kept it, and the next request was read as the body)")
    func expectContinueOwnAnswers() async throws {
        try await withProxyAndOrigin { proxy, origin in
            for (target, status) in [("https://127.0.0.1:\(origin.port)/x", 501), ("http://127.0.0.1:\(proxy.port)/x", 508)] {
                let (text, closed) = try await exchange(
                    proxy,
                    "POST \(target) HTTP/1.1\r\nHost: x\r\nProxy-Authorization: \(TestUser.basic)\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n",
                    until: { $0.hasSuffix("\n") && $0.contains("\r\n\r\n") })
                #expect(statusCodes(in: text) == [status], "\(text)")
                #expect(text.contains("Connection: close\r\n"))
                #expect(closed)
            }
        }
    }

    @Test("an HTTP/1.0 request's 100-continue expectation is ignored, and not passed on to the origin (RFC 9110 §10.1.1)")
    func expectContinueHTTP10() async throws {
        try await withProxyAndOrigin { proxy, origin in
            let (text, _) = try await exchange(
                proxy,
                "POST http://127.0.0.1:\(origin.port)/headers HTTP/1.0\r\nHost: x\r\nProxy-Authorization: \(TestUser.basic)\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
                until: { $0.contains("POST /headers") && $0.hasSuffix("\n\n") || $0.contains("via:") && $0.hasSuffix("\n") })
            #expect(statusCodes(in: text) == [200], "\(text)")
            #expect(text.contains("content-length: 5\n"), "\(text)")
            #expect(!text.lowercased().contains("expect:"), "\(text)")
        }
    }

    @Test("bytes that fail to parse right behind a complete upload get their 400 after the upload's answer (the connection ended without it)")
    func garbageBehindUpload() async throws {
        try await withProxyAndOrigin { proxy, origin in
            let client = try await RawClient.connect(port: proxy.port)
            try await client.send(
                "POST http://127.0.0.1:\(origin.port)/upload HTTP/1.1\r\nHost: x\r\nProxy-Authorization: \(TestUser.basic)\r\nContent-Length: 5\r\n\r\nhello"
                    + "GARBAGE\r\n\r\n")
            // More of it, as a client that goes on sending would.
            client.queue(bytes: [UInt8](repeating: UInt8(ascii: "x"), count: 1_000_000))
            #expect(await client.waitForClose())
            #expect(statusCodes(in: client.text) == [200, 400], "\(client.text)")
            let records = await proxy.waitForRecords(count: 2)
            #expect(records.map(\.reason) == [.forwarded, .badRequest])
        }
    }

    @Test("a 407 to an upload without Expect drains the body and keeps the connection")
    func rejectedUploadIsDrained() async throws {
        try await withProxyAndOrigin { proxy, origin in
            let client = try await RawClient.connect(port: proxy.port)
            let body = String(repeating: "x", count: 50_000)
            try await client.send(
                "POST http://127.0.0.1:\(origin.port)/upload HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
                    + "GET http://127.0.0.1:\(origin.port)/hello HTTP/1.1\r\nHost: x\r\nProxy-Authorization: \(TestUser.basic)\r\n\r\n")
            let text = await client.waitFor { $0.hasSuffix("hello\n") }
            #expect(statusCodes(in: text) == [407, 200])
            #expect(!client.isClosed)
            await client.close()
        }
    }

    @Test("after an early answer, a client that stops sending the rest of its upload is closed after the idle timeout (it held the connection for good, without credentials)")
    func stalledAfterEarlyAnswer() async throws {
        let early = try await RawOrigin.start(.respondAndClose("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
        defer { Task { await early.stop() } }
        // Generous margins: the whole suite runs alongside on two cores.
        try await withProxyAndOrigin(configure: { $0.idleTimeout = .seconds(3) }) { proxy, origin in
            let clock = ContinuousClock()
            // A 407 to an upload head without credentials and without Expect, then silence.
            let refused = try await RawClient.connect(port: proxy.port)
            try await refused.send("POST http://127.0.0.1:\(origin.port)/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            let text = await refused.waitFor { statusCodes(in: $0).count == 1 && $0.hasSuffix("\n") }
            #expect(statusCodes(in: text) == [407])
            let started = clock.now
            #expect(await refused.waitForClose(timeout: .seconds(15)))
            #expect(clock.now - started < .seconds(10))
            await refused.close()
            // An origin that answered before reading the upload, a few bytes more, then silence:
            // each body byte that arrives restarts the wait.
            let answered = try await RawClient.connect(port: proxy.port)
            try await answered.send(
                "POST http://127.0.0.1:\(early.port)/up HTTP/1.1\r\nHost: x\r\nProxy-Authorization: \(TestUser.basic)\r\nContent-Length: 100\r\n\r\n0123456789")
            let answer = await answered.waitFor { $0.hasSuffix("ok") }
            #expect(statusCodes(in: answer) == [200])
            // A byte every half second for 4.5 s, longer than the idle timeout, sent from a thread
            // of its own: the test's task may wake seconds late on a loaded machine (sleeping
            // 2 s there, it once found the connection closed, rightly).
            let openThroughout = try await onOwnThread { () -> Bool in
                for _ in 0..<9 {
                    Thread.sleep(forTimeInterval: 0.5)
                    if answered.isClosed { return false }
                    answered.queue(bytes: Array("m".utf8))
                }
                return !answered.isClosed
            }
            #expect(openThroughout, "each body byte restarts the idle timeout")
            #expect(await answered.waitForClose(timeout: .seconds(15)))
            await answered.close()
        }
    }

    @Test("a client that sends its whole upload before reading (wget, urllib) gets the 407 to it, though the upload is over the drain limit (it got a broken pipe)")
    func writeAllThenReadGetsTheAnswer() async throws {
        try await withProxyAndOrigin(configure: { $0.maxDrainBytes = 1_000_000 }) { proxy, origin in
            let size = 20_000_000
            // Also with a space after the length, which NIO's parser accepts (it was taken for
            // no length, and drained until the reset).
            for spaces in ["", " "] {
                let client = try await RawClient.connect(port: proxy.port)
                try await client.send("POST http://127.0.0.1:\(origin.port)/upload HTTP/1.1\r\nHost: x\r\nContent-Length: \(size)\(spaces)\r\n\r\n")
                // Waits until the proxy has taken every byte; a reset fails it.
                try await client.send(bytes: [UInt8](repeating: 0x61, count: size))
                try await client.closeOutput()
                #expect(await client.waitForClose())
                #expect(statusCodes(in: client.text) == [407], "\(client.text)")
                #expect(client.text.contains("Connection: close\r\n"))
            }
        }
    }

    @Test("an early answer to a chunked upload, or from an origin that closes, says Connection: close: the client stops sending (curl went on, to a reset at 64 MiB)")
    func earlyAnswerToChunkedUploadCloses() async throws {
        let early = try await RawOrigin.start(.respondAndClose("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
        defer { Task { await early.stop() } }
        let closing = try await RawOrigin.start(.respondAndClose("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"))
        defer { Task { await closing.stop() } }
        try await withProxyAndOrigin(configure: { $0.lingerTimeout = .seconds(1) }) { proxy, origin in
            let uploads = [
                // Chunked to an origin that answers before reading it; a 407 to a chunked one.
                (early.port, "Proxy-Authorization: \(TestUser.basic)\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", 200),
                (origin.port, "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", 407),
                // With a length the proxy would drain, to an origin that says it closes.
                (closing.port, "Proxy-Authorization: \(TestUser.basic)\r\nContent-Length: 100000\r\n\r\nhello", 200),
            ]
            for (port, rest, status) in uploads {
                let client = try await RawClient.connect(port: proxy.port)
                try await client.send("POST http://127.0.0.1:\(port)/up HTTP/1.1\r\nHost: x\r\n" + rest)
                let text = await client.waitFor { statusCodes(in: $0).count == 1 && $0.hasSuffix("\n") || $0.hasSuffix("ok") }
                #expect(statusCodes(in: text) == [status], "\(text)")
                #expect(text.contains("Connection: close\r\n"), "\(text)")
                #expect(await client.waitForClose(timeout: .seconds(10)), "closed once the client sends no more")
                await client.close()
            }
        }
    }

    @Test("after an early answer the rest of an upload is drained to keep the connection, but only up to maxDrainBytes (64 MiB); then it closes")
    func drainLimit() async throws {
        try await withProxyAndOrigin(configure: { $0.maxDrainBytes = 1_000_000 }) { proxy, origin in
            // A 407 to an upload without credentials: a small body is drained and the
            // connection carries the next request.
            let client = try await RawClient.connect(port: proxy.port)
            try await client.send("POST http://127.0.0.1:\(origin.port)/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
            try await client.send(bytes: [UInt8](repeating: 0x61, count: 100_000))
            try await client.send("GET http://127.0.0.1:\(origin.port)/hello HTTP/1.1\r\nHost: x\r\nProxy-Authorization: \(TestUser.basic)\r\n\r\n")
            let text = await client.waitFor { $0.hasSuffix("hello\n") }
            #expect(statusCodes(in: text) == [407, 200])
            await client.close()
            // A body beyond the limit: the 407 is sent, then the connection closes.
            let big = try await RawClient.connect(port: proxy.port)
            try await big.send("POST http://127.0.0.1:\(origin.port)/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n")
            big.queue(bytes: [UInt8](repeating: 0x61, count: 4_000_000))
            #expect(await big.waitForClose(timeout: .seconds(10)))
            #expect(statusCodes(in: big.text) == [407])
            await big.close()
        }
    }
}
