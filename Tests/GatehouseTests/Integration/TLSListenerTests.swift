import Foundation
@testable import Gatehouse
import GatehouseTesting
import NIOSSL
import Testing

/// `tls_listen`: clients that use an `https://` proxy URL, so that their Basic credentials
/// never cross the network in clear.
@Suite("TLS listeners")
struct TLSListenerTests {
    /// A proxy with a plain and a TLS listener, the TLS one presenting `files`.
    func withTLSProxy<T: Sendable>(
        files: TLSFiles = TLSFixture.files, connectPort: Int? = nil,
        _ body: @Sendable (GatehouseFixture) async throws -> T
    ) async throws -> T {
        var configuration = ProxyConfiguration()
        configuration.tlsFiles = files
        if let connectPort { configuration.connectPorts = try PortSet(parsing: "\(connectPort)") }
        let frozen = configuration
        return try await GatehouseFixture.withProxy(users: [TestUser.name: TestUser.password], configuration: frozen, body)
    }

    @Test("curl with an https:// proxy URL: GETs are forwarded, and a request without credentials gets the same 407 as in clear")
    func curlThroughTLSListener() async throws {
        let origin = try await TestOrigin.start()
        defer { Task { await origin.stop() } }
        try await withTLSProxy { proxy in
            let url = try #require(proxy.tlsProxyURL(user: TestUser.name, password: TestUser.password))
            #expect(url.hasPrefix("https://"))
            let result = try await Curl.run([
                "--proxy", url, "--proxy-cacert", TLSFixture.certificatePath, "http://127.0.0.1:\(origin.port)/bytes/300000",
            ])
            #expect(result.exitCode == 0, "\(result.stderr)")
            #expect(TestData.sha256([UInt8](result.stdout)) == TestData.sha256(TestData.bytes(count: 300_000)))

            let refused = try await Curl.run([
                "-i", "--proxy", "https://127.0.0.1:\(proxy.tlsPort ?? 0)", "--proxy-cacert", TLSFixture.certificatePath,
                "http://127.0.0.1:\(origin.port)/hello",
            ])
            #expect(refused.exitCode == 0, "\(refused.stderr)")
            #expect(refused.body.hasPrefix("HTTP/1.1 407 Proxy Authentication Required\r\n"))
            #expect(refused.body.contains("\r\nProxy-Authenticate: Basic realm=\"Gatehouse\", charset=\"UTF-8\"\r\n"))

            // The plain listener is still there beside it.
            let plain = try await Curl.run(["-x", proxy.authenticatedURL, "http://127.0.0.1:\(origin.port)/hello"])
            #expect(plain.body == "hello\n")

            let records = await proxy.waitForRecords(count: 3)
            #expect(records.map(\.status) == [200, 407, 200])
            #expect(records.map(\.reason) == [.forwarded, .authMissing, .forwarded])
            #expect(records.first?.user == TestUser.name)
            #expect(records.first?.bytesOut ?? 0 > 300_000)
        }
    }

