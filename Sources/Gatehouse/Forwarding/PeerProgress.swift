import NIOCore

/// How much of what Gatehouse sent a peer has arrived: the kernel's `tcpi_bytes_acked`. Used
/// for clients reading responses and for origins reading uploads.
///
/// Writability alone is too coarse to tell a slow reader from a stalled one: NIO's channel only
/// becomes writable again once the kernel's send buffer has half drained, which on a socket
/// whose buffer has grown to megabytes can take longer than the idle (or upstream) timeout for
/// a peer that is reading steadily but slowly. The acknowledged-byte count moves with every
/// segment the peer's TCP takes in (and, once its receive buffer is full, with every read it does), and
/// never with retransmissions or zero-window probes.
///
/// Glibc's `struct tcp_info` stops at `tcpi_total_retrans` (104 bytes); the kernel's struct has
/// grown since, append-only (linux/tcp.h), with `tcpi_bytes_acked` at byte 120 since Linux 4.1.
/// This asks for the first 152 bytes and reads the fields it needs by offset. A kernel that fills less
/// leaves it 0, and the stall check then falls back to writability alone.
enum PeerProgress {
    /// The first 152 bytes of the kernel's `struct tcp_info`, zero-filled by NIO before the call.
    struct KernelTCPInfo: Sendable {
        var words: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64,
                    UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)

        static let unackedOffset = 24
        static let lastAckReceivedOffset = 56
        static let bytesAckedOffset = 120
        static let notSentBytesOffset = 144

        var bytesAcked: UInt64 {
            withUnsafeBytes(of: self.words) { $0.load(fromByteOffset: Self.bytesAckedOffset, as: UInt64.self) }
        }

        /// Segments sent and not yet acknowledged (`tcpi_unacked`).
        var unackedSegments: UInt32 {
            withUnsafeBytes(of: self.words) { $0.load(fromByteOffset: Self.unackedOffset, as: UInt32.self) }
        }

        /// Milliseconds since the last acknowledgement arrived (`tcpi_last_ack_recv`).
        var millisecondsSinceLastAck: UInt32 {
            withUnsafeBytes(of: self.words) { $0.load(fromByteOffset: Self.lastAckReceivedOffset, as: UInt32.self) }
        }

        /// Bytes written to the socket and not yet sent (`tcpi_notsent_bytes`, Linux 4.6).
        var notSentBytes: UInt32 {
            withUnsafeBytes(of: self.words) { $0.load(fromByteOffset: Self.notSentBytesOffset, as: UInt32.self) }
        }
    }

    /// The state of a connection's sending side: how much the peer acknowledged, and whether
    /// anything written is still on its way (queued in NIO, unsent, or unacknowledged).
    struct SendQueue: Equatable, Sendable {
        var acked: UInt64
        var draining: Bool
        /// When the peer last acknowledged anything; with nothing draining, about when it
        /// acknowledged the last byte sent.
        var lastAcknowledgement: NIODeadline
    }

    /// The send queue of `channel`, or nil where TCP_INFO is unavailable. On the channel's
    /// event loop only.
    static func sendQueue(of channel: Channel) -> SendQueue? {
        #if os(Linux)
        guard let info = Self.tcpInfo(channel) else { return nil }
        let buffered = (try? channel.syncOptions?.getOption(.bufferedWritableBytes)) ?? 0
        return SendQueue(
            acked: info.bytesAcked, draining: buffered > 0 || info.unackedSegments > 0 || info.notSentBytes > 0,
            lastAcknowledgement: .now() - .milliseconds(Int64(info.millisecondsSinceLastAck)))
        #else
        return nil
        #endif
    }

    private static func tcpInfo(_ channel: Channel) -> KernelTCPInfo? {
        #if os(Linux)
        guard channel.eventLoop.inEventLoop, let provider = channel as? SocketOptionProvider else { return nil }
        let future: EventLoopFuture<KernelTCPInfo> = provider.unsafeGetSocketOption(level: .tcp, name: .tcp_info)
        var info: KernelTCPInfo?
        future.assumeIsolated().whenSuccess { info = $0 }
        return info
        #else
        return nil
        #endif
    }

    /// What the client connection's idle timer does when it fires while part of a response is
    /// still `draining` (queued in NIO, or in the kernel's send buffer): stay open one more idle
    /// period while the client acknowledged more since the last look (`previous`; nil: no look
    /// yet), else close. Nothing draining, or no way to see progress, is plain idleness: close.
    static func idleDecision(draining: Bool, acked: UInt64?, previous: UInt64?) -> (keepOpen: Bool, sample: UInt64?) {
        guard draining, let acked else { return (false, nil) }
        return (previous.map { $0 != acked } ?? true, acked)
    }

    /// The idle check of one connection: what its peer had acknowledged at the last look.
    /// Used by a client connection's idle timer and by each side of a tunnel.
    struct IdleWatch {
        private var sample: UInt64?

        /// Whether bytes are still on their way to `channel`'s peer (NIO's queue or the
        /// kernel's send buffer) and it acknowledged more since the last look (see
        /// ``idleDecision(draining:acked:previous:)``). On the channel's event loop only.
        mutating func peerStillTaking(_ channel: Channel) -> Bool {
            let queue = PeerProgress.sendQueue(of: channel)
            let decision = PeerProgress.idleDecision(draining: queue?.draining ?? false, acked: queue?.acked, previous: self.sample)
            self.sample = decision.sample
            return decision.keepOpen
        }
    }

    /// Bytes the peer of `channel` has acknowledged, or nil where TCP_INFO is unavailable.
    /// Must be called on the channel's event loop (the answer is then immediate).
    static func bytesAcknowledged(by channel: Channel) -> UInt64? {
        Self.tcpInfo(channel)?.bytesAcked
    }
}
