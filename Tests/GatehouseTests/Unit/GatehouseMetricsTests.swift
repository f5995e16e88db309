@testable import Gatehouse
import NIOCore
import NIOPosix
import Testing

@Suite("Metrics: per-loop counts, flushed for every scrape")
struct GatehouseMetricsTests {
    static func entry(_ status: Int, _ reason: ReasonCode, bytesOut: Int = 10) -> AccessLogEntry {
        AccessLogEntry(
            timestamp: 0, client: "127.0.0.1:1", user: nil, method: "GET", target: "http://o/", version: "HTTP/1.1",
            status: status, reason: reason, bytesOut: bytesOut, bytesIn: 0, upstream: nil, durationMilliseconds: 0)
    }

    @Test("a loop's counts reach the shared counters when /metrics is rendered, and not before a flush")
    func flushedOnScrape() async throws {
        let metrics = GatehouseMetrics()
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let counts = metrics.counts(for: loop)
        #expect(metrics.counts(for: loop) === counts, "one set of counts per loop")
        try await loop.submit {
            for _ in 0..<3 { counts.responded(Self.entry(200, .forwarded, bytesOut: 100)) }
            counts.responded(Self.entry(304, .forwarded))
            counts.responded(Self.entry(407, .authMissing))
            counts.responded(Self.entry(502, .upstreamRefused))
            counts.authenticated(true)
            counts.authenticated(false)
            counts.cacheHit()
        }.get()
        #expect(metrics.render().contains(#"gatehouse_responses_total{status="200",reason="forwarded"} 0"#))
        let text = try await metrics.renderFlushed(on: loop).get()
        #expect(text.contains(#"gatehouse_responses_total{status="200",reason="forwarded"} 3"#), "\(text)")
        #expect(text.contains(#"gatehouse_responses_total{status="304",reason="forwarded"} 1"#))
        #expect(text.contains(#"gatehouse_responses_total{status="407",reason="auth_missing"} 1"#))
        #expect(text.contains(#"gatehouse_responses_total{status="502",reason="upstream_refused"} 1"#))
        #expect(text.contains(#"gatehouse_bytes_total{direction="to_client"} 330"#))
        #expect(text.contains(#"gatehouse_auth_total{result="success"} 1"#))
        #expect(text.contains(#"gatehouse_auth_total{result="failure"} 1"#))
        #expect(text.contains("gatehouse_credential_cache_hits_total 1"))
        // Flushing again adds nothing twice.
        let again = try await metrics.renderFlushed(on: loop).get()
        #expect(again.contains(#"gatehouse_responses_total{status="200",reason="forwarded"} 3"#))
    }

    @Test("a busy loop flushes by itself every few hundred responses")
    func flushedWhenMany() async throws {
        let metrics = GatehouseMetrics()
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let counts = metrics.counts(for: loop)
        try await loop.submit {
            for _ in 0..<GatehouseMetrics.LoopCounts.flushEvery { counts.responded(Self.entry(200, .forwarded)) }
        }.get()
        #expect(metrics.render().contains(#"gatehouse_responses_total{status="200",reason="forwarded"} \#(GatehouseMetrics.LoopCounts.flushEvery)"#))
    }
}
