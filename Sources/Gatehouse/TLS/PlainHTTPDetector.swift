import NIOCore
import NIOSSL

/// First in the pipeline of a TLS listener's connection: looks at the first byte the client
/// sends. A TLS handshake starts with a handshake record (content type 22, RFC 8446 §5.1); an
/// HTTP request starts with its method's letters.
///
/// A client given an `http://` proxy URL for a TLS port (the common mistake) would otherwise
/// see the handshake fail with a message about TLS records ("wrong version number",
/// "unexpected eof"), and the access log would say nothing. Instead the TLS handler steps
/// aside for that connection and the request gets `400 tls_required`, in clear, with a body
/// that says what to change, and an access-log line. The credentials it sent have crossed the
/// network in clear already; they are not checked.
final class PlainHTTPDetector: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    /// A request line starts with a method's letters (upper case, but a lower-case one is a
    /// plain-HTTP client all the same), perhaps after empty lines (RFC 9112 §2.2). Anything
    /// else (a handshake, an SSLv2 hello with its high bit set, other bytes) goes to the TLS
    /// handler, which refuses what is not TLS.
    static func looksLikeHTTP(_ first: UInt8) -> Bool {
        switch first {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "\r"), UInt8(ascii: "\n"): return true
        default: return false
        }
    }

    private let onPlainHTTP: () -> Void

    /// - Parameter onPlainHTTP: Called, after the TLS handler left the pipeline, when the
    ///   client speaks plain HTTP.
    init(onPlainHTTP: @escaping () -> Void) {
        self.onPlainHTTP = onPlainHTTP
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = self.unwrapInboundIn(data)
        guard let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else {
            return  // nothing to look at yet
        }
        if Self.looksLikeHTTP(first) {
            let pipeline = context.pipeline.syncOperations
            if let tls = try? pipeline.handler(type: NIOSSLServerHandler.self) {
                pipeline.removeHandler(tls, promise: nil)
            }
            self.onPlainHTTP()
        }
        context.fireChannelRead(data)
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}
