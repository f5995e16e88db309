#if canImport(Glibc)
import Glibc
import CMalloc
#endif
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Gives memory the allocator kept after a burst back to the system.
///
/// glibc's `malloc` returns freed memory to the kernel only from the top of a heap. A burst
/// of connections (tunnels whose clients stopped reading hold a few hundred KiB each, and
/// NIO reads what is left in a closing socket's receive buffer at once) leaves the freed
/// chunks scattered through the event loops' heaps: 100 stalled tunnels took a process from
/// 30 MB to 57 MB, and it stayed at 53 MB once they were gone, for good. `malloc_trim(0)`
/// hands the free pages back (`MADV_DONTNEED`); on that process it went to 32 MB.
///
/// Trimming has a cost (it walks each heap with its lock held, and pages handed back are
/// faulted in again when reused), so a steady load, which reuses its freed memory, should
/// not trigger it. The trigger is therefore growth: resident memory the allocator does not
/// use (RSS minus the bytes in use) is measured after each trim, and the next trim comes
/// once that figure has grown by ``threshold`` since. Checked every ``interval`` on the
/// thread that reads files, never on an event loop.
///
/// Started by `gatehouse serve` only: a proxy run in-process by `GatehouseTesting` shares
/// its allocator with the tests' own code, which is not the proxy's to trim.
public struct MemoryTrimmer: Sendable {
    /// One look at the process's memory, in bytes.
    public struct Sample: Sendable, Equatable {
        /// Resident set size.
        public var resident: Int
        /// Bytes handed out by `malloc` and not freed (heap chunks and mmapped blocks).
        public var inUse: Int

        public init(resident: Int, inUse: Int) {
            self.resident = resident
            self.inUse = inUse
        }

        /// Resident memory that is not in use by the allocator's clients: code, stacks,
        /// and the allocator's free pages.
        public var idleResident: Int { max(0, self.resident - self.inUse) }
    }

    /// How much idle resident memory must have grown since the last trim before the next.
    public var threshold: Int
    /// How often to look.
    public var interval: TimeAmount

    public init(threshold: Int = 4 << 20, interval: TimeAmount = .seconds(5)) {
        self.threshold = threshold
        self.interval = interval
    }

    /// Whether to trim now, given the idle resident memory measured after the last trim (or
    /// at the first look). Pure, for tests.
    public func shouldTrim(_ sample: Sample, floor: Int) -> Bool {
        sample.idleResident - floor >= self.threshold
    }

    /// The process's memory now; nil where it cannot be read (not Linux with glibc).
    public static func sample() -> Sample? {
        #if canImport(Glibc)
        let inUse = gatehouse_malloc_in_use()
        guard inUse >= 0, let resident = Self.residentBytes() else { return nil }
        return Sample(resident: resident, inUse: Int(inUse))
        #else
        return nil
        #endif
    }

    /// Hands free memory back; true if any was.
    @discardableResult
    public static func trim() -> Bool {
        #if canImport(Glibc)
        return gatehouse_malloc_trim() == 1
        #else
        return false
        #endif
    }

    /// Looks every ``interval`` (timed by `eventLoop`, done on `thread`) and trims when it is
    /// worth it. A look still running when the next is due is not queued behind it.
    public func start(on eventLoop: EventLoop, thread: NIOThreadPool, logger: Logger) -> RepeatedTask? {
        guard let first = Self.sample() else { return nil }
        let state = NIOLockedValueBox((floor: first.idleResident, busy: false))
        let trimmer = self
        return eventLoop.scheduleRepeatedTask(initialDelay: self.interval, delay: self.interval) { _ in
            let start = state.withLockedValue { state in
                defer { state.busy = true }
                return !state.busy
            }
            guard start else { return }
            thread.submit { _ in
                var floor = state.withLockedValue { $0.floor }
                if let before = Self.sample() {
                    if before.idleResident < floor {
                        // Memory was reused or handed back on its own: measure from here.
                        floor = before.idleResident
                    } else if trimmer.shouldTrim(before, floor: floor) {
                        Self.trim()
                        let after = Self.sample() ?? before
                        floor = after.idleResident
                        logger.debug(
                            "returned unused memory to the system",
                            metadata: ["rss_before": "\(before.resident >> 10) KiB", "rss_after": "\(after.resident >> 10) KiB"])
                    }
                }
                state.withLockedValue { $0 = (floor, false) }
            }
        }
    }

    #if canImport(Glibc)
    /// RSS from `/proc/self/statm` (its second field, in pages).
    static func residentBytes() -> Int? {
        let fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 128)
        let count = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard count > 0 else { return nil }
        let fields = bytes[..<count].split(separator: UInt8(ascii: " "))
        guard fields.count > 1, let pages = Int(String(decoding: fields[1], as: UTF8.self)) else { return nil }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }
    #endif
}
