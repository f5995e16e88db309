import Foundation
import CCrypt
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// A local origin server for integration tests, built on NIO's HTTP server.
///
/// Routes:
/// - `GET /hello` → `hello\n` with Content-Length
/// - `GET /bytes/N` → N deterministic bytes (see ``TestData``), streamed with backpressure
/// - `GET /chunked` → a chunked body, `part-1\npart-2\n`
/// - `GET /headers` → the request head as text: `METHOD URI` then `name: value` lines
/// - `POST|PUT /upload` → the sha256 and length of the request body, as `hex length`
/// - `GET /status/N` → an empty response with status N (204, 304, …)
/// - `GET|HEAD` a path in `files` (given to ``start(tls:files:)``; `/./` counts as `/`) → that file
/// - anything else → 404
final class TestOrigin: Sendable {
    let channel: Channel
    private let accepted: ManagedAtomicCounter
    var port: Int { self.channel.localAddress?.port ?? 0 }
    /// TCP connections accepted so far (to see whether the proxy reuses them).
    var connections: Int { self.accepted.value }

    private init(channel: Channel, accepted: ManagedAtomicCounter) {
        self.channel = channel
        self.accepted = accepted
    }

    static func start(tls: NIOSSLContext? = nil, files: [String: [UInt8]] = [:]) async throws -> TestOrigin {
        let accepted = ManagedAtomicCounter()
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                accepted.increment()
                return channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls))
                    }
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(OriginHandler(files: files))
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        return TestOrigin(channel: channel, accepted: accepted)
    }

    func stop() async {
        try? await self.channel.close()
    }
}

/// Deterministic test content: a 65,521-byte block (a prime length, so it never lines up
/// with 64 KiB chunks) repeated. Truncation, reordering and duplication all change the digest.
/// Built with memcpy-speed appends: the origin shares event loops with the proxy under test,
/// and per-byte work in a debug build would stall them.
enum TestData {
    static let period = 65_521
    static let block: [UInt8] = (0..<period).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 / 251) }

    static func bytes(count: Int) -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(count + period)
        while out.count < count { out.append(contentsOf: block) }
        out.removeLast(out.count - count)
        return out
    }

    /// Writes `count` bytes of the stream starting at `offset` into `buffer`.
    static func write(into buffer: inout ByteBuffer, offset: Int, count: Int) {
        var position = offset
        var remaining = count
        while remaining > 0 {
            let start = position % period
            let n = min(remaining, period - start)
            _ = block.withUnsafeBytes { buffer.writeBytes(UnsafeRawBufferPointer(rebasing: $0[start..<(start + n)])) }
            position += n
            remaining -= n
        }
    }

    static func sha256(_ bytes: [UInt8]) -> String {
        let hasher = SHA256Hasher()
        hasher.update(bytes)
        return hasher.finalizeHex()
    }
}

/// Incremental SHA-256 via OpenSSL's EVP interface.
final class SHA256Hasher {
    private let ctx: OpaquePointer?

    init() {
        self.ctx = EVP_MD_CTX_new()
        EVP_DigestInit_ex(self.ctx, EVP_sha256(), nil)
    }

    deinit { EVP_MD_CTX_free(self.ctx) }

    func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { _ = EVP_DigestUpdate(self.ctx, $0.baseAddress, $0.count) }
    }

    func update(_ buffer: ByteBuffer) {
        buffer.withUnsafeReadableBytes { _ = EVP_DigestUpdate(self.ctx, $0.baseAddress, $0.count) }
    }

    func finalizeHex() -> String {
        var digest = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        EVP_DigestFinal_ex(self.ctx, &digest, &length)
        return digest.map { b in
            let s = String(b, radix: 16)
            return s.count == 1 ? "0" + s : s
        }.joined()
    }
}

