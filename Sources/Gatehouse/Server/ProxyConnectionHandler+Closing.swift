import NIOCore

/// How a client connection ends: once what was written has been sent, in stages for a client
/// that may still be sending, and during a graceful shutdown.
extension ProxyConnectionHandler {
    /// Closes the connection once everything written to it so far has been sent, for a client
    /// that half-closed and has nothing more to be answered.
    ///
    /// Closing at once dropped what was written and not yet sent. The client's EOF is handed
    /// over by NIO's pipeline handler right after the last pipelined request, inside the write
    /// of that request's answer and before its flush: a client that pipelined a request behind
    /// a forwarded one and half-closed (`printf … | nc -N`) got neither answer, though both
    /// were logged. An empty write, flushed, completes once all before it are out.
    func closeOnceWritten(context: ChannelHandlerContext) {
        self.machine.connectionClosed()
        guard let written = self.observer.writeRaw(context.channel.allocator.buffer(capacity: 0)) else {
            return context.close(promise: nil)
        }
        written.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }

    /// During a graceful shutdown, NIO's pipeline handler closes a connection once the
    /// response in flight is written, whatever the client still has on its way: a client
    /// that had pipelined more requests (held, or not yet read) then got a reset, and a reset
    /// makes the client's kernel drop what it had received and not yet read: answers logged
    /// as sent were lost. Closed in stages instead (see `RequestStartObserver.closeLingering`),
    /// unless the client already closed its side or the drain has timed out.
    func closeInStagesWhileQuiescing(promise: EventLoopPromise<Void>?) -> Bool {
        // Only where more may be on its way (requests held or pipelined, a request still
        // arriving), or where the client has not yet received all it was sent: a request it
        // pipelines meanwhile (apt tops up its pipeline) would meet a closed socket and get a
        // reset, and with it lose the tail it had not read. An idle keep-alive connection whose
        // answers have all arrived closes at once, as before.
        let moreMayCome = self.heldInbound != nil || self.observer.sawPipelinedBytes || !self.machine.requestComplete
            || (self.context.flatMap { PeerProgress.sendQueue(of: $0.channel)?.draining } ?? false)
        guard self.observer.quiescing, moreMayCome, !self.clientInputClosed, !self.shared.connections.isClosingAll,
            let context = self.context, context.channel.isActive
        else { return false }
        self.observer.closeLingering(total: self.configuration.lingerTime, idle: self.configuration.lingerTimeout)
        if let promise { context.channel.closeFuture.cascade(to: promise) }
        return true
    }

    /// Closes the connection once `written` completes: in stages if the client may still be
    /// sending and has not closed its side (see `RequestStartObserver.closeLingering`), else
    /// at once.
    func closeAfterWrite(_ written: EventLoopFuture<Void>, lingering: Bool, context: ChannelHandlerContext) {
        let lingering = lingering && !self.clientInputClosed
        written.assumeIsolated().whenComplete { result in
            if lingering, case .success = result, context.channel.isActive {
                self.observer.closeLingering(total: self.configuration.lingerTime, idle: self.configuration.lingerTimeout)
            } else {
                context.close(promise: nil)
            }
        }
    }
}
