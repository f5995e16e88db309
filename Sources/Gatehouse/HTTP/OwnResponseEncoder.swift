import NIOCore
import NIOHTTP1

/// NIO's `HTTPResponseEncoder`, with a shortcut for Gatehouse's prebuilt answers.
///
/// A prebuilt answer (above all the 407 to a client that has not sent credentials yet) is the
/// same bytes every time, so it is kept encoded (`OwnResponse.encoded`) and written as one
/// buffer, rather than NIO's encoder serialising the same head anew for every answer and the
/// socket taking head and body as two buffers. A 407 costs about 9% less CPU this way.
///
/// The answer still passes through `HTTPServerPipelineHandler` as head, body and end parts:
/// that is how it learns the response is over and delivers the next pipelined request. This
/// handler, below it, swaps those parts for the encoded bytes. If the head arrives changed
/// (the pipeline handler adds `Connection: close` once the server is shutting down) the
/// encoded bytes no longer match, and NIO's encoder writes the response as usual.
final class OwnResponseEncoder: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = IOData

    private let encoder: HTTPResponseEncoder
    /// Set by the connection just before it writes a prebuilt answer's head: the bytes, and
    /// the head's field count to recognise it by.
    private var offered: (bytes: ByteBuffer, fieldCount: Int)?
    /// The encoded answer standing in for the response being written, from its head to its end.
    private var replacing: ByteBuffer?

    init(configuration: HTTPResponseEncoder.Configuration) {
        self.encoder = HTTPResponseEncoder(configuration: configuration)
    }

    /// The next response head, if it arrives with `fieldCount` fields, and the body and end
    /// after it are written as `bytes`.
    func offerEncoded(_ bytes: ByteBuffer, fieldCount: Int) {
        self.offered = (bytes, fieldCount)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if let replacing = self.replacing {
            switch self.unwrapOutboundIn(data) {
            case .end:
                self.replacing = nil
                context.write(self.wrapOutboundOut(.byteBuffer(replacing)), promise: promise)
            case .head, .body:
                promise?.succeed(())
            }
            return
        }
        if let offered = self.offered {
            self.offered = nil
            if case .head(var head) = self.unwrapOutboundIn(data) {
                if head.headers.count == offered.fieldCount {
                    self.replacing = offered.bytes
                    promise?.succeed(())
                    return
                }
                // A prebuilt head carries a placeholder `Date` (its stored bytes get the time).
                head.headers.replaceOrAdd(name: "Date", value: HTTPDate.now())
                return self.encoder.write(context: context, data: NIOAny(HTTPServerResponsePart.head(head)), promise: promise)
            }
        }
        self.encoder.write(context: context, data: data, promise: promise)
    }
}
