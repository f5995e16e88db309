import NIOCore

/// Byte counts and timing shared by the two halves of a tunnel; logs the CONNECT line when
/// both sides have closed.
final class TunnelRecord {
    private var exchange: Exchange
    private let client: String
    private let shared: ProxyContext
    private let counts: GatehouseMetrics.LoopCounts
    private var openSides = 2

    init(exchange: Exchange, client: String, shared: ProxyContext, counts: GatehouseMetrics.LoopCounts) {
        self.exchange = exchange
        self.client = client
        self.shared = shared
        self.counts = counts
        shared.metrics.tunnelOpened()
    }

    func countFromClient(_ bytes: Int) { self.exchange.bytesIn += bytes }
    func countToClient(_ bytes: Int) { self.exchange.bytesOut += bytes }

    func sideClosed() {
        self.openSides -= 1
        if self.openSides == 0 {
            self.shared.metrics.tunnelClosed()
            // Closed by the proxy itself (the drain timed out, or a second SIGTERM): said so.
            let reason: ReasonCode = self.shared.connections.isClosingAll ? .shutdown : .tunnel
            self.shared.record(self.exchange.logEntry(client: self.client, status: 200, reason: reason), counts: self.counts)
        }
    }
}

/// Joins a client channel and an origin channel into a raw byte tunnel.
///
/// Modelled on swift-nio-examples' `GlueHandler`, with what that example leaves out:
/// - backpressure: a side stops reading while its partner is not writable;
/// - half-close: EOF on one side becomes a write shutdown on the other (TLS close_notify and
///   `shutdown(SHUT_WR)` clients rely on it), and the tunnel ends when both directions are done;
/// - no lost tails: a side closes only once the bytes queued for its peer are written (a
///   plain `close`, and NIO's write shutdown of a channel whose input already ended, drop
///   them), or after `lingerTimeout` if that peer takes nothing;
/// - an idle timeout, fed by an `IdleStateHandler` in front of the client side.
final class TunnelGlueHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var partner: TunnelGlueHandler?
    private var context: ChannelHandlerContext?
    private var pendingRead = false
    private var inputClosed = false
    private var closing = false
    /// The other side has closed: what this side reads can no longer be delivered.
    private var partnerGone = false
    private let record: TunnelRecord
    private let isClientSide: Bool
    private let lingerTimeout: TimeAmount

    private init(record: TunnelRecord, isClientSide: Bool, lingerTimeout: TimeAmount) {
        self.record = record
        self.isClientSide = isClientSide
        self.lingerTimeout = lingerTimeout
    }

    /// The idle check's look at this side's peer.
    private var idleWatch = PeerProgress.IdleWatch()

    /// Whether bytes are still on their way to this side's peer and it acknowledged more of
    /// them since the last idle check.
    private func stillTaking() -> Bool {
        guard let channel = self.context?.channel else { return false }
        return self.idleWatch.peerStillTaking(channel)
    }

    static func matchedPair(
        record: TunnelRecord, lingerTimeout: TimeAmount
    ) -> (client: TunnelGlueHandler, upstream: TunnelGlueHandler) {
        let client = TunnelGlueHandler(record: record, isClientSide: true, lingerTimeout: lingerTimeout)
        let upstream = TunnelGlueHandler(record: record, isClientSide: false, lingerTimeout: lingerTimeout)
        client.partner = upstream
        upstream.partner = client
        return (client, upstream)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if !context.channel.isActive {
            // The channel closed before the tunnel was glued: finish this side now.
            self.finish()
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        self.partner = nil
    }

    private var finished = false
    private func finish() {
        guard !self.finished else { return }
        self.finished = true
        self.record.sideClosed()
    }

    // MARK: Partner calls

    private func partnerWrite(_ buffer: ByteBuffer) {
        self.context?.write(self.wrapOutboundOut(buffer), promise: nil)
    }

    private func partnerFlush() {
        self.context?.flush()
    }

    private func partnerInputClosed() {
        guard let context = self.context else { return }
        if self.inputClosed {
            // Both directions are done. NIO would turn a write shutdown here into a full close
            // at once, dropping what is still queued.
            self.closeAfterFlushing(context: context)
        } else {
            // The other side will send no more: pass the EOF on as a write shutdown (NIO
            // shuts the socket's output once the queued writes are out).
            context.close(mode: .output, promise: nil)
        }
    }

    private func partnerClosed() {
        guard let context = self.context else { return }
        self.partnerGone = true
        self.closeAfterFlushing(context: context)
        // Read on, and drop what arrives: a peer blocked sending to us (an echo that the gone
        // side stopped reading) would otherwise never read what is still queued for it, and
        // both would wait for the idle timeout.
        if self.pendingRead {
            self.pendingRead = false
            context.read()
        }
    }

    /// Closes once everything queued on this side is written: an empty write completes after
    /// all the writes before it. A peer that takes nothing gets `lingerTimeout`.
    private func closeAfterFlushing(context: ChannelHandlerContext) {
        guard !self.closing else { return }
        self.closing = true
        let fallback = context.eventLoop.assumeIsolated().scheduleTask(in: self.lingerTimeout) {
            context.close(promise: nil)
        }
        context.writeAndFlush(self.wrapOutboundOut(ByteBuffer())).assumeIsolated().whenComplete { _ in
            fallback.cancel()
            context.close(promise: nil)
        }
    }

    /// The client's EOF came before the tunnel was in place (with the bytes it sent first
    /// already passed on): treat it as if it had arrived here.
    func inputClosedBeforeTunnel() {
        guard !self.inputClosed, let context = self.context else { return }
        self.inputClosed = true
        self.partner?.partnerInputClosed()
        if self.partner?.inputClosed ?? true { self.closeAfterFlushing(context: context) }
    }

    private var partnerWritable: Bool { self.context?.channel.isWritable ?? false }

    private func partnerBecameWritable() {
        if self.pendingRead, let context = self.context {
            self.pendingRead = false
            context.read()
        }
    }

    // MARK: Channel events

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if self.partnerGone { return }  // undeliverable: dropped, and not counted as passed on
        let buffer = self.unwrapInboundIn(data)
        let bytes = buffer.readableBytes
        if self.isClientSide { self.record.countFromClient(bytes) } else { self.record.countToClient(bytes) }
        self.partner?.partnerWrite(buffer)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.partner?.partnerFlush()
        context.fireChannelReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.partner?.partnerClosed()
        self.finish()
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            self.inputClosed = true
            self.partner?.partnerInputClosed()
            if self.partner?.inputClosed ?? true { self.closeAfterFlushing(context: context) }
            return
        }
        if event is IdleStateHandler.IdleStateEvent {
            // Nothing read or written on the client side for the idle timeout. A side that is
            // still taking bytes, slowly, is not idle: NIO's writes to it complete only when the
            // kernel reports the socket writable again, once a third of a send buffer of
            // megabytes has drained, which a slow reader takes longer than the timeout for. Its
            // TCP acknowledgements show it is reading (a 100 KB/s download lost everything after
            // its first 6 MB at a 15 s timeout, with the log counting it all).
            let clientTakes = self.stillTaking()
            let originTakes = self.partner?.stillTaking() ?? false
            if clientTakes || originTakes { return }
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // The EOF that follows is the client's half-close (see `ListenerTLS.isRaggedEOF`).
        if ListenerTLS.isRaggedEOF(error) { return }
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { self.partner?.partnerBecameWritable() }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if self.partnerGone || self.partner?.partnerWritable ?? false {
            context.read()
        } else {
            self.pendingRead = true
        }
    }
}

