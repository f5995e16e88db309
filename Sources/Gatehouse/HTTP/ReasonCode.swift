import NIOHTTP1

/// Why Gatehouse sent the status it sent.
///
/// Every access-log line carries one of these, and every error response states the same reason
/// in plain words. The words never reveal whether a user name exists (RFC 9110 §11.6.2 leaves
/// that to the proxy; revealing it would let anyone enumerate accounts).
public enum ReasonCode: String, Sendable, CaseIterable {
    case forwarded
    case tunnel
    case badRequest = "bad_request"
    /// An HTTP/1.1 request without `Host` (RFC 9112 §3.2 requires 400).
    case missingHost = "missing_host"
    case originForm = "origin_form"
    case badTarget = "bad_target"
    case connectPortDenied = "connect_port_denied"
    case authMissing = "auth_missing"
    case authScheme = "auth_scheme"
    case authMalformed = "auth_malformed"
    case authInvalid = "auth_invalid"
    case headerTimeout = "header_timeout"
    /// The client stopped sending its request body (for the idle timeout) while the origin
    /// was ready to take more.
    case bodyTimeout = "body_timeout"
    case uriTooLong = "uri_too_long"
    case headerTooLarge = "header_too_large"
    case httpsAbsoluteForm = "https_absolute_form"
    /// Plain HTTP sent to a TLS listener (`tls_listen`): an `http://` proxy URL where an
    /// `https://` one was meant. Answered in clear, before the credentials are looked at.
    case tlsRequired = "tls_required"
    case upstreamDNS = "upstream_dns"
    case upstreamRefused = "upstream_refused"
    case upstreamUnreachable = "upstream_unreachable"
    case upstreamBadResponse = "upstream_bad_response"
    /// The origin answered 407: only a proxy may ask for proxy credentials, and the client's
    /// are for Gatehouse (never passed on), so it could not answer the challenge.
    case upstreamProxyAuth = "upstream_proxy_auth"
    case upstreamClosed = "upstream_closed"
    case upstreamConnectTimeout = "upstream_connect_timeout"
    /// `--connect-timeout` ran out while the origin's name was still being resolved.
    case upstreamDNSTimeout = "upstream_dns_timeout"
    case upstreamTimeout = "upstream_timeout"
    case versionNotSupported = "version_not_supported"
    case bodyTooLarge = "body_too_large"
    case badTransferEncoding = "bad_transfer_encoding"
    case tooManyConnections = "too_many_connections"
    case clientConnectionLimit = "client_connection_limit"
    /// The proxy could not open a connection to the origin for lack of file descriptors
    /// (EMFILE/ENFILE): its own fault, not the destination's.
    case outOfDescriptors = "out_of_descriptors"
    case authThrottled = "auth_throttled"
    case authBusy = "auth_busy"
    case destinationDenied = "destination_denied"
    case loopDetected = "loop_detected"
    /// A request method NIO's parser (llhttp) does not know: it cannot be parsed, so it cannot
    /// be forwarded (RFC 9110 §9.1: 501 for an unrecognised method).
    case unknownMethod = "unknown_method"
    /// A field value held bytes that are not UTF-8 (obs-text, RFC 9110 §5.5). NIO's parser
    /// hands fields over as Swift strings, which replace such bytes with U+FFFD; rather than
    /// pass altered bytes on, the request is refused (a response gets `upstream_bad_response`).
    case badFieldBytes = "bad_field_bytes"
    /// `TRACE` or `OPTIONS` with `Max-Forwards: 0`: answered by the proxy itself, as RFC 9110
    /// §7.6.2 requires of the recipient that would otherwise forward it.
    case maxForwards = "max_forwards"
    /// Log-only: the origin cut its body short; the client connection was closed.
    case upstreamTruncated = "upstream_truncated"
    /// Log-only: the client went away before the response was complete.
    case clientClosed = "client_closed"
    /// Log-only: the client took none of the response for the idle timeout (its socket stayed
    /// full); both connections were closed.
    case clientStalled = "client_stalled"
    /// Log-only: Gatehouse closed the connection itself, at the end of a drain that timed out
    /// or on a second SIGTERM; status 0 if none was sent.
    case shutdown

    /// Whether every response with this reason has ``status`` (false where the origin's
    /// status is logged: forwards, tunnels, and their failures after the response began).
    var hasFixedStatus: Bool {
        switch self {
        case .forwarded, .tunnel, .upstreamTruncated, .clientClosed, .clientStalled, .shutdown: return false
        default: return true
        }
    }

