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

    @Test("the first line's length is counted across reads until its LF, and only then")
    func firstLineLengthAcrossReads() throws {
        let observer = RequestStartObserver()
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(observer)

        try channel.writeInbound(ByteBuffer(string: "GET http://o/" + String(repeating: "p", count: 87)))
        #expect(observer.firstLine.length == 100)
        try channel.writeInbound(ByteBuffer(string: String(repeating: "p", count: 50)))
        #expect(observer.firstLine.length == 150)
        try channel.writeInbound(ByteBuffer(string: "pp HTTP/1.1\r\nHost: o\r\n"))
        #expect(observer.firstLine.length == 162, "up to the LF: the header fields after it are not counted")
        try channel.writeInbound(ByteBuffer(string: "X-Long: " + String(repeating: "x", count: 500) + "\r\n\r\n"))
        #expect(observer.firstLine.length == 162)

        observer.forgetFirstLine()
        observer.awaitingRequest = true
        try channel.writeInbound(ByteBuffer(string: "GET http://o/ HTTP/1.1\r\nHost: o\r\n\r\n"))
        #expect(observer.firstLine.length == 23)
        _ = try channel.finish(acceptAlreadyClosed: true)
    }

    /// Notes the user events that get past the observer, and how many bytes were still
    /// queued (unwritten) when each arrived.
    final class EventCatcher: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        var events: [(event: String, queued: Int)] = []
        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            let queued = (try? context.channel.syncOptions?.getOption(.bufferedWritableBytes)) ?? -1
            self.events.append(("\(event)", queued))
        }
    }

    /// An observer with an event catcher behind it, on an embedded channel.
    static func observed() throws -> (RequestStartObserver, EventCatcher, EmbeddedChannel) {
        let observer = RequestStartObserver()
        let catcher = EventCatcher()
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandlers([observer, catcher])
        return (observer, catcher, channel)
    }

    @Test("a target for an unparsed request's log line: redacted up to its last @, at most 64 characters")
    func loggableTargets() {
        func target(_ text: String) -> String { RequestStartObserver.loggableTarget(Substring(text)) }
        #expect(target("http://u:p@h/x") == "http://h/x")
        #expect(target("h:443") == "h:443")
        let long = "http://h/" + String(repeating: "x", count: 100)
        #expect(target(long) == String(long.prefix(64)) + "…")
    }

    @Test("a malformed target's userinfo never survives the log's redaction (shapes a URL parser would not see as userinfo)")
    func redactedForLog() {
        let shapes = [
            "//bob:SECRET@127.0.0.1/x": "//127.0.0.1/x",
            "http:///bob:SECRET@127.0.0.1/x": "http:///127.0.0.1/x",
            "http://bob:SE/CRET@h/": "http://h/",
            "http://bob:SE?CRET@h/": "http://h/",
            "http://bob:SE#CRET@h/": "http://h/",
            "bob:SECRET@h:443": "h:443",
            "/users/SECRET@x": "/x",
            "http://h/plain": "http://h/plain",
        ]
        for (raw, logged) in shapes {
            #expect(RequestTarget.redactedForLog(raw) == logged, "\(raw)")
        }
    }

    /// Notes the bytes that get past the observer.
    final class ByteCatcher: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        var bytes = 0
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            self.bytes += self.unwrapInboundIn(data).readableBytes
        }
    }

    /// Takes a write shutdown (which EmbeddedChannel would turn into a full close) and notes it.
    final class OutputCloseCatcher: ChannelOutboundHandler {
        typealias OutboundIn = ByteBuffer
        var outputClosed = false
        func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
            guard mode == .output else { return context.close(mode: mode, promise: promise) }
            self.outputClosed = true
            promise?.succeed()
        }
    }

    @Test("closing in stages: what arrives is dropped in front of the HTTP handlers; the client's EOF, 5 s without bytes, or 30 s in all close")
    func closeLingering() throws {
        for ending in ["eof", "idle", "total", "held eof"] {
            let observer = RequestStartObserver()
            let catcher = ByteCatcher()
            let shutdown = OutputCloseCatcher()
            let channel = EmbeddedChannel()
            try channel.pipeline.syncOperations.addHandlers([shutdown, observer, catcher])
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
            try channel.writeInbound(ByteBuffer(string: "POST http://o/ HTTP/1.1\r\n"))
            #expect(catcher.bytes == 25)
            if ending == "held eof" {
                observer.connectHeadsDecoded += 1
                channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
            }
            observer.closeLingering(total: .seconds(30), idle: .seconds(5))
            if ending == "held eof" {
                #expect(!channel.isActive, "the EOF came already: closed at once")
                continue
            }
            #expect(channel.isActive)
            #expect(shutdown.outputClosed, "the sending side is shut first")
            try channel.writeInbound(ByteBuffer(string: String(repeating: "x", count: 60)))
            #expect(catcher.bytes == 25, "dropped, not passed on")
            #expect(channel.isActive)
            switch ending {
            case "eof": channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
            case "idle":
                channel.embeddedEventLoop.advanceTime(by: .seconds(4))
                try channel.writeInbound(ByteBuffer(string: "x"))
                channel.embeddedEventLoop.advanceTime(by: .seconds(4))
                #expect(channel.isActive, "bytes 4 s ago: still taking them")
                channel.embeddedEventLoop.advanceTime(by: .seconds(1))
            default:
                // A client that keeps sending is taken for 30 s in all (a 100 MiB upload
                // refused with 407, say, by a client that reads only once it has sent it all).
                for _ in 0..<7 {
                    channel.embeddedEventLoop.advanceTime(by: .seconds(4))
                    try channel.writeInbound(ByteBuffer(string: String(repeating: "x", count: 65_536)))
                }
                #expect(channel.isActive, "28 s, bytes all along")
                channel.embeddedEventLoop.advanceTime(by: .seconds(2))
            }
            #expect(!channel.isActive, "\(ending)")
        }
    }

    @Test("a client's EOF is held while a CONNECT awaits its tunnel, and released if it is refused; one refusal does not release the EOF of a CONNECT behind it")
    func heldEndOfInput() throws {
        let (observer, catcher, channel) = try Self.observed()

        // Two CONNECTs decoded (the second pipelined behind the first), then the client's EOF.
        observer.connectHeadsDecoded = 2
        channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        #expect(catcher.events.isEmpty, "held back from the HTTP decoder")
        #expect(observer.heldEndOfInput)
        // The first is taken and refused; the second was taken before that refusal's release.
        observer.connectHeadsTaken = 2
        observer.settleConnects(upTo: 1)
        observer.releaseEndOfInput()
        #expect(catcher.events.isEmpty, "still held for the second CONNECT")
        observer.settleConnects(upTo: 2)
        observer.releaseEndOfInput()
        #expect(catcher.events.map(\.event) == ["\(ChannelEvent.inputClosed)"])
        #expect(!observer.heldEndOfInput)
        // Not holding: it passes straight on.
        channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        #expect(catcher.events.count == 2)
        _ = try channel.finish(acceptAlreadyClosed: true)
    }

    @Test("graceful shutdown reaches the HTTP handlers only once a queued response tail is written")
    func quiesceAfterQueuedBytes() throws {
        let (_, catcher, channel) = try Self.observed()
        channel.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 1), promise: nil)

        // Nothing queued: straight on.
        channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        #expect(catcher.events.map(\.queued) == [0])
        // A tail still queued (written, not yet out): the event follows it.
        channel.write(ByteBuffer(string: "tail of a response"), promise: nil)
        channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        #expect(catcher.events.map(\.queued) == [0, 0], "\(catcher.events)")
        #expect(try channel.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "tail of a response"))
        _ = try channel.finish(acceptAlreadyClosed: true)
    }

    @Test("the first line's shape tells an unknown method (501) from garbage (400), and a bare LF (400) from a bad version (505)")
    func firstLineShapes() {
        func shape(_ text: String) -> RequestStartObserver.FirstLine {
            RequestStartObserver.firstLine(of: ByteBuffer(string: text))
        }
        #expect(shape("BREW http://o/ HTTP/1.1\r\nHost: o\r\n") == .init(length: 24, methodLength: 4, endsInBareLF: false, isRequestLine: true))
        #expect(shape("M-SEARCH* http://o/ HTTP/1.1\r\n").isRequestLine)
        #expect(shape("BREW  http://o/  HTTP/1.1\r\n").isRequestLine, "llhttp takes several spaces")
        #expect(shape("GET http://o/ HTTP/1.1\n") == .init(length: 22, methodLength: 3, endsInBareLF: true, isRequestLine: true))
        for garbage in ["GARBAGE\r\n", "GET\r\n", " GET http://o/ HTTP/1.1\r\n", "G(T http://o/ HTTP/1.1\r\n",
                        "GET http://o/ FTP/1.1\r\n", "GET http://o/ HTTP/1.1 x\r\n", "GET http://o/\r\n", "\r\n"] {
            #expect(!shape(garbage).isRequestLine, "\(garbage)")
        }
        #expect(shape("GET http://o/ HTTP/1.1") == .init(length: 22, methodLength: 3), "no line end in the first read: only its length and method so far")
    }
}
