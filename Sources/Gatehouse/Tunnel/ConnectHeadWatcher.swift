import NIOCore
import NIOHTTP1

/// Between NIO's request decoder and its pipelining handler: counts the `CONNECT` heads the
/// decoder hands on, so that the client's EOF is held (see
/// `RequestStartObserver.holdsEndOfInput`) for a `CONNECT` that waits behind another request.
///
/// Once NIO's decoder sees EOF after a `CONNECT` head it drops the bytes that followed the
/// head. The proxy handler holds the EOF from the moment it takes a `CONNECT`, but a `CONNECT`
/// pipelined behind another request (a GET, a refused `CONNECT`) waits in the pipelining
/// handler until that one is answered, and the EOF of a client that half-closed at once
/// (`printf … | nc -N`) went by meanwhile: its first tunnel bytes never reached the origin.
final class ConnectHeadWatcher: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart

    private let observer: RequestStartObserver

    init(observer: RequestStartObserver) {
        self.observer = observer
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head(let head) = self.unwrapInboundIn(data), head.method == .CONNECT {
            self.observer.connectHeadsDecoded += 1
        }
        context.fireChannelRead(data)
    }
}
