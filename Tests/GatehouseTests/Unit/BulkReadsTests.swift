@testable import Gatehouse
import Testing

@Suite("Bulk reads while a request body streams")
struct BulkReadsTests {
    @Test("several reads per wake-up only while more of a Content-Length body is to come than a wake-up's reads take; a chunked body never")
    func bulkReadsFit() {
        let batch = Int(ProxyConnectionHandler.bulkReadsPerWakeup) * GatehouseServer.clientReadMaximum
        #expect(batch == 262_144)
        #expect(ProxyConnectionHandler.bulkReadsFit(declaredLength: 1 << 20, received: 0))
        #expect(ProxyConnectionHandler.bulkReadsFit(declaredLength: 1 << 20, received: (1 << 20) - batch - 1))
        // The next wake-up could read past the body's end into requests pipelined behind it,
        // which would be parsed at once and held in memory: one read per wake-up from here.
        #expect(!ProxyConnectionHandler.bulkReadsFit(declaredLength: 1 << 20, received: (1 << 20) - batch))
        #expect(!ProxyConnectionHandler.bulkReadsFit(declaredLength: 100_000, received: 0))
        #expect(!ProxyConnectionHandler.bulkReadsFit(declaredLength: nil, received: 0), "chunked: the end is not known")
    }
}
