import NIOCore
import NIOHTTP1

extension ProxyConnectionHandler {
    /// Connects to the `CONNECT` destination; the 200 goes out once both the origin connection
    /// and the request's end are in.
    func openTunnel(to authority: Authority, context: ChannelHandlerContext) {
        if let failure = self.configuration.testing.upstreamFailure {
            return self.answer(failure, context: context)
        }
        // As for forwards: connect once the rest of this read has been parsed.
        context.eventLoop.assumeIsolated().execute {
            guard self.context != nil, case .connecting = self.machine.state else { return }
            self.connectTunnel(to: authority, context: context)
        }
    }

    private func connectTunnel(to authority: Authority, context: ChannelHandlerContext) {
        let started = NIODeadline.now()
        let resolver = self.shared.resolver(on: context.eventLoop, user: self.exchange?.user ?? "")
        let connect = UpstreamConnector.bootstrap(on: context.eventLoop, configuration: self.configuration, halfClosure: true)
            .resolver(resolver)
            .channelOption(.autoRead, value: false)
            .connect(host: authority.host, port: authority.port ?? 443)
        connect.assumeIsolated().whenComplete { result in
            switch result {
            case .success(let channel):
                self.shared.metrics.upstreamConnected(nanoseconds: (NIODeadline.now() - started).nanoseconds)
                if self.context != nil, case .connecting = self.machine.state,
                    let refusal = self.shared.refusal(remote: channel.remoteAddress, local: channel.localAddress)
                {
                    channel.close(promise: nil)
                    return self.answer(refusal, context: context)
                }
                guard self.context != nil, self.machine.upstreamConnected() != nil else {
                    channel.close(promise: nil)
                    return
                }
                self.tunnelUpstream = channel
                self.exchange?.upstream = channel.remoteAddress?.gatehouseDescription
                if self.bufferedEnd {
                    self.startTunnel(with: channel, context: context)
                }
            case .failure(let error):
                self.logger.debug("tunnel connect failed", metadata: ["error": "\(error)", "target": "\(authority)"])
                guard self.context != nil, case .connecting = self.machine.state else { return }
                let reason = resolver.reason(for: error)
                if reason == .outOfDescriptors { self.shared.reportOutOfDescriptors("connecting a tunnel", error: error) }
                self.answer(reason, context: context)
            }
        }
    }

    /// Sends `200 Connection established` and turns the connection into a byte tunnel
    /// (RFC 9110 §9.3.6). The 200 carries neither Content-Length nor Transfer-Encoding: the
    /// bytes that follow belong to the tunnel.
    func startTunnel(with upstream: Channel, context: ChannelHandlerContext) {
        guard let exchange = self.exchange else { return }
        self.cancelTimer()
        self.tunnelUpstream = nil
        self.exchange = nil
        let head = HTTPResponseHead(
            version: .http1_1, status: .custom(code: 200, reasonPhrase: "Connection established"), headers: ["Date": HTTPDate.now()])
        exchange.status = 200
        exchange.bytesOut += head.wireSize
        exchange.bytesIn = 0
        self.machine.tunnelStarted()
        context.write(self.wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)

        let record = TunnelRecord(exchange: exchange, client: self.clientAddress, shared: self.shared, counts: self.counts)
        let (clientGlue, upstreamGlue) = TunnelGlueHandler.matchedPair(
            record: record, lingerTimeout: self.configuration.tunnelIdleTimeout)
        // The client may already have sent its EOF (held by the observer, see
        // `RequestStartObserver.holdsEndOfInput`): it goes to the origin after the bytes
        // that preceded it.
        let clientInputClosed = self.observer.heldEndOfInput || self.clientInputClosed
        self.observer.holdsEndOfInput = false
        do {
            let pipeline = context.pipeline.syncOperations
            // The HTTP handlers go first, in an order that never lets raw bytes reach a handler
            // expecting HTTP parts; the decoder goes last and hands us the bytes it held.
            pipeline.removeHandler(context: try pipeline.context(handlerType: HTTPServerPipelineHandler.self), promise: nil)
            pipeline.removeHandler(context: try pipeline.context(handlerType: OwnResponseEncoder.self), promise: nil)
            pipeline.removeHandler(context: try pipeline.context(handlerType: RequestStartObserver.self), promise: nil)
            pipeline.removeHandler(context: try pipeline.context(handlerType: ByteToMessageHandler<HTTPRequestDecoder>.self), promise: nil)
            try pipeline.addHandler(IdleStateHandler(allTimeout: self.configuration.tunnelIdleTimeout))
            try pipeline.addHandler(clientGlue)
            try upstream.pipeline.syncOperations.addHandler(upstreamGlue)
            // The glue checks whether its partner still takes bytes only between read loops,
            // and a loop makes up to `maxMessagesPerRead` reads of up to 64 KiB: with NIO's 16,
            // about 1 MB queued behind a partner that had stopped taking them (1.3 MB of RSS
            // per tunnel whose client stopped reading); with one, every 64 KiB cost a wake-up.
            // See `bulkReadsPerWakeup` for the measurements.
            try context.channel.syncOptions?.setOption(.maxMessagesPerRead, value: Self.bulkReadsPerWakeup)
            try upstream.syncOptions?.setOption(.maxMessagesPerRead, value: Self.bulkReadsPerWakeup)
            // The origin's reads were held (autoRead off) so that a server that speaks first
            // (SSH, SMTP) loses nothing before the glue is in place.
            try upstream.syncOptions?.setOption(.autoRead, value: true)
            upstream.read()
            pipeline.removeHandler(context: context, promise: nil)
            // ByteToMessageHandler hands over its leftover bytes (anything the client sent
            // right after the CONNECT head) in a later event-loop tick, as a read without a
            // read-complete; flush them to the origin once they are through.
            context.eventLoop.assumeIsolated().execute {
                upstream.flush()
                if clientInputClosed { clientGlue.inputClosedBeforeTunnel() }
            }
        } catch {
            self.logger.error("could not set up tunnel", metadata: ["error": "\(error)"])
            upstream.close(promise: nil)
            context.close(promise: nil)
        }
    }

    /// Removal hands the bytes that followed the CONNECT head to the tunnel, in order.
    func removeHandler(context: ChannelHandlerContext, removalToken: ChannelHandlerContext.RemovalToken) {
        let pending = self.tunnelPendingReads
        self.tunnelPendingReads.removeAll()
        for data in pending {
            context.fireChannelRead(data)
        }
        if !pending.isEmpty { context.fireChannelReadComplete() }
        context.leavePipeline(removalToken: removalToken)
        if self.readPending {
            self.readPending = false
            context.read()
        }
    }
}
