import Dispatch
import Foundation

/// Runs the real curl binary, as users do.
struct CurlResult: Sendable {
    var exitCode: Int32
    var stdout: Data
    var stderr: String
    var body: String { String(decoding: self.stdout, as: UTF8.self) }
}

enum Curl {
    /// - Parameter stdin: Bytes fed to curl's standard input through a pipe, as `cat file |
    ///   curl -T -` does (an upload curl streams as the pipe delivers it); none by default.
    static func run(_ arguments: [String], stdin: Data? = nil) async throws -> CurlResult {
        try await withCheckedThrowingContinuation { continuation in
            let process = Process()
            let input = stdin.map { _ in Pipe() }
            if let input { process.standardInput = input }
            process.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
            process.arguments = ["--silent", "--show-error", "--max-time", "60"] + arguments
            // The environment must not leak a proxy of the developer's into the test.
            process.environment = ["PATH": "/usr/bin:/bin", "HOME": NSTemporaryDirectory()]
            let out = Pipe()
            let err = Pipe()
            process.standardOutput = out
            process.standardError = err
            do {
                try process.run()
            } catch {
                continuation.resume(throwing: error)
                return
            }
            if let input, let stdin {
                // Written from a thread of its own; curl may stop reading (a refused upload),
                // which ends the write with EPIPE once it exits.
                signal(SIGPIPE, SIG_IGN)
                Thread.detachNewThread {
                    try? input.fileHandleForWriting.write(contentsOf: stdin)
                    try? input.fileHandleForWriting.close()
                }
            }
            // Each pipe is drained to EOF on a thread of its own, so neither can fill up and
            // block curl; the result is assembled once both are done and curl has exited.
            DispatchQueue.global().async {
                let group = DispatchGroup()
                let stdout = LockedData()
                let stderr = LockedData()
                DispatchQueue.global().async(group: group) { stdout.append(out.fileHandleForReading.readDataToEndOfFile()) }
                DispatchQueue.global().async(group: group) { stderr.append(err.fileHandleForReading.readDataToEndOfFile()) }
                group.wait()
                process.waitUntilExit()
                continuation.resume(returning: CurlResult(
                    exitCode: process.terminationStatus, stdout: stdout.value,
                    stderr: String(decoding: stderr.value, as: UTF8.self)))
            }
        }
    }
}

final class LockedData: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()
    func append(_ more: Data) { self.lock.lock(); self.data.append(more); self.lock.unlock() }
    var value: Data { self.lock.lock(); defer { self.lock.unlock() }; return self.data }
}
