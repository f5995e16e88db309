@testable import Gatehouse
import Foundation
import Testing

@Suite("HTTP dates (RFC 9110 §5.6.7)")
struct HTTPDateTests {
    @Test("IMF-fixdate, as in the RFC's example; always 29 bytes")
    func format() {
        #expect(HTTPDate.format(784_111_777) == "Sun, 06 Nov 1994 08:49:37 GMT")
        #expect(HTTPDate.format(0) == HTTPDate.placeholder)
        #expect(HTTPDate.format(4_102_444_799) == "Thu, 31 Dec 2099 23:59:59 GMT")
        #expect(HTTPDate.now().utf8.count == 29)
    }

    @Test("a prebuilt answer's stored bytes get the time in their Date field, and nothing else changes")
    func prebuiltDate() throws {
        let response = try #require(OwnResponse.keepAliveResponses(challenges: ["Basic realm=\"x\""])[.authMissing])
        let stored = try #require(response.encoded)
        let dated = try #require(response.encoded(at: "Sun, 06 Nov 1994 08:49:37 GMT"))
        let before = String(buffer: stored)
        let after = String(buffer: dated)
        #expect(before.contains("\r\nDate: \(HTTPDate.placeholder)\r\n\r\n"))
        #expect(after == before.replacingOccurrences(of: HTTPDate.placeholder, with: "Sun, 06 Nov 1994 08:49:37 GMT"))
        #expect(String(buffer: stored) == before, "the shared stored bytes are not changed")
    }
}
