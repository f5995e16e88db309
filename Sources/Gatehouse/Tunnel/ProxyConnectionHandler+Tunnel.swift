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

    /// Turns the connection into a byte tunnel and sends `200 Connection established`
    /// (RFC 9110 §9.3.6). The 200 carries neither Content-Length nor Transfer-Encoding: the
    /// bytes that follow belong to the tunnel.
    ///
    /// The tunnel is in place before the 200 is written, and the 200 is written as bytes past
    /// the HTTP handlers. Written first, through them, a failed write (the client's reset
    /// already in) closed the connection inside the write, so the set-up that followed failed
    /// on a closed channel: the tunnel was counted open for good and never logged. And during
    /// a drain, NIO's pipelining handler added `connection: close` to the 200 and closed the
    /// connection once it was written, a reset for a tunnel that was in flight.
    func startTunnel(with upstream: Channel, context: ChannelHandlerContext) {
        guard let exchange = self.exchange else { return }
        guard upstream.isActive else {
            // The origin closed between its connect and the CONNECT's end: nothing to tunnel to.
            self.tunnelUpstream = nil
            return self.answer(.upstreamClosed, context: context)
        }
        self.cancelTimer()
        self.tunnelUpstream = nil
        self.exchange = nil
        let head = "HTTP/1.1 200 Connection established\r\nDate: \(HTTPDate.now())\r\n\r\n"
        exchange.status = 200
        exchange.bytesOut += head.utf8.count
        exchange.bytesIn = 0
        self.machine.tunnelStarted()

        let record = TunnelRecord(exchange: exchange, client: self.clientAddress, shared: self.shared, counts: self.counts)
        let (clientGlue, upstreamGlue) = TunnelGlueHandler.matchedPair(
            record: record, lingerTimeout: self.configuration.tunnelIdleTimeout)
        // The client may already have sent its EOF (held by the observer, see
        // `RequestStartObserver.holdsEndOfInput`): it goes to the origin after the bytes
        // that preceded it.
        let clientInputClosed = self.observer.heldEndOfInput || self.clientInputClosed
        self.observer.settleConnects()
        var gluedSides = 0
        do {
            let pipeline = context.pipeline.syncOperations
            // The HTTP handlers go first, in an order that never lets raw bytes reach a handler
            // expecting HTTP parts; the decoder goes last and hands us the bytes it held.
            pipeline.removeHandler(context: try pipeline.context(handlerType: HTTPServerPipelineHandler.self), promise: nil)
            pipeline.removeHandler(context: try pipeline.context(handlerType: OwnResponseEncoder.self), promise: nil)
            pipeline.removeHandler(context: try pipeline.context(handlerType: RequestStartObserver.self), promise: nil)
            pipeline.removeHandler(context: try pipeline.context(handlerType: ConnectHeadWatcher.self), promise: nil)
            pipeline.removeHandler(context: try pipeline.context(handlerType: ByteToMessageHandler<HTTPRequestDecoder>.self), promise: nil)
            try pipeline.addHandler(IdleStateHandler(allTimeout: self.configuration.tunnelIdleTimeout))
            try pipeline.addHandler(clientGlue)
            gluedSides += 1
            try upstream.pipeline.syncOperations.addHandler(upstreamGlue)
            gluedSides += 1
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
            // From the pipeline's end, through the glue (which passes writes on) and TLS if
            // any. A write that fails now closes the connection through the glue, which logs.
            context.channel.writeAndFlush(ByteBuffer(string: head), promise: nil)
            // ByteToMessageHandler hands over its leftover bytes (anything the client sent
            // right after the CONNECT head) in a later event-loop tick, as a read without a
            // read-complete; flush them to the origin once they are through.
            context.eventLoop.assumeIsolated().execute {
                upstream.flush()
                if clientInputClosed { clientGlue.inputClosedBeforeTunnel() }
            }
        } catch {
            self.logger.error("could not set up tunnel", metadata: ["error": "\(error)"])
            // A side whose glue is in place ends the record when it closes; the others now.
            for _ in gluedSides..<2 { record.sideClosed() }
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
