@testable import Gatehouse
import Testing

@Suite("ProxyConnectionStateMachine")
struct ProxyConnectionStateMachineTests {
    @Test("a forwarded exchange: buffer while authenticating and connecting, then forward, then idle")
    func forwardedExchange() {
        var machine = ProxyConnectionStateMachine()
        let started = machine.requestHeadReceived()
        #expect(started == .start)
        #expect(!machine.clientReadsAllowed, "no reads while the credentials are checked")
        do { let result = machine.requestBodyReceived(); #expect(result == .bufferBody) }
        machine.authenticated()
        #expect(machine.state == .connecting(requestComplete: false))
        do { let result = machine.requestBodyReceived(); #expect(result == .bufferBody) }
        do { let result = machine.upstreamConnected(); #expect(result == false) }
        #expect(machine.clientReadsAllowed)
        do { let result = machine.requestBodyReceived(); #expect(result == .forwardBody) }
        do { let result = machine.requestEndReceived(); #expect(result == .forwardEnd) }
        machine.responseHeadForwarded()
        #expect(machine.responseStarted)
        do { let result = machine.responseEnded(keepAlive: true); #expect(result == .awaitNextRequest) }
        #expect(machine.isIdle)
    }

    @Test("requestComplete (does an answer that closes need to close in stages?) and isAuthenticated (does --max-body apply?) follow the exchange")
    func requestCompleteAndAuthenticated() {
        var machine = ProxyConnectionStateMachine()
        #expect(machine.requestComplete && !machine.isAuthenticated, "between exchanges")
        _ = machine.requestHeadReceived()
        #expect(!machine.requestComplete && !machine.isAuthenticated, "an upload arriving, credentials unchecked: no body limit yet")
        machine.authenticated()
        #expect(!machine.requestComplete && machine.isAuthenticated)
        _ = machine.upstreamConnected()
        #expect(!machine.requestComplete && machine.isAuthenticated, "forwarding the upload")
        // The origin answers early and the upload goes on: still arriving, limit no longer relevant.
        machine.responseHeadForwarded()
        _ = machine.responseEnded(keepAlive: true)
        #expect(!machine.requestComplete && !machine.isAuthenticated, "drained after the answer")
        _ = machine.requestEndReceived()
        #expect(machine.requestComplete && machine.isIdle)
        _ = machine.requestHeadReceived()
        _ = machine.requestEndReceived()
        #expect(machine.requestComplete, "a whole request awaiting its credentials")
    }

    @Test("a second head while an exchange is in flight is refused")
    func noOverlappingExchanges() {
        var machine = ProxyConnectionStateMachine()
        let started = machine.requestHeadReceived()
        #expect(started == .start)
        let again = machine.requestHeadReceived()
        #expect(again == .close)
    }

    @Test("a pipelined head that arrives while the connection closes after a response is ignored, not a reason to close at once")
    func headWhileClosingIsIgnored() {
        var machine = ProxyConnectionStateMachine()
        _ = machine.requestHeadReceived()
        machine.authenticated()
        _ = machine.upstreamConnected()
        _ = machine.requestEndReceived()
        machine.responseHeadForwarded()
        do { let result = machine.responseEnded(keepAlive: false); #expect(result == .close) }
        do { let result = machine.requestHeadReceived(); #expect(result == .ignore) }
        do { let result = machine.requestEndReceived(); #expect(result == .none) }
        #expect(machine.state == .closed)
    }

    @Test("an error answered before the upload ends drains the body, then returns to idle")
    func answeredEarlyDrains() {
        var machine = ProxyConnectionStateMachine()
        _ = machine.requestHeadReceived()
        do { let result = machine.answered(close: false); #expect(result == .none) }
        #expect(machine.state == .answered(requestComplete: false, closeAfter: false))
        #expect(machine.discardingBody, "the rest of the body gets the idle timeout")
        do { let result = machine.requestBodyReceived(); #expect(result == .discardBody) }
        do { let result = machine.requestEndReceived(); #expect(result == .awaitNextRequest) }
        #expect(machine.isIdle)
        #expect(!machine.discardingBody)
    }

    @Test("an error answered after the request is complete goes straight back to idle; close wins")
    func answeredAfterCompleteOrClose() {
        var machine = ProxyConnectionStateMachine()
        _ = machine.requestHeadReceived()
        _ = machine.requestEndReceived()
        do { let result = machine.answered(close: false); #expect(result == .awaitNextRequest) }
        _ = machine.requestHeadReceived()
        do { let result = machine.answered(close: true); #expect(result == .close) }
        #expect(machine.state == .closed)
        do { let result = machine.answered(close: false); #expect(result == .none, "nothing more is said on a closing connection") }
    }

    @Test("upstream failure: 502/504 before the response head, close after it")
    func upstreamFailure() {
        var machine = ProxyConnectionStateMachine()
        _ = machine.requestHeadReceived()
        machine.authenticated()
        do { let result = machine.upstreamFailed(); #expect(result == .sendError) }

        var started = ProxyConnectionStateMachine()
        _ = started.requestHeadReceived()
        started.authenticated()
        _ = started.upstreamConnected()
        started.responseHeadForwarded()
        do { let result = started.upstreamFailed(); #expect(result == .close, "a started response can only be cut off, never completed") }
        #expect(started.state == .closed)
    }

    @Test("a response without keep-alive closes; an origin that answers before the upload ends leaves a drain")
    func responseEndings() {
        var machine = ProxyConnectionStateMachine()
        _ = machine.requestHeadReceived()
        machine.authenticated()
        _ = machine.upstreamConnected()
        machine.responseHeadForwarded()
        do { let result = machine.responseEnded(keepAlive: true); #expect(result == .none) }
        do { let result = machine.requestBodyReceived(); #expect(result == .discardBody) }
        do { let result = machine.requestEndReceived(); #expect(result == .awaitNextRequest) }

        var closing = ProxyConnectionStateMachine()
        _ = closing.requestHeadReceived()
        _ = closing.requestEndReceived()
        closing.authenticated()
        do { let result = closing.upstreamConnected(); #expect(result == true) }
        closing.responseHeadForwarded()
        do { let result = closing.responseEnded(keepAlive: false); #expect(result == .close) }
    }

    @Test("a tunnel stops HTTP reads until the glue takes over")
    func tunnel() {
        var machine = ProxyConnectionStateMachine()
        _ = machine.requestHeadReceived()
        machine.tunnelStarted()
        #expect(!machine.clientReadsAllowed)
        do { let result = machine.requestBodyReceived(); #expect(result == .none) }
    }
}
