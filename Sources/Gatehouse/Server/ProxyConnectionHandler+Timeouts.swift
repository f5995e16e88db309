import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

extension ProxyConnectionHandler {
    // MARK: Timers

    /// Waits for the next request: idle timeout until its first byte arrives.
    func awaitRequest(context: ChannelHandlerContext) {
        if self.clientInputClosed {
            context.close(promise: nil)
            return
        }
        self.observer.awaitingRequest = true
        self.headStarted = .now()
        self.schedule(.idle, in: self.configuration.idleTimeout, context: context)
    }

    /// The first byte of a request head arrived: the header timeout starts now.
    func requestBytesStarted() {
        guard let context = self.context, self.machine.isIdle else { return }
        self.headStarted = .now()
        self.schedule(.header, in: self.configuration.headerTimeout, context: context)
    }

    /// The one timer a connection has at a time. A scheduled callback with the handler itself
    /// as its target costs no promise and no closure: idle keep-alive connections are what a
    /// proxy holds most of, so each should cost as little as possible.
    func schedule(_ kind: TimerKind, in amount: TimeAmount, context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.timerKind = kind
        self.timer = try? context.eventLoop.assumeIsolated().scheduleCallback(in: amount, handler: TimerTarget(self))
    }

    enum TimerKind { case idle, header }

    /// Fires the connection's timer.
    func timerFired() {
        self.timer = nil
        switch self.timerKind {
        case .idle:
            // A keep-alive connection that stayed idle: close it quietly; no response is due.
            self.context?.close(promise: nil)
        case .header:
            self.headerTimedOut()
        }
    }

    /// RFC 9110 §15.5.9: 408 tells the client the server closed an unfinished request.
    func headerTimedOut() {
        guard let context = self.context, self.machine.isIdle else { return }
        self.sendRawAndClose(status: "408 Request Timeout", reason: .headerTimeout, context: context)
    }

}

/// Routes a scheduled callback to its connection (every path that ends a connection cancels it).
struct TimerTarget: NIOScheduledCallbackHandler {
    let connection: ProxyConnectionHandler

    init(_ connection: ProxyConnectionHandler) {
        self.connection = connection
    }

    func handleScheduledCallback(eventLoop: some EventLoop) {
        self.connection.timerFired()
    }
}
