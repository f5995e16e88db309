import Foundation
import Gatehouse
import GatehouseTesting
import NIOSSL
import Testing

@Suite("CONNECT tunnels")
struct TunnelTests {
    @Test("curl reaches a local TLS origin through CONNECT, verifying its certificate")
    func httpsThroughConnect() async throws {
        let certificate = try NIOSSLCertificate.fromPEMFile(TLSFixture.certificatePath)
        let key = try NIOSSLPrivateKey(file: TLSFixture.keyPath, format: .pem)
        let tls = try NIOSSLContext(configuration: .makeServerConfiguration(
            certificateChain: certificate.map { .certificate($0) }, privateKey: .privateKey(key)))
        let origin = try await TestOrigin.start(tls: tls)
        defer { Task { await origin.stop() } }
        try await withTunnelProxy(toPort: origin.port) { proxy in
            let result = try await Curl.run([
                "-x", proxy.authenticatedURL, "--cacert", TLSFixture.certificatePath,
                "https://127.0.0.1:\(origin.port)/bytes/1000000",
            ])
            #expect(result.exitCode == 0, "\(result.stderr)")
            #expect(TestData.sha256([UInt8](result.stdout)) == TestData.sha256(TestData.bytes(count: 1_000_000)))
            let records = await proxy.waitForRecords(count: 1)
            #expect(records.first?.method == "CONNECT")
            #expect(records.first?.status == 200)
            #expect(records.first?.reason == .tunnel)
            #expect(records.first?.target == "127.0.0.1:\(origin.port)")
            #expect((records.first?.bytesOut ?? 0) > 1_000_000)
            #expect((records.first?.bytesIn ?? 0) > 0)

            // --proxy-anyauth: curl sends CONNECT without credentials, reads the 407, and
            // retries on the same connection, which must still speak HTTP after a refused CONNECT.
            let anyauth = try await Curl.run([
                "-v", "--proxy-anyauth", "-x", proxy.proxyURL, "-U", "\(TestUser.name):\(TestUser.password)",
                "--cacert", TLSFixture.certificatePath, "https://127.0.0.1:\(origin.port)/hello",
            ])
            #expect(anyauth.exitCode == 0, "\(anyauth.stderr)")
            #expect(anyauth.body == "hello\n")
            let all = await proxy.waitForRecords(count: 3)
            #expect(all.dropFirst().map(\.status) == [407, 200])
        }
    }

