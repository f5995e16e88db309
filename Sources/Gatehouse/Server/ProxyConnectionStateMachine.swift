/// The life of one client connection, as a value that can be tested without sockets.
///
/// A client connection carries a sequence of exchanges (request → response), one at a time:
/// `HTTPServerPipelineHandler` holds pipelined requests back until the previous response has
/// ended (RFC 9112 §9.3.2 requires responses in request order). Within one exchange the request
/// and the response progress independently — an origin may answer before the upload ends — so
/// the state records both halves.
///
/// The handler feeds events in and performs the returned ``Action``s; the state machine owns
/// every decision about when to read, forward, answer, keep the connection, or close it.
struct ProxyConnectionStateMachine {
    enum State: Equatable {
        /// Between exchanges: waiting for the next request head.
        case idle
        /// A request head arrived; its credentials are being checked.
        case authenticating(requestComplete: Bool)
        /// Authenticated; the TCP connection to the origin is being opened.
        case connecting(requestComplete: Bool)
        /// Connected: the request streams upstream and the response streams back.
        case forwarding(requestComplete: Bool, responseStarted: Bool)
        /// Gatehouse has sent its own complete response; the rest of the request body, if
        /// any, is read and discarded so the connection can carry the next request.
        case answered(requestComplete: Bool, closeAfter: Bool)
        /// `CONNECT` was accepted; the HTTP handlers are being removed.
        case tunnelling
        /// The connection is closing; everything else is ignored.
        case closed
    }

    enum Action: Equatable {
        case none
        /// Forward the body part to the origin.
        case forwardBody
        /// Hold the body part until the origin connection is ready.
        case bufferBody
        /// Drop the body part: Gatehouse has already answered.
        case discardBody
        /// Send `.end` to the origin.
        case forwardEnd
        /// The exchange is over and the connection stays open for the next request.
        case awaitNextRequest
        /// Close the client connection (after flushing what was written).
        case close
    }

    private(set) var state: State = .idle

    /// Whether reads from the client may proceed. Reads pause while Gatehouse cannot yet do
    /// anything with body bytes (authenticating, connecting), which is the backpressure that
    /// keeps an upload from being buffered in memory.
    var clientReadsAllowed: Bool {
        switch self.state {
        case .authenticating(let complete), .connecting(let complete): return complete
        case .idle, .forwarding, .answered, .closed: return true
        case .tunnelling: return false
        }
    }

    var isIdle: Bool { self.state == .idle }

    /// The whole request has arrived and only the response is outstanding.
    var awaitingResponse: Bool {
        switch self.state {
        case .authenticating(true), .connecting(true), .forwarding(true, _): return true
        default: return false
        }
    }

    /// Whether the current request has fully arrived (true between exchanges). When Gatehouse
    /// closes a connection whose request is still arriving, it closes in stages (see
    /// `RequestStartObserver.closeLingering`).
    var requestComplete: Bool {
        switch self.state {
        case .authenticating(let complete), .connecting(let complete), .forwarding(let complete, _),
            .answered(let complete, _):
            return complete
        case .idle, .tunnelling, .closed: return true
        }
    }

    /// Whether the current request's credentials were accepted (its body limit applies).
    var isAuthenticated: Bool {
        switch self.state {
        case .connecting, .forwarding: return true
        default: return false
        }
    }

    /// Whether the rest of a request body is being read and dropped after an early answer.
    var discardingBody: Bool {
        if case .answered(requestComplete: false, _) = self.state { return true }
        return false
    }

    /// Whether a response (of the origin's, or Gatehouse's own) has begun for the current exchange.
    var responseStarted: Bool {
        switch self.state {
        case .forwarding(_, let started): return started
        case .answered: return true
        default: return false
        }
    }

    enum HeadAction: Equatable {
        /// A new exchange begins.
        case start
        /// The connection is closing after a response still being written: the request is
        /// left unanswered (the client sees the close and retries it elsewhere).
        case ignore
        /// A head in the middle of an exchange: the pipelining handler should make that
        /// impossible, so the connection is closed.
        case close
    }

