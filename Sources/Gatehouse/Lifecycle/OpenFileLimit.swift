#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The process's limit on open file descriptors (`RLIMIT_NOFILE`).
///
/// Every client connection takes one descriptor and every origin connection or tunnel
/// another. systemd and most shells start a process with a soft limit of 1,024, far below
/// `--max-connections` (16,384 by default): the proxy ran out at about 500 busy clients,
/// accepts then failed (clients waited in the backlog), and origin connections failed as if
/// the destination were unreachable. So `serve` raises the soft limit to the hard one at
/// start-up, as nginx's `worker_rlimit_nofile` and Go's runtime do, and warns when the
/// connection limit still does not fit.
public enum OpenFileLimit {
    /// The soft and hard limits now.
    public static var current: (soft: UInt64, hard: UInt64) {
        var limit = rlimit()
        guard getrlimit(Self.resource, &limit) == 0 else { return (0, 0) }
        return (UInt64(limit.rlim_cur), UInt64(limit.rlim_max))
    }

    /// Raises the soft limit to the hard limit; returns the soft limit in force afterwards.
    @discardableResult
    public static func raiseToHardLimit() -> UInt64 {
        var limit = rlimit()
        guard getrlimit(Self.resource, &limit) == 0 else { return 0 }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(Self.resource, &raised) == 0 { return UInt64(raised.rlim_cur) }
        }
        return UInt64(limit.rlim_cur)
    }

    /// Descriptors `maxConnections` busy clients may need: one each, and one more for its
    /// origin connection or tunnel, plus a margin for listeners, the log and the pool.
    public static func needed(forConnections maxConnections: Int) -> UInt64 {
        UInt64(max(0, maxConnections)) * 2 + 64
    }

    #if canImport(Glibc)
    private static let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
    #else
    private static let resource = RLIMIT_NOFILE
    #endif
}
