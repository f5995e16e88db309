import Foundation
import Gatehouse
import GatehouseTesting
import Testing

/// apt through Gatehouse, as in `/etc/apt/apt.conf.d/95proxy`: a flat repository on a local
/// origin, fetched with apt's own HTTP method (which pipelines), in private directories so the
/// machine's apt state is never touched.
@Suite("apt through the proxy", .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/apt-get")))
struct AptTests {
    /// A flat repository (`deb [trusted=yes] http://host/repo/ ./`) of `count` packages. The
    /// `.deb` files are deterministic bytes: `apt-get download` checks size and SHA-256 only.
    static func repository(count: Int) -> (files: [String: [UInt8]], packages: [String: [UInt8]]) {
        var files: [String: [UInt8]] = [:]
        var packages: [String: [UInt8]] = [:]
        var index = ""
        for number in 1...count {
            let name = String(format: "gh-p%02d", number)
            let file = "\(name)_1.0_all.deb"
            let bytes = TestData.bytes(count: 2_000 + number * 997)
            packages[file] = bytes
            files["/repo/\(file)"] = bytes
            index += """
                Package: \(name)
                Version: 1.0
                Architecture: all
                Maintainer: Gatehouse Tests <tests@example.invalid>
                Filename: ./\(file)
                Size: \(bytes.count)
                SHA256: \(TestData.sha256(bytes))
                Description: test package \(number)


                """
        }
        let packagesIndex = Array(index.utf8)
        files["/repo/Packages"] = packagesIndex
        let release = """
            Origin: gatehouse-tests
            Label: gatehouse-tests
            Suite: test
            Codename: test
            Date: Sat, 01 Jan 2000 00:00:00 UTC
            Architectures: all
            SHA256:
             \(TestData.sha256(packagesIndex)) \(packagesIndex.count) Packages

            """
        files["/repo/Release"] = Array(release.utf8)
        return (files, packages)
    }

    /// Runs apt-get with its state, cache and sources under `directory` (downloads land in
    /// `directory/dl`).
    static func aptGet(_ arguments: [String], in directory: URL, origin: Int, proxy: String, depth: Int = 10) async throws -> (status: Int32, output: String) {
        let manager = FileManager.default
        for sub in ["state/lists/partial", "cache/archives/partial", "dl"] {
            try manager.createDirectory(at: directory.appendingPathComponent(sub), withIntermediateDirectories: true)
        }
        let sources = directory.appendingPathComponent("sources.list")
        try "deb [trusted=yes] http://127.0.0.1:\(origin)/repo/ ./\n".write(to: sources, atomically: true, encoding: .utf8)
        let path = directory.path
        var options = [
            "Dir::State=\(path)/state", "Dir::State::status=/dev/null", "Dir::Cache=\(path)/cache",
            "Dir::Etc::SourceList=\(sources.path)", "Dir::Etc::SourceParts=/dev/null", "Dir::Etc::Parts=/dev/null",
            "Dir::Etc::Preferences=/dev/null", "Dir::Etc::PreferencesParts=/dev/null", "Debug::NoLocking=1",
            "APT::Architectures::=all", "Acquire::Languages=none", "Acquire::http::Pipeline-Depth=\(depth)",
            "Acquire::http::Proxy=\(proxy)", "Acquire::Retries=0",
        ]
        // As root, apt hands downloads to the `_apt` user, which cannot write here.
        if getuid() == 0 { options.append("APT::Sandbox::User=root") }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/apt-get")
        process.arguments = options.flatMap { ["-o", $0] } + arguments
        process.currentDirectoryURL = directory.appendingPathComponent("dl")
        process.environment = ["PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C"]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = try await outputToEnd(of: process, from: pipe)
        return (process.terminationStatus, String(decoding: output, as: UTF8.self))
    }

    /// A repository of `count` packages on a local origin, a proxy with the test user, and a
    /// private directory for apt; all gone afterwards.
    static func withRepository(
        count: Int, _ body: @Sendable (GatehouseFixture, TestOrigin, URL, [String: [UInt8]]) async throws -> Void
    ) async throws {
        let (files, packages) = Self.repository(count: count)
        let origin = try await TestOrigin.start(files: files)
        defer { Task { await origin.stop() } }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("gatehouse-apt-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: directory) }
        try await GatehouseFixture.withProxy(users: [TestUser.name: TestUser.password]) { proxy in
            try await body(proxy, origin, directory, packages)
        }
    }

    @Test("apt-get update and a pipelined download of 20 packages: every file byte-exact, one log line per request, no password")
    func updateAndDownload() async throws {
        try await Self.withRepository(count: 20) { proxy, origin, directory, packages in
            let update = try await Self.aptGet(["update"], in: directory, origin: origin.port, proxy: proxy.authenticatedURL + "/")
            #expect(update.status == 0, "\(update.output)")
            let names = packages.keys.sorted().map { String($0.prefix { $0 != "_" }) }
            let download = try await Self.aptGet(["download"] + names, in: directory, origin: origin.port, proxy: proxy.authenticatedURL + "/")
            #expect(download.status == 0, "\(download.output)")
            for (file, bytes) in packages {
                let got = FileManager.default.contents(atPath: directory.appendingPathComponent("dl/\(file)").path)
                #expect(got.map { [UInt8]($0) } == bytes, "\(file)")
            }
            let records = proxy.records
            // Each download is one request and one 200 line (apt sends its credentials at once).
            let debs = records.filter { $0.target.hasSuffix(".deb") }
            #expect(debs.count == 20)
            #expect(debs.allSatisfy { $0.status == 200 && $0.reason == .forwarded && $0.user == TestUser.name })
            // All over one kept-alive client connection (apt pipelines up to 10 on it).
            #expect(Set(debs.map(\.client)).count == 1, "\(Set(debs.map(\.client)))")
            #expect(!records.contains { $0.status == 407 })
            #expect(records.contains { $0.target.hasSuffix("/Packages") && $0.status == 200 })
        }
    }

    @Test("a wrong password: apt-get update fails and says 407 Proxy Authentication Required")
    func wrongPassword() async throws {
        try await Self.withRepository(count: 1) { proxy, origin, directory, _ in
            let url = proxy.proxyURL(user: TestUser.name, password: "wrong") + "/"
            let update = try await Self.aptGet(["update"], in: directory, origin: origin.port, proxy: url)
            #expect(update.status != 0)
            #expect(update.output.contains("407  Proxy Authentication Required"), "\(update.output)")
            #expect(proxy.records.allSatisfy { $0.status == 407 && $0.reason == .authInvalid })
            #expect(origin.connections == 0)
        }
    }
}
