import Foundation
import Gatehouse
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Gatehouse as a daemon: reload, drain, systemd notification, socket activation, metrics,
/// and the `check` and `passwd` tools. Each test runs the real executable.
@Suite("Operations")
struct OperationsTests {
    static func temporaryPath(_ name: String) -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("gh-\(UUID().uuidString.prefix(8))-\(name)").path
    }

    static func basic(_ user: String, _ password: String) -> String {
        "Basic " + Data("\(user):\(password)".utf8).base64EncodedString()
    }

    /// `HOST:PORT` of a proxy process's admin listener, from its start-up log line.
    static func adminAddress(of proxy: GatehouseProcess) async -> String? {
        guard await proxy.waitForLog("admin endpoints listening"),
            let line = proxy.stderr.split(separator: "\n").first(where: { $0.contains("admin endpoints listening") }),
            let field = line.split(separator: " ").first(where: { $0.hasPrefix("address=") })
        else { return nil }
        return String(field.dropFirst(8))
    }

    static func makeHtpasswd(_ users: [String: String]) throws -> String {
        let path = Self.temporaryPath("htpasswd")
        for (user, password) in users {
            let hash = try #require(PasswordHash.makeBcrypt(password: password, cost: 4))
            try HtpasswdEditor.setUser(user, hash: hash, path: path)
        }
        return path
    }

    @Test("SIGHUP applies a valid new file, rejects an invalid one as a whole, and open connections survive")
    func reloadOnSignal() async throws {
        let origin = try await TestOrigin.start()
        defer { Task { await origin.stop() } }
        let path = try Self.makeHtpasswd(["u1": "one"])
        defer { try? FileManager.default.removeItem(atPath: path) }
        let proxy = try await GatehouseProcess.start(
            ["--listen", "127.0.0.1:0", "--htpasswd", path, "--access-log", "off", "--connect-ports", "\(origin.port)"],
            environment: ["GATEHOUSE_HTPASSWD_POLL_INTERVAL": "1h"])
        defer { Task { await proxy.stop() } }
        let url = "http://127.0.0.1:\(origin.port)/hello"

        let client = try await RawClient.connect(port: proxy.port)
        try await client.send("GET \(url) HTTP/1.1\r\nHost: x\r\nProxy-Authorization: \(Self.basic("u1", "one"))\r\n\r\n")
        _ = await client.waitFor { statusCodes(in: $0).count == 1 }
        let tunnel = try await RawClient.connect(port: proxy.port)
        try await tunnel.send("CONNECT 127.0.0.1:\(origin.port) HTTP/1.1\r\nProxy-Authorization: \(Self.basic("u1", "one"))\r\n\r\n")
        _ = await tunnel.waitFor { $0.hasSuffix("\r\n\r\n") }

        // A valid new file: u2 replaces u1.
        try HtpasswdEditor.setUser("u2", hash: try #require(PasswordHash.makeBcrypt(password: "two", cost: 4)), path: path)
        try HtpasswdEditor.deleteUser("u1", path: path)
        proxy.signal(SIGHUP)
        #expect(await proxy.waitForLog("reloaded settings and users"))
        try await client.send("GET \(url) HTTP/1.1\r\nHost: x\r\nProxy-Authorization: \(Self.basic("u2", "two"))\r\n\r\n")
        try await client.send("GET \(url) HTTP/1.1\r\nHost: x\r\nProxy-Authorization: \(Self.basic("u1", "one"))\r\n\r\n")
        let text = await client.waitFor { statusCodes(in: $0).count == 3 }
        #expect(statusCodes(in: text) == [200, 200, 407], "the keep-alive connection survives; u1's cached credentials are gone")

        // An invalid file is rejected as a whole: u2 stays.
        try String(contentsOfFile: path, encoding: .utf8).appending("this line is broken\n").write(toFile: path, atomically: true, encoding: .utf8)
        proxy.signal(SIGHUP)
        #expect(await proxy.waitForLog("reload rejected; the previous settings and users stay in force"))
        #expect(proxy.stderr.contains("htpasswd:2:"), "the rejected line is named: \(proxy.stderr)")
        try await client.send("GET \(url) HTTP/1.1\r\nHost: x\r\nProxy-Authorization: \(Self.basic("u2", "two"))\r\n\r\n")
        #expect(statusCodes(in: await client.waitFor { statusCodes(in: $0).count == 4 }).last == 200)

        // The tunnel opened before both reloads still carries bytes.
        try await tunnel.send("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(await tunnel.waitFor { $0.hasSuffix("hello\n") }.hasSuffix("hello\n"))
        await client.close()
        await tunnel.close()
    }

    @Test("a change to the htpasswd file is picked up without a signal; a broken one is not")
    func reloadOnFileChange() async throws {
        let origin = try await TestOrigin.start()
        defer { Task { await origin.stop() } }
        let path = try Self.makeHtpasswd(["u1": "one"])
        defer { try? FileManager.default.removeItem(atPath: path) }
        let proxy = try await GatehouseProcess.start(
            ["--listen", "127.0.0.1:0", "--htpasswd", path, "--access-log", "off"],
            environment: ["GATEHOUSE_HTPASSWD_POLL_INTERVAL": "100ms"])
        defer { Task { await proxy.stop() } }
        let proxyURL = "http://u3:three@127.0.0.1:\(proxy.port)"
        #expect(try await Curl.run(["-o", "/dev/null", "-w", "%{http_code}", "-x", proxyURL, "http://127.0.0.1:\(origin.port)/hello"]).body == "407")
        try HtpasswdEditor.setUser("u3", hash: try #require(PasswordHash.makeBcrypt(password: "three", cost: 4)), path: path)
        #expect(await proxy.waitForLog("htpasswd file changed: users reloaded"))
        #expect(try await Curl.run(["-o", "/dev/null", "-w", "%{http_code}", "-x", proxyURL, "http://127.0.0.1:\(origin.port)/hello"]).body == "200")
        // A broken version (through a rename, as editors write) is rejected; u3 keeps working.
        let broken = path + ".new"
        try "u3 has no colon\n".write(toFile: broken, atomically: false, encoding: .utf8)
        rename(broken, path)
        #expect(await proxy.waitForLog("htpasswd change rejected"))
        #expect(try await Curl.run(["-o", "/dev/null", "-w", "%{http_code}", "-x", proxyURL, "http://127.0.0.1:\(origin.port)/hello"]).body == "200")
        // The last user deleted: applied, everyone refused (it was rejected as "no usable
        // users", and the deleted user kept logging in).
        try "u3:\(try #require(PasswordHash.makeBcrypt(password: "three", cost: 4)).fieldValue)\n".write(toFile: path, atomically: true, encoding: .utf8)
        let deleted = try await CommandLineTests.run(["passwd", path, "u3", "--delete"])
        #expect(deleted.status == 0)
        #expect(deleted.stderr.contains("has no users left; a running Gatehouse now refuses every request (407)"), "\(deleted.stderr)")
        #expect(await proxy.waitForLog("no usable users left: every request is refused (407) until a user is added"))
        #expect(try await Curl.run(["-o", "/dev/null", "-w", "%{http_code}", "-x", proxyURL, "http://127.0.0.1:\(origin.port)/hello"]).body == "407")
    }

    @Test("a Kubernetes-style symlink swap of the htpasswd file is seen without a signal")
    func symlinkSwap() async throws {
        let origin = try await TestOrigin.start()
        defer { Task { await origin.stop() } }
        let directory = Self.temporaryPath("secret")
        try FileManager.default.createDirectory(atPath: directory + "/v1", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: directory + "/v2", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try HtpasswdEditor.setUser("old", hash: try #require(PasswordHash.makeBcrypt(password: "pw", cost: 4)), path: directory + "/v1/htpasswd")
        try HtpasswdEditor.setUser("new", hash: try #require(PasswordHash.makeBcrypt(password: "pw", cost: 4)), path: directory + "/v2/htpasswd")
        // Like a mounted Secret: htpasswd -> ..data/htpasswd, ..data -> v1; an update swaps ..data.
        symlink("v1", directory + "/..data")
        symlink("..data/htpasswd", directory + "/htpasswd")
        let proxy = try await GatehouseProcess.start(
            ["--listen", "127.0.0.1:0", "--htpasswd", directory + "/htpasswd", "--access-log", "off"],
            environment: ["GATEHOUSE_HTPASSWD_POLL_INTERVAL": "100ms"])
        defer { Task { await proxy.stop() } }
        func status(_ user: String) async throws -> String {
            try await Curl.run(["-o", "/dev/null", "-w", "%{http_code}", "-x", "http://\(user):pw@127.0.0.1:\(proxy.port)", "http://127.0.0.1:\(origin.port)/hello"]).body
        }
        #expect(try await status("old") == "200")
        symlink("v2", directory + "/..data_tmp")
        rename(directory + "/..data_tmp", directory + "/..data")
        #expect(await proxy.waitForLog("htpasswd file changed: users reloaded"))
        #expect(try await status("new") == "200")
        #expect(try await status("old") == "407")
    }

    @Test("settings that cannot change live are reported on reload; the running value stays")
    func restartOnlySettings() async throws {
        let htpasswd = try Self.makeHtpasswd(["u": "p"])
        let config = Self.temporaryPath("gatehouse.yaml")
        try "htpasswd: \(htpasswd)\nlisten: [127.0.0.1:0]\nrealm: Before\naccess_log: \"off\"\n".write(toFile: config, atomically: true, encoding: .utf8)
        let proxy = try await GatehouseProcess.start(["--config", config])
        defer { Task { await proxy.stop() } }
        try "htpasswd: \(htpasswd)\nlisten: [127.0.0.1:1]\nrealm: After\naccess_log: \"off\"\n".write(toFile: config, atomically: true, encoding: .utf8)
        proxy.signal(SIGHUP)
        #expect(await proxy.waitForLog("listen changed, but only takes effect after a restart"))
        // The realm changes live, for new connections.
        let client = try await RawClient.connect(port: proxy.port)
        try await client.send("GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(await client.waitFor { $0.hasSuffix(".\n") }.contains("realm=\"After\""))
        await client.close()
    }

    @Test("SIGUSR1 reopens the access log after logrotate moved it")
    func reopenLog() async throws {
        let origin = try await TestOrigin.start()
        defer { Task { await origin.stop() } }
        let log = Self.temporaryPath("access.log")
        let proxy = try await GatehouseProcess.start(["--listen", "127.0.0.1:0", "--user", "u:p", "--access-log", log])
        defer { Task { await proxy.stop() } }
        _ = try await Curl.run(["-x", "http://u:p@127.0.0.1:\(proxy.port)", "http://127.0.0.1:\(origin.port)/hello"])
        try await Task.sleep(for: .milliseconds(200))
        rename(log, log + ".1")
        proxy.signal(SIGUSR1)
        #expect(await proxy.waitForLog("reopening the access log"))
        try await Task.sleep(for: .milliseconds(200))
        _ = try await Curl.run(["-x", "http://127.0.0.1:\(proxy.port)", "http://127.0.0.1:\(origin.port)/hello"])
        try await Task.sleep(for: .milliseconds(300))
        #expect(try String(contentsOfFile: log + ".1", encoding: .utf8).split(separator: "\n").count == 1)
        let fresh = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n")
        #expect(fresh.count == 1)
        #expect(fresh.first?.contains("TCP_DENIED/407") == true)
    }

    @Test("SIGTERM: the download in flight completes, new connections are refused, exit 0")
    func drainOnTerm() async throws {
        let origin = try await TestOrigin.start()
        defer { Task { await origin.stop() } }
        let proxy = try await GatehouseProcess.start(["--listen", "127.0.0.1:0", "--user", "u:p", "--access-log", "off"])
        defer { Task { await proxy.stop() } }
        let size = 30 * 1024 * 1024
        async let download = Curl.run([
            "--limit-rate", "15M", "-x", "http://u:p@127.0.0.1:\(proxy.port)", "http://127.0.0.1:\(origin.port)/bytes/\(size)",
        ])
        try await Task.sleep(for: .milliseconds(500))
        proxy.signal(SIGTERM)
        #expect(await proxy.waitForLog("shutting down: draining connections"))
        // No new connections while draining: none of the process's per-loop listeners is left.
        // (Asked of the kernel rather than by connecting: the freed port may be taken at once
        // by a server of a test running alongside, which answered such a probe with its 407.)
        var listening = try Self.listeners(port: proxy.port, pid: proxy.pid)
        for _ in 0..<100 where listening > 0 {
            try await Task.sleep(for: .milliseconds(20))
            listening = try Self.listeners(port: proxy.port, pid: proxy.pid)
        }
        #expect(listening == 0, "no new connections while draining")
        let result = try await download
        #expect(result.exitCode == 0, "\(result.stderr)")
        #expect(result.stdout.count == size)
        #expect(TestData.sha256([UInt8](result.stdout)) == TestData.sha256(TestData.bytes(count: size)))
        #expect(await proxy.waitForExit() == 0)
    }

    @Test("SIGTERM with pipelined requests held for a client that reads later: every answer logged reaches it, then a clean close (a reset lost them)")
    func drainWithHeldRequests() async throws {
        let origin = try await TestOrigin.start()
        defer { Task { await origin.stop() } }
        let log = Self.temporaryPath("drain-access.log")
        defer { try? FileManager.default.removeItem(atPath: log) }
        let proxy = try await GatehouseProcess.start(["--listen", "127.0.0.1:0", "--user", "u:p", "--access-log", log, "--drain-timeout", "10s"])
        defer { Task { await proxy.stop() } }
        let request = "GET http://127.0.0.1:\(origin.port)/bytes/1024 HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic dTpw\r\n\r\n"
        let client = try await RawClient.connect(port: proxy.port, reading: false)
        client.queue(bytes: Array(String(repeating: request, count: 20_000).utf8))
        try await Task.sleep(for: .seconds(1))
        proxy.signal(SIGTERM)
        try await Task.sleep(for: .seconds(1))
        try await client.startReading()
        #expect(await client.waitForClose(timeout: .seconds(20)))
        #expect(await proxy.waitForExit() == 0)
        let forwarded = try String(contentsOfFile: log, encoding: .utf8).components(separatedBy: "reason=forwarded").count - 1
        let received = client.text.components(separatedBy: "HTTP/1.1 200 OK\r\n").count - 1
        #expect(forwarded > 0 && received == forwarded, "\(received) answers received, \(forwarded) logged")
        await client.close()
    }

    @Test("SIGTERM with an answer still on its way to a client that then sends one more request: the answer arrives whole (a reset cut it)")
    func drainWithLateRequest() async throws {
        let origin = try await TestOrigin.start()
        defer { Task { await origin.stop() } }
        let proxy = try await GatehouseProcess.start(["--listen", "127.0.0.1:0", "--user", "u:p", "--access-log", "off", "--drain-timeout", "10s"])
        defer { Task { await proxy.stop() } }
        let size = 3_000_000
        let request = "GET http://127.0.0.1:\(origin.port)/bytes/\(size) HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic dTpw\r\n\r\n"
        let client = try await RawClient.connect(port: proxy.port, reading: false, sending: request)
        try await Task.sleep(for: .milliseconds(500))
        proxy.signal(SIGTERM)
        try await Task.sleep(for: .milliseconds(300))
        // Like apt topping up its pipeline: the socket it meets must still read (and drop) it.
        client.queue(bytes: Array(request.utf8))
        try await Task.sleep(for: .milliseconds(200))
        try await client.startReading()
        #expect(await client.waitForClose(timeout: .seconds(20)))
        #expect((client.bodyByteCount ?? 0) >= size, "\(client.bodyByteCount ?? 0) of \(size) bytes")
        await client.close()
    }

    @Test("answers written during a drain say Connection: close themselves, and the log counts every byte the client got (NIO's pipeline handler added 19 bytes unseen)")
    func drainByteCounts() async throws {
        let answering = try await RawOrigin.start(.respondOnRelease("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
        defer { Task { await answering.stop() } }
        let closing = try await RawOrigin.start(.respondOnRelease(""))
        defer { Task { await closing.stop() } }
        let log = Self.temporaryPath("drain-bytes.log")
        defer { try? FileManager.default.removeItem(atPath: log) }
        let proxy = try await GatehouseProcess.start([
            "--listen", "127.0.0.1:0", "--user", "u:p", "--access-log", log, "--log-format", "json", "--drain-timeout", "10s",
        ])
        defer { Task { await proxy.stop() } }
        // A forwarded answer and one of Gatehouse's own (a 502: the origin closes without
        // answering), both written once the drain has begun.
        let forwarded = try await RawClient.connect(
            port: proxy.port,
            sending: "GET http://127.0.0.1:\(answering.port)/ HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic dTpw\r\n\r\n")
        let refused = try await RawClient.connect(
            port: proxy.port,
            sending: "GET http://127.0.0.1:\(closing.port)/ HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic dTpw\r\n\r\n")
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(10)
        while answering.waitingCount + closing.waitingCount < 2, clock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        proxy.signal(SIGTERM)
        #expect(await proxy.waitForLog("shutting down: draining connections"))
        // The drain reaches each connection on its event loop after that line (with a margin
        // for a loaded machine).
        try await Task.sleep(for: .milliseconds(1_500))
        answering.release()
        closing.release()
        #expect(await forwarded.waitForClose(timeout: .seconds(10)))
        #expect(await refused.waitForClose(timeout: .seconds(10)))
        #expect(await proxy.waitForExit() == 0)
        let lines = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n")
        func bytesOut(status: Int) -> Int? {
            guard let line = lines.first(where: { $0.contains("\"status\":\(status),") }),
                let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            else { return nil }
            return object["bytes_out"] as? Int
        }
        #expect(forwarded.text.hasPrefix("HTTP/1.1 200 OK\r\n"), "\(forwarded.text)")
        #expect(forwarded.text.contains("\r\nConnection: close\r\n"))
        #expect(!forwarded.text.contains("connection: close"))
        #expect(bytesOut(status: 200) == forwarded.byteCount, "\(lines)")
        #expect(refused.text.hasPrefix("HTTP/1.1 502 "), "\(refused.text)")
        #expect(refused.text.contains("\r\nConnection: close\r\n"))
        #expect(!refused.text.contains("connection: close"))
        #expect(bytesOut(status: 502) == refused.byteCount, "\(lines)")
        await forwarded.close()
        await refused.close()
    }

    @Test("a second SIGTERM exits at once, without waiting for an open tunnel, and logs the tunnel")
    func secondTerm() async throws {
        let origin = try await TestOrigin.start()
        defer { Task { await origin.stop() } }
        let log = Self.temporaryPath("second-term.log")
        defer { try? FileManager.default.removeItem(atPath: log) }
        let proxy = try await GatehouseProcess.start([
            "--listen", "127.0.0.1:0", "--user", "u:p", "--access-log", log, "--connect-ports", "\(origin.port)", "--drain-timeout", "60s",
        ])
        defer { Task { await proxy.stop() } }
        let tunnel = try await RawClient.connect(port: proxy.port)
        try await tunnel.send("CONNECT 127.0.0.1:\(origin.port) HTTP/1.1\r\nProxy-Authorization: \(Self.basic("u", "p"))\r\n\r\n")
        _ = await tunnel.waitFor { $0.hasSuffix("\r\n\r\n") }
        // A request whose origin answers only after 10 s.
        let waiting = try await RawClient.connect(port: proxy.port)
        try await waiting.send("GET http://127.0.0.1:\(origin.port)/slow?ms=10000 HTTP/1.1\r\nHost: x\r\nProxy-Authorization: \(Self.basic("u", "p"))\r\n\r\n")
        try await Task.sleep(for: .milliseconds(200))
        proxy.signal(SIGTERM)
        #expect(await proxy.waitForLog("shutting down"))
        #expect(await proxy.waitForExit(timeout: .milliseconds(700)) == nil, "the first SIGTERM waits for the tunnel")
        proxy.signal(SIGTERM)
        // Status 1: the drain was cut short (it was 0 when the closed connections let the
        // drain finish before the signal's handler reached its exit).
        #expect(await proxy.waitForExit(timeout: .seconds(3)) == 1)
        await tunnel.close()
        await waiting.close()
        // Every exchange gets its line, the tunnel's too (it was lost before); the request the
        // proxy cut off says so (it was logged as the client closing).
        let lines = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").sorted()
        #expect(lines.count == 2, "\(lines)")
        #expect(lines.contains { $0.contains(" CONNECT ") && $0.hasSuffix("reason=shutdown") }, "the tunnel's line says the proxy closed it: \(lines)")
        #expect(lines.contains { $0.contains(" TCP_MISS/0 ") && $0.hasSuffix("reason=shutdown") }, "\(lines)")
    }

    @Test("sd_notify: READY=1 after binding, RELOADING=1 and READY=1 around a reload, STOPPING=1, watchdog pings")
    func systemdNotify() async throws {
        let notify = try NotifySocket()
        let config = FileManager.default.temporaryDirectory.appendingPathComponent("gh-\(UUID().uuidString).yaml").path
        try "users: [\"u:p\"]\n".write(toFile: config, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: config) }
        let proxy = try await GatehouseProcess.start(
            ["--listen", "127.0.0.1:0", "--config", config, "--access-log", "off"],
            environment: ["NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "200000"])
        defer { Task { await proxy.stop() } }
        let ready = await notify.collect { $0.contains { $0.hasPrefix("READY=1") } }
        #expect(ready.first?.hasPrefix("READY=1") == true, "\(ready)")
        let pings = await notify.collect { $0.filter { $0 == "WATCHDOG=1" }.count >= 2 }
        #expect(pings.filter { $0 == "WATCHDOG=1" }.count >= 2)
        proxy.signal(SIGHUP)
        let reload = await notify.collect { $0.contains { $0.hasPrefix("READY=1") } }
        let reloading = try #require(reload.firstIndex { $0.hasPrefix("RELOADING=1\nMONOTONIC_USEC=") }, "\(reload)")
        #expect(reload[(reloading + 1)...].contains("READY=1\nSTATUS=Reloaded; serving"), "\(reload)")
        // systemd cannot hear that a reload failed: the status line says so.
        try "users: [unclosed\n".write(toFile: config, atomically: true, encoding: .utf8)
        proxy.signal(SIGHUP)
        let rejected = await notify.collect { $0.contains { $0.hasPrefix("READY=1") } }
        #expect(rejected.contains("READY=1\nSTATUS=Reload rejected (see the log); the previous settings and users stay in force"), "\(rejected)")
        proxy.signal(SIGTERM)
        let stopping = await notify.collect { $0.contains { $0.hasPrefix("STOPPING=1") } }
        #expect(stopping.contains { $0.hasPrefix("STOPPING=1") })
        #expect(await proxy.waitForExit() == 0)
    }

    @Test("socket activation: an inherited listening socket (LISTEN_FDS/LISTEN_PID) is used instead of --listen")
    func socketActivation() async throws {
        let origin = try await TestOrigin.start()
        defer { Task { await origin.stop() } }
        // Like systemd: bind, put the socket on fd 3, set LISTEN_PID to the pid that exec keeps.
        let launcher = """
            import os, socket, sys
            s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(16)
            print("activated on", s.getsockname()[1], file=sys.stderr, flush=True)
            os.dup2(s.fileno(), 3); os.set_inheritable(3, True)
            os.environ["LISTEN_FDS"] = "1"; os.environ["LISTEN_PID"] = str(os.getpid())
            os.execv(sys.argv[1], sys.argv[1:])
            """
        let proxy = try await GatehouseProcess.start(
            ["--listen", "127.0.0.1:1", "--user", "u:p", "--access-log", "off"], launcher: ["/usr/bin/env", "python3", "-c", launcher])
        defer { Task { await proxy.stop() } }
        let announced = proxy.stderr.split(separator: "\n").first { $0.hasPrefix("activated on ") }.map { String($0.dropFirst(13)) }
        #expect(proxy.addresses.first == "127.0.0.1:\(announced ?? "?")", "\(proxy.addresses) \(proxy.stderr)")
        #expect(proxy.stderr.contains("socket activation"))
        let result = try await Curl.run(["-x", "http://u:p@127.0.0.1:\(proxy.port)", "http://127.0.0.1:\(origin.port)/hello"])
        #expect(result.body == "hello\n")
        // The socket keeps the backlog it was given (NIO listens again with 128 on a socket it
        // is handed; the unit's Backlog= would be lost). ss shows it as Send-Q of a listener.
        #expect(try Self.listenBacklog(port: proxy.port) == 16)
    }

    /// The TCP sockets listening on `port`, one line each, as `ss -Hltnp` prints them
    /// (`LISTEN Recv-Q Send-Q local peer users:((…,pid=N,…))`).
    static func listeningSockets(port: Int) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["ss", "-Hltnp", "sport = :\(port)"]
        let out = Pipe()
        process.standardOutput = out
        try process.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return text
    }

    /// How many sockets process `pid` listens with on `port`.
    static func listeners(port: Int, pid: Int32) throws -> Int {
        try Self.listeningSockets(port: port).components(separatedBy: "pid=\(pid),").count - 1
    }

    /// The backlog of the socket listening on `port` (a listener's Send-Q).
    static func listenBacklog(port: Int) throws -> Int? {
        let fields = try Self.listeningSockets(port: port).split(whereSeparator: { $0 == " " || $0 == "\n" })
        return fields.count >= 3 ? Int(fields[2]) : nil
    }

    @Test("a second Gatehouse on a port the first listens on is refused (its listeners share a port with SO_REUSEPORT, which would let it join silently)")
    func portTaken() async throws {
        let first = try await GatehouseProcess.start(["--listen", "127.0.0.1:0", "--user", "u:p", "--access-log", "off"])
        defer { Task { await first.stop() } }
        #expect(try Self.listenBacklog(port: first.port) == 1024)
        // With stdin closed at once, a second instance that did start exits again (no hang).
        let second = try await CommandLineTests.run(
            ["--listen", "127.0.0.1:\(first.port)", "--user", "u:p", "--access-log", "off", "--exit-on-stdin-eof"], input: "")
        #expect(second.status == 1)
        #expect(second.stderr.contains("gatehouse: error: cannot listen on 127.0.0.1:\(first.port): address already in use"), "\(second.stderr)")
    }

    @Test("/metrics after known traffic, /healthz and /readyz on the admin listener")
    func metrics() async throws {
        let origin = try await TestOrigin.start()
        defer { Task { await origin.stop() } }
        let proxy = try await GatehouseProcess.start(["--listen", "127.0.0.1:0", "--user", "u:p", "--access-log", "off", "--admin-listen", "127.0.0.1:0"])
        defer { Task { await proxy.stop() } }
        let admin = try #require(await Self.adminAddress(of: proxy))
        let base = "http://127.0.0.1:\(origin.port)"
        _ = try await Curl.run(["-x", "http://u:p@127.0.0.1:\(proxy.port)", "\(base)/hello"])
        _ = try await Curl.run(["-x", "http://u:p@127.0.0.1:\(proxy.port)", "\(base)/hello"])
        _ = try await Curl.run(["-x", "http://127.0.0.1:\(proxy.port)", "\(base)/hello"])
        _ = try await Curl.run(["-x", "http://u:wrong@127.0.0.1:\(proxy.port)", "\(base)/hello"])
        let metrics = try await Curl.run(["http://\(admin)/metrics"]).body
        #expect(metrics.contains("gatehouse_responses_total{status=\"200\",reason=\"forwarded\"} 2"), "\(metrics)")
        #expect(metrics.contains("gatehouse_responses_total{status=\"407\",reason=\"auth_missing\"} 1"))
        #expect(metrics.contains("gatehouse_responses_total{status=\"407\",reason=\"auth_invalid\"} 1"))
        // Gatehouse's own answers are counted from zero, so a rate() over them never starts missing.
        #expect(metrics.contains("gatehouse_responses_total{status=\"403\",reason=\"connect_port_denied\"} 0"))
        #expect(metrics.contains("gatehouse_auth_total{result=\"success\"} 2"))
        #expect(metrics.contains("gatehouse_auth_total{result=\"failure\"} 2"))
        // One per origin connection: 1 or 2, as the two clients land on one event loop (and
        // its pool) or on two.
        #expect(metrics.contains("gatehouse_upstream_connect_seconds_count \(origin.connections)"), "\(origin.connections)")
        #expect(metrics.contains("gatehouse_bytes_total{direction=\"to_client\"}"))
        #expect(metrics.contains("gatehouse_active_connections"))
        #expect(metrics.contains("gatehouse_active_tunnels"))
        #expect(metrics.contains("gatehouse_credential_cache_hits_total"))
        #expect(try await Curl.run(["-w", "%{http_code}", "-o", "/dev/null", "http://\(admin)/healthz"]).body == "200")
        #expect(try await Curl.run(["http://\(admin)/readyz"]).body == "ready\n")
        #expect(try await Curl.run(["-w", "%{http_code}", "-o", "/dev/null", "http://127.0.0.1:\(proxy.port)/metrics"]).body == "400",
                "the proxy port does not serve metrics")
        let post = try await Curl.run(["-s", "-D", "-", "-o", "/dev/null", "-X", "POST", "http://\(admin)/metrics"]).body
        #expect(post.hasPrefix("HTTP/1.1 405 Method Not Allowed\r\n") && post.contains("Allow: GET, HEAD\r\n") && post.contains("Date: "), "\(post)")

        // Connections are capped: idle ones used up the process's file descriptors, and the
        // proxy port stopped accepting.
        let adminPort = try #require(Int(admin.split(separator: ":").last ?? ""))
        var idle: [RawClient] = []
        for _ in 0..<64 { idle.append(try await RawClient.connect(port: adminPort)) }  // AdminServer.maximumConnections
        try await Task.sleep(for: .milliseconds(300))
        let over = try await RawClient.connect(port: adminPort)
        #expect(await over.waitForClose(), "the connection over the cap is closed at once")
        #expect(idle.allSatisfy { !$0.isClosed })
        for client in idle { await client.close() }
        try await Task.sleep(for: .milliseconds(300))
        #expect(try await Curl.run(["http://\(admin)/healthz"]).body == "ok\n", "slots are freed when connections close")
    }

    @Test(
        "out of file descriptors: accepting backs off instead of spinning, says so on stderr, and recovers (it spun two cores, silently)",
        .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/prlimit")))
    func outOfDescriptors() async throws {
        let proxy = try await GatehouseProcess.start(
            ["--listen", "127.0.0.1:0", "--user", "u:p", "--access-log", "off"], launcher: ["/usr/bin/prlimit", "--nofile=64:64"])
        defer { Task { await proxy.stop() } }
        #expect(await proxy.waitForLog("the open-file limit (64) is below what max_connections 16384 can need"))
        var clients: [RawClient] = []
        for _ in 0..<70 { clients.append(try await RawClient.connect(port: proxy.port)) }
        #expect(await proxy.waitForLog("out of file descriptors: accepting a connection failed"))
        func cpuTicks() -> Int {
            let stat = (try? String(contentsOfFile: "/proc/\(proxy.pid)/stat", encoding: .utf8)) ?? ""
            let fields = stat.split(separator: ")").last?.split(separator: " ") ?? []
            // After the command: state is field 3, utime 14, stime 15 (1-based, from the pid).
            guard fields.count > 13, let user = Int(fields[11]), let system = Int(fields[12]) else { return -1 }
            return user + system
        }
        let before = cpuTicks()
        try await Task.sleep(for: .seconds(1))
        let used = cpuTicks() - before
        #expect(before >= 0 && used < 30, "\(used) ticks of CPU in a second with connections waiting in the backlog")
        for client in clients { await client.close() }
        // The backlog drains once descriptors are free: a new client is answered.
        let late = try await RawClient.connect(port: proxy.port, sending: "GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\n\r\n")
        let text = await late.waitFor(timeout: .seconds(10)) { statusCodes(in: $0).count == 1 }
        #expect(statusCodes(in: text) == [407], "\(text.prefix(200))")
        await late.close()
    }

    @Test("the admin listener answers deep pipelines in order and stops for a client that does not read (it grew by gigabytes)")
    func adminPipelining() async throws {
        let proxy = try await GatehouseProcess.start(["--listen", "127.0.0.1:0", "--user", "u:p", "--access-log", "off", "--admin-listen", "127.0.0.1:0"])
        defer { Task { await proxy.stop() } }
        let admin = try #require(await Self.adminAddress(of: proxy))
        let port = try #require(Int(admin.split(separator: ":").last ?? ""))
        func rssKiB() -> Int { proxy.residentKiB }
        // Behind a /metrics that answers later, 20,000 /healthz: each answered, the process alive.
        let count = 20_000
        let reader = try await RawClient.connect(
            port: port, sending: "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" + String(repeating: "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", count: count))
        let deadline = ContinuousClock.now + .seconds(30)
        var answered = 0
        while answered < count + 1 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(200))
            answered = reader.text.components(separatedBy: "HTTP/1.1 200 OK\r\n").count - 1
        }
        #expect(answered == count + 1)
        #expect(kill(proxy.pid, 0) == 0, "the proxy is still running")
        await reader.close()
        // A request and a half-close at once (`printf … | nc -N`): answered, then closed (it
        // got nothing); HTTP/1.0 and `Connection: close` close after the answer (they stayed
        // open for the idle timeout, holding one of the 64 places).
        for request in ["GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "GET /healthz HTTP/1.0\r\n\r\n",
                        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"] {
            let client = try await RawClient.connect(port: port, sending: request)
            if request.contains("HTTP/1.1\r\nHost: x\r\n\r\n") { try await client.closeOutput() }
            #expect(await client.waitForClose(timeout: .seconds(5)), "\(request)")
            #expect(client.text.contains(" 200 OK\r\n") && client.text.hasSuffix("ok\n"), "\(client.text)")
            await client.close()
        }
        // A client that sends 200,000 and reads nothing: the process grows by little.
        let before = rssKiB()
        let stalled = try await RawClient.connect(port: port, reading: false)
        stalled.queue(bytes: Array(String(repeating: "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", count: 200_000).utf8))
        try await Task.sleep(for: .seconds(2))
        let grown = rssKiB() - before
        #expect(grown < 50_000, "RSS grew by \(grown) KiB")
        await stalled.close()
    }

    @Test("clients that pipeline without credentials and read nothing cost the proxy little memory (12.7 MB for ten before: up to 16 reads of requests parsed ahead; 2.2 MB now)")
    func pipeliningNonReadersMemory() async throws {
        let proxy = try await GatehouseProcess.start(["--listen", "127.0.0.1:0", "--user", "u:p", "--access-log", "off"])
        defer { Task { await proxy.stop() } }
        func rssKiB() -> Int { proxy.residentKiB }
        let before = rssKiB()
        let requests = Array(String(repeating: "GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n", count: 40_000).utf8)
        var clients: [RawClient] = []
        for _ in 0..<10 {
            let client = try await RawClient.connect(port: proxy.port, reading: false)
            client.queue(bytes: requests)
            clients.append(client)
        }
        try await Task.sleep(for: .seconds(3))
        let grown = rssKiB() - before
        #expect(grown < 8_000, "RSS grew by \(grown) KiB for 10 clients")
        for client in clients { await client.close() }
    }

    @Test("uploads to an origin that reads nothing cost the proxy little memory (four reads per wake-up while a body streams; NIO's sixteen doubled it)")
    func stalledUploadsMemory() async throws {
        let origin = try await RawOrigin.start(.readNothing)
        defer { Task { await origin.stop() } }
        let proxy = try await GatehouseProcess.start(["--listen", "127.0.0.1:0", "--user", "u:p", "--access-log", "off"])
        defer { Task { await proxy.stop() } }
        func rssKiB() -> Int { proxy.residentKiB }
        let before = rssKiB()
        let head = "PUT http://127.0.0.1:\(origin.port)/up HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic dTpw\r\nContent-Length: 1000000000\r\n\r\n"
        let body = [UInt8](repeating: UInt8(ascii: "u"), count: 4 << 20)
        var clients: [RawClient] = []
        // Ten: each moves megabytes through a debug build, CPU that timing tests running
        // alongside would miss.
        for _ in 0..<10 {
            let client = try await RawClient.connect(port: proxy.port, reading: false)
            // Head and body apart: concatenating 4 MiB arrays in a debug build took seconds of
            // CPU, which starved timing tests running alongside.
            client.queue(bytes: Array(head.utf8))
            client.queue(bytes: body)
            clients.append(client)
        }
        try await Task.sleep(for: .seconds(3))
        let grown = rssKiB() - before
        // Measured: about 3.5 MB; with sixteen reads per wake-up, about 7.5 MB.
        #expect(grown < 5_500, "RSS grew by \(grown) KiB for 10 stalled uploads")
        for client in clients { await client.close() }
    }

    @Test("under journald, stderr lines carry syslog priorities and no timestamp")
    func journaldFormat() async throws {
        let proxy = try await GatehouseProcess.start(["--listen", "127.0.0.1:0", "--user", "u:p", "--access-log", "off"], environment: ["JOURNAL_STREAM": "8:12345"])
        defer { Task { await proxy.stop() } }
        #expect(await proxy.waitForLog("<6>listening address=127.0.0.1:"), "\(proxy.stderr)")
    }

    @Test("gatehouse check: file:line for every problem, exit 1; ok and exit 0 for a good config")
    func check() async throws {
        let htpasswd = try Self.makeHtpasswd(["u": "p"])
        let good = Self.temporaryPath("good.yaml")
        let bad = Self.temporaryPath("bad.yaml")
        try "htpasswd: \(htpasswd)\nlisten:\n  - 127.0.0.1:3128\nconnect_ports: \"443,8443\"\n".write(toFile: good, atomically: true, encoding: .utf8)
        try "htpasswd: \(htpasswd)\nconect_ports: 443\nidle_timeout: 60\nlisten: [nonsense]\n".write(toFile: bad, atomically: true, encoding: .utf8)
        let ok = try await CommandLineTests.run(["check", "--config", good])
        #expect(ok.status == 0, "\(ok.stdout)")
        #expect(ok.stdout.hasPrefix("ok: 1 user, listening on 127.0.0.1:3128"))
        let failed = try await CommandLineTests.run(["check", "--config", bad])
        #expect(failed.status == 1)
        #expect(failed.stdout.contains("\(bad):2: unknown key \"conect_ports\"; did you mean \"connect_ports\"?"), "\(failed.stdout)")
        #expect(failed.stdout.contains("\(bad):3: invalid duration \"60\""))
        #expect(failed.stdout.contains("\(bad):4: invalid listen address \"nonsense\""))
        // Precedence: a flag beats the environment, which beats the file.
        let overridden = try await CommandLineTests.run(["check", "--config", good, "--listen", "127.0.0.1:9999"])
        #expect(overridden.stdout.contains("listening on 127.0.0.1:9999"))
        let brokenUsers = try Self.makeHtpasswd(["u": "p"])
        try String(contentsOfFile: brokenUsers, encoding: .utf8).appending("no-colon-here\n").write(toFile: brokenUsers, atomically: true, encoding: .utf8)
        let badUsers = try await CommandLineTests.run(["check", "--htpasswd", brokenUsers])
        #expect(badUsers.status == 1)
        #expect(badUsers.stdout.contains("\(brokenUsers):2: "))
        // No usable user left: each line's own problem is printed, then why that is fatal.
        let unusable = Self.temporaryPath("unusable")
        defer { try? FileManager.default.removeItem(atPath: unusable) }
        try Data(Array("bad:$2y$10$short\nsha:{SHA}notbase64!!\nb".utf8) + [0xFF] + Array("d:{SHA}x\n".utf8))
            .write(to: URL(fileURLWithPath: unusable))
        let none = try await CommandLineTests.run(["check", "--htpasswd", unusable])
        #expect(none.status == 1)
        for line in 1...3 { #expect(none.stdout.contains("\(unusable):\(line): "), "\(none.stdout)") }
        #expect(none.stdout.contains("no usable users"))
        // A name with a space (Apache's htpasswd writes one) and one with a control character:
        // the first is a user, the second a warning; the file stays usable.
        let spaced = Self.temporaryPath("spaced")
        defer { try? FileManager.default.removeItem(atPath: spaced) }
        try String(contentsOfFile: htpasswd, encoding: .utf8).replacingOccurrences(of: "u:", with: "sp ace:")
            .appending("t\u{1}b:{SHA}F/WZ9PxtuIpP2yyadrWdU4eK0og=\n").write(toFile: spaced, atomically: true, encoding: .utf8)
        let usable = try await CommandLineTests.run(["check", "--htpasswd", spaced])
        #expect(usable.status == 0, "\(usable.stdout)")
        #expect(usable.stdout.contains("\(spaced):2: warning: user name contains control characters; this user cannot log in"), "\(usable.stdout)")
        #expect(usable.stdout.contains("ok: 1 user"))
        // A fatal line does not hide the others' warnings.
        try String(contentsOfFile: spaced, encoding: .utf8).appending("nocolon\n").write(toFile: spaced, atomically: true, encoding: .utf8)
        let mixed = try await CommandLineTests.run(["check", "--htpasswd", spaced])
        #expect(mixed.status == 1)
        #expect(mixed.stdout.contains("\(spaced):2: warning: ") && mixed.stdout.contains("\(spaced):3: "), "\(mixed.stdout)")
        // serve refuses the same file, saying the same on stderr.
        let serve = try await CommandLineTests.run(["serve", "--htpasswd", spaced, "--listen", "127.0.0.1:0"])
        #expect(serve.status != 0)
        #expect(serve.stderr.contains("\(spaced):2: warning: user name contains control characters"), "\(serve.stderr)")
        #expect(serve.stderr.contains("\(spaced):3: "), "\(serve.stderr)")
        // A user both in the file and inline would silently log in with the inline password only.
        let both = try await CommandLineTests.run(["check", "--htpasswd", htpasswd, "--user", "u:other"])
        #expect(both.status == 1)
        #expect(both.stdout.contains("user \"u\" is both in this file and given with --user"), "\(both.stdout)")
        #expect(!both.stdout.contains("other"))
    }

    @Test("gatehouse passwd: add, update, verify, delete; Apache's htpasswd reads the result")
    func passwd() async throws {
        let path = Self.temporaryPath("users")
        defer { try? FileManager.default.removeItem(atPath: path) }
        func run(_ arguments: [String], input: String) async throws -> (Int32, String) {
            let result = try await CommandLineTests.run(["passwd"] + arguments, input: input)
            return (result.status, result.stdout)
        }
        #expect(try await run(["--stdin", "--cost", "5", path, "alice"], input: "first\n") == (0, "Adding password for user alice\n"))
        chmod(path, 0o644)
        #expect(try await run(["--stdin", "--cost", "5", path, "alice"], input: "second\n") == (0, "Updating password for user alice\n"))
        var info = stat()
        stat(path, &info)
        #expect(info.st_mode & 0o777 == 0o644, "the rewrite keeps the file's mode")
        #expect(try await run(["--stdin", "--verify", path, "alice"], input: "second\n").0 == 0)
        #expect(try await run(["--stdin", "--verify", path, "alice"], input: "first\n").0 == 3)
        let line = try String(contentsOfFile: path, encoding: .utf8)
        #expect(line.hasPrefix("alice:$2y$05$"))
        if FileManager.default.isExecutableFile(atPath: "/usr/bin/htpasswd") {
            let apache = Process()
            apache.executableURL = URL(fileURLWithPath: "/usr/bin/htpasswd")
            apache.arguments = ["-vb", path, "alice", "second"]
            apache.standardOutput = FileHandle.nullDevice
            apache.standardError = FileHandle.nullDevice
            try apache.run()
            apache.waitUntilExit()
            #expect(apache.terminationStatus == 0, "Apache's htpasswd accepts our bcrypt line")
        }
        #expect(try await run(["--delete", path, "alice"], input: "").0 == 0)
        #expect(try await run(["--delete", path, "alice"], input: "").0 == 1)
        #expect(try String(contentsOfFile: path, encoding: .utf8).isEmpty)
    }

    @Test("ten gatehouse passwd at once on one file: every user is in it (the last rename won: five of ten were lost)")
    func concurrentPasswd() async throws {
        let path = Self.temporaryPath("concurrent")
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(try await CommandLineTests.run(["passwd", "--stdin", "--cost", "4", path, "u0"], input: "p\n").status == 0)
        let statuses = try await withThrowingTaskGroup(of: Int32.self) { group in
            for i in 1...10 {
                group.addTask { try await CommandLineTests.run(["passwd", "--stdin", "--cost", "4", path, "user\(i)"], input: "p\(i)\n").status }
            }
            return try await group.reduce(into: [Int32]()) { $0.append($1) }
        }
        #expect(statuses == Array(repeating: 0, count: 10))
        let file = try HtpasswdFile.load(path: path)
        #expect(Set(file.users.keys) == Set(["u0"] + (1...10).map { "user\($0)" }))
    }

    @Test("gatehouse passwd writes through a symbolic link, creates files as Apache does (0666 less the umask), takes names with spaces")
    func passwdLinksAndModes() async throws {
        let target = Self.temporaryPath("target")
        let link = Self.temporaryPath("link")
        let fresh = Self.temporaryPath("fresh")
        defer { for path in [target, link, fresh] { try? FileManager.default.removeItem(atPath: path) } }
        try "bob:{SHA}F/WZ9PxtuIpP2yyadrWdU4eK0og=\n".write(toFile: target, atomically: true, encoding: .utf8)
        chmod(target, 0o640)
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: target)
        let added = try await CommandLineTests.run(["passwd", "--stdin", "--cost", "4", link, "sp ace"], input: "pw\n")
        #expect(added.status == 0, "\(added.stdout)")
        // The link is still a link, and the file it points to has both users, with its mode.
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: link)) == target)
        let text = try String(contentsOfFile: target, encoding: .utf8)
        #expect(text.hasPrefix("bob:{SHA}") && text.contains("\nsp ace:$2y$04$"), "\(text)")
        var info = stat()
        stat(target, &info)
        #expect(info.st_mode & 0o777 == 0o640)
        // A new file: the test process's umask (set by the harness; 022 on most machines).
        let mask = umask(0)
        umask(mask)
        #expect(try await CommandLineTests.run(["passwd", "--stdin", "--cost", "4", fresh, "alice"], input: "pw\n").status == 0)
        stat(fresh, &info)
        #expect(info.st_mode & 0o777 == 0o666 & ~mask)
        let refused = try await CommandLineTests.run(["passwd", "--stdin", fresh, "bad\u{1B}name"], input: "pw\n")
        #expect(refused.status != 0)
        #expect(!(refused.stdout + refused.stderr).contains("\u{1B}"), "a control character is shown escaped")
        #expect(try await CommandLineTests.run(["passwd", "--stdin", fresh, "bad\u{FFFD}name"], input: "pw\n").status != 0)
        // A dangling link: its target is created, and the link stays.
        let dangling = Self.temporaryPath("dangling")
        let missing = Self.temporaryPath("missing")
        defer { for path in [dangling, missing] { try? FileManager.default.removeItem(atPath: path) } }
        try FileManager.default.createSymbolicLink(atPath: dangling, withDestinationPath: (missing as NSString).lastPathComponent)
        #expect(try await CommandLineTests.run(["passwd", "--stdin", "--cost", "4", dangling, "carol"], input: "pw\n").status == 0)
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: dangling)) == (missing as NSString).lastPathComponent)
        #expect((try? String(contentsOfFile: missing, encoding: .utf8))?.hasPrefix("carol:$2y$04$") == true)
    }

    @Test("install.sh into a DESTDIR lays out the binary, units, config and htpasswd")
    func install() async throws {
        let destination = Self.temporaryPath("root")
        defer { try? FileManager.default.removeItem(atPath: destination) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = [
            GatehouseProcess.repositoryRoot.appendingPathComponent("Scripts/install.sh").path,
            "--destdir", destination, "--binary", CommandLineTests.executable.path, "--no-user", "--prefix", "/opt/gh",
        ]
        process.currentDirectoryURL = GatehouseProcess.repositoryRoot
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        let files = ["opt/gh/bin/gatehouse", "etc/systemd/system/gatehouse.service", "etc/systemd/system/gatehouse.socket",
                     "etc/gatehouse/gatehouse.yaml", "etc/gatehouse/htpasswd"]
        for file in files {
            #expect(FileManager.default.fileExists(atPath: "\(destination)/\(file)"), "\(file) missing")
        }
        let unit = try String(contentsOfFile: "\(destination)/etc/systemd/system/gatehouse.service", encoding: .utf8)
        #expect(unit.contains("ExecStart=/opt/gh/bin/gatehouse"))
        #expect(unit.contains("Type=notify"))
        #expect(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"))
        let check = try await CommandLineTests.run(["check", "--config", GatehouseProcess.repositoryRoot.appendingPathComponent("Config/gatehouse.yaml").path,
                                              "--htpasswd", GatehouseProcess.repositoryRoot.appendingPathComponent("Config/demo.htpasswd").path])
        #expect(check.status == 0, "the shipped example config is valid: \(check.stdout)")
    }
}
