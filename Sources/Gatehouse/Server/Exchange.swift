import NIOCore
import NIOHTTP1

/// Bookkeeping for one request/response exchange, turned into an access-log line at its end.
/// A class, so that an idle connection (no exchange) does not carry its storage inline.
final class Exchange {
    var method: String
    var target: String
    var version: HTTPVersion
    var user: String?
    var clientKeepAlive: Bool
    var expectsContinue: Bool
    var started: NIODeadline
    var timestamp: Double
    var bytesIn = 0
    /// The request body's `Content-Length`, if it has one.
    var declaredLength: Int?
    /// The request body is chunked: where it ends is not known before it does.
    var bodyOfUnknownLength = false
    var bytesOut = 0
    var upstream: String?
    var status: Int = 0
    /// The `Content-Type` of the response sent, for the log.
    var contentType: String?
    var isHead: Bool
    var isConnect: Bool
    /// The response to the client is chunked by the proxy (for the byte count: chunk framing
    /// is part of what was sent).
    var chunkedResponse = false
    /// The client's response ends when the connection closes (an HTTP/1.0 client of a
    /// response the origin chunked): a cut-short body must end in a reset, not a close.
    var closeDelimitedResponse = false
    /// The request went out on a pooled origin connection and can be replayed once on a fresh
    /// one if that connection turns out to be dead (kept here, not on the connection, so an
    /// idle connection holds none of it).
    var replay: (head: HTTPRequestHead, uri: AbsoluteURI)?
    /// Field names the request's `Connection` listed, kept for a chunked upload's trailers.
    var requestConnectionOptions: [String] = []
    /// The upload's trailer fields, while the origin connection is still being made.
    var bufferedTrailers: HTTPHeaders?

    init(head: HTTPRequestHead, target: String, fields: RequestFields) {
        self.method = head.method.rawValue
        self.target = target
        self.version = head.version
        // A request that asks to upgrade (`Connection: Upgrade` and `Upgrade`, as curl's
        // `--http2` sends for h2c) is answered in HTTP/1.1, which RFC 9110 §7.8 allows, and the
        // connection closes after the answer: NIO's parser stops parsing after such a request,
        // so a next request on the connection would never be read (it waited for the header
        // timeout and got 408).
        //
        // A `CONNECT` that announces content closes after a refusal, for a like reason: "A
        // CONNECT request message does not have content" (RFC 9110 §9.3.6), NIO's parser stops
        // after its head, and where such content would end is anyone's guess. Read as the next
        // request, it got a 400 and the requests pipelined behind it were lost without a word;
        // now the refusal says `Connection: close`, and the client knows to start again.
        self.clientKeepAlive =
            (head.isKeepAlive || (head.version == .http1_0 && fields.proxyConnectionKeepAlive)) && !fields.upgrade
            && !(head.method == .CONNECT && fields.announcesContent)
        // RFC 9110 §10.1.1: a server MUST ignore a 100-continue expectation in an HTTP/1.0
        // request.
        self.expectsContinue = fields.expectsContinue && head.version != .http1_0
        self.started = .now()
        self.timestamp = wallClockSeconds()
        self.isHead = head.method == .HEAD
        self.isConnect = head.method == .CONNECT
        self.declaredLength = fields.declaredLength
        self.bodyOfUnknownLength = fields.bodyOfUnknownLength
    }

    /// The request's head never parsed (see `init(unparsedAt:)`).
    var isUnparsed = false

    /// An exchange for a request whose head could not be parsed.
    init(unparsedAt started: NIODeadline) {
        self.isUnparsed = true
        self.method = "-"
        self.target = "-"
        self.version = .http1_1
        self.clientKeepAlive = false
        self.expectsContinue = false
        self.started = started
        self.timestamp = wallClockSeconds()
        self.isHead = false
        self.isConnect = false
    }

    func logEntry(client: String, status: Int, reason: ReasonCode) -> AccessLogEntry {
        let elapsed = (NIODeadline.now() - self.started).nanoseconds / 1_000_000
        return AccessLogEntry(
            timestamp: self.timestamp, client: client, user: self.user, method: self.method, target: self.target,
            version: Self.versionText(self.version), status: status, reason: reason,
            bytesOut: self.bytesOut, bytesIn: self.bytesIn, upstream: self.upstream,
            durationMilliseconds: Int(max(0, elapsed)), contentType: self.contentType)
    }

    private static func versionText(_ version: HTTPVersion) -> String {
        switch version {
        case .http1_1: return "HTTP/1.1"
        case .http1_0: return "HTTP/1.0"
        default: return "HTTP/\(version.major).\(version.minor)"
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

func wallClockSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1_000_000_000
}

extension HTTPResponseHead {
    /// Bytes the status line and header section take on the wire, for the access log:
    /// `HTTP/1.1 200 OK\r\n` is 15 bytes plus the reason phrase, each field its name and
    /// value plus `: ` and CRLF, and a CRLF ends the section.
    var wireSize: Int {
        var size = 15 + self.status.reasonPhrase.utf8.count
        for (name, value) in self.headers { size += name.utf8.count + value.utf8.count + 4 }
        return size + 2
    }
}
