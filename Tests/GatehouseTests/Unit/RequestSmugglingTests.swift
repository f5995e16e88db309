@testable import Gatehouse
import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

/// Each smuggling shape (RFC 9112 §6, §11.2) fed to the real client pipeline — NIO's parser
/// plus Gatehouse's own rules — on an EmbeddedChannel, without sockets.
@Suite("Request smuggling is refused by the client pipeline")
struct RequestSmugglingTests {
    static let cases: [(String, String, ReasonCode)] = [
        ("Content-Length with Transfer-Encoding",
         "POST http://o.test/ HTTP/1.1\r\nHost: o\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", .badRequest),
        ("two different Content-Length values",
         "POST http://o.test/ HTTP/1.1\r\nHost: o\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", .badRequest),
        ("Transfer-Encoding: chunked, gzip",
         "POST http://o.test/ HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", .badRequest),
        ("Transfer-Encoding: chunked<TAB>",
         "POST http://o.test/ HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\t\r\n\r\n0\r\n\r\n", .badTransferEncoding),
        ("Transfer-Encoding: xchunked",
         "POST http://o.test/ HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", .badTransferEncoding),
        ("Transfer-Encoding: gzip, chunked (not re-encodable)",
         "POST http://o.test/ HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", .badTransferEncoding),
        ("Transfer-Encoding on HTTP/1.0",
         "POST http://o.test/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", .badTransferEncoding),
        ("obs-fold", "GET http://o.test/ HTTP/1.1\r\nHost: o\r\nX-A: a\r\n b\r\n\r\n", .badRequest),
        ("NUL in a value", "GET http://o.test/ HTTP/1.1\r\nHost: o\r\nX-A: a\u{0}b\r\n\r\n", .badRequest),
        ("CR in a value", "GET http://o.test/ HTTP/1.1\r\nHost: o\r\nX-A: a\rb\r\n\r\n", .badRequest),
        ("LF in a value", "GET http://o.test/ HTTP/1.1\r\nHost: o\r\nX-A: a\nb: c\r\n\r\n", .badRequest),
        ("invalid header name", "GET http://o.test/ HTTP/1.1\r\nHost: o\r\nX A: a\r\n\r\n", .badRequest),
        ("space before the colon", "GET http://o.test/ HTTP/1.1\r\nHost: o\r\nX-A : a\r\n\r\n", .badRequest),
        ("two Host fields", "GET http://o.test/ HTTP/1.1\r\nHost: o\r\nHost: p\r\n\r\n", .badRequest),
        ("Content-Length with a sign", "POST http://o.test/ HTTP/1.1\r\nHost: o\r\nContent-Length: +5\r\n\r\nhello", .badRequest),
    ]

    static func run(_ request: String, configure: (inout ProxyConfiguration) -> Void = { _ in }) throws -> (String, [AccessLogEntry], Bool) {
        var configuration = ProxyConfiguration()
        configure(&configuration)
        let records = RecordBox()
        let accessLog = try AccessLog(destination: .none, format: .squid) { records.append($0) }
        let authenticator = Authenticator(store: CredentialStore(inlineUsers: ["u": "p"]), cacheTTL: .minutes(1), threadPool: .singleton)
        let shared = ProxyContext(
            configuration: configuration, authenticator: authenticator, accessLog: accessLog, metrics: GatehouseMetrics(),
            logger: Logger(label: "test"))
        let channel = EmbeddedChannel()
        try GatehouseServer.configureClientPipeline(channel, shared: shared)
        try channel.connect(to: SocketAddress(ipAddress: "192.0.2.1", port: 40000)).wait()
        try channel.writeInbound(ByteBuffer(string: request))
        var output = ""
        while var buffer = try channel.readOutbound(as: ByteBuffer.self) {
            output += buffer.readString(length: buffer.readableBytes) ?? ""
        }
        channel.embeddedEventLoop.run()
        let closed = !channel.isActive
        _ = try? channel.finish()
        return (output, records.all, closed)
    }

    @Test("each shape gets 400 with Connection: close, one log line with its reason, and the connection closes", arguments: Self.cases)
    func refused(name: String, request: String, reason: ReasonCode) throws {
        let (output, records, closed) = try Self.run(request)
        #expect(output.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(name): \(output)")
        #expect(output.contains("Connection: close\r\n"))
        #expect(records.map(\.reason) == [reason], "\(name)")
        #expect(closed, "\(name): the connection must close")
    }

    @Test("a clean request is not refused")
    func cleanRequestPasses() throws {
        let (output, records, _) = try Self.run("GET http://o.test/ HTTP/1.1\r\nHost: o\r\n\r\n")
        #expect(output.hasPrefix("HTTP/1.1 407 "))
        #expect(records.map(\.reason) == [.authMissing])
    }
}

final class RecordBox: @unchecked Sendable {
    private var entries: [AccessLogEntry] = []
    private let lock = NSLockLite()
    func append(_ entry: AccessLogEntry) { self.lock.withLock { self.entries.append(entry) } }
    var all: [AccessLogEntry] { self.lock.withLock { self.entries } }
}

import NIOConcurrencyHelpers
typealias NSLockLite = NIOLock
