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
}
