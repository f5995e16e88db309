import Foundation
import Logging
import NIOConcurrencyHelpers

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes access-log lines without ever blocking an event loop.
///
/// Event loops only append the entry to an in-memory batch under a lock; a writer thread of
/// the log's own formats and writes whole batches, so a slow disk delays the log, never the
/// traffic. A batch is written about 1 ms after its first entry (or at once when it is
/// large): waking a writer per response costs more CPU than the proxying itself. Lines reach
/// the file within a couple of milliseconds, so a tool that counts them right after a burst
/// (the benchmark harness does) sees them all. The two batch arrays are swapped rather than
/// reallocated, so a batch costs no allocation or element copies.
/// The writer is a plain thread woken through a condition variable, at most once per batch;
/// a Dispatch timer per batch (`asyncAfter`) cost several times as much.
/// Observers (the test fixture) see every entry synchronously, in order.
public final class AccessLog: Sendable {
    public enum Destination: Sendable, Equatable {
        case standardOutput
        case file(String)
        case none
    }

    public typealias Observer = @Sendable (AccessLogEntry) -> Void

    /// Why a log file could not be opened for appending, found without opening (or creating)
    /// it: for `gatehouse check`, which must not pass a setting that `serve` then refuses.
    /// Nil when it can be written.
    public static func openingProblem(path: String) -> String? {
        guard !path.isEmpty else { return "the access log path is empty" }
        var status = stat()
        if stat(path, &status) == 0 && (status.st_mode & S_IFMT) == S_IFDIR {
            return "cannot open access log \(path): Is a directory"
        }
        if access(path, W_OK) == 0 { return nil }
        if errno != ENOENT { return "cannot open access log \(path): \(String(cString: strerror(errno)))" }
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        if access(directory, W_OK | X_OK) == 0 { return nil }
        return "cannot create access log \(path): \(String(cString: strerror(errno)))"
    }

    private let enabled: Bool
    private let path: String?
    private let observer: Observer?
    private let writer: Writer?
    /// How long a recorded line may wait to be written, in microseconds (see above).
    static let batchIntervalMicroseconds: UInt32 = 1_000
    /// A batch this large is written without waiting.
    static let batchLimit = 512

    /// Opens the destination; a file is opened for appending and created with mode 0640.
    /// Write failures (a full disk, a closed pipe) are reported to `logger`: once when lines
    /// start to be lost, once when writing works again, with the count lost in between.
    public init(
        destination: Destination, format: AccessLogFormat, logger: Logger? = nil, observer: Observer? = nil
    ) throws(ConfigurationError) {
        self.observer = observer
        let fd: Int32
        switch destination {
        case .standardOutput:
            fd = STDOUT_FILENO
            self.path = nil
        case .none:
            fd = -1
            self.path = nil
        case .file(let path):
            fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
            guard fd >= 0 else {
                throw .htpasswd("cannot open access log \(path): \(String(cString: strerror(errno)))")
            }
            self.path = path
        }
        self.enabled = destination != .none
        self.writer = self.enabled ? Writer(descriptor: fd, format: format, ownsDescriptor: self.path != nil, logger: logger) : nil
    }

    /// Lines that could not be written since the log was opened.
    public var linesLost: Int { self.writer?.linesLost ?? 0 }

    deinit {
        self.writer?.stop()
    }

    /// Closes and reopens a log file (SIGUSR1), after logrotate moved it away. Lines already
    /// recorded go to the old file first; nothing is lost or split.
    public func reopen() {
        guard let path = self.path else { return }
        self.writer?.reopen(path: path)
    }

    /// Records one response. Cheap and non-blocking: safe to call on an event loop.
    public func record(_ entry: AccessLogEntry) {
        self.observer?(entry)
        self.writer?.append(entry)
    }

    /// Blocks until every recorded entry has been written. For shutdown and tests, not loops.
    public func flush() {
        self.writer?.writePending()
    }

    /// The writer thread and what it shares with the event loops.
    private final class Writer: @unchecked Sendable {
        private struct Pending {
            var entries: [AccessLogEntry] = []
            /// The writer has been woken for the current batch (or is awake anyway).
            var signalled = false
            var stopping = false
        }

        private let format: AccessLogFormat
        private let ownsDescriptor: Bool
        private let logger: Logger?
        /// Guarded by `writeLock`: lines lost in all, lines lost in the current failure
        /// episode, and whether the file ends in a partly written line.
        private var lost = 0
        private var failing: (lines: Int, error: Int32)?
        private var midLine = false
        /// Guarded by `writeLock`, which also keeps whole batches in order.
        private var descriptor: Int32
        private var bytes: [UInt8] = []
        /// The other batch array: empty, keeping its capacity (guarded by `writeLock`).
        private var spare: [AccessLogEntry] = []
        private let writeLock = NIOLock()
        private let pending = NIOLockedValueBox(Pending())
        /// 1 while there is work for the writer thread.
        private let wake = ConditionLock(value: 0)
        private let finished = DispatchSemaphore(value: 0)

