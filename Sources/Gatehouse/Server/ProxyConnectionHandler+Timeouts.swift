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
        self.timer?.cancel()
        self.timer = context.eventLoop.assumeIsolated().scheduleTask(in: self.configuration.idleTimeout) {
            // A keep-alive connection that stayed idle: close it quietly; no response is due.
            self.timer = nil
            self.context?.close(promise: nil)
        }
    }

    /// The first byte of a request head arrived: the header timeout starts now.
    func requestBytesStarted() {
        guard let context = self.context, self.machine.isIdle else { return }
        self.headStarted = .now()
        self.timer?.cancel()
        self.timer = context.eventLoop.assumeIsolated().scheduleTask(in: self.configuration.headerTimeout) {
            self.timer = nil
            self.headerTimedOut()
        }
    }

    /// RFC 9110 §15.5.9: 408 tells the client the server closed an unfinished request.
    func headerTimedOut() {
        guard let context = self.context, self.machine.isIdle else { return }
        self.sendRawAndClose(status: "408 Request Timeout", reason: .headerTimeout, context: context)
    }

    /// Writes a complete response below the HTTP handlers (there is no request they know of
    /// for it to answer), logs it, and closes.
}
