import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The `gatehouse` executable running as a child process, as systemd, Docker or a test
/// harness in another language runs it. stderr goes to a file the test can read.
final class GatehouseProcess: @unchecked Sendable {
    let process = Process()
    let stdin = Pipe()
    let stdout = Pipe()
    let stderrPath: String
    private(set) var addresses: [String] = []

    static var repositoryRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent()
    }

    /// Starts `gatehouse ARGS --print-address` and waits for its listening address(es).
    init(_ arguments: [String], environment: [String: String] = [:], listeners: Int = 1, executable: URL? = nil, launcher: [String]? = nil) throws {
        self.stderrPath = FileManager.default.temporaryDirectory.appendingPathComponent("gatehouse-\(UUID().uuidString).stderr").path
        _ = FileManager.default.createFile(atPath: self.stderrPath, contents: nil)
        let binary = (executable ?? CommandLineTests.executable).path
        if let launcher {
            self.process.executableURL = URL(fileURLWithPath: launcher[0])
            self.process.arguments = Array(launcher.dropFirst()) + [binary] + arguments + ["--print-address"]
        } else {
            self.process.executableURL = URL(fileURLWithPath: binary)
            self.process.arguments = arguments + ["--print-address"]
        }
        var env = ProcessInfo.processInfo.environment
        for key in env.keys where key.hasPrefix("GATEHOUSE_") || key == "NOTIFY_SOCKET" || key == "JOURNAL_STREAM" { env[key] = nil }
        env.merge(environment) { $1 }
        self.process.environment = env
        self.process.standardInput = self.stdin
        self.process.standardOutput = self.stdout
        self.process.standardError = FileHandle(forWritingAtPath: self.stderrPath)
        try self.process.run()
        var text = ""
        while text.split(separator: "\n").count < listeners {
            let chunk = self.stdout.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            text += String(decoding: chunk, as: UTF8.self)
        }
        self.addresses = text.split(separator: "\n").map(String.init)
    }

    /// Starts it on a thread of its own: waiting for the addresses blocks, and on the
    /// cooperative pool (two threads here) that delayed every other test's clients.
    static func start(
        _ arguments: [String], environment: [String: String] = [:], listeners: Int = 1, executable: URL? = nil, launcher: [String]? = nil
    ) async throws -> GatehouseProcess {
        try await onOwnThread {
            try GatehouseProcess(arguments, environment: environment, listeners: listeners, executable: executable, launcher: launcher)
        }
    }

    var port: Int { Int(self.addresses.first?.split(separator: ":").last ?? "") ?? 0 }
    var pid: Int32 { self.process.processIdentifier }
    var stderr: String { (try? String(contentsOfFile: self.stderrPath, encoding: .utf8)) ?? "" }

    /// The process's resident memory (`VmRSS`), in KiB; 0 once it is gone.
    var residentKiB: Int {
        let status = (try? String(contentsOfFile: "/proc/\(self.pid)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
    }

    func signal(_ signal: Int32) { kill(self.pid, signal) }

    /// Waits until stderr contains `text`.
    func waitForLog(_ text: String, timeout: Duration = .seconds(10)) async -> Bool {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while clock.now < deadline {
            if self.stderr.contains(text) { return true }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return false
    }

    /// Waits for the process to exit and returns its status, or nil on timeout.
    func waitForExit(timeout: Duration = .seconds(15)) async -> Int32? {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while clock.now < deadline {
            if !self.process.isRunning { return self.process.terminationStatus }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return nil
    }

    func stop() async {
        if self.process.isRunning {
            self.process.terminate()
            if await self.waitForExit(timeout: .seconds(5)) == nil { kill(self.pid, SIGKILL) }
        }
        try? FileManager.default.removeItem(atPath: self.stderrPath)
    }
}

/// A unix datagram socket standing in for systemd's `NOTIFY_SOCKET`.
final class NotifySocket: @unchecked Sendable {
    let path: String
    private let fd: Int32

    init() throws {
        self.path = FileManager.default.temporaryDirectory.appendingPathComponent("notify-\(UUID().uuidString.prefix(8))").path
        self.fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, byte) in self.path.utf8.enumerated() { raw[i] = byte }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(self.fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0 else { throw CocoaError(.fileWriteUnknown) }
        var timeout = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(self.fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Collects datagrams until one satisfies `condition` or the timeout passes.
    func receive(until condition: ([String]) -> Bool, timeout: Duration = .seconds(10)) -> [String] {
        var messages: [String] = []
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        var buffer = [UInt8](repeating: 0, count: 4096)
        while clock.now < deadline && !condition(messages) {
            let n = recv(self.fd, &buffer, buffer.count, 0)
            if n > 0 { messages.append(String(decoding: buffer[0..<n], as: UTF8.self)) }
        }
        return messages
    }

    /// The same, off the test's cooperative threads (recv blocks).
    func collect(until condition: @escaping @Sendable ([String]) -> Bool, timeout: Duration = .seconds(10)) async -> [String] {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                continuation.resume(returning: self.receive(until: condition, timeout: timeout))
            }
        }
    }

    deinit {
        close(self.fd)
        unlink(self.path)
    }
}
