#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

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
        // Digits and dots are an IPv4 address or nothing: `999.1.1.1` passed `check` and then
        // failed to start as a host name that does not resolve.
        if authority.host.allSatisfy({ $0 == "." || $0.isASCII && $0.isNumber }) {
            var raw = in_addr()
            guard inet_pton(AF_INET, authority.host, &raw) == 1 else { throw .invalidListenAddress(text) }
        }
        self.init(host: authority.host, port: port)
    }

    public var description: String {
        self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)"
    }
}
