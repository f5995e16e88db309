import NIOCore
import NIOHTTP1

/// Pipelined requests: when one is taken, and when it waits (held) for the client to take
/// earlier answers or for the request being handled to return.
extension ProxyConnectionHandler {
    /// A request is not started while the client's socket is full (the channel is not
    /// writable): it is held, with whatever follows it, until the client has taken enough of
    /// the earlier responses.
    ///
    /// `HTTPServerPipelineHandler` hands over the next pipelined request as soon as a response
    /// is written, not once it is sent. A client that pipelined requests and read nothing had
    /// every one of them answered into memory: 407s without credentials (about 165 MB for
    /// three million), forwarded responses with them. Held, the answers stop at the channel's
    /// write watermark, reads stop too, and the idle timeout closes a client that never reads.
    ///
    /// A request handed over while another is being handled (the pipeline handler hands over
    /// the next one inside the write of an answer's end) is held too, and taken once that
    /// returns: handled at once, each answer handed over the next inside it, one stack frame
    /// deeper each time. After a request answered later (a bcrypt check, an origin), thousands
    /// of pipelined requests were answered that way in one chain, and the stack overflowed: a
    /// wrong password and a few thousand requests in one packet crashed the proxy.
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .tunnelling = self.machine.state {
            // After CONNECT the HTTP decoder forwards the bytes that followed the head verbatim.
            self.tunnelPendingReads.append(data)
            return
        }
        if self.heldInbound != nil {
            self.heldInbound?.append(.read(data))
            return
        }
        let part = self.unwrapInboundIn(data)
        if case .head = part, self.processing || !context.channel.isWritable {
            self.heldInbound = [.read(data)]
            if self.processing { self.releaseWhenProcessed = true }
            return
        }
        if self.processing {
            self.process(part, context: context)
            return
        }
        self.processing = true
        self.process(part, context: context)
        self.processing = false
        if self.releaseWhenProcessed {
            self.releaseWhenProcessed = false
            self.releaseHeld(context: context)
        }
    }

    /// The client's socket took enough: what was held goes through in order, up to the next
    /// request that finds it full again. What arrives meanwhile (the pipeline handler hands
    /// over the next request as an answer is written) queues behind it: taken at once, it
    /// overtook the end of the request just answered, and the connection was closed.
    func releaseHeld(context: ChannelHandlerContext) {
        // Not inside the handling of another request part (the socket may turn writable in
        // the middle of an answer's write): once it returns.
        if self.processing { self.releaseWhenProcessed = true }
        guard !self.releasingHeld, !self.processing else { return }
        self.releasingHeld = true
        defer { self.releasingHeld = false }
        while let next = self.heldInbound?.first, self.context != nil {
            if case .read(let data) = next, case .head = self.unwrapInboundIn(data), !context.channel.isWritable { return }
            self.heldInbound?.removeFirst()
            switch next {
            case .read(let data): self.process(self.unwrapInboundIn(data), context: context)
            case .inputClosed: self.inputClosed(context: context)
            case .error(let error): self.handleError(error, context: context)
            }
        }
        if self.heldInbound?.isEmpty == true { self.heldInbound = nil }
        if self.heldInbound == nil { self.observer.releaseHeldRead() }
        self.resumeReadingIfPossible()
    }
}
