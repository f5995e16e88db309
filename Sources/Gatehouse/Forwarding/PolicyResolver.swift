import Dispatch
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Resolves an origin's name and hands NIO's Happy Eyeballs connector only the addresses the
/// proxy may connect to, so a refused destination never receives a single SYN.
///
/// The destination policy and loop detection used to be checked on the connected socket. That
/// let an authenticated user scan a denied network: an open port answered 403, a closed one
/// 502, a filtered one 504 after the connect timeout, and every open port saw a connection
/// from the proxy. Now every resolved address is checked first; a name whose addresses are all
/// refused gets the refusal (403 `destination_denied` or 508 `loop_detected`) without any
/// connection attempt. The check on the connected socket stays, for what only it knows (the
/// local address a wildcard listener shares with a loop).
///
/// Resolution is `getaddrinfo`, as NIO's own resolver does it (which NIO does not make
/// public), in the order the system returns (`gai.conf`).
final class PolicyResolver: Resolver, Sendable {
    typealias Check = @Sendable (SocketAddress) -> ReasonCode?

    private let v4: EventLoopPromise<[SocketAddress]>
    private let v6: EventLoopPromise<[SocketAddress]>
    private let check: Check
    private let firstRefusal = NIOLockedValueBox<ReasonCode?>(nil)

    /// Serial queues, taken in turn: a slow name holds up only the lookups behind it on its
    /// queue. Not one concurrent queue: libdispatch runs those on at most one thread per core,
    /// shared with every other blocking `async` in the process, and lookups waited seconds
    /// behind them. A serial queue gets its own thread when it needs one (NIO's resolver uses
    /// one serial queue per event loop).
    private static let queues = (0..<8).map { DispatchQueue(label: "gatehouse.resolver.\($0)") }
    private static let nextQueue = NIOLockedValueBox(0)

    init(loop: EventLoop, check: @escaping Check) {
        self.v4 = loop.makePromise()
        self.v6 = loop.makePromise()
        self.check = check
    }

    /// Why addresses were left out, when any were: the first refusal met.
    var refusal: ReasonCode? { self.firstRefusal.withLockedValue { $0 } }

    /// Whether a failed connect never tried an address because the policy left none: the
    /// client then gets the refusal instead of a connect error.
    func refusal(explaining error: Error) -> ReasonCode? {
        guard let refusal = self.refusal else { return nil }
        guard let error = error as? NIOConnectionError, error.connectionErrors.isEmpty else { return nil }
        return refusal
    }

    /// `getaddrinfo` answers both families at once: it runs for the AAAA query and completes
    /// the A query's future too (NIO's connector asks for both).
    func initiateAQuery(host: String, port: Int) -> EventLoopFuture<[SocketAddress]> {
        self.v4.futureResult
    }

    func initiateAAAAQuery(host: String, port: Int) -> EventLoopFuture<[SocketAddress]> {
        let index = Self.nextQueue.withLockedValue { next in
            defer { next = (next + 1) % Self.queues.count }
            return next
        }
        Self.queues[index].async { self.resolve(host: host, port: port) }
        return self.v6.futureResult
    }

    /// A `getaddrinfo` call cannot be interrupted; its result is dropped.
    func cancelQueries() {}

    private func resolve(host: String, port: Int) {
        switch Self.lookup(host: host, port: port) {
        case .success(let (v4, v6)):
            self.v4.succeed(self.permitted(v4))
            self.v6.succeed(self.permitted(v6))
        case .failure(let error):
            self.v4.fail(error)
            self.v6.fail(error)
        }
    }

    private func permitted(_ addresses: [SocketAddress]) -> [SocketAddress] {
        addresses.filter { address in
            guard let refusal = self.check(address) else { return true }
            self.firstRefusal.withLockedValue { if $0 == nil { $0 = refusal } }
            return false
        }
    }

    /// A name that did not resolve (the client gets 502 `upstream_dns`).
    struct LookupError: Error, CustomStringConvertible {
        let host: String
        let reason: String
        var description: String { "cannot resolve \(self.host): \(self.reason)" }
    }

    /// The TCP addresses of `host` (a name or an IP literal), IPv4 and IPv6 apart.
    static func lookup(host: String, port: Int) -> Result<([SocketAddress], [SocketAddress]), LookupError> {
        var hints = addrinfo()
        #if os(Linux)
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        #else
        hints.ai_socktype = SOCK_STREAM
        #endif
        hints.ai_protocol = Int32(IPPROTO_TCP)
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &list)
        guard status == 0, let first = list else {
            return .failure(LookupError(host: host, reason: String(cString: gai_strerror(status))))
        }
        defer { freeaddrinfo(list) }
        var v4: [SocketAddress] = []
        var v6: [SocketAddress] = []
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let info = entry?.pointee {
            if let address = info.ai_addr {
                switch info.ai_family {
                case AF_INET:
                    address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { v4.append(SocketAddress($0.pointee, host: host)) }
                case AF_INET6:
                    address.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { v6.append(SocketAddress($0.pointee, host: host)) }
                default:
                    break
                }
            }
            entry = info.ai_next
        }
        return .success((v4, v6))
    }
}
