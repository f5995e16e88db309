import NIOCore
import NIOHTTP1
import NIOPosix

/// The request's side of a forwarded exchange: the connection to the origin (pooled or new,
/// the destination policy applied before connecting) and the request head it receives. The
/// response's side is in `ProxyConnectionHandler+OriginResponse.swift`.
extension ProxyConnectionHandler {
    /// Opens a connection to the origin and sends the request in origin form.
    func forward(_ head: HTTPRequestHead, to uri: AbsoluteURI, framed: Bool, context: ChannelHandlerContext) {
        if let failure = self.configuration.testing.upstreamFailure {
            return self.answer(failure, context: context)
        }
        // Connect only after the rest of this read has been parsed: if it holds a smuggling
        // attempt (a bad chunk after a valid head), the request is refused and the origin is
        // never contacted at all.
        context.eventLoop.assumeIsolated().execute {
            guard self.context != nil, case .connecting = self.machine.state else { return }
            self.connectUpstream(head, to: uri, replayable: !framed && head.method.isIdempotent, context: context)
        }
    }

    /// Reads per event-loop wake-up of a socket that carries bulk data: a request body streaming
    /// to an origin (while `bulkReadsFit`), and both sides of a tunnel. Otherwise a client's
    /// socket is read once per wake-up (see `GatehouseServer.configureClientPipeline`: what a
    /// read brings in is parsed at once).
    ///
    /// Each wake-up costs an `epoll_wait` and a write to the other side. Read once per wake-up,
    /// a 100 MiB upload took 6.9 ticks of CPU (4.9 with four reads) and went 20% slower; a TLS
    /// download through a tunnel took 8% more CPU. The other side's writability is only looked
    /// at between wake-ups, so what queues behind a side that stopped taking bytes grows with
    /// the reads per wake-up: 100 uploads to an origin that read nothing grew the process by
    /// 179 KiB each with one read, 283 KiB with four, 877 KiB with sixteen (NIO's default).
    static let bulkReadsPerWakeup: UInt = 4

    /// Whether the client's socket may be read `bulkReadsPerWakeup` times per wake-up: only
    /// while more of the request body is still to come (by its `Content-Length`) than a whole
    /// wake-up's reads can take.
    ///
    /// What a read brings in past the body's end (requests pipelined behind it) is parsed at
    /// once and waits in memory (see `channelRead`). NIO fixes a wake-up's reads when it starts,
    /// so the switch back to one read has to come a wake-up early: with a batch free to run
    /// into what followed the body, 20 clients that sent a 1 MiB upload and 2 MB of pipelined
    /// requests behind it, and read nothing, held 2.6 MB each (255 KiB with one read). A chunked
    /// body's end is not known in advance: it is read once per wake-up.
    var bulkReadsFit: Bool {
        guard let exchange = self.exchange else { return false }
        return Self.bulkReadsFit(declaredLength: exchange.declaredLength, received: exchange.bytesIn)
    }

    static func bulkReadsFit(declaredLength: Int?, received: Int) -> Bool {
        guard let declaredLength else { return false }
        return declaredLength - received > Int(Self.bulkReadsPerWakeup) * GatehouseServer.clientReadMaximum
    }

    /// Switches the client's socket between one read per wake-up and `bulkReadsPerWakeup`.
    func setBulkReads(_ bulk: Bool, context: ChannelHandlerContext) {
        self.bulkReads = bulk
        try? context.channel.syncOptions?.setOption(.maxMessagesPerRead, value: bulk ? Self.bulkReadsPerWakeup : UInt(1))
    }

