/// A configuration problem found before Gatehouse starts serving.
///
/// Every case renders as one line that names what was wrong (and, for files, where), so the
/// command-line tool can print it and exit non-zero.
public enum ConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    case invalidListenAddress(String)
    case invalidPortList(String)
    case invalidDuration(String)
    case invalidInlineUser(String)
    /// The same name twice among the inline users: which password applies would be a guess
    /// (a user defined twice in an htpasswd file is refused too).
    case duplicateInlineUser(String)
    case noCredentialSource
    case htpasswd(String)
    case invalidCIDR(String)
    case invalidLimit(String, minimum: Int)
    case limitTooSmall(String, minimum: Int)
    /// Another socket already listens on this address (see `GatehouseServer.refuseIfTaken`).
    case listenAddressInUse(String)
    case listenHostUnknown(String)
    case cannotListen(String, reason: String)
    case duplicateListenAddress(String)
    /// `tls_listen` without both `tls_cert` and `tls_key`, or the other way round.
    case tlsIncomplete(String)
    /// The certificate chain could not be read.
    case tlsFiles(String)
    /// The private key could not be read, or is not the certificate's.
    case tlsKey(String)

    public var description: String {
        switch self {
        case .invalidListenAddress(let value):
            return "invalid listen address \"\(value)\": expected HOST:PORT or [IPv6]:PORT, HOST a name or an IP address, PORT from 0 to 65535"
        case .invalidPortList(let value):
            return "invalid connect-ports list \"\(value)\": expected ports and ranges such as 443,8443,9000-9100"
        case .invalidDuration(let value):
            return "invalid duration \"\(value)\": expected a number followed by ms, s, m or h (for example 500ms, 10s, 2m)"
        case .invalidInlineUser(let value):
            // Only the name is shown, never what may be a password (an entry without a colon
            // may be nothing but one).
            guard value.contains(":") else { return "invalid --user entry without \":\" (not shown): expected NAME:PASSWORD" }
            return "invalid --user \"\(value.prefix(while: { $0 != ":" })):…\": expected NAME:PASSWORD with a non-empty name"
        case .duplicateInlineUser(let name):
            return "--user \"\(name)\" is given more than once: give each user one password"
        case .noCredentialSource:
            return "no credentials configured: give --htpasswd PATH or --user NAME:PASSWORD; Gatehouse never runs as an open proxy"
        case .htpasswd(let message):
            return message
        case .invalidCIDR(let value):
            return "invalid CIDR \"\(value)\": expected an address with an optional prefix length, such as 10.0.0.0/8 or fd00::/8"
        case .invalidLimit(let value, _):
            return "invalid limit \"\(value)\": expected a positive whole number (sizes may end in K, M or G) of at most 12 digits that fits in 64 bits"
        case .limitTooSmall(let value, let minimum):
            return "limit \"\(value)\" is too small: the least this one allows is \(minimum)"
        case .listenAddressInUse(let address):
            return "cannot listen on \(address): address already in use (is another Gatehouse or proxy running there?)"
        case .listenHostUnknown(let address):
            return "cannot listen on \(address): the host is not an address of this machine's and does not resolve"
        case .cannotListen(let address, let reason):
            return "cannot listen on \(address): \(reason)"
        case .duplicateListenAddress(let address):
            return "listen address \(address) is given more than once"
        case .tlsIncomplete(let message), .tlsFiles(let message), .tlsKey(let message):
            return message
        }
    }
}