    @Test("200 has no framing headers, and bytes sent right behind the CONNECT head reach the origin")
    func rawTunnelKeepsEarlyBytes() async throws {
        let origin = try await TestOrigin.start()
        defer { Task { await origin.stop() } }
        try await withTunnelProxy(toPort: origin.port) { proxy in
            let client = try await RawClient.connect(port: proxy.port)
            try await client.send(
                "CONNECT 127.0.0.1:\(origin.port) HTTP/1.1\r\nHost: 127.0.0.1:\(origin.port)\r\nProxy-Authorization: \(TestUser.basic)\r\n\r\n"
                    + "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            let text = await client.waitFor { $0.hasSuffix("hello\n") }
            // Only a Date field (RFC 9110 §6.6.1): no Content-Length or Transfer-Encoding.
            let head = text.components(separatedBy: "\r\n\r\n").first ?? ""
            #expect(head.hasPrefix("HTTP/1.1 200 Connection established\r\nDate: ") && head.components(separatedBy: "\r\n").count == 2, "\(head)")
            #expect(text.contains(" GMT\r\n\r\nHTTP/1.1 200 OK\r\n"))
            #expect(text.hasSuffix("hello\n"))
            await client.close()
            let records = await proxy.waitForRecords(count: 1)
            #expect(records.first?.reason == .tunnel)
        }
    }

    @Test("CONNECT to a port not in --connect-ports gets 403, and needs credentials first")
    func connectPolicy() async throws {
        try await withProxyAndOrigin { proxy, origin in
            let client = try await RawClient.connect(port: proxy.port)
            try await client.send("CONNECT 127.0.0.1:\(origin.port) HTTP/1.1\r\nHost: x\r\n\r\n")
            var text = await client.waitFor { $0.hasSuffix(".\n") }
            #expect(text.hasPrefix("HTTP/1.1 407 "))
            try await client.send("CONNECT 127.0.0.1:\(origin.port) HTTP/1.1\r\nHost: x\r\nProxy-Authorization: \(TestUser.basic)\r\n\r\n")
            text = await client.waitFor { statusCodes(in: $0).count == 2 }
            #expect(statusCodes(in: text) == [407, 403])
            #expect(proxy.records.map(\.reason) == [.authMissing, .connectPortDenied])
            await client.close()
        }
    }

    @Test(
        "half-close passes through the tunnel: the client's EOF reaches the origin, the reply still comes back (on a TLS listener: its close_notify)",
        arguments: [false, true])
    func halfClose(overTLS: Bool) async throws {
        // This origin answers only once it has read EOF, with the number of bytes it received.
        let origin = try await RawOrigin.start(.respondOnEOF)
        defer { Task { await origin.stop() } }
        try await withTunnelProxy(toPort: origin.port, tls: overTLS) { proxy in
            let client = overTLS
                ? try await RawClient.connect(port: try #require(proxy.tlsPort), tls: try TLSFixture.clientContext())
                : try await RawClient.connect(port: proxy.port)
            try await client.send(
                "CONNECT 127.0.0.1:\(origin.port) HTTP/1.1\r\nProxy-Authorization: \(TestUser.basic)\r\n\r\n")
            _ = await client.waitFor { $0.hasSuffix("\r\n\r\n") }
            try await client.send("0123456789")
            try await client.closeOutput()
            let text = await client.waitFor { $0.hasSuffix("received 10") }
            #expect(text.hasSuffix("\r\n\r\nreceived 10"))
            #expect(await client.waitForClose())
            let records = await proxy.waitForRecords(count: 1)
            #expect(records.first?.bytesIn == 10)
            #expect(records.first?.reason == .tunnel)
        }
    }

    @Test(
        "a client that half-closed and reads slowly gets every byte the origin sent before closing",
        arguments: [false, true])
    func halfClosedSlowReader(waitForTunnel: Bool) async throws {
        let size = 8 * 1024 * 1024
        let origin = try await RawOrigin.start(.respondAndClose(String(repeating: "x", count: size)))
        defer { Task { await origin.stop() } }
        try await withTunnelProxy(toPort: origin.port) { proxy in
            let client = try await RawClient.connect(port: proxy.port, reading: false)
            // The request rides behind the CONNECT head; then the client is done sending, at
            // once (its EOF arrives before the tunnel is in place) or once the tunnel is up.
            try await client.send(
                "CONNECT 127.0.0.1:\(origin.port) HTTP/1.1\r\nProxy-Authorization: \(TestUser.basic)\r\n\r\n"
                    + "GET / HTTP/1.1\r\n\r\n")
            if waitForTunnel { try await Task.sleep(for: .milliseconds(300)) }
            try await client.closeOutput()
            // Not reading for a moment: the origin sends what the buffers take, and the proxy
            // holds the rest for the client.
            try await Task.sleep(for: .milliseconds(500))
            let clock = ContinuousClock()
            let deadline = clock.now + .seconds(20)
            while (client.bodyByteCount ?? 0) < size, clock.now < deadline {
                client.readSome()
                try await Task.sleep(for: .milliseconds(1))
            }
            #expect(client.bodyByteCount == size)
            let records = await proxy.waitForRecords(count: 1)
            #expect(records.first?.reason == .tunnel)
            #expect(records.first?.bytesOut == client.byteCount)
            await client.close()
        }
    }

    /// `gatehouse serve` as a process (user u:p, no access log) that may tunnel to `port`.
    static func tunnelProcess(to port: Int, _ extra: [String] = []) async throws -> GatehouseProcess {
        try await GatehouseProcess.start(
            ["--listen", "127.0.0.1:0", "--user", "u:p", "--access-log", "off", "--connect-ports", "\(port)"] + extra)
    }

    /// `count` tunnels (user u:p) whose clients send a request through and never read.
    static func stalledTunnels(_ count: Int, through proxy: GatehouseProcess, to port: Int) async throws -> [RawClient] {
        var clients: [RawClient] = []
        for _ in 0..<count {
            clients.append(try await RawClient.connect(
                port: proxy.port, reading: false,
                sending: "CONNECT 127.0.0.1:\(port) HTTP/1.1\r\nProxy-Authorization: Basic dTpw\r\n\r\nGET / HTTP/1.1\r\n\r\n"))
        }
        return clients
    }

    @Test("tunnels whose client stopped reading cost the proxy little memory (up to four reads per wake-up on each side; NIO's sixteen queued about 1 MB each)")
    func stalledTunnelsMemory() async throws {
        let origin = try await RawOrigin.start(.respondAndHang(String(repeating: "x", count: 8 << 20)))
        defer { Task { await origin.stop() } }
        let proxy = try await Self.tunnelProcess(to: origin.port)
        defer { Task { await proxy.stop() } }
        let before = proxy.residentKiB
        let clients = try await Self.stalledTunnels(10, through: proxy, to: origin.port)
        try await Task.sleep(for: .seconds(3))
        let grown = proxy.residentKiB - before
        // Measured: about 3.5 MB for ten with four reads per wake-up, 11 MB with sixteen.
        #expect(grown < 7_000, "RSS grew by \(grown) KiB for 10 stalled tunnels")
        for client in clients { await client.close() }
    }

    @Test("the memory a burst of stalled tunnels took goes back to the system once they are gone (glibc kept it: 30 → 57 MB, then 53 MB for good)")
    func memoryReturnedAfterBurst() async throws {
        // 1 MiB per origin fills what each tunnel holds; more only loads the machine.
        let origin = try await RawOrigin.start(.respondAndHang(String(repeating: "x", count: 1 << 20)))
        defer { Task { await origin.stop() } }
        let proxy = try await Self.tunnelProcess(to: origin.port, ["--log-level", "debug"])
        defer { Task { await proxy.stop() } }
        let before = proxy.residentKiB
        let clients = try await Self.stalledTunnels(100, through: proxy, to: origin.port)
        try await Task.sleep(for: .seconds(3))
        let stalled = proxy.residentKiB - before
        // The burst must have cost something for the test to mean anything (measured ~27 MB).
        #expect(stalled > 18_000, "RSS grew by only \(stalled) KiB for 100 stalled tunnels")
        for client in clients { await client.close() }
        // Looked at every 5 s; without trimming, RSS stayed ~23 MB above its start.
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(20)
        var left = proxy.residentKiB - before
        while left > 8_000, clock.now < deadline {
            try await Task.sleep(for: .milliseconds(250))
            left = proxy.residentKiB - before
        }
        #expect(left <= 8_000, "RSS still \(left) KiB above its start after the tunnels left")
        #expect(proxy.stderr.contains("returned unused memory to the system"))
    }

    @Test("a client that stopped reading and then left does not leave its tunnel to an echoing origin open until the idle timeout")
    func goneClientEchoOrigin() async throws {
        // The client sends a lot and reads nothing, so the echoed bytes back up: the proxy stops
        // reading the origin, the origin stops reading the proxy. Once the client closes, the
        // proxy must read (and drop) what the origin sends, or neither side ever moves again.
        let origin = try await RawOrigin.start(.echo)
        defer { Task { await origin.stop() } }
        var configuration = ProxyConfiguration()
        configuration.connectPorts = try PortSet(parsing: "\(origin.port)")
        configuration.tunnelIdleTimeout = .seconds(30)
        let frozen = configuration
        try await GatehouseFixture.withProxy(users: [TestUser.name: TestUser.password], configuration: frozen) { proxy in
            let client = try await RawClient.connect(port: proxy.port, reading: false, readSize: 16_384)
            try await client.send("CONNECT 127.0.0.1:\(origin.port) HTTP/1.1\r\nProxy-Authorization: \(TestUser.basic)\r\n\r\n")
            try await Task.sleep(for: .milliseconds(200))
            client.queue(bytes: [UInt8](repeating: 0x61, count: 16 * 1024 * 1024))
            try await Task.sleep(for: .milliseconds(1_000))
            await client.close()
            // Logged once both sides are closed; before, only after the 30 s idle timeout.
            let records = await proxy.waitForRecords(count: 1, timeout: .seconds(5))
            #expect(records.map(\.reason) == [.tunnel])
        }
    }

    @Test("refused CONNECTs pipelined in one packet are each answered, and so is what follows them (it crashed the proxy)")
    func pipelinedRefusedConnects() async throws {
        // A separate process: the fault was a fatal error that ended the whole proxy, without
        // credentials (two refused CONNECTs in one packet, then any request).
        let proxy = try await GatehouseProcess.start(["--listen", "127.0.0.1:0", "--user", "u:p", "--access-log", "off"])
        defer { Task { await proxy.stop() } }
        let connect = "CONNECT x:443 HTTP/1.1\r\n\r\n"
        let get = "GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\n\r\n"
        for (writes, answers) in [([connect + connect, connect], 3), ([connect + connect + get], 3), ([String(repeating: connect, count: 5)], 5),
                                  ([connect + connect, connect + connect, get], 5)] {
            let client = try await RawClient.connect(port: proxy.port)
            for write in writes {
                try await client.send(write)
                try await Task.sleep(for: .milliseconds(200))
            }
            let text = await client.waitFor(timeout: .seconds(5)) { statusCodes(in: $0).count == answers }
            #expect(statusCodes(in: text) == Array(repeating: 407, count: answers), "\(writes.count) writes: \(text.prefix(300))")
            await client.close()
        }
        #expect(kill(proxy.pid, 0) == 0, "the proxy is still running")
    }

    @Test(
        "bytes right behind a CONNECT pipelined behind another request, then a half-close at once (nc -N): the origin gets them before EOF (it got EOF alone)",
        arguments: ["GET", "407", "403"])
    func earlyBytesBehindPipelinedConnect(ahead: String) async throws {
        let origin = try await RawOrigin.start(.respondOnEOF)
        defer { Task { await origin.stop() } }
        let web = try await TestOrigin.start()
        defer { Task { await web.stop() } }
        var configuration = ProxyConfiguration()
        configuration.connectPorts = try PortSet(parsing: "\(origin.port)")
        let frozen = configuration
        try await GatehouseFixture.withProxy(users: [TestUser.name: TestUser.password], configuration: frozen) { proxy in
            let first: String
            switch ahead {
            case "GET": first = "GET http://127.0.0.1:\(web.port)/hello HTTP/1.1\r\nHost: x\r\nProxy-Authorization: \(TestUser.basic)\r\n\r\n"
            case "407": first = "CONNECT 127.0.0.1:\(origin.port) HTTP/1.1\r\nHost: x\r\n\r\n"
            default: first = "CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: x\r\nProxy-Authorization: \(TestUser.basic)\r\n\r\n"
            }
            let client = try await RawClient.connect(
                port: proxy.port,
                sending: first + "CONNECT 127.0.0.1:\(origin.port) HTTP/1.1\r\nHost: x\r\nProxy-Authorization: \(TestUser.basic)\r\n\r\nEARLY-BYTES")
            try await client.closeOutput()
            let text = await client.waitFor { $0.hasSuffix("received 11") }
            #expect(text.hasSuffix("\r\n\r\nreceived 11"), "\(text)")
            #expect(await client.waitForClose())
            let records = await proxy.waitForRecords(count: 2)
            #expect(records.last?.reason == .tunnel)
            #expect(records.last?.bytesIn == 11)
        }
    }

    @Test("a request pipelined behind a forwarded one, then a half-close: both answered (neither arrived, though both were logged)")
    func halfCloseAfterPipeline() async throws {
        try await withProxyAndOrigin { proxy, origin in
            let get = "GET http://127.0.0.1:\(origin.port)/hello HTTP/1.1\r\nHost: x\r\nProxy-Authorization: \(TestUser.basic)\r\n\r\n"
            let wrong = "GET http://127.0.0.1:\(origin.port)/hello HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic \(Data("\(TestUser.name):wrong".utf8).base64EncodedString())\r\n\r\n"
            let anonymousOptions = "OPTIONS http://127.0.0.1:\(origin.port)/ HTTP/1.1\r\nHost: x\r\nMax-Forwards: 0\r\n\r\n"
            for (writes, expected) in [(get + wrong, [200, 407]), (get + get + wrong, [200, 200, 407]), (get + anonymousOptions, [200, 407])] {
                let client = try await RawClient.connect(port: proxy.port, sending: writes)
                try await client.closeOutput()
                #expect(await client.waitForClose())
                #expect(statusCodes(in: client.text) == expected, "\(client.text.prefix(400))")
                await client.close()
            }
        }
    }

    @Test("requests pipelined behind refused CONNECTs are answered when the client then half-closes (they went unanswered)")
    func refusedConnectThenHalfClose() async throws {
        try await withProxyAndOrigin { proxy, origin in
            let connect = "CONNECT x:443 HTTP/1.1\r\n\r\n"
            let get = "GET http://127.0.0.1:\(origin.port)/hello HTTP/1.1\r\nHost: x\r\nProxy-Authorization: \(TestUser.basic)\r\n\r\n"
            for (writes, expected) in [(connect + get, [407, 200]), (connect + connect + get, [407, 407, 200]), (connect + get + get, [407, 200, 200])] {
                let client = try await RawClient.connect(port: proxy.port, sending: writes)
                try await client.closeOutput()
                #expect(await client.waitForClose())
                #expect(statusCodes(in: client.text) == expected, "\(client.text.prefix(400))")
                #expect(client.text.hasSuffix("hello\n"))
                await client.close()
            }
        }
    }

    @Test("a refused CONNECT that announces content closes after its 407 (its content was read as a next request: 400, and the requests behind it lost)")
    func refusedConnectWithContent() async throws {
        try await withProxyAndOrigin { proxy, origin in
            let get = "GET http://127.0.0.1:\(origin.port)/hello HTTP/1.1\r\nHost: x\r\nProxy-Authorization: \(TestUser.basic)\r\n\r\n"
            // Announced content, in the same packet and arriving later: one 407 that says it closes.
            for (first, later) in [("CONNECT x:443 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello" + get, nil),
                                   ("CONNECT x:443 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", "5\r\nhello\r\n0\r\n\r\n" + get)] {
                let client = try await RawClient.connect(port: proxy.port, sending: first)
                if let later {
                    try await Task.sleep(for: .milliseconds(100))
                    try await client.send(later)
                }
                #expect(await client.waitForClose())
                #expect(statusCodes(in: client.text) == [407], "\(client.text.prefix(400))")
                #expect(client.text.lowercased().contains("\r\nconnection: close\r\n"))
                await client.close()
            }
            // `Content-Length: 0` announces nothing: the connection stays and the GET is answered.
            let client = try await RawClient.connect(port: proxy.port, sending: "CONNECT x:443 HTTP/1.1\r\nContent-Length: 0\r\n\r\n" + get)
            let text = await client.waitFor(timeout: .seconds(5)) { statusCodes(in: $0).count == 2 }
            #expect(statusCodes(in: text) == [407, 200], "\(text.prefix(400))")
            await client.close()
            let records = await proxy.waitForRecords(count: 4, timeout: .seconds(5))
            #expect(records.map(\.status) == [407, 407, 407, 200])
        }
    }

    @Test("a tunnel to a slow but steady reader outlives --tunnel-idle-timeout with every byte (it was cut, the tail lost)")
    func slowReaderKeepsTunnel() async throws {
        let proxy = try await GatehouseProcess.start([
            "--listen", "127.0.0.1:0", "--user", "u:p", "--access-log", "off", "--connect-ports", "1-65535", "--tunnel-idle-timeout", "1s",
        ])
        defer { Task { await proxy.stop() } }
        // An origin that sends 8 MiB at once and then nothing, and a client reading about
        // 1 MB/s through the tunnel: after some 4 MB the proxy's writes to the client stopped
        // completing for longer than the idle timeout (NIO writes again only once a third of
        // the kernel's grown send buffer has drained), and the tunnel was closed with the rest
        // undelivered. Past 6 MB the client reads as fast as it can.
        let script = """
            import base64, socket, sys, threading, time
            port, size = int(sys.argv[1]), 8 * 1024 * 1024
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            def serve():
                conn, _ = listener.accept()
                conn.sendall(b"b" * size)
                time.sleep(30)
            threading.Thread(target=serve, daemon=True).start()
            s = socket.create_connection(("127.0.0.1", port), timeout=20)
            auth = base64.b64encode(b"u:p").decode()
            s.sendall(("CONNECT 127.0.0.1:%d HTTP/1.1\\r\\nProxy-Authorization: Basic %s\\r\\n\\r\\n" % (listener.getsockname()[1], auth)).encode())
            head = b""
            while b"\\r\\n\\r\\n" not in head:
                head += s.recv(1)
            got = 0
            while got < size:
                data = s.recv(100000)
                if not data:
                    break
                got += len(data)
                if got < 6 * 1024 * 1024:
                    time.sleep(0.1)
            print(got)
            """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script, "\(proxy.port)"]
        let out = Pipe()
        process.standardOutput = out
        try process.run()
        let data = try await outputToEnd(of: process, from: out)
        let received = Int(String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
        #expect(received == 8 * 1024 * 1024, "received \(received.map(String.init) ?? "?") of 8 MiB")
    }
}