private final class OriginHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private var head: HTTPRequestHead?
    private var hasher: SHA256Hasher?
    private var uploaded = 0
    private var pendingStream: (remaining: Int, offset: Int)?
    private let files: [String: [UInt8]]

    init(files: [String: [UInt8]]) {
        self.files = files
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            self.uploaded = 0
            if head.uri == "/upload" { self.hasher = SHA256Hasher() }
            if head.headers["expect"].contains(where: { $0.lowercased() == "100-continue" }) {
                // RFC 9110 §10.1.1: tell the client to go ahead with the body.
                let proceed = HTTPResponseHead(version: .http1_1, status: .continue)
                context.writeAndFlush(self.wrapOutboundOut(.head(proceed)), promise: nil)
            }
        case .body(let buffer):
            self.uploaded += buffer.readableBytes
            self.hasher?.update(buffer)
        case .end:
            guard let head = self.head else { return }
            self.respond(to: head, context: context)
        }
    }

    private func respond(to head: HTTPRequestHead, context: ChannelHandlerContext) {
        let path = String(head.uri.prefix(while: { $0 != "?" }))
        if let file = self.files[path.replacingOccurrences(of: "/./", with: "/")] {
            var headers = HTTPHeaders()
            headers.add(name: "Content-Length", value: String(file.count))
            headers.add(name: "Content-Type", value: "application/octet-stream")
            context.write(self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
            if head.method != .HEAD {
                context.write(self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: file)))), promise: nil)
            }
            context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
        } else if path == "/hello" {
            self.send(context, status: .ok, body: "hello\n")
        } else if path == "/slow" {
            // Answers after 300 ms (or `?ms=N`), echoing the request line: keeps a response
            // outstanding.
            let line = "\(head.method.rawValue) \(head.uri)\n"
            let delay = head.uri.split(separator: "ms=").last.flatMap { Int64($0) } ?? 300
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            context.eventLoop.scheduleTask(in: .milliseconds(delay)) {
                let (handler, context) = bound.value
                handler.send(context, status: .ok, body: line)
            }
        } else if path == "/headers" {
            var text = "\(head.method.rawValue) \(head.uri)\n"
            for (name, value) in head.headers { text += "\(name.lowercased()): \(value)\n" }
            self.send(context, status: .ok, body: text)
        } else if path == "/upload", let hasher = self.hasher {
            self.hasher = nil
            let hex = hasher.finalizeHex()
            self.send(context, status: .ok, body: "\(hex) \(self.uploaded)")
        } else if path == "/chunked" {
            var headers = HTTPHeaders()
            headers.add(name: "Transfer-Encoding", value: "chunked")
            context.write(self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
            for part in ["part-1\n", "part-2\n"] {
                context.write(self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: part)))), promise: nil)
            }
            context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
        } else if path.hasPrefix("/status/"), let code = Int(path.dropFirst(8)) {
            var headers = HTTPHeaders()
            if code != 204 && code != 304 { headers.add(name: "Content-Length", value: "0") }
            if code == 304 { headers.add(name: "ETag", value: "\"v1\"") }
            context.write(self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .init(statusCode: code), headers: headers))), promise: nil)
            context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
        } else if path.hasPrefix("/bytes/"), let count = Int(path.dropFirst(7)) {
            var headers = HTTPHeaders()
            headers.add(name: "Content-Length", value: String(count))
            context.write(self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
            if head.method == .HEAD {
                context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
                return
            }
            self.pendingStream = (count, 0)
            self.streamMore(context: context)
        } else {
            self.send(context, status: .notFound, body: "not found\n")
        }
    }

    /// Writes the next chunks while the channel is writable; resumes on writability.
    private func streamMore(context: ChannelHandlerContext) {
        while var stream = self.pendingStream, context.channel.isWritable {
            let size = min(64 * 1024, stream.remaining)
            var buffer = context.channel.allocator.buffer(capacity: size)
            TestData.write(into: &buffer, offset: stream.offset, count: size)
            stream.offset += size
            stream.remaining -= size
            if stream.remaining == 0 {
                self.pendingStream = nil
                context.write(self.wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
                context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
                return
            }
            self.pendingStream = stream
            context.writeAndFlush(self.wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { self.streamMore(context: context) }
        context.fireChannelWritabilityChanged()
    }

    func send(_ context: ChannelHandlerContext, status: HTTPResponseStatus, body: String) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Length", value: String(body.utf8.count))
        headers.add(name: "Content-Type", value: "text/plain")
        context.write(self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        if self.head?.method != .HEAD {
            context.write(self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: body)))), promise: nil)
        }
        context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
    }
}
