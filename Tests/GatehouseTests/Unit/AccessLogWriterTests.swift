@testable import Gatehouse
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import Testing

@Suite("Access log writer")
struct AccessLogWriterTests {
    /// Keeps every message logged through it.
    struct CapturingLogHandler: LogHandler {
        let messages: NIOLockedValueBox<[(Logger.Level, String, Logger.Metadata)]>
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { self.metadata[key] }
            set { self.metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            self.messages.withLockedValue { $0.append((event.level, "\(event.message)", event.metadata ?? [:])) }
        }
    }

    static func entry(_ n: Int) -> AccessLogEntry {
        AccessLogEntry(
            timestamp: 1_764_477_600, client: "127.0.0.1:1", user: "u", method: "GET", target: "http://x/\(n)",
            version: "HTTP/1.1", status: 200, reason: .forwarded, bytesOut: 1, bytesIn: 0, upstream: nil,
            durationMilliseconds: 0)
    }

    @Test("lines that cannot be written are counted and reported once, and again when writing works")
    func writeFailure() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("gatehouse-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        // The log path is a symlink: first to /dev/full (every write fails with ENOSPC), then,
        // as after an operator freed space and reopened the log, to a real file.
        let path = directory.appendingPathComponent("access.log").path
        let real = directory.appendingPathComponent("real.log").path
        try FileManager.default.createSymbolicLink(atPath: path, withDestinationPath: "/dev/full")
        let messages = NIOLockedValueBox<[(Logger.Level, String, Logger.Metadata)]>([])
        let logger = Logger(label: "test") { _ in CapturingLogHandler(messages: messages) }
        let log = try AccessLog(destination: .file(path), format: .squid, logger: logger)

        for n in 0..<3 { log.record(Self.entry(n)) }
        log.flush()
        for n in 3..<5 { log.record(Self.entry(n)) }
        log.flush()
        #expect(log.linesLost == 5)
        let failures = messages.withLockedValue { $0 }
        #expect(failures.count == 1, "one report per episode, not per line: \(failures.map(\.1))")
        #expect(failures.first?.0 == .error)
        #expect(failures.first?.2["error"] == "No space left on device")

        try FileManager.default.removeItem(atPath: path)
        try FileManager.default.createSymbolicLink(atPath: path, withDestinationPath: real)
        log.reopen()
        log.record(Self.entry(5))
        log.flush()
        #expect(log.linesLost == 5)
        let all = messages.withLockedValue { $0 }
        #expect(all.count == 2)
        #expect(all.last?.0 == .notice)
        #expect(all.last?.2["lines_lost"] == "5")
        let written = try String(contentsOfFile: real, encoding: .utf8)
        #expect(written.hasSuffix("http://x/5 u HIER_NONE/- - reason=forwarded\n"))
        #expect(written.split(separator: "\n").count == 1)
    }

    @Test("a reopen that fails (the log's directory moved away) is reported, and lines go on to the old file")
    func reopenFailure() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("gatehouse-\(UUID().uuidString)")
        let moved = directory.appendingPathExtension("moved")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: moved) }
        let messages = NIOLockedValueBox<[(Logger.Level, String, Logger.Metadata)]>([])
        let logger = Logger(label: "test") { _ in CapturingLogHandler(messages: messages) }
        let log = try AccessLog(destination: .file(directory.appendingPathComponent("access.log").path), format: .squid, logger: logger)
        try FileManager.default.moveItem(at: directory, to: moved)
        log.reopen()
        log.record(Self.entry(1))
        log.flush()
        let reported = messages.withLockedValue { $0 }
        #expect(reported.map(\.0) == [.error], "\(reported.map(\.1))")
        #expect(reported.first?.2["error"] == "No such file or directory")
        let written = try String(contentsOfFile: moved.appendingPathComponent("access.log").path, encoding: .utf8)
        #expect(written.contains("http://x/1"))
    }

    @Test("gatehouse check's look at a log path: writable, creatable, or why not (without creating it)")
    func openingProblem() throws {
        #expect(AccessLog.openingProblem(path: "/nonexistent-dir/x.log") == "cannot create access log /nonexistent-dir/x.log: No such file or directory")
        #expect(AccessLog.openingProblem(path: "") == "the access log path is empty")
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("gh-\(UUID().uuidString).log").path
        #expect(AccessLog.openingProblem(path: path) == nil)
        #expect(!FileManager.default.fileExists(atPath: path))
    }

    @Test("a decoder error holding the client's raw bytes is logged by kind and size, never its bytes")
    func errorsWithClientBytes() {
        let secret = "Proxy-Authorization: Basic YWxpY2U6czNjcmV0\r\n"
        let bytes = ByteBuffer(string: secret)
        let hex = bytes.readableBytesView.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
        let raw = ByteToMessageDecoderError.dataReceivedInErrorState(HTTPParserError.invalidHeaderToken, bytes)
        #expect("\(raw)".contains(hex), "NIO's own description shows the bytes (what this guards against)")
        for error: Error in [raw, ByteToMessageDecoderError.leftoverDataWhenDone(bytes)] {
            let logged = ProxyConnectionHandler.loggable(error)
            #expect(!logged.contains("YWxpY2U6czNjcmV0") && !logged.contains(hex), "\(logged)")
            #expect(logged.contains("\(secret.utf8.count) bytes"))
        }
    }
}