    func connectUpstream(
        _ head: HTTPRequestHead, to uri: AbsoluteURI, replayable: Bool, context: ChannelHandlerContext, reuse: Bool = true
    ) {
        let upstreamHead = Self.upstreamRequestHead(head, uri: uri, via: self.configuration.viaPseudonym)
        let key = UpstreamPool.Key(host: uri.authority.host.lowercased(), port: uri.port, user: self.exchange?.user ?? "")
        let pool = self.pool
        // An idempotent request without a body may go out on an idle pooled connection: should
        // that turn out to be dead, it can be replayed on a fresh one. Anything else (uploads,
        // a POST even without a body) must never be sent twice (RFC 9112 §9.3.1: a proxy MUST
        // NOT automatically retry non-idempotent requests), so it always gets a fresh one.
        if reuse, replayable, let pooled = pool.take(key), let channel = pooled.channel {
            pooled.attach(client: self, isHead: head.method == .HEAD)
            self.exchange?.replay = (head, uri)
            return self.upstreamConnected(channel, head: upstreamHead, context: context)
        }
        self.exchange?.replay = nil
        let configuration = self.configuration
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let isHead = head.method == .HEAD
        let started = NIODeadline.now()
        let resolver = self.shared.resolver(on: context.eventLoop, user: self.exchange?.user ?? "")
        let connect = UpstreamConnector.bootstrap(on: context.eventLoop, configuration: configuration, halfClosure: false)
            .resolver(resolver)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    // Framing is the proxy's: the head says exactly how its body is framed (see
                    // `upstreamRequestHead`). NIO's own framing stripped a TRACE's and let a
                    // `Chunked` coding (not lower case) through unframed, so that either body
                    // went out raw behind the head, and the origin ran it as a second request.
                    var encoderConfiguration = HTTPRequestEncoder.Configuration()
                    encoderConfiguration.automaticallySetFramingHeaders = false
                    let encoder = HTTPRequestEncoder(configuration: encoderConfiguration)
                    let decoder = HTTPResponseDecoder(leftOverBytesStrategy: .dropBytes, informationalResponseStrategy: .forward)
                    try sync.addHandler(encoder)
                    try sync.addHandler(ByteToMessageHandler(decoder))
                    let handler = UpstreamHandler(
                        client: bound.value, pool: pool, key: key, upstreamTimeout: configuration.upstreamTimeout,
                        clientTimeout: configuration.idleTimeout)
                    handler.attach(client: bound.value, isHead: isHead)
                    try sync.addHandler(handler)
                }
            }
            .connect(host: uri.authority.host, port: uri.port)
        connect.assumeIsolated().whenComplete { result in
            switch result {
            case .success(let channel):
                self.shared.metrics.upstreamConnected(nanoseconds: (NIODeadline.now() - started).nanoseconds)
                self.upstreamConnected(channel, head: upstreamHead, context: context)
            case .failure(let error):
                self.logger.debug("upstream connect failed", metadata: ["error": "\(error)", "target": "\(uri.authority)"])
                let reason = resolver.reason(for: error)
                if reason == .outOfDescriptors { self.shared.reportOutOfDescriptors("connecting to an origin", error: error) }
                self.upstreamConnectFailed(reason: reason, context: context)
            }
        }
    }

    /// Builds the request the origin receives (RFC 9110 §7.6, RFC 9112 §3.2.1–3.2.2):
    /// origin-form target, `Host` from the URI's authority (a received `Host` is replaced),
    /// hop-by-hop fields and the proxy's credentials removed, and this proxy added to `Via`.
    static func upstreamRequestHead(_ head: HTTPRequestHead, uri: AbsoluteURI, via: String) -> HTTPRequestHead {
        // One pass over the received fields (see FieldKind); Host goes first (RFC 9110 §7.2).
        var fields: [(String, String)] = []
        fields.reserveCapacity(head.headers.count + 3)
        fields.append(("Host", uri.hostHeader))
        var framed = false
        var chunked = false
        // An HTTP/1.0 request's 100-continue expectation is ignored (RFC 9110 §10.1.1), and so
        // not passed on inside the HTTP/1.1 request that carries it upstream: the origin would
        // wait for the 100 to reach a client that does not know it.
        let dropExpect = head.version == .http1_0
        head.headers.appendEndToEndFields(to: &fields) { kind, _ in
            if kind == .contentLength || kind == .transferEncoding { framed = true }
            if kind == .transferEncoding { chunked = true }
            return kind != .host && !(dropExpect && kind == .expect)
        }
        if chunked {
            // The only coding accepted is a lone `chunked`, in any case (RFC 9112 §7: codings
            // are case-insensitive); NIO's encoder frames the body only if it reads exactly
            // `chunked`.
            for index in fields.indices where FieldKind(fields[index].0) == .transferEncoding {
                fields[index].1 = "chunked"
            }
        }
        fields.append(("Via", Self.viaValue(head.version, pseudonym: via)))
        if head.method == .TRACE || head.method == .OPTIONS {
            Self.decrementMaxForwards(&fields)
        }
        if !framed && Self.expectsBody(head.method) {
            // No framing means no body (RFC 9112 §6.3); say so, rather than let the encoder
            // pick chunked for an empty upload.
            fields.append(("Content-Length", "0"))
        }
        // RFC 9112 §3.2.4: the last proxy MUST send `*` for an OPTIONS whose target has an
        // empty path (`OPTIONS http://host:8001`): it asks about the server, not a resource.
        let target = head.method == .OPTIONS && uri.hadEmptyPath ? "*" : uri.originForm
        return HTTPRequestHead(version: .http1_1, method: head.method, uri: target, headers: HTTPHeaders(fields))
    }

    /// A `TRACE` or `OPTIONS` goes on with one hop fewer in `Max-Forwards` (RFC 9110 §7.6.2:
    /// an intermediary MUST decrement it; at zero the proxy answers itself, see
    /// `RequestFields.remainingForwards`). A value that is not a number is left as it is.
    static func decrementMaxForwards(_ fields: inout [(String, String)]) {
        for index in fields.indices where FieldKind(fields[index].0) == .maxForwards {
            if let remaining = RequestFields.hops(in: fields[index].1), remaining > 0 {
                fields[index].1 = String(remaining - 1)
            }
        }
    }

    /// This proxy's `Via` entry for a message received as `version` (RFC 9110 §7.6.3).
    static func viaValue(_ version: HTTPVersion, pseudonym: String) -> String {
        switch version {
        case .http1_1: return "1.1 " + pseudonym
        case .http1_0: return "1.0 " + pseudonym
        default: return "\(version.major).\(version.minor) \(pseudonym)"
        }
    }

    private static func expectsBody(_ method: HTTPMethod) -> Bool {
        switch method {
        case .POST, .PUT, .PATCH: return true
        default: return false
        }
    }

    private func upstreamConnected(_ channel: Channel, head: HTTPRequestHead, context: ChannelHandlerContext) {
        if self.context != nil, case .connecting = self.machine.state,
            let refusal = self.shared.refusal(remote: channel.remoteAddress, local: channel.localAddress)
        {
            // Checked again on the connection itself: a pooled one may predate a reload that
            // denies its address, and only a connected socket shows the local address a
            // wildcard listener shares with a loop. Its handler lets go of this client before
            // it closes; else the close answered 502 first and the refusal was logged twice.
            if let handler = try? channel.pipeline.syncOperations.handler(type: UpstreamHandler.self) {
                handler.close()
            } else {
                channel.close(promise: nil)
            }
            return self.answer(refusal, context: context)
        }
        guard self.context != nil, let complete = self.machine.upstreamConnected(),
            let handler = try? channel.pipeline.syncOperations.handler(type: UpstreamHandler.self)
        else {
            channel.close(promise: nil)
            return
        }
        self.upstream = handler
        self.exchange?.upstream = handler.remoteDescription
        handler.send(.head(head))
        for buffer in self.bufferedBody {
            handler.send(.body(.byteBuffer(buffer)))
        }
        self.bufferedBody.removeAll()
        if complete {
            handler.send(.end(self.exchange?.bufferedTrailers))
            self.exchange?.bufferedTrailers = nil
            handler.requestFinished()
        }
        handler.flush()
        self.resumeReadingIfPossible()
    }

    private func upstreamConnectFailed(reason: ReasonCode, context: ChannelHandlerContext) {
        guard self.context != nil, case .connecting = self.machine.state else { return }
        self.answer(reason, context: context)
    }
}
