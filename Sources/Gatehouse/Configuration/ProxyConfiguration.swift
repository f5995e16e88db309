import NIOCore

/// Everything that shapes how Gatehouse serves, fixed for the life of a server.
///
/// The value is immutable once the server starts and `Sendable`, so every connection reads it
/// without locks. Defaults are the built-in ones documented in the README.
public struct ProxyConfiguration: Sendable {
    /// Addresses to listen on. Default `127.0.0.1:3128`: loopback only, so a fresh install is
    /// never reachable from the network by accident.
    public var listen: [ListenAddress] = [ListenAddress(host: "127.0.0.1", port: 3128)]
    /// Addresses where clients speak TLS to the proxy (an `https://` proxy URL), so that their
    /// `Proxy-Authorization` never crosses the network in clear. Needs ``tlsFiles``. Empty by
    /// default.
    public var tlsListen: [ListenAddress] = []
    /// The certificate chain and private key the ``tlsListen`` listeners present.
    public var tlsFiles: TLSFiles? = nil
    /// The realm in the `Proxy-Authenticate` challenge (RFC 9110 §11.5).
    public var realm: String = "Gatehouse"
    /// Ports that `CONNECT` may reach.
    public var connectPorts: PortSet = PortSet([443...443])
    /// How long to wait for a TCP connection to an origin (504 `upstream_connect_timeout`).
    public var connectTimeout: TimeAmount = .seconds(10)
    /// How long an origin may stay silent once the request has been sent (504 `upstream_timeout`).
    public var upstreamTimeout: TimeAmount = .seconds(60)
    /// How long a client may take to send a complete request head once it has started (408).
    public var headerTimeout: TimeAmount = .seconds(20)
    /// How long a keep-alive client connection may sit idle between requests.
    public var idleTimeout: TimeAmount = .seconds(60)
    /// How long a CONNECT tunnel may carry no bytes in either direction.
    public var tunnelIdleTimeout: TimeAmount = .minutes(10)
    /// How long graceful shutdown waits for in-flight requests and tunnels.
    public var drainTimeout: TimeAmount = .seconds(30)
    /// The longest request target accepted; longer ones get 414 (RFC 9112 §3 recommends
    /// supporting at least 8000 octets).
    public var maxURILength: Int = 8192
    /// The largest request header section accepted; larger ones get 431 (RFC 6585 §5).
    public var maxHeaderBytes: Int = 32 * 1024
    /// The pseudonym in the `Via` header this proxy adds (RFC 9110 §7.6.3).
    public var viaPseudonym: String = "gatehouse"
    /// How long a verified credential is trusted without hashing the password again.
    public var credentialCacheTTL: TimeAmount = .minutes(5)
    /// The largest request header section accepted, in fields; more get 431.
    public var maxHeaderFields: Int = 100
    /// The largest request body accepted (413 `body_too_large`); nil means no limit.
    public var maxBodyBytes: Int? = nil
    /// Client connections served at once; above it new ones get 503 with `Retry-After`.
    public var maxConnections: Int = 16_384
    /// Client connections one address may hold at once (503 `client_connection_limit`).
    public var maxConnectionsPerClient: Int = 4096
    /// Which destination addresses may be reached (forwards and CONNECT alike).
    public var destinations = DestinationPolicy()
    /// Throttling of failed authentication (429 `auth_throttled`).
    public var authThrottle = AuthThrottle.Limits()
    /// Password verifications that may wait for the hashing pool; beyond it, 503 `auth_busy`.
    public var maxPendingVerifications: Int = 256
    /// Request-body bytes read and dropped after an early answer (a 407 to an upload, an
    /// origin's 413) so the connection can carry the next request; past this the connection
    /// is closed instead. Draining without a limit let one client keep a core busy.
    public var maxDrainBytes: Int = 64 * 1024 * 1024
    /// The longest a connection closed in stages waits for the client to close its side,
    /// reading and dropping what it still sends, so that its last response is not destroyed by
    /// a reset (RFC 9112 §9.6; see `RequestStartObserver.closeLingering`). nginx's
    /// `lingering_time`. A client that writes its whole upload before it reads (wget, Python's
    /// urllib) only sees the answer if the rest of its upload is taken: with 2 s and 64 MiB,
    /// a 100 MiB upload refused with 407 or 413 ended in "broken pipe".
    public var lingerTime: TimeAmount = .seconds(30)
    /// A connection closed in stages closes sooner once the client has sent nothing for this
    /// long (nginx's `lingering_timeout`).
    public var lingerTimeout: TimeAmount = .seconds(5)
    /// Deviations for testing clients' 407 and failure handling; all off by default.
    public var testing = TestingBehaviours()

    public init() {}
}
