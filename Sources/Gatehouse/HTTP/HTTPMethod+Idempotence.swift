import NIOHTTP1

extension HTTPMethod {
    /// Methods whose effect is the same however often a request is sent (RFC 9110 §9.2.2):
    /// the only ones a proxy may send again on its own, after a connection failed before any
    /// answer came (RFC 9112 §9.3.1).
    var isIdempotent: Bool {
        switch self {
        case .GET, .HEAD, .OPTIONS, .TRACE, .PUT, .DELETE: return true
        default: return false
        }
    }
}
