import Foundation

/// Runs blocking work (waiting for a child process, reading its output to the end) on a
/// thread of its own and awaits its result.
///
/// Called directly from an async test, such work held a thread of Swift concurrency's
/// cooperative pool, which has one per core (two on the CI machine): every other test's
/// tasks waited behind it, and their clients sent their first bytes seconds late, past a
/// proxy's header or idle timeout (connections then closed before any answer).
func onOwnThread<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread.detachNewThread {
            continuation.resume(with: Result { try work() })
        }
    }
}

/// Everything `process` writes to `pipe` until it exits, read on a thread of its own.
func outputToEnd(of process: Process, from pipe: Pipe) async throws -> Data {
    try await onOwnThread {
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return data
    }
}
