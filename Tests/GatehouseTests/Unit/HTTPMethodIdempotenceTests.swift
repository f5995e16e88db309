@testable import Gatehouse
import NIOHTTP1
import Testing

@Suite("Which requests a proxy may send again (RFC 9110 §9.2.2)")
struct HTTPMethodIdempotenceTests {
    @Test("GET, HEAD, OPTIONS, TRACE, PUT and DELETE are idempotent", arguments: [
        HTTPMethod.GET, .HEAD, .OPTIONS, .TRACE, .PUT, .DELETE,
    ])
    func idempotent(method: HTTPMethod) {
        #expect(method.isIdempotent)
    }

    @Test("POST, PATCH, CONNECT and unknown methods are not", arguments: [
        HTTPMethod.POST, .PATCH, .CONNECT, .LOCK, .RAW(value: "PURGE"), .RAW(value: "get"),
    ])
    func notIdempotent(method: HTTPMethod) {
        #expect(!method.isIdempotent)
    }
}
