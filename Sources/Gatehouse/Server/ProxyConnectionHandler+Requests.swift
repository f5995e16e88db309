import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

extension ProxyConnectionHandler {
    // MARK: Requests

    func requestHead(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        self.clearTimer()
        self.observer.awaitingRequest = false
        self.observer.forgetFirstLine()
        if head.method == .CONNECT { self.observer.connectHeadsTaken += 1 }
        switch self.machine.requestHeadReceived() {
        case .start: break
        case .ignore: return
        case .close: return context.close(promise: nil)
        }
        self.bufferedBody.removeAll(keepingCapacity: true)
        self.bufferedEnd = false
        self.drainedBytes = 0
        let isConnect = head.method == .CONNECT

        // Targets are parsed before authentication, so that a browser pointed at the proxy
        // as if it were a web server learns what it is talking to.
        let fields = RequestFields(head.headers)
        // Replaced by the parsed target's own description once it parses.
        let exchange = Exchange(head: head, target: RequestTarget.redactedForLog(head.uri), fields: fields)
        if !fields.transferEncodings.isEmpty {
            // A chunked upload may end in trailers: the same Connection options apply to them.
            exchange.requestConnectionOptions = head.headers.connectionOptionNames()
        }
        if self.plainHTTPOnTLSListener {
            self.exchange = exchange
            return self.answer(.tlsRequired, context: context, close: true)
        }
        if head.version.major != 1 {
            self.exchange = exchange
            return self.answer(.versionNotSupported, context: context, close: true)
        }
        if head.uri.utf8.count > self.configuration.maxURILength {
            exchange.target = String(exchange.target.prefix(64)) + "…"
            self.exchange = exchange
            return self.answer(.uriTooLong, context: context, close: true)
        }
        // Rules the parser leaves to the application (RFC 9112 §3.2, §6.1, §6.3).
        if fields.hostCount > 1 {
            self.exchange = exchange
            return self.answer(.badRequest, context: context, close: true)
        }
        if fields.hasReplacedBytes {
            // Bytes that are not UTF-8 reached us already replaced (see ReasonCode.badFieldBytes).
            // (A target with any byte outside ASCII is refused by its parser, 400 bad_target.)
            self.exchange = exchange
            return self.answer(.badFieldBytes, context: context, close: true)
        }
        let codings = fields.transferEncodings
        // Whitespace around a field value is not part of it (RFC 9110 §5.5), and NIO's parser
        // leaves trailing whitespace in the value (`chunked ` was refused). Only spaces: the
        // parser frames `chunked ` as chunked but not `chunked<TAB>`, whose body it would read
        // as the next request while the origin got it as chunked.
        if !codings.isEmpty
            && (codings.count != 1 || withoutTrailingSpaces(codings[0]).lowercased() != "chunked" || head.version == .http1_0)
        {
            // Only a lone `chunked` is framing the proxy can re-encode faithfully; anything
            // else (`gzip, chunked`, a chunked HTTP/1.0 request) is a smuggling risk.
            self.exchange = exchange
            return self.answer(.badTransferEncoding, context: context, close: true)
        }
        if head.method == .TRACE && fields.announcesContent {
            // RFC 9110 §9.3.8: a client MUST NOT send content in a TRACE request. Its body
            // could only reach the origin as a second request of its own.
            self.exchange = exchange
            return self.answer(.badRequest, context: context, close: true)
        }
        if head.version == .http1_1 && fields.hostCount == 0 && !isConnect {
            // RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without Host.
            // (Not enforced on CONNECT, whose target names the host: Python's http.client
            // before 3.12, and so `requests` over https, sends its CONNECT without one.)
            self.exchange = exchange
            return self.answer(.missingHost, context: context, close: true)
        }
        // Policy is applied after authentication (see `admit`): a client without credentials
        // learns that it must authenticate (407), not the proxy's limits.
        var policyRefusal: ReasonCode?
        if let limit = self.configuration.maxBodyBytes, let length = exchange.declaredLength, length > limit {
            policyRefusal = .bodyTooLarge
        } else if !fields.via.isEmpty && Self.carriesVia(fields.via, pseudonym: self.configuration.viaPseudonym) {
            // Our own Via on an incoming request: it came through this proxy already.
            policyRefusal = .loopDetected
        }
        var destination: Destination
        if isConnect {
            switch RequestTarget.parseConnect(head.uri) {
            case .success(let authority):
                exchange.target = authority.description
                destination = .tunnel(authority)
            case .failure:
                self.exchange = exchange
                return self.answer(.badTarget, context: context)
            }
        } else {
            switch RequestTarget.parseAbsolute(head.uri) {
            case .success(let uri):
                exchange.target = uri.logDescription
                if fields.remainingForwards(for: head.method) == 0 {
                    destination = .answerHere(head)
                } else {
                    destination = .forward(uri, head, framed: fields.isFramed)
                }
            case .failure(.originForm):
                self.exchange = exchange
                return self.answer(.originForm, context: context)
            case .failure(.httpsAbsoluteForm):
                destination = .refuse(.httpsAbsoluteForm, close: false)
            case .failure(.invalid):
                self.exchange = exchange
                return self.answer(.badTarget, context: context)
            }
        }
        if let reason = policyRefusal { destination = .refuse(reason, close: true) }
        self.exchange = exchange

        if self.configuration.testing.authenticateConnectOnly && !isConnect {
            // A fixture behaviour: plain-http forwards pass without credentials.
            return self.admit(user: nil, destination: destination, context: context)
        }
        switch self.shared.authenticator.authenticate(fields.proxyAuthorization, client: self.clientIP, on: context.eventLoop) {
        case .immediate(let outcome):
            self.authenticationFinished(outcome, destination: destination, context: context)
        case .cached(let user):
            self.counts.cacheHit()
            self.authenticationFinished(.authenticated(user: user), destination: destination, context: context)
        case .pending(let future):
            future.assumeIsolated().whenComplete { result in
                guard self.context != nil, case .authenticating = self.machine.state else { return }
                switch result {
                case .success(let outcome):
                    self.authenticationFinished(outcome, destination: destination, context: context)
                case .failure:
                    // The hashing pool is shutting down: treat as a failed verification.
                    self.authenticationFinished(.rejected(.authInvalid, user: nil), destination: destination, context: context)
                }
            }
        }
    }

