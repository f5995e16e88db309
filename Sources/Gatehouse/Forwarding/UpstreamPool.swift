import NIOConcurrencyHelpers
import NIOCore

/// Idle keep-alive connections to origins, for reuse by later requests.
///
/// There is one pool per event loop: a client connection and its origin connection always
/// share a loop, so a pool is only ever touched from its own loop and needs no lock. A
/// connection goes back to the pool only when its last exchange ended cleanly — the request
/// fully sent, the response fully read, framed by length or chunks, and keep-alive on both
/// sides (RFC 9112 §9.3); anything else is closed. An idle connection that the origin closes
/// leaves the pool by itself, and one idle longer than the upstream timeout is closed.
///
/// Connections are kept per user: one user's request never travels on a connection another
/// user's request used. HTTP/1.1 has no request IDs, so a response is matched to a request by
/// order alone. An origin that sends a stray response (a second answer, a late one) shifts
/// every answer after it on that connection by one, and with shared connections the next
/// user got the previous user's response. Per-user pools keep such a fault within one user's
/// own traffic; the cost is more origin connections when many users reach the same origin.
///
/// Up to 128 idle connections per origin and user on each loop (1,024 in all). With 32, a
/// load of 200 keep-alive clients returned more connections at once than fit, closed the rest,
/// and opened new ones for the next requests: 30,000 origin connects in 5 s and 40% fewer
/// requests a second (18k against 28k; about 200 connects with 128).
final class UpstreamPool: @unchecked Sendable {
    struct Key: Hashable {
        var host: String
        var port: Int
        /// The authenticated user the connection carries requests for.
        var user: String
    }

    private let eventLoop: EventLoop
    private var idle: [Key: [UpstreamHandler]] = [:]
    private var count = 0
    let maximumPerOrigin: Int
    let maximumTotal: Int

    init(eventLoop: EventLoop, maximumPerOrigin: Int = 128, maximumTotal: Int = 1024) {
        self.eventLoop = eventLoop
        self.maximumPerOrigin = maximumPerOrigin
        self.maximumTotal = maximumTotal
    }

    /// The most recently used idle connection to `key` that is still open, if any.
    func take(_ key: Key) -> UpstreamHandler? {
        self.eventLoop.assertInEventLoop()
        // Mutated in place through the dictionary: copying the list out first would make
        // popLast copy the whole array, on every forwarded request.
        while let handler = self.idle[key]?.popLast() {
            if self.idle[key]?.isEmpty == true { self.idle[key] = nil }
            self.count -= 1
            if handler.isReusable { return handler }
            handler.close()
        }
        return nil
    }

    /// Keeps a connection for reuse; closes it instead when the pool is full.
    func release(_ handler: UpstreamHandler, key: Key) {
        self.eventLoop.assertInEventLoop()
        guard self.count < self.maximumTotal, (self.idle[key]?.count ?? 0) < self.maximumPerOrigin else {
            handler.close()
            return
        }
        self.idle[key, default: []].append(handler)
        self.count += 1
    }

    /// Forgets a connection that closed while idle.
    func remove(_ handler: UpstreamHandler, key: Key) {
        self.eventLoop.assertInEventLoop()
        guard var list = self.idle[key], let index = list.firstIndex(where: { $0 === handler }) else { return }
        list.remove(at: index)
        self.idle[key] = list.isEmpty ? nil : list
        self.count -= 1
    }

    var idleCount: Int { self.count }
}