    @Test("a 407 over TLS is well framed: the client retries on the same TLS connection")
    func challengeThenRetryOnOneConnection() async throws {
        let origin = try await TestOrigin.start()
        defer { Task { await origin.stop() } }
        try await withTLSProxy { proxy in
            let client = try await RawClient.connect(port: try #require(proxy.tlsPort), tls: try TLSFixture.clientContext())
            defer { Task { await client.close() } }
            let request = "GET http://127.0.0.1:\(origin.port)/hello HTTP/1.1\r\nHost: 127.0.0.1:\(origin.port)\r\n"
            try await client.send(request + "\r\n")
            _ = await client.waitFor { $0.contains("\r\n\r\nProxy authentication required") && $0.hasSuffix("\n") }
            try await client.send(request + "Proxy-Authorization: \(TestUser.basic)\r\n\r\n")
            let text = await client.waitFor { $0.hasSuffix("hello\n") }
            #expect(statusCodes(in: text) == [407, 200])
            #expect(!client.isClosed)
        }
    }

    @Test("CONNECT inside TLS: curl reaches a TLS origin through the TLS listener (TLS in TLS)")
    func connectInsideTLS() async throws {
        let key = try NIOSSLPrivateKey(file: TLSFixture.keyPath, format: .pem)
        let originTLS = try NIOSSLContext(configuration: .makeServerConfiguration(
            certificateChain: try NIOSSLCertificate.fromPEMFile(TLSFixture.certificatePath).map { .certificate($0) },
            privateKey: .privateKey(key)))
        let origin = try await TestOrigin.start(tls: originTLS)
        defer { Task { await origin.stop() } }
        try await withTLSProxy(connectPort: origin.port) { proxy in
            let url = try #require(proxy.tlsProxyURL(user: TestUser.name, password: TestUser.password))
            let result = try await Curl.run([
                "--proxy", url, "--proxy-cacert", TLSFixture.certificatePath, "--cacert", TLSFixture.certificatePath,
                "https://127.0.0.1:\(origin.port)/bytes/1000000",
            ])
            #expect(result.exitCode == 0, "\(result.stderr)")
            #expect(TestData.sha256([UInt8](result.stdout)) == TestData.sha256(TestData.bytes(count: 1_000_000)))
            let records = await proxy.waitForRecords(count: 1)
            #expect(records.first?.method == "CONNECT")
            #expect(records.first?.reason == .tunnel)
            #expect(records.first?.bytesOut ?? 0 > 1_000_000)
        }
    }

    // Half-close inside TLS: TunnelTests.halfClose(overTLS: true).

    @Test(
        "plain HTTP to a TLS listener gets 400 tls_required in clear, saying what to change, and a log line; the credentials are not checked",
        arguments: ["", "\r\n"])
    func plainHTTPToTLSListener(before: String) async throws {
        try await withTLSProxy { proxy in
            let client = try await RawClient.connect(port: try #require(proxy.tlsPort))
            try await client.send(
                before + "GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: 127.0.0.1:1\r\nProxy-Authorization: Basic \(Data("nobody:wrong".utf8).base64EncodedString())\r\n\r\n")
            let text = await client.waitFor { $0.hasSuffix("in clear.\n") }
            #expect(text.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(text)")
            #expect(text.contains("\r\nConnection: close\r\n"))
            #expect(text.contains("use an https:// proxy URL"))
            #expect(await client.waitForClose())
            let records = await proxy.waitForRecords(count: 1)
            #expect(records.first?.status == 400)
            #expect(records.first?.reason == .tlsRequired)
            #expect(records.first?.target == "http://127.0.0.1:1/")
            #expect(records.first?.user == nil)
        }
    }

    @Test("plain text that does not parse as a request (lower case, HTTP/2's preface) gets tls_required too, not a parse error", arguments: [
        "get http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\n\r\n", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ])
    func plainNonsenseToTLSListener(text: String) async throws {
        try await withTLSProxy { proxy in
            let client = try await RawClient.connect(port: try #require(proxy.tlsPort), sending: text)
            let answer = await client.waitFor { $0.hasSuffix("in clear.\n") }
            #expect(answer.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(answer)")
            let records = await proxy.waitForRecords(count: 1)
            #expect(records.map(\.reason) == [.tlsRequired])
        }
    }

    @Test("a TCP FIN without close_notify first is a half-close like any other: a tunnel's reply and a request's answer still arrive (they were cut)")
    func raggedEndOfInput() async throws {
        let echo = try await RawOrigin.start(.respondOnEOF)
        defer { Task { await echo.stop() } }
        let origin = try await TestOrigin.start()
        defer { Task { await origin.stop() } }
        try await withTLSProxy(connectPort: echo.port) { proxy in
            let tunnel = try await RawClient.connect(port: try #require(proxy.tlsPort), tls: try TLSFixture.clientContext())
            try await tunnel.send("CONNECT 127.0.0.1:\(echo.port) HTTP/1.1\r\nProxy-Authorization: \(TestUser.basic)\r\n\r\n")
            _ = await tunnel.waitFor { $0.hasSuffix("\r\n\r\n") }
            try await tunnel.send("0123456789")
            try await tunnel.closeOutputWithoutCloseNotify()
            let text = await tunnel.waitFor { $0.hasSuffix("received 10") }
            #expect(text.hasSuffix("\r\n\r\nreceived 10"), "\(text)")

            let client = try await RawClient.connect(port: try #require(proxy.tlsPort), tls: try TLSFixture.clientContext())
            try await client.send("GET http://127.0.0.1:\(origin.port)/bytes/200000 HTTP/1.1\r\nHost: x\r\nProxy-Authorization: \(TestUser.basic)\r\n\r\n")
            try await client.closeOutputWithoutCloseNotify()
            // Random bytes: counted as bytes, not as text.
            _ = await client.waitFor(timeout: .seconds(10)) { _ in client.byteCount > 200_000 }
            #expect(client.text(prefix: 17) == "HTTP/1.1 200 OK\r\n")
            let records = await proxy.waitForRecords(count: 2).map { "\($0.status) \($0.reason) \($0.bytesOut)" }
            #expect(client.byteCount > 200_000, "\(client.byteCount) bytes; \(records)")
            #expect(await client.waitForClose())
        }
    }

    @Test("TLS 1.2 with an RSA certificate: forward secrecy and AEAD only; a client offering RSA key exchange or CBC suites alone is refused", arguments: [
        "AES128-GCM-SHA256", "AES256-SHA", "ECDHE-RSA-AES128-SHA", "ECDHE-RSA-AES128-GCM-SHA256",
    ])
    func cipherSuites(suite: String) async throws {
        try await withTLSProxy(files: TLSFixture.rsaFiles) { proxy in
            var configuration = TLSConfiguration.makeClientConfiguration()
            configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(TLSFixture.rsaFiles.certificateChainPath))
            configuration.maximumTLSVersion = .tlsv12
            configuration.cipherSuites = suite
            let client = try await RawClient.connect(port: try #require(proxy.tlsPort), tls: try NIOSSLContext(configuration: configuration))
            if suite.hasPrefix("ECDHE-RSA-AES128-GCM") {
                try await client.send("GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\n\r\n")
                let text = await client.waitFor(timeout: .seconds(3)) { $0.contains("\r\n\r\n") }
                #expect(statusCodes(in: text) == [407], "an ECDHE suite with AES-GCM is taken")
            } else {
                // The handshake fails: the write waiting for it fails with it.
                await #expect(throws: (any Error).self, "\(suite) was accepted") {
                    try await client.send("GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\n\r\n")
                }
                #expect(await client.waitForClose())
                #expect(client.text(prefix: 100).isEmpty)
            }
            await client.close()
        }
    }

    @Test("bytes that are neither TLS nor HTTP end the connection without an answer or a log line (no status was sent)")
    func garbageToTLSListener() async throws {
        try await withTLSProxy { proxy in
            let client = try await RawClient.connect(port: try #require(proxy.tlsPort))
            try await client.send(bytes: [0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07])
            #expect(await client.waitForClose())
            // At most a TLS alert: no HTTP answer.
            #expect(!client.text(prefix: 4096).contains("HTTP/"))
            // The proxy still serves TLS afterwards.
            let good = try await RawClient.connect(port: try #require(proxy.tlsPort), tls: try TLSFixture.clientContext())
            try await good.send("GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n")
            let text = await good.waitFor { $0.hasSuffix("\n") && $0.contains("\r\n\r\n") }
            #expect(statusCodes(in: text) == [407])
            await good.close()
            let records = await proxy.waitForRecords(count: 1)
            #expect(records.map(\.status) == [407])
        }
    }

    @Test("a replaced certificate (a reload) reaches new connections; open ones keep theirs")
    func certificateReplaced() async throws {
        let origin = try await TestOrigin.start()
        defer { Task { await origin.stop() } }
        try await withTLSProxy { proxy in
            let url = try #require(proxy.tlsProxyURL(user: TestUser.name, password: TestUser.password))
            let target = "http://127.0.0.1:\(origin.port)/hello"
            let before = try await Curl.run(["--proxy", url, "--proxy-cacert", TLSFixture.otherCertificatePath, target])
            #expect(before.exitCode == 60, "curl trusts only the other certificate: \(before.stderr)")
            let open = try await RawClient.connect(port: try #require(proxy.tlsPort), tls: try TLSFixture.clientContext())
            try await open.send("GET \(target) HTTP/1.1\r\nHost: x\r\nProxy-Authorization: \(TestUser.basic)\r\n\r\n")
            _ = await open.waitFor { $0.hasSuffix("hello\n") }

            proxy.server.replaceTLS(try ListenerTLS.load(TLSFixture.otherFiles))
            let after = try await Curl.run(["--proxy", url, "--proxy-cacert", TLSFixture.otherCertificatePath, target])
            #expect(after.exitCode == 0, "\(after.stderr)")
            #expect(after.body == "hello\n")
            let old = try await Curl.run(["--proxy", url, "--proxy-cacert", TLSFixture.certificatePath, target])
            #expect(old.exitCode == 60)
            // The connection opened before goes on with the first certificate.
            try await open.send("GET \(target) HTTP/1.1\r\nHost: x\r\nProxy-Authorization: \(TestUser.basic)\r\n\r\n")
            let text = await open.waitFor { statusCodes(in: $0).count == 2 && $0.hasSuffix("hello\n") }
            #expect(statusCodes(in: text) == [200, 200])
            await open.close()
        }
    }
}

@Suite("TLS listener settings")
struct TLSListenerSettingsTests {
    func resolve(_ settings: GatehouseSettings) -> (ResolvedSettings?, [String]) {
        var settings = settings
        settings.users = .init(["u:p"], origin: "--user")
        let (resolved, problems) = settings.resolve()
        return (resolved, problems.map(\.description))
    }

    @Test("tls_listen alone: TLS listeners only, without the default plain 127.0.0.1:3128")
    func tlsListenAlone() throws {
        var settings = GatehouseSettings()
        settings.tlsListen = .init(["127.0.0.1:3129"], origin: "--tls-listen")
        settings.tlsCert = .init("/c.pem", origin: "--tls-cert")
        settings.tlsKey = .init("/k.pem", origin: "--tls-key")
        let (resolved, problems) = self.resolve(settings)
        #expect(problems.isEmpty)
        #expect(resolved?.configuration.listen == [])
        #expect(resolved?.configuration.tlsListen == [ListenAddress(host: "127.0.0.1", port: 3129)])
        #expect(resolved?.configuration.tlsFiles == TLSFiles(certificateChainPath: "/c.pem", privateKeyPath: "/k.pem"))
    }

    @Test("each missing piece is named at its source")
    func incomplete() {
        var settings = GatehouseSettings()
        settings.tlsListen = .init(["127.0.0.1:3129"], origin: "f.yaml:3")
        #expect(self.resolve(settings).1 == ["f.yaml:3: tls_listen needs tls_cert and tls_key: the certificate chain and private key (PEM files) its listeners present"])
        settings.tlsCert = .init("/c.pem", origin: "--tls-cert")
        #expect(self.resolve(settings).1 == ["--tls-cert: tls_cert is given without tls_key: give the private key too"])
        settings.tlsListen = nil
        settings.tlsKey = .init("/k.pem", origin: "f.yaml:5")
        #expect(self.resolve(settings).1 == ["--tls-cert: tls_cert and tls_key are given, but no tls_listen address would use them"])
        settings.tlsListen = .init(["127.0.0.1:3128"], origin: "f.yaml:3")
        #expect(self.resolve(settings).1 == [], "the default listen address is not added to TLS listeners")
        settings.listen = .init(["127.0.0.1:3128"], origin: "f.yaml:2")
        #expect(self.resolve(settings).1 == ["f.yaml:3: listen address 127.0.0.1:3128 is given more than once"])
    }

    @Test("relative TLS paths in a config file warn, as a relative htpasswd does (under systemd they are taken from /)")
    func relativePaths() {
        var settings = GatehouseSettings()
        settings.tlsCert = .init("tls/fullchain.pem", origin: "f.yaml:4")
        settings.tlsKey = .init("/etc/gatehouse/tls/privkey.pem", origin: "f.yaml:5")
        #expect(GatehouseReloader.relativePathWarnings(settings).map(\.description) == [
            "f.yaml:4: warning: relative path \"tls/fullchain.pem\" is resolved from the working directory (under systemd: /), not from the config file's; prefer an absolute path",
        ])
        settings.tlsKey = .init("privkey.pem", origin: "--tls-key")
        #expect(GatehouseReloader.relativePathWarnings(settings).count == 1, "a flag's relative path is the caller's own")
    }

    @Test("the files are read and checked: a missing file, a key of another certificate")
    func files() throws {
        let loaded = try ListenerTLS.load(TLSFixture.files)
        // Validity as start and reload judge it (a reload refuses either).
        #expect(!loaded.hasExpired() && !loaded.isNotYetValid())
        #expect(loaded.hasExpired(at: loaded.notValidAfter + 1) && !loaded.hasExpired(at: loaded.notValidAfter))
        #expect(loaded.isNotYetValid(at: loaded.notValidBefore - 1) && !loaded.isNotYetValid(at: loaded.notValidBefore))
        do {
            _ = try ListenerTLS.load(TLSFiles(certificateChainPath: "/nonexistent/cert.pem", privateKeyPath: TLSFixture.keyPath))
            Issue.record("loaded a certificate that does not exist")
        } catch {
            #expect(error.description == "/nonexistent/cert.pem: cannot read it (No such file or directory)")
        }
        do {
            _ = try ListenerTLS.load(TLSFiles(certificateChainPath: TLSFixture.certificatePath, privateKeyPath: TLSFixture.otherKeyPath))
            Issue.record("loaded a key that is not the certificate's")
        } catch {
            #expect(error.description.hasPrefix("\(TLSFixture.otherKeyPath): the private key does not belong to the certificate in \(TLSFixture.certificatePath)"))
        }
        do {
            _ = try ListenerTLS.load(TLSFiles(certificateChainPath: TLSFixture.keyPath, privateKeyPath: TLSFixture.keyPath))
            Issue.record("loaded a key as a certificate")
        } catch {
            #expect(error.description.hasPrefix("\(TLSFixture.keyPath): "), "\(error.description)")
        }
    }
}

@Suite("TLS listeners in the gatehouse process")
struct TLSListenerProcessTests {
    @Test("SIGHUP re-reads the certificate and key (a renewal), rejects a key of another certificate, and check names the TLS listener")
    func reloadCertificate() async throws {
        let origin = try await TestOrigin.start()
        defer { Task { await origin.stop() } }
        let directory = NSTemporaryDirectory() + "gatehouse-tls-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let cert = directory + "/fullchain.pem"
        let key = directory + "/privkey.pem"
        func install(_ files: TLSFiles) throws {
            for (from, to) in [(files.certificateChainPath, cert), (files.privateKeyPath, key)] {
                try? FileManager.default.removeItem(atPath: to)
                try FileManager.default.copyItem(atPath: from, toPath: to)
            }
        }
        try install(TLSFixture.files)
        let arguments = ["--tls-listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key, "--user", "u:p", "--access-log", "off"]
        let checked = try await CommandLineTests.run(["check"] + arguments)
        #expect(checked.status == 0)
        #expect(checked.stdout.hasPrefix("ok: 1 user, listening on 127.0.0.1:0 (TLS)"), "\(checked.stdout)")

        // An expired certificate passes, with a warning (a renewal may be on its way).
        let expired = Bundle.module.path(forResource: "expired-cert", ofType: "pem", inDirectory: "Fixtures") ?? ""
        let expiredKey = Bundle.module.path(forResource: "expired-key", ofType: "pem", inDirectory: "Fixtures") ?? ""
        let warned = try await CommandLineTests.run(["check", "--tls-listen", "127.0.0.1:0", "--tls-cert", expired, "--tls-key", expiredKey, "--user", "u:p"])
        #expect(warned.status == 0)
        #expect((warned.stdout + warned.stderr).contains("--tls-cert: warning: the certificate in \(expired) has expired"), "\(warned)")
        // A key of another certificate is named at the key's source.
        let mismatched = try await CommandLineTests.run(["check", "--tls-listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", TLSFixture.otherKeyPath, "--user", "u:p"])
        #expect(mismatched.status == 1)
        #expect((mismatched.stdout + mismatched.stderr).contains("--tls-key: \(TLSFixture.otherKeyPath): the private key does not belong"), "\(mismatched)")

        let proxy = try await GatehouseProcess.start(arguments)
        defer { Task { await proxy.stop() } }
        #expect(proxy.addresses.count == 1, "only the TLS listener: \(proxy.addresses)")
        let target = "http://127.0.0.1:\(origin.port)/hello"
        func fetch(trusting path: String) async throws -> CurlResult {
            try await Curl.run(["--proxy", "https://u:p@127.0.0.1:\(proxy.port)", "--proxy-cacert", path, target])
        }
        #expect(try await fetch(trusting: TLSFixture.certificatePath).body == "hello\n")

        // A renewal half done (the new certificate, the old key) is refused as a whole.
        try FileManager.default.removeItem(atPath: cert)
        try FileManager.default.copyItem(atPath: TLSFixture.otherCertificatePath, toPath: cert)
        proxy.signal(SIGHUP)
        #expect(await proxy.waitForLog("reload rejected; the previous settings and users stay in force"))
        #expect(proxy.stderr.contains("the private key does not belong to the certificate"), "\(proxy.stderr)")
        #expect(try await fetch(trusting: TLSFixture.certificatePath).body == "hello\n")

        // An expired certificate is not taken on a reload: every new client would refuse it.
        try install(TLSFiles(certificateChainPath: expired, privateKeyPath: expiredKey))
        proxy.signal(SIGHUP)
        #expect(await proxy.waitForLog("has expired: clients refuse it"))
        #expect(try await fetch(trusting: TLSFixture.certificatePath).body == "hello\n")

        try install(TLSFixture.otherFiles)
        proxy.signal(SIGHUP)
        #expect(await proxy.waitForLog("reloaded settings and users"))
        let renewed = try await fetch(trusting: TLSFixture.otherCertificatePath)
        #expect(renewed.exitCode == 0, "\(renewed.stderr)")
        #expect(renewed.body == "hello\n")
        #expect(try await fetch(trusting: TLSFixture.certificatePath).exitCode == 60)
    }
}
