#if canImport(Glibc)
import Glibc
#endif

/// Talks to systemd's notification socket (`sd_notify(3)`) with one datagram per message, so
/// Gatehouse needs no libsystemd: `READY=1` once listeners are bound, `RELOADING=1` and
/// `READY=1` around a reload, `STOPPING=1` at shutdown, and `WATCHDOG=1` pings.
public struct SystemdNotifier: Sendable {
    public let socketPath: String
    /// Half the interval systemd expects pings at (`WATCHDOG_USEC`), or nil if no watchdog.
    public let watchdogPingNanoseconds: Int64?

    /// Returns nil when not started by systemd with `Type=notify` (no `NOTIFY_SOCKET`).
    public init?(environment: [String: String]) {
        guard let path = environment["NOTIFY_SOCKET"], !path.isEmpty else { return nil }
        self.socketPath = path
        if let usec = environment["WATCHDOG_USEC"].flatMap({ Int64($0) }), usec > 0,
            environment["WATCHDOG_PID"].flatMap({ Int32($0) }).map({ $0 == getpid() }) ?? true
        {
            self.watchdogPingNanoseconds = usec * 1000 / 2
        } else {
            self.watchdogPingNanoseconds = nil
        }
    }

    /// Sends one notification; failures are ignored (systemd may be gone during shutdown).
    @discardableResult
    public func send(_ message: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var pathBytes = Array(self.socketPath.utf8)
        // A leading "@" names a socket in the abstract namespace: its first byte is NUL.
        if pathBytes.first == UInt8(ascii: "@") { pathBytes[0] = 0 }
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard pathBytes.count < capacity else { return false }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, byte) in pathBytes.enumerated() { raw[i] = byte }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + pathBytes.count)
        let payload = Array(message.utf8)
        let sent = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                payload.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL), sa, length) }
            }
        }
        return sent == payload.count
    }

    /// `RELOADING=1` must carry the monotonic time in µs (systemd ≥ 253 checks it).
    public static func reloadingMessage() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return "RELOADING=1\nMONOTONIC_USEC=\(Int64(ts.tv_sec) * 1_000_000 + Int64(ts.tv_nsec) / 1000)"
    }
}

/// Listening sockets passed by systemd socket activation (`sd_listen_fds(3)`): fds 3, 4, …
/// when `LISTEN_PID` is this process.
public enum SocketActivation {
    public static func inheritedSockets(environment: [String: String]) -> [CInt] {
        guard let pid = environment["LISTEN_PID"].flatMap({ Int32($0) }), pid == getpid(),
            let count = environment["LISTEN_FDS"].flatMap({ Int32($0) }), count > 0
        else { return [] }
        let fds = (0..<count).map { 3 + $0 }
        for fd in fds {
            // Not inherited any further (by anything this process might spawn).
            let flags = fcntl(fd, F_GETFD)
            if flags >= 0 { _ = fcntl(fd, F_SETFD, flags | FD_CLOEXEC) }
        }
        unsetenv("LISTEN_PID")
        unsetenv("LISTEN_FDS")
        unsetenv("LISTEN_FDNAMES")
        return fds
    }
}
