/// A `HOST:PORT` pair the proxy listens on.
///
/// IPv6 literals are bracketed as in URIs (RFC 3986 §3.2.2): `[::1]:3128`. Port 0 asks the
/// kernel for an ephemeral port, which is how tests and fixtures avoid port clashes.
public struct ListenAddress: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `HOST:PORT` or `[IPv6]:PORT`.
    public init(parsing text: String) throws(ConfigurationError) {
        guard let authority = Authority(parsing: Substring(text)), let port = authority.port else {
            throw .invalidListenAddress(text)
        }
        self.init(host: authority.host, port: port)
    }

    public var description: String {
        self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)"
    }
}