    enum Destination {
        case forward(AbsoluteURI, HTTPRequestHead, framed: Bool)
        case tunnel(Authority)
        /// Refused by policy, once authenticated (`close`: the connection ends with the answer).
        case refuse(ReasonCode, close: Bool)
        /// `TRACE` or `OPTIONS` with `Max-Forwards: 0`: this proxy is its final recipient.
        case answerHere(HTTPRequestHead)
    }

    func authenticationFinished(_ outcome: Authenticator.Outcome, destination: Destination, context: ChannelHandlerContext) {
        switch outcome {
        case .refused(let reason, let retryAfter, let user):
            self.refuse(reason, user: user, retryAfter: retryAfter, context: context)
        case .rejected(let reason, let user):
            self.counts.authenticated(false)
            self.refuse(reason, user: user, retryAfter: nil, context: context)
        case .authenticated(let user):
            self.counts.authenticated(true)
            self.admit(user: user, destination: destination, context: context)
        }
    }

    /// 407, 429 or 503 for a request that was not let through.
    private func refuse(_ reason: ReasonCode, user: String?, retryAfter: Int?, context: ChannelHandlerContext) {
        self.exchange?.user = user
        self.answer(reason, context: context, retryAfter: retryAfter)
    }

    /// The request may proceed (as `user`, or anonymously where a fixture allows it).
    private func admit(user: String?, destination: Destination, context: ChannelHandlerContext) {
        self.exchange?.user = user
        self.machine.authenticated()
        switch destination {
        case .refuse(let reason, let close):
            self.answer(reason, context: context, close: close)
        case .tunnel(let authority):
            guard self.configuration.connectPorts.contains(authority.port ?? 0) else {
                return self.answer(.connectPortDenied, context: context)
            }
            self.openTunnel(to: authority, context: context)
        case .forward(let uri, let head, let framed):
            // A chunked upload may have grown past the limit while its credentials were checked.
            if self.bodyOverLimit { return self.answer(.bodyTooLarge, context: context, close: true) }
            self.forward(head, to: uri, framed: framed, context: context)
        case .answerHere(let head):
            self.answer(.maxForwards, context: context, content: Self.maxForwardsContent(for: head))
        }
        self.resumeReadingIfPossible()
    }

    /// The `CONNECT` request's `.end` arrived; the tunnel opens once the origin is connected too.
    func connectRequestCompleted(context: ChannelHandlerContext) {
        if let channel = self.tunnelUpstream, case .forwarding = self.machine.state {
            self.startTunnel(with: channel, context: context)
        }
    }

    /// Whether a `Via` field names this proxy's pseudonym (RFC 9110 §7.6.3: received-by).
    static func carriesVia(_ values: [String], pseudonym: String) -> Bool {
        values.contains { value in
            value.split(separator: ",").contains { entry in
                let parts = entry.trimmingSpaces().split(separator: " ", omittingEmptySubsequences: true)
                return parts.count >= 2 && parts[1] == Substring(pseudonym)
            }
        }
    }
}
