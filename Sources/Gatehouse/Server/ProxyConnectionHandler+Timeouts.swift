import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

extension ProxyConnectionHandler {
    // MARK: Timers

    /// Waits for the next request: idle timeout until its first byte arrives. A new
    /// connection gets no longer than the header timeout for its first byte: one that sends
    /// nothing would otherwise hold a connection slot for the whole idle timeout (a slowloris
    /// that never starts its head). It is closed quietly; there is no request to answer.
    func awaitRequest(context: ChannelHandlerContext, first: Bool = false) {
        if self.clientInputClosed {
            self.closeOnceWritten(context: context)
            return
        }
        self.observer.awaitingRequest = true
        self.observer.requestComplete = false
        self.headStarted = .now()
        let wait = first ? min(self.configuration.idleTimeout, self.configuration.headerTimeout) : self.configuration.idleTimeout
        self.schedule(.idle, in: wait, context: context)
    }

    /// After an early answer (a 407 or 429 to an upload sent without `Expect: 100-continue`,
    /// an origin that answered before reading all of it), the rest of the body is read and
    /// dropped to keep the connection. The client gets the idle timeout between its bytes, as
    /// during an upload; then the connection closes quietly (the answer went out). Without a
    /// timer, a client that stopped sending held its connection until it gave up: with no
    /// credentials at all, up to `--max-connections-per-client` slots from one address.
    func awaitBodyRest(context: ChannelHandlerContext) {
        guard self.machine.discardingBody else { return }
        self.schedule(.idle, in: self.configuration.idleTimeout, context: context)
    }

    /// The first byte of a request head arrived: the header timeout starts now.
    func requestBytesStarted() {
        guard let context = self.context, self.machine.isIdle else { return }
        self.headStarted = .now()
        self.schedule(.header, in: self.configuration.headerTimeout, context: context)
    }

    /// The one timer a connection has at a time, kept lazily: setting or clearing it is a
    /// store, not a trip through the event loop's timer heap.
    ///
    /// A busy keep-alive connection moves between "idle" and "header" deadlines twice per
    /// request; rescheduling a NIO callback each time cost about 5% of the CPU of a proxied
    /// request. Instead one callback stays scheduled, never later than the current deadline,
    /// and when it fires it either acts (the deadline has passed) or re-arms for the deadline
    /// that replaced it. Callbacks are scheduled at most `min(idle, header)` ahead, so a
    /// shorter deadline set later is still covered without a reschedule.
    func schedule(_ kind: TimerKind, in amount: TimeAmount, context: ChannelHandlerContext) {
        let now = NIODeadline.now()
        self.timerKind = kind
        self.timerDeadline = now + amount
        if let firesAt = self.timerFiresAt, firesAt <= self.timerDeadline { return }
        self.armTimer(at: min(self.timerDeadline, now + self.shortestTimeout), context: context)
    }

    /// Forgets the deadline; a callback still scheduled finds nothing due and lapses.
    func clearTimer() {
        self.timerDeadline = .distantFuture
    }

    /// Cancels the callback outright (the connection is closing, or becomes a tunnel): it holds
    /// the handler alive until it fires.
    func cancelTimer() {
        self.timer?.cancel()
        self.timer = nil
        self.timerFiresAt = nil
        self.timerDeadline = .distantFuture
    }

    private var shortestTimeout: TimeAmount {
        min(self.configuration.idleTimeout, self.configuration.headerTimeout)
    }

    private func armTimer(at deadline: NIODeadline, context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.timerFiresAt = deadline
        self.timer = try? context.eventLoop.assumeIsolated().scheduleCallback(at: deadline, handler: TimerTarget(self))
    }

    enum TimerKind { case idle, header }

    /// The scheduled callback fired: act if the deadline has passed, else re-arm for it.
    func timerFired() {
        self.timer = nil
        self.timerFiresAt = nil
        guard self.timerDeadline != .distantFuture, let context = self.context else { return }
        let now = NIODeadline.now()
        if now < self.timerDeadline {
            self.armTimer(at: min(self.timerDeadline, now + self.shortestTimeout), context: context)
            return
        }
        self.timerDeadline = .distantFuture
        // A request held for a client whose socket is full (see `channelRead`) arrived whole:
        // what times out is the client not reading, as on an idle connection.
        let kind = self.heldInbound != nil ? TimerKind.idle : self.timerKind
        switch kind {
        case .idle:
            if self.clientStillReading(context: context) {
                self.schedule(.idle, in: self.configuration.idleTimeout, context: context)
                return
            }
            // A keep-alive connection that stayed idle: close it quietly; no response is due.
            context.close(promise: nil)
        case .header:
            self.headerTimedOut()
        }
    }

    /// Whether the tail of a response is still queued for a client that is taking it.
    ///
    /// The idle timeout starts once a response is handed to the channel, but a slow reader may
    /// not have taken all of it yet. So the connection stays while some of the response is
    /// still on its way and the client acknowledged more since the last look (``PeerProgress``);
    /// one that took nothing for a whole idle timeout is closed.
    ///
    /// "On its way" counts the kernel's send buffer (unsent and unacknowledged bytes), not only
    /// NIO's queue: closing while the kernel still holds part of the response leaves it to an
    /// orphaned socket, which the kernel resets after a few unanswered zero-window probes. A
    /// slow reader lost the tail of its response that way (`UpstreamFailureTests.slowReaderTail`).
    func clientStillReading(context: ChannelHandlerContext) -> Bool {
        self.idleWatch.peerStillTaking(context.channel)
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
