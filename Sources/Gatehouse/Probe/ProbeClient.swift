import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// A one-request-per-connection HTTP client for the probe, on NIO's encoder and parser.
struct ProbeClient: Sendable {
    struct Response: Sendable {
        var head: HTTPResponseHead
        var body: String
    }

    enum ProbeError: Error, CustomStringConvertible {
        case timedOut
        case closedWithoutResponse
        var description: String {
            switch self {
            case .timedOut: return "timed out waiting for the proxy's answer"
            case .closedWithoutResponse: return "the proxy closed the connection without an answer"
            }
        }
    }

    var host: String
    var port: Int
    var timeout: TimeAmount
    var group: EventLoopGroup
    /// For an `https://` proxy: TLS to the proxy itself.
    var tls: NIOSSLContext? = nil

    func connectOnly() async throws {
        let channel = try await ClientBootstrap(group: self.group).connectTimeout(self.timeout)
            .connect(host: self.host, port: self.port).get()
        try? await channel.close()
    }

    func send(_ request: HTTPRequestHead) async throws -> Response {
        let loop = self.group.next()
        let promise = loop.makePromise(of: Response.self)
        let channel = try await ClientBootstrap(group: loop).connectTimeout(self.timeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls = self.tls {
                        // The name is checked against the certificate; an IP address is
                        // checked against its IP entries (NIOSSL takes no IP as a server name).
                        let name = Self.isIPAddress(self.host) ? nil : self.host
                        try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: tls, serverHostname: name))
                    }
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: self.timeout))
                    try channel.pipeline.syncOperations.addHandler(Collector(promise: promise))
                }
            }
            .connect(host: self.host, port: self.port).get()
        channel.write(HTTPClientRequestPart.head(request), promise: nil)
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        defer { channel.close(promise: nil) }
        return try await promise.futureResult.get()
    }

    static func isIPAddress(_ host: String) -> Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1
    }

    private final class Collector: ChannelInboundHandler {
        typealias InboundIn = HTTPClientResponsePart
        let promise: EventLoopPromise<Response>
        var head: HTTPResponseHead?
        var body = ""
        var completed = false

        init(promise: EventLoopPromise<Response>) { self.promise = promise }

        func finish(_ result: Result<Response, Error>) {
            guard !self.completed else { return }
            self.completed = true
            self.promise.completeWith(result)
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if event is IdleStateHandler.IdleStateEvent {
                self.finish(.failure(ProbeError.timedOut))
                context.close(promise: nil)
            }
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch self.unwrapInboundIn(data) {
            case .head(let head):
                self.head = head
            case .body(var buffer):
                if self.body.utf8.count < 4096 { self.body += buffer.readString(length: min(buffer.readableBytes, 4096)) ?? "" }
            case .end:
                if let head = self.head { self.finish(.success(Response(head: head, body: self.body))) }
            }
        }

        func channelInactive(context: ChannelHandlerContext) {
            if let head = self.head {
                self.finish(.success(Response(head: head, body: self.body)))
            } else {
                self.finish(.failure(ProbeError.closedWithoutResponse))
            }
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) {
            self.finish(.failure(error))
            context.close(promise: nil)
        }
    }
}
