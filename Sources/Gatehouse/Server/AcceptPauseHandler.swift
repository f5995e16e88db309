import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Pauses a listener for a moment after an accept failed for lack of resources (no file
/// descriptor left: `EMFILE`, `ENFILE`; or kernel memory: `ENOBUFS`, `ENOMEM`), and says so.
///
/// Without it the listener spun: the connection stays in the backlog, so the socket stays
/// readable, and NIO keeps its read interest after a failed accept (its `readPending` is only
/// cleared by an accept that succeeds), so `epoll_wait` and a failing `accept4` alternated
/// tens of thousands of times a second on every loop, two cores busy, nothing logged. NIO's
/// `AcceptBackoffHandler` delays the next `read()`, which does not help while that read
/// interest stays. Turning `autoRead` off drops it; it is turned on again after ``pause``.
final class AcceptPauseHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = Channel
    typealias InboundOut = Channel

    static let pause = TimeAmount.milliseconds(200)

    private let report: (IOError) -> Void
    private var resume: Scheduled<Void>?

    /// `report` is told of each failure that pauses the listener.
    init(report: @escaping (IOError) -> Void) {
        self.report = report
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard let error = error as? IOError, [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(error.errnoCode) else {
            context.fireErrorCaught(error)
            return
        }
        self.report(error)
        guard self.resume == nil, let options = context.channel.syncOptions else { return }
        try? options.setOption(.autoRead, value: false)
        self.resume = context.eventLoop.assumeIsolated().scheduleTask(in: Self.pause) {
            self.resume = nil
            guard context.channel.isActive, let options = context.channel.syncOptions else { return }
            try? options.setOption(.autoRead, value: true)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.resume?.cancel()
        self.resume = nil
        context.fireChannelInactive()
    }
}
