/// One response Gatehouse sent, as it appears in the access log.
///
/// Built on the event loop and handed to ``AccessLog`` whole; it holds no credentials, only the
/// user name that authenticated (or none).
public struct AccessLogEntry: Sendable, Equatable {
    /// Seconds since 1970 when the request started.
    public var timestamp: Double
    public var client: String
    public var user: String?
    public var method: String
    /// The URL without userinfo, or the authority for CONNECT.
    public var target: String
    public var version: String
    public var status: Int
    public var reason: ReasonCode
    /// Bytes written to the client (head and body).
    public var bytesOut: Int
    /// Bytes of request body (or tunnel bytes) received from the client.
    public var bytesIn: Int
    public var upstream: String?
    public var durationMilliseconds: Int
    /// The response's `Content-Type` (the origin's, or `text/plain` for Gatehouse's own), as
    /// Squid's format logs it.
    public var contentType: String?

    public init(
        timestamp: Double, client: String, user: String?, method: String, target: String, version: String,
        status: Int, reason: ReasonCode, bytesOut: Int, bytesIn: Int, upstream: String?, durationMilliseconds: Int,
        contentType: String? = nil
    ) {
        self.timestamp = timestamp
        self.client = client
        self.user = user
        self.method = method
        self.target = target
        self.version = version
        self.status = status
        self.reason = reason
        self.bytesOut = bytesOut
        self.bytesIn = bytesIn
        self.upstream = upstream
        self.durationMilliseconds = durationMilliseconds
        self.contentType = contentType
    }
}