    /// A request head. `HTTPServerPipelineHandler` delivers a pipelined request as soon as the
    /// previous response's end is written, which may be before that response has left: the
    /// head of a request that will not be answered, because the connection closes after
    /// that response, must not close the connection early and lose the response.
    mutating func requestHeadReceived() -> HeadAction {
        switch self.state {
        case .idle:
            self.state = .authenticating(requestComplete: false)
            return .start
        case .closed:
            return .ignore
        case .authenticating, .connecting, .forwarding, .answered, .tunnelling:
            return .close
        }
    }

    mutating func requestBodyReceived() -> Action {
        switch self.state {
        case .authenticating, .connecting: return .bufferBody
        case .forwarding: return .forwardBody
        case .answered: return .discardBody
        case .idle, .tunnelling, .closed: return .none
        }
    }

    mutating func requestEndReceived() -> Action {
        switch self.state {
        case .authenticating:
            self.state = .authenticating(requestComplete: true)
            return .bufferBody
        case .connecting:
            self.state = .connecting(requestComplete: true)
            return .bufferBody
        case .forwarding(false, let started):
            self.state = .forwarding(requestComplete: true, responseStarted: started)
            return .forwardEnd
        case .answered(false, let closeAfter):
            if closeAfter {
                self.state = .closed
                return .close
            }
            self.state = .idle
            return .awaitNextRequest
        case .forwarding(true, _), .answered(true, _), .idle, .tunnelling, .closed:
            return .none
        }
    }

    mutating func authenticated() {
        if case .authenticating(let complete) = self.state {
            self.state = .connecting(requestComplete: complete)
        }
    }

    /// The origin connection is up; returns whether the request is already complete.
    mutating func upstreamConnected() -> Bool? {
        guard case .connecting(let complete) = self.state else { return nil }
        self.state = .forwarding(requestComplete: complete, responseStarted: false)
        return complete
    }

    /// Gatehouse sent its own complete response (an error, or a 407).
    mutating func answered(close: Bool) -> Action {
        let complete: Bool
        switch self.state {
        case .authenticating(let c), .connecting(let c), .forwarding(let c, _): complete = c
        case .idle: complete = true  // A parser error: there is no request to finish.
        case .answered, .tunnelling, .closed: return .none
        }
        if close {
            self.state = .closed
            return .close
        }
        if complete {
            self.state = .idle
            return .awaitNextRequest
        }
        self.state = .answered(requestComplete: false, closeAfter: false)
        return .none
    }

    mutating func responseHeadForwarded() {
        if case .forwarding(let complete, _) = self.state {
            self.state = .forwarding(requestComplete: complete, responseStarted: true)
        }
    }

    /// The origin's response ended. `keepAlive` says whether the client connection may carry
    /// another exchange.
    mutating func responseEnded(keepAlive: Bool) -> Action {
        guard case .forwarding(let complete, _) = self.state else { return .none }
        if !keepAlive {
            self.state = .closed
            return .close
        }
        if complete {
            self.state = .idle
            return .awaitNextRequest
        }
        // The origin answered before the upload finished (say, a 413). Drain the rest so the
        // next request on this connection starts at a message boundary.
        self.state = .answered(requestComplete: false, closeAfter: false)
        return .none
    }

    /// The origin failed. Before any response byte, Gatehouse can still answer with 502/504;
    /// after, the only honest signal left is closing the connection (RFC 9112 §9.3.2).
    mutating func upstreamFailed() -> UpstreamFailureAction {
        switch self.state {
        case .connecting, .forwarding(_, false):
            return .sendError
        case .forwarding(_, true):
            self.state = .closed
            return .close
        case .idle, .authenticating, .answered, .tunnelling, .closed:
            return .ignore
        }
    }

    enum UpstreamFailureAction: Equatable { case sendError, close, ignore }

    /// A reused origin connection failed before any response byte: try once more on a fresh
    /// one. Only for requests without a body, which can be replayed (RFC 9112 §9.3.1).
    mutating func retryingUpstream() -> Bool {
        guard case .forwarding(let complete, false) = self.state else { return false }
        self.state = .connecting(requestComplete: complete)
        return true
    }

    mutating func tunnelStarted() {
        self.state = .tunnelling
    }

    mutating func connectionClosed() {
        self.state = .closed
    }
}
