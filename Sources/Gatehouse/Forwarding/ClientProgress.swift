import NIOCore

/// How much of what Gatehouse sent a client has arrived: the kernel's `tcpi_bytes_acked`.
///
/// Writability alone is too coarse to tell a slow reader from a stalled one: NIO's channel only
/// becomes writable again once the kernel's send buffer has half drained, which on a socket
/// whose buffer has grown to megabytes can take longer than the idle timeout for a client that
/// is reading steadily but slowly. The acknowledged-byte count moves with every segment the
/// client's TCP takes in (and, once its receive buffer is full, with every read it does), and
/// never with retransmissions or zero-window probes.
///
/// Glibc's `struct tcp_info` stops at `tcpi_total_retrans` (104 bytes); the kernel's struct has
/// grown since, append-only (linux/tcp.h), with `tcpi_bytes_acked` at byte 120 since Linux 4.1.
/// This asks for the first 136 bytes and reads that field by offset. A kernel that fills less
/// leaves it 0, and the stall check then falls back to writability alone.
enum ClientProgress {
    /// The first 136 bytes of the kernel's `struct tcp_info`, zero-filled by NIO before the call.
    struct KernelTCPInfo: Sendable {
        var words: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64,
                    UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)

        static let bytesAckedOffset = 120

        var bytesAcked: UInt64 {
            withUnsafeBytes(of: self.words) { $0.load(fromByteOffset: Self.bytesAckedOffset, as: UInt64.self) }
        }
    }

    /// What the client connection's idle timer does when it fires with `queued` response bytes
    /// still in the channel: stay open one more idle period while the client acknowledged more
    /// since the last look (`previous`; nil: no look yet), else close. Nothing queued, or no
    /// way to see progress, is plain idleness: close (the kernel still delivers what it holds).
    static func idleDecision(queued: Int, acked: UInt64?, previous: UInt64?) -> (keepOpen: Bool, sample: UInt64?) {
        guard queued > 0, let acked else { return (false, nil) }
        return (previous.map { $0 != acked } ?? true, acked)
    }

    /// Bytes the peer of `channel` has acknowledged, or nil where TCP_INFO is unavailable.
    /// Must be called on the channel's event loop (the answer is then immediate).
    static func bytesAcknowledged(by channel: Channel) -> UInt64? {
        #if os(Linux)
        guard channel.eventLoop.inEventLoop, let provider = channel as? SocketOptionProvider else { return nil }
        let future: EventLoopFuture<KernelTCPInfo> = provider.unsafeGetSocketOption(level: .tcp, name: .tcp_info)
        var acked: UInt64?
        future.assumeIsolated().whenSuccess { acked = $0.bytesAcked }
        return acked
        #else
        return nil
        #endif
    }
}