        init(descriptor: Int32, format: AccessLogFormat, ownsDescriptor: Bool, logger: Logger?) {
            self.descriptor = descriptor
            self.format = format
            self.ownsDescriptor = ownsDescriptor
            self.logger = logger
            let thread = Thread { [self] in self.run() }
            thread.name = "gatehouse-access-log"
            thread.start()
        }

        func append(_ entry: AccessLogEntry) {
            let signal = self.pending.withLockedValue { pending -> Bool in
                pending.entries.append(entry)
                if pending.signalled { return false }
                pending.signalled = true
                return true
            }
            if signal {
                self.wake.lock()
                self.wake.unlock(withValue: 1)
            }
        }

        private func run() {
            while true {
                self.wake.lock(whenValue: 1)
                self.wake.unlock(withValue: 0)
                let stopping = self.pending.withLockedValue { $0.stopping }
                if !stopping {
                    // Let the batch fill, unless it is already large.
                    let size = self.pending.withLockedValue { $0.entries.count }
                    if size < AccessLog.batchLimit { usleep(AccessLog.batchIntervalMicroseconds) }
                }
                self.writePending()
                if stopping { break }
            }
            self.writeLock.withLock {
                if self.ownsDescriptor { close(self.descriptor) }
            }
            self.finished.signal()
        }

        /// Ends the thread after it has written everything recorded.
        func stop() {
            self.pending.withLockedValue { $0.stopping = true }
            self.wake.lock()
            self.wake.unlock(withValue: 1)
            _ = self.finished.wait(timeout: .now() + .seconds(5))
        }

        func reopen(path: String) {
            self.writeLock.withLock {
                self.writeLocked()
                let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
                guard fd >= 0 else {
                    // Keep writing to the old descriptor (the renamed file), and say so.
                    let reason = String(cString: strerror(errno))
                    self.logger?.error(
                        "cannot reopen the access log; lines still go to the file it was before",
                        metadata: ["path": "\(path)", "error": "\(reason)"])
                    return
                }
                close(self.descriptor)
                self.descriptor = fd
            }
        }

        func writePending() {
            self.writeLock.withLock { self.writeLocked() }
        }

        private func writeLocked() {
            var batch = self.spare
            self.spare = []
            self.pending.withLockedValue { pending in
                pending.signalled = false
                swap(&pending.entries, &batch)
            }
            defer {
                batch.removeAll(keepingCapacity: batch.capacity <= 4 * AccessLog.batchLimit)
                self.spare = batch
            }
            guard !batch.isEmpty else { return }
            self.bytes.removeAll(keepingCapacity: true)
            // After a failure that cut a line, start on a fresh one.
            let prefix = self.midLine ? 1 : 0
            if self.midLine { self.bytes.append(UInt8(ascii: "\n")) }
            for entry in batch {
                self.format.append(entry, to: &self.bytes)
                self.bytes.append(UInt8(ascii: "\n"))
            }
            var offset = 0
            var failure: Int32?
            while offset < self.bytes.count {
                let written = self.bytes.withUnsafeBytes { buffer -> Int in
                    guard let base = buffer.baseAddress else { return 0 }
                    return write(self.descriptor, base + offset, buffer.count - offset)
                }
                if written < 0 {
                    if errno == EINTR { continue }
                    failure = errno
                    break
                }
                offset += written
            }
            self.account(failure: failure, written: offset, prefix: prefix)
            if self.bytes.capacity > 1 << 16 { self.bytes = [] }
        }

        var linesLost: Int { self.writeLock.withLock { self.lost } }

        /// The proxy keeps serving when its log cannot be written; the operator hears of it
        /// once per episode rather than once per line.
        private func account(failure: Int32?, written: Int, prefix: Int) {
            guard let failure else {
                self.midLine = false
                if let episode = self.failing {
                    self.failing = nil
                    self.logger?.notice(
                        "access log writable again", metadata: ["lines_lost": "\(episode.lines)"])
                }
                return
            }
            let lines = self.bytes[max(written, prefix)...].reduce(0) { $0 + ($1 == UInt8(ascii: "\n") ? 1 : 0) }
            if written > 0 { self.midLine = self.bytes[written - 1] != UInt8(ascii: "\n") }
            self.lost += lines
            if let episode = self.failing {
                self.failing = (episode.lines + lines, episode.error)
            } else {
                self.failing = (lines, failure)
                self.logger?.error(
                    "access log write failed; lines are being lost until it works again",
                    metadata: ["error": "\(String(cString: strerror(failure)))"])
            }
        }
    }
}
