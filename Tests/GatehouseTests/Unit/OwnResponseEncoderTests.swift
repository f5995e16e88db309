@testable import Gatehouse
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

/// Prebuilt answers go out as stored bytes (`OwnResponseEncoder`); they must be exactly what
/// NIO's encoder would have written, and must give way to it whenever the head was changed.
@Suite("Prebuilt answers on the wire")
struct OwnResponseEncoderTests {
    static let challenges = ["Basic realm=\"gatehouse\", charset=\"UTF-8\""]

    static var encoderConfiguration: HTTPResponseEncoder.Configuration {
        var configuration = HTTPResponseEncoder.Configuration()
        configuration.automaticallySetFramingHeaders = false
        return configuration
    }

    /// Every byte `channel` wrote, and in how many buffers.
    static func written(_ channel: EmbeddedChannel) throws -> (bytes: [UInt8], buffers: Int) {
        var bytes: [UInt8] = []
        var buffers = 0
        while var buffer = try channel.readOutbound(as: ByteBuffer.self) {
            bytes += buffer.readBytes(length: buffer.readableBytes) ?? []
            buffers += 1
        }
        return (bytes, buffers)
    }

    /// What NIO's own encoder writes for these parts.
    static func nioEncoding(_ parts: [HTTPServerResponsePart]) throws -> [UInt8] {
        let channel = EmbeddedChannel(handler: HTTPResponseEncoder(configuration: Self.encoderConfiguration))
        for part in parts { try channel.writeOutbound(part) }
        defer { _ = try? channel.finish() }
        return try Self.written(channel).bytes
    }

    static func parts(_ response: OwnResponse, head: Bool) -> [HTTPServerResponsePart] {
        head ? [.head(response.head), .end(nil)] : [.head(response.head), .body(.byteBuffer(response.body)), .end(nil)]
    }

    @Test("every prebuilt answer's stored bytes are what NIO's encoder writes; the head alone is their first headSize bytes")
    func storedBytesMatchNIO() throws {
        for (reason, response) in OwnResponse.keepAliveResponses(challenges: Self.challenges) {
            var stored = try #require(response.encoded)
            var head = try #require(stored.getSlice(at: stored.readerIndex, length: response.headSize))
            #expect(head.readBytes(length: head.readableBytes) == (try Self.nioEncoding(Self.parts(response, head: true))), "\(reason)")
            #expect(stored.readBytes(length: stored.readableBytes) == (try Self.nioEncoding(Self.parts(response, head: false))), "\(reason)")
        }
    }

    @Test("an offered answer goes out as one buffer; the next response is encoded as usual")
    func offeredThenNormal() throws {
        let encoder = OwnResponseEncoder(configuration: Self.encoderConfiguration)
        let channel = EmbeddedChannel(handler: encoder)
        defer { _ = try? channel.finish() }
        let response = try #require(OwnResponse.keepAliveResponses(challenges: Self.challenges)[.authMissing])
        let encoded = try #require(response.encoded)
        let fields = response.head.headers.count
        encoder.offerEncoded(encoded, fieldCount: fields)
        for part in Self.parts(response, head: false) { try channel.writeOutbound(part) }
        let first = try Self.written(channel)
        #expect(first.buffers == 1)
        #expect(first.bytes == (try Self.nioEncoding(Self.parts(response, head: false))))
        #expect(String(decoding: first.bytes, as: UTF8.self).hasPrefix("HTTP/1.1 407 Proxy Authentication Required\r\n"))

        // A chunked response after it, then the answer again: NIO's encoder keeps chunked
        // state from one response to the next, which the stored bytes must not disturb.
        let chunked: [HTTPServerResponsePart] = [
            .head(HTTPResponseHead(version: .http1_1, status: .ok, headers: ["Transfer-Encoding": "chunked"])),
            .body(.byteBuffer(ByteBuffer(string: "hello"))), .end(nil),
        ]
        for part in chunked { try channel.writeOutbound(part) }
        #expect(try Self.written(channel).bytes == (try Self.nioEncoding(chunked)))
        encoder.offerEncoded(encoded, fieldCount: fields)
        for part in Self.parts(response, head: false) { try channel.writeOutbound(part) }
        #expect(try Self.written(channel).bytes == (try Self.nioEncoding(Self.parts(response, head: false))))
    }

    @Test("a head changed on its way (shutting down adds Connection: close) is encoded by NIO")
    func changedHeadFallsBack() throws {
        let encoder = OwnResponseEncoder(configuration: Self.encoderConfiguration)
        let channel = EmbeddedChannel()
        defer { _ = try? channel.finish() }
        try channel.pipeline.syncOperations.addHandler(encoder)
        try channel.pipeline.syncOperations.addHandler(HTTPServerPipelineHandler())
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(HTTPRequestDecoder()), position: .first)
        channel.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 1), promise: nil)
        try channel.writeInbound(ByteBuffer(string: "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n"))
        #expect(try channel.readInbound(as: HTTPServerRequestPart.self).map { if case .head = $0 { true } else { false } } == true)
        channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())

        let response = try #require(OwnResponse.keepAliveResponses(challenges: Self.challenges)[.authMissing])
        encoder.offerEncoded(try #require(response.encoded), fieldCount: response.head.headers.count)
        for part in Self.parts(response, head: false) { channel.write(part, promise: nil) }
        channel.flush()
        let text = String(decoding: try Self.written(channel).bytes, as: UTF8.self)
        #expect(text.hasPrefix("HTTP/1.1 407 Proxy Authentication Required\r\n"))
        #expect(text.lowercased().contains("\r\nconnection: close\r\n"))
        #expect(text.hasSuffix("\r\n\r\n" + String(buffer: response.body)))
        #expect(text.contains("\r\nDate: ") && !text.contains(HTTPDate.placeholder), "the time, not the stored placeholder")
    }
}
