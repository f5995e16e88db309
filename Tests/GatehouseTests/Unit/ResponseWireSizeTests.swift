@testable import Gatehouse
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

@Suite("Response sizes in the access log")
struct ResponseWireSizeTests {
    /// What NIO's encoder puts on the wire for `head`.
    static func encoded(_ head: HTTPResponseHead) throws -> Int {
        var configuration = HTTPResponseEncoder.Configuration()
        configuration.automaticallySetFramingHeaders = false
        let channel = EmbeddedChannel(handler: HTTPResponseEncoder(configuration: configuration))
        try channel.writeOutbound(HTTPServerResponsePart.head(head))
        var total = 0
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { total += buffer.readableBytes }
        _ = try channel.finish()
        return total
    }

    @Test("the logged head size is the encoded head's size", arguments: [
        HTTPResponseHead(version: .http1_1, status: .custom(code: 200, reasonPhrase: "Connection established")),
        HTTPResponseHead(version: .http1_1, status: .ok, headers: ["Content-Length": "5", "Via": "1.1 gatehouse"]),
        HTTPResponseHead(version: .http1_1, status: .proxyAuthenticationRequired,
                         headers: ["Proxy-Authenticate": "Basic realm=\"x\", charset=\"UTF-8\"", "Content-Length": "0"]),
    ])
    func wireSize(head: HTTPResponseHead) throws {
        #expect(head.wireSize == (try Self.encoded(head)))
    }

    @Test("an own answer's logged size is its head and body as sent")
    func ownResponse() throws {
        let response = OwnResponse(
            reason: .authMissing, challenges: ["Basic realm=\"x\", charset=\"UTF-8\""], closing: false,
            version: .http1_1, retryAfter: nil)
        #expect(response.headSize == (try Self.encoded(response.head)))
    }

    /// What NIO's encoder writes for these parts of a chunked response, head excluded.
    static func chunkedBytes(_ parts: [HTTPServerResponsePart]) throws -> Int {
        var configuration = HTTPResponseEncoder.Configuration()
        configuration.automaticallySetFramingHeaders = false
        let channel = EmbeddedChannel(handler: HTTPResponseEncoder(configuration: configuration))
        defer { _ = try? channel.finish() }
        try channel.writeOutbound(HTTPServerResponsePart.head(
            HTTPResponseHead(version: .http1_1, status: .ok, headers: ["Transfer-Encoding": "chunked"])))
        while try channel.readOutbound(as: ByteBuffer.self) != nil {}
        for part in parts { try channel.writeOutbound(part) }
        var total = 0
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { total += buffer.readableBytes }
        return total
    }

    @Test("chunk framing is counted as NIO's encoder writes it", arguments: [0, 1, 15, 16, 255, 256, 4095, 4096, 65_535, 1 << 20])
    func chunkFraming(size: Int) throws {
        let part = ByteBuffer(repeating: 0x61, count: size)
        #expect(size + ChunkFraming.overhead(ofPart: size) == (try Self.chunkedBytes([.body(.byteBuffer(part))])))
    }

    @Test("the last chunk and trailers are counted as NIO's encoder writes them")
    func chunkedEnd() throws {
        #expect(ChunkFraming.endSize(trailers: nil) == (try Self.chunkedBytes([.end(nil)])))
        let trailers: HTTPHeaders = ["Checksum": "abc123", "X-Done": "yes"]
        #expect(ChunkFraming.endSize(trailers: trailers) == (try Self.chunkedBytes([.end(trailers)])))
    }

    @Test("only a Transfer-Encoding of chunked alone is passed on")
    func transferCodings() {
        func passes(_ fields: [(String, String)]) -> Bool {
            ProxyConnectionHandler.isChunkedOnly(HTTPHeaders(fields))
        }
        #expect(passes([("Transfer-Encoding", "chunked")]))
        #expect(passes([("transfer-encoding", "Chunked")]))
        #expect(!passes([("Transfer-Encoding", "gzip, chunked")]))
        #expect(!passes([("Transfer-Encoding", "gzip"), ("Transfer-Encoding", "chunked")]))
        #expect(!passes([("Transfer-Encoding", "chunked, gzip")]))
        #expect(!passes([("Transfer-Encoding", "chunked, chunked")]))
        #expect(!passes([("Transfer-Encoding", "gzip")]))
        #expect(!passes([("Transfer-Encoding", "identity")]))
    }
}
