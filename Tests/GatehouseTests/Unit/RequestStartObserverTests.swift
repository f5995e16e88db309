@testable import Gatehouse
import NIOCore
import NIOEmbedded
import Testing

@Suite("RequestStartObserver: where a request's bytes begin, and whether the client pipelines")
struct RequestStartObserverTests {
    /// Counts the `read()` calls that reach the socket end of the pipeline.
    final class ReadCounter: ChannelOutboundHandler {
        typealias OutboundIn = ByteBuffer
        var reads = 0
        func read(context: ChannelHandlerContext) {
            self.reads += 1
            context.read()
        }
    }

    @Test("bytes before a request is complete are its own; bytes after it are a pipelined request")
    func pipelinedBytes() throws {
        let observer = RequestStartObserver()
        let counter = ReadCounter()
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(counter)
        try channel.pipeline.syncOperations.addHandler(observer)

        try channel.writeInbound(ByteBuffer(string: "GET http://o/ HTTP/1.1\r\n"))
        #expect(!observer.awaitingRequest)
        try channel.writeInbound(ByteBuffer(string: "Host: o\r\n\r\n"))
        #expect(!observer.sawPipelinedBytes, "the rest of the same request")

        observer.requestComplete = true
        observer.readThrough()
        #expect(counter.reads == 1, "readThrough reaches the socket")
        try channel.writeInbound(ByteBuffer(string: "GET http://o/2 HTTP/1.1\r\n"))
        #expect(observer.sawPipelinedBytes, "bytes while a complete request awaits its response")
        _ = try channel.finish(acceptAlreadyClosed: true)
    }
}
