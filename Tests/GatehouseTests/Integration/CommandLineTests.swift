import Foundation
import Testing

/// The `gatehouse` executable, run as users and test harnesses in other languages run it.
@Suite("gatehouse command line")
struct CommandLineTests {
    /// The executable SwiftPM built next to the test bundle.
    static var executable: URL {
        Bundle.module.bundleURL.deletingLastPathComponent().appendingPathComponent("gatehouse")
    }

    struct Run {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    static func run(_ arguments: [String], input: String? = nil) async throws -> Run {
        try await onOwnThread { try Self.runBlocking(arguments, input: input) }
    }

    static func runBlocking(_ arguments: [String], input: String?) throws -> Run {
        let process = Process()
        process.executableURL = Self.executable
        process.arguments = arguments
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        let stdin = input.map { _ in Pipe() }
        process.standardInput = stdin ?? FileHandle.nullDevice
        try process.run()
        if let stdin, let input {
            stdin.fileHandleForWriting.write(Data(input.utf8))
            try stdin.fileHandleForWriting.close()
        }
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        let errData = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Run(status: process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self), stderr: String(decoding: errData, as: UTF8.self))
    }

    @Test("bad input gives one line naming the problem and a non-zero exit", arguments: [
        (["--user", "a:b", "--bogus"], "Unknown option"),
        ([], "no credentials configured"),
        (["--htpasswd", "/nonexistent/htpasswd"], "cannot read /nonexistent/htpasswd"),
        (["--user", "a:b", "--listen", "localhost"], "invalid listen address"),
        (["--user", "a:b", "--connect-ports", "0-5,x"], "invalid connect-ports list"),
        (["--user", "a:b", "--idle-timeout", "60"], "invalid duration \"60\""),
        (["--user", "a:b", "--log-format", "xml"], "--log-format: invalid log format \"xml\""),
        (["--user", "nocolon"], "invalid --user"),
    ])
    func badInput(arguments: [String], message: String) async throws {
        let result = try await Self.run(arguments)
        #expect(result.status != 0)
        let lines = result.stderr.split(separator: "\n")
        #expect(lines.count == 1, "\(result.stderr)")
        #expect(result.stderr.hasPrefix("gatehouse: error: "))
        #expect(result.stderr.contains(message), "\(result.stderr)")
    }

    @Test("a listen address not on this machine: 'cannot listen on ADDRESS: reason', for the proxy and the admin listener (NIO's text named no address)")
    func bindFailureNamed() async throws {
        let proxy = try await Self.run(["--user", "a:b", "--listen", "192.0.2.1:3128"])
        #expect(proxy.status == 1)
        #expect(proxy.stderr.contains("gatehouse: error: cannot listen on 192.0.2.1:3128: Cannot assign requested address"), "\(proxy.stderr)")
        let admin = try await Self.run(["--user", "a:b", "--listen", "127.0.0.1:0", "--admin-listen", "192.0.2.1:9090"])
        #expect(admin.status == 1)
        #expect(admin.stderr.contains("gatehouse: error: cannot listen on 192.0.2.1:9090: Cannot assign requested address"), "\(admin.stderr)")
    }

    @Test("check refuses an access log serve could not open, as serve does")
    func checkAccessLog() async throws {
        let checked = try await Self.run(["check", "--user", "a:b", "--access-log", "/nonexistent-dir/access.log"])
        #expect(checked.status == 1)
        #expect(checked.stdout.contains("--access-log: cannot create access log /nonexistent-dir/access.log: No such file or directory"), "named by where it was set: \(checked.stdout)")
        let served = try await Self.run(["--user", "a:b", "--listen", "127.0.0.1:0", "--access-log", "/nonexistent-dir/access.log"])
        #expect(served.status == 1)
        let directory = try await Self.run(["check", "--user", "a:b", "--access-log", "/tmp"])
        #expect(directory.status == 1)
        #expect(directory.stdout.contains("cannot open access log /tmp: Is a directory"), "\(directory.stdout)")
        let config = try await Self.run(["check", "--config", "/tmp"])
        #expect(config.stdout.contains("/tmp: cannot read the config file: it is a directory"), "\(config.stdout)")
    }

    @Test("a malformed htpasswd line is reported as file:line")
    func malformedHtpasswd() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("gh-\(UUID().uuidString).htpasswd").path
        try "# users\nalice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\nthis line has no separator\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let result = try await Self.run(["--htpasswd", path])
        #expect(result.status != 0)
        #expect(result.stderr.hasPrefix("gatehouse: error: \(path):3: "), "\(result.stderr)")
        #expect(!result.stderr.contains("W6ph5"), "the hash must not be echoed")
    }

    @Test("--listen repeats, takes [IPv6]:port, and --print-address prints every bound address")
    func multipleListeners() async throws {
        let process = Process()
        process.executableURL = Self.executable
        process.arguments = ["--listen", "127.0.0.1:0", "--listen", "[::1]:0", "--user", "u:p", "--print-address", "--exit-on-stdin-eof"]
        let stdin = Pipe()
        let out = Pipe()
        process.standardInput = stdin
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        let text = try await onOwnThread {
            var text = ""
            while text.split(separator: "\n").count < 2 {
                let chunk = out.fileHandleForReading.availableData
                if chunk.isEmpty { break }
                text += String(decoding: chunk, as: UTF8.self)
            }
            try stdin.fileHandleForWriting.close()
            process.waitUntilExit()
            return text
        }
        let lines = text.split(separator: "\n")
        #expect(lines.count == 2, "\(text)")
        #expect(lines.first?.hasPrefix("127.0.0.1:") == true)
        #expect(lines.last?.hasPrefix("[::1]:") == true)
        #expect(process.terminationStatus == 0)
    }

    @Test("fixture mode: --print-address, JSON log on stdout, exit when stdin closes")
    func fixtureMode() async throws {
        let origin = try await TestOrigin.start()
        defer { Task { await origin.stop() } }
        let process = Process()
        process.executableURL = Self.executable
        process.arguments = [
            "--listen", "127.0.0.1:0", "--user", "u:p", "--print-address", "--exit-on-stdin-eof",
            "--access-log", "-", "--log-format", "json",
        ]
        let stdin = Pipe()
        let out = Pipe()
        process.standardInput = stdin
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        // The first line on stdout is the bound address.
        let buffer = try await onOwnThread {
            var buffer = Data()
            while !buffer.contains(UInt8(ascii: "\n")) {
                let chunk = out.fileHandleForReading.availableData
                if chunk.isEmpty { break }
                buffer.append(chunk)
            }
            return buffer
        }
        let address = String(decoding: buffer, as: UTF8.self).split(separator: "\n").first.map(String.init) ?? ""
        #expect(address.hasPrefix("127.0.0.1:"))
        let curl = try await Curl.run(["-x", "http://u:p@\(address)", "http://127.0.0.1:\(origin.port)/hello"])
        #expect(curl.body == "hello\n")
        try stdin.fileHandleForWriting.close()
        let rest = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        let lines = (String(decoding: buffer + rest, as: UTF8.self)).split(separator: "\n").dropFirst()
        #expect(lines.count == 1, "\(lines)")
        let object = try JSONSerialization.jsonObject(with: Data((lines.first ?? "").utf8)) as? [String: Any]
        #expect(object?["status"] as? Int == 200)
        #expect(object?["user"] as? String == "u")
        #expect(object?["reason"] as? String == "forwarded")
    }
}