    /// The status Gatehouse itself answers with for this reason.
    public var status: HTTPResponseStatus {
        switch self {
        case .forwarded, .tunnel, .upstreamTruncated, .clientClosed, .clientStalled, .shutdown, .maxForwards: return .ok
        case .badRequest, .missingHost, .originForm, .badTarget, .badFieldBytes, .tlsRequired: return .badRequest
        case .connectPortDenied: return .forbidden
        case .authMissing, .authScheme, .authMalformed, .authInvalid: return .proxyAuthenticationRequired
        case .headerTimeout, .bodyTimeout: return .requestTimeout
        case .uriTooLong: return .uriTooLong
        case .headerTooLarge: return .requestHeaderFieldsTooLarge
        case .httpsAbsoluteForm, .unknownMethod: return .notImplemented
        case .upstreamDNS, .upstreamRefused, .upstreamUnreachable, .upstreamBadResponse, .upstreamProxyAuth, .upstreamClosed:
            return .badGateway
        case .upstreamConnectTimeout, .upstreamDNSTimeout, .upstreamTimeout: return .gatewayTimeout
        case .versionNotSupported: return .httpVersionNotSupported
        case .bodyTooLarge: return .payloadTooLarge
        case .badTransferEncoding: return .badRequest
        case .tooManyConnections, .clientConnectionLimit, .authBusy, .outOfDescriptors: return .serviceUnavailable
        case .authThrottled: return .tooManyRequests
        case .destinationDenied: return .forbidden
        case .loopDetected: return .loopDetected
        }
    }

    /// Seconds for `Retry-After` (RFC 9110 §10.2.3) on statuses that invite a retry.
    var defaultRetryAfter: Int? {
        switch self {
        case .tooManyConnections, .clientConnectionLimit, .outOfDescriptors: return 5
        case .authBusy: return 1
        default: return nil
        }
    }

    /// The short plain-text body of an error response.
    public var message: String {
        switch self {
        case .forwarded: return "Forwarded."
        case .tunnel: return "Connection established."
        case .badRequest: return "Malformed HTTP request."
        case .missingHost: return "An HTTP/1.1 request must carry a Host header field."
        case .originForm:
            return "This is Gatehouse, a forward proxy. Send requests in absolute form (GET http://host/path) by configuring it as your HTTP proxy."
        case .badTarget: return "The request target is not a valid http:// URL or CONNECT host:port."
        case .connectPortDenied: return "CONNECT to this port is not allowed by this proxy."
        case .authMissing: return "Proxy authentication required: send Proxy-Authorization with Basic credentials."
        case .authScheme: return "Proxy authentication required: only the Basic scheme is supported."
        case .authMalformed: return "Proxy authentication required: the Basic credentials are malformed."
        case .authInvalid: return "Proxy authentication required: the user name or password is not valid."
        case .headerTimeout: return "The request header was not received in time."
        case .bodyTimeout: return "The request body stopped arriving."
        case .uriTooLong: return "The request target is too long."
        case .headerTooLarge: return "The request header section is too large."
        case .httpsAbsoluteForm:
            return "Gatehouse does not forward https:// URLs in absolute form. Use CONNECT (https_proxy) for https."
        case .tlsRequired:
            return "This proxy port expects TLS: use an https:// proxy URL (curl: --proxy https://HOST:PORT). Nothing was checked or forwarded, but what was sent, credentials included, crossed the network in clear."
        case .upstreamDNS: return "The destination host name could not be resolved."
        case .upstreamRefused: return "The destination refused the connection."
        case .upstreamUnreachable: return "The destination could not be reached."
        case .upstreamBadResponse: return "The destination sent an invalid HTTP response."
        case .upstreamProxyAuth: return "The destination asked for proxy authentication, which cannot be passed on through this proxy."
        case .upstreamClosed: return "The destination closed the connection without a response."
        case .upstreamConnectTimeout: return "Connecting to the destination timed out."
        case .upstreamDNSTimeout: return "Resolving the destination host name timed out."
        case .upstreamTimeout: return "The destination did not respond in time."
        case .versionNotSupported: return "Only HTTP/1.0 and HTTP/1.1 are supported."
        case .bodyTooLarge: return "The request body is larger than this proxy accepts."
        case .badTransferEncoding: return "Only the chunked transfer coding is accepted on requests."
        case .tooManyConnections: return "The proxy is at its connection limit; retry later."
        case .clientConnectionLimit: return "Too many connections from your address; retry later."
        case .outOfDescriptors: return "The proxy has run out of file descriptors; retry later."
        case .authThrottled: return "Too many failed authentication attempts; retry later."
        case .authBusy: return "The proxy is busy checking credentials; retry shortly."
        case .destinationDenied: return "This destination is not allowed by the proxy's policy."
        case .loopDetected: return "The request would loop back through this proxy."
        case .unknownMethod: return "This proxy does not know the request method."
        case .badFieldBytes:
            return "A header field holds bytes that are not UTF-8, which this proxy cannot pass on unaltered."
        case .maxForwards: return "Max-Forwards reached zero: answered by the proxy."
        case .upstreamTruncated: return "The destination cut its response short."
        case .clientClosed: return "The client closed the connection."
        case .clientStalled: return "The client stopped reading the response."
        case .shutdown: return "The proxy closed the connection while shutting down."
        }
    }
}
