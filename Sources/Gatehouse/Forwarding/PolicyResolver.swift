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
/// public), in the order the system returns (`gai.conf`). An IP address (in any spelling
/// `getaddrinfo` takes: `127.1` and `0x7f.1` too) is read at once, on the event loop, with
/// `AI_NUMERICHOST`, which does no I/O; only names go to ``LookupThreads``. Before, an IP
/// address waited in the same queues as names, and one user's names under a domain whose
/// DNS server does not answer (about 6 s each) held up every user's connections, to IP
/// addresses too, until they failed as connect timeouts.
final class PolicyResolver: Resolver, Sendable {
    typealias Check = @Sendable (SocketAddress) -> ReasonCode?

    private let v4: EventLoopPromise<[SocketAddress]>
    private let v6: EventLoopPromise<[SocketAddress]>
    private let check: Check
    private let user: String
    private let threads: LookupThreads
    /// The first refusal met, whether the lookup ended, and whether NIO gave up on it.
    private let state = NIOLockedValueBox<(refusal: ReasonCode?, finished: Bool, cancelled: Bool)>((nil, false, false))

    /// Looks names up on `threads`, counting the lookups against `user` (the authenticated
    /// user the connection is for).
    init(loop: EventLoop, user: String, threads: LookupThreads = .shared, check: @escaping Check) {
        self.v4 = loop.makePromise()
        self.v6 = loop.makePromise()
        self.user = user
        self.threads = threads
        self.check = check
    }

    /// Why addresses were left out, when any were: the first refusal met.
    var refusal: ReasonCode? { self.state.withLockedValue { $0.refusal } }

    /// Whether a failed connect never tried an address because the policy left none: the
    /// client then gets the refusal instead of a connect error.
    func refusal(explaining error: Error) -> ReasonCode? {
        guard let refusal = self.refusal else { return nil }
        guard let error = error as? NIOConnectionError, error.connectionErrors.isEmpty else { return nil }
        return refusal
    }

    /// The reason a failed connect gets: the policy's refusal (see ``refusal(explaining:)``);
    /// `upstream_dns_timeout` when `--connect-timeout` ran out before the name resolved (it
    /// was logged `upstream_connect_timeout`, which sent operators to the network, not to
    /// DNS); else what ``UpstreamConnector/reason(for:)`` makes of the error.
    func reason(for error: Error) -> ReasonCode {
        if let refusal = self.refusal(explaining: error) { return refusal }
        if let error = error as? ChannelError, case .connectTimeout = error, !self.state.withLockedValue({ $0.finished }) {
            return .upstreamDNSTimeout
        }
        return UpstreamConnector.reason(for: error)
    }

    /// `getaddrinfo` answers both families at once: it runs for the AAAA query and completes
    /// the A query's future too (NIO's connector asks for both).
    func initiateAQuery(host: String, port: Int) -> EventLoopFuture<[SocketAddress]> {
        self.v4.futureResult
    }

    func initiateAAAAQuery(host: String, port: Int) -> EventLoopFuture<[SocketAddress]> {
        if let numeric = Self.lookup(host: host, port: port, numericOnly: true) {
            self.complete(numeric)
        } else {
            self.threads.run(for: self.user) {
                // NIO gave up on it (connect timeout) while it waited: no thread spent on it.
                if self.state.withLockedValue({ $0.cancelled }) {
                    self.complete(.failure(LookupError(host: host, reason: "abandoned")))
                } else {
                    self.complete(Self.lookup(host: host, port: port, numericOnly: false) ?? .failure(LookupError(host: host, reason: "no answer")))
                }
            }
        }
        return self.v6.futureResult
    }

    /// A `getaddrinfo` call cannot be interrupted; one still waiting for a thread is skipped,
    /// and a running one's result is dropped.
    func cancelQueries() {
        self.state.withLockedValue { $0.cancelled = true }
    }

    private func complete(_ result: Result<([SocketAddress], [SocketAddress]), LookupError>) {
        self.state.withLockedValue { $0.finished = true }
        switch result {
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
            self.state.withLockedValue { if $0.refusal == nil { $0.refusal = refusal } }
            return false
        }
    }

    /// A name that did not resolve (the client gets 502 `upstream_dns`).
    struct LookupError: Error, CustomStringConvertible {
        let host: String
        let reason: String
        var description: String { "cannot resolve \(self.host): \(self.reason)" }
    }

    /// The TCP addresses of `host` (a name or an IP literal), IPv4 and IPv6 apart. With
    /// `numericOnly`, only an IP address is read (no I/O) and a name gives nil.
    static func lookup(host: String, port: Int, numericOnly: Bool) -> Result<([SocketAddress], [SocketAddress]), LookupError>? {
        var hints = addrinfo()
        #if os(Linux)
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        #else
        hints.ai_socktype = SOCK_STREAM
        #endif
        hints.ai_protocol = Int32(IPPROTO_TCP)
        if numericOnly { hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV }
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &list)
        guard status == 0, let first = list else {
            if numericOnly { return nil }
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
