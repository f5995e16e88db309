import Dispatch
import NIOConcurrencyHelpers

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes access-log lines without ever blocking an event loop.
///
/// Event loops only append the entry to an in-memory batch under a lock; a serial dispatch
/// queue formats and writes whole batches, so a slow disk delays the log, never the traffic.
/// A batch is written at most `batchInterval` (1 ms) after its first entry (or at once when it is
/// large): waking a writer thread per response costs more CPU than the proxying itself.
/// Observers (the test fixture) see every entry synchronously, in order.
public final class AccessLog: Sendable {
    public enum Destination: Sendable, Equatable {
        case standardOutput
        case file(String)
        case none
    }

    public typealias Observer = @Sendable (AccessLogEntry) -> Void

    private struct State {
        var pending: [AccessLogEntry] = []
        var flushScheduled = false
    }

    private let format: AccessLogFormat
    /// The descriptor written to; swapped by ``reopen()``, only ever used on `queue`.
    private let descriptor: NIOLockedValueBox<Int32>
    private let enabled: Bool
    private let path: String?
    private let observer: Observer?
    private let state = NIOLockedValueBox(State())
    private let queue = DispatchQueue(label: "gatehouse.access-log")
    /// The bytes of the batch being written, kept between batches (only touched on `queue`).
    private let lineBuffer = NIOLockedValueBox([UInt8]())
    /// How long a recorded line may wait to be written.
    static let batchInterval = DispatchTimeInterval.milliseconds(1)
    /// A batch this large is written without waiting.
    static let batchLimit = 512

    /// Opens the destination; a file is opened for appending and created with mode 0640.
    public init(destination: Destination, format: AccessLogFormat, observer: Observer? = nil) throws(ConfigurationError) {
        self.format = format
        self.observer = observer
        switch destination {
        case .standardOutput:
            self.descriptor = NIOLockedValueBox(STDOUT_FILENO)
            self.path = nil
        case .none:
            self.descriptor = NIOLockedValueBox(-1)
            self.path = nil
        case .file(let path):
            let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
            guard fd >= 0 else {
                throw .htpasswd("cannot open access log \(path): \(String(cString: strerror(errno)))")
            }
            self.descriptor = NIOLockedValueBox(fd)
            self.path = path
        }
        self.enabled = destination != .none
    }

    deinit {
        if self.path != nil { close(self.descriptor.withLockedValue { $0 }) }
    }

    /// Closes and reopens a log file (SIGUSR1), after logrotate moved it away. Lines already
    /// recorded go to the old file first; nothing is lost or split.
    public func reopen() {
        guard let path = self.path else { return }
        self.queue.async {
            self.writePending()
            let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
            guard fd >= 0 else { return }  // keep writing to the old descriptor
            let old = self.descriptor.withLockedValue { current -> Int32 in
                defer { current = fd }
                return current
            }
            close(old)
        }
    }

    /// Records one response. Cheap and non-blocking: safe to call on an event loop.
    public func record(_ entry: AccessLogEntry) {
        self.observer?(entry)
        guard self.enabled else { return }
        enum Wake { case none, later, now }
        let wake = self.state.withLockedValue { state -> Wake in
            state.pending.append(entry)
            if state.pending.count == Self.batchLimit { return .now }
            if state.flushScheduled { return .none }
            state.flushScheduled = true
            return .later
        }
        switch wake {
        case .none: break
        case .later: self.queue.asyncAfter(deadline: .now() + Self.batchInterval) { self.writePending() }
        case .now: self.queue.async { self.writePending() }
        }
    }

    /// Blocks until every recorded entry has been written. For shutdown and tests, not loops.
    public func flush() {
        self.queue.sync { self.writePending() }
    }

    private func writePending() {
        let batch = self.state.withLockedValue { state -> [AccessLogEntry] in
            state.flushScheduled = false
            defer { state.pending.removeAll(keepingCapacity: true) }
            return state.pending
        }
        guard !batch.isEmpty else { return }
        var bytes = self.lineBuffer.withLockedValue { buffer in
            defer { buffer = [] }
            return buffer
        }
        bytes.removeAll(keepingCapacity: true)
        for entry in batch {
            self.format.append(entry, to: &bytes)
            bytes.append(UInt8(ascii: "\n"))
        }
        let fd = self.descriptor.withLockedValue { $0 }
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { buffer -> Int in
                guard let base = buffer.baseAddress else { return 0 }
                return write(fd, base + offset, buffer.count - offset)
            }
            if written < 0 {
                if errno == EINTR { continue }
                break  // The log is best effort once open; the proxy keeps serving.
            }
            offset += written
        }
        if bytes.capacity <= 1 << 20 {
            self.lineBuffer.withLockedValue { $0 = bytes }
        }
    }
}
