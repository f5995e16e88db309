import CoreMetrics
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import Prometheus

/// The proxy's metrics, recorded through swift-metrics into a Prometheus registry of the
/// server's own (so several servers in one process, as in tests, never mix their figures).
public final class GatehouseMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    private let factory: PrometheusMetricsFactory
    fileprivate struct ResponseKey: Hashable {
        var status: Int
        var reason: ReasonCode
    }

    private let responses = NIOLockedValueBox([ResponseKey: CoreMetrics.Counter]())
    /// Counters for the reasons whose status never varies (all of Gatehouse's own answers),
    /// made up front: the busiest path (a 407 per credential-less request) then takes no lock.
    fileprivate let fixedResponses: [ReasonCode: CoreMetrics.Counter]
    /// The commonest line of all: a forwarded 200.
    fileprivate let forwardedOK: CoreMetrics.Counter
    fileprivate let authSuccess: CoreMetrics.Counter
    fileprivate let authFailure: CoreMetrics.Counter
    fileprivate let cacheHits: CoreMetrics.Counter
    fileprivate let bytesToClient: CoreMetrics.Counter
    fileprivate let bytesFromClient: CoreMetrics.Counter
    private let activeConnections: CoreMetrics.Gauge
    private let activeTunnels: CoreMetrics.Gauge
    private let upstreamConnect: CoreMetrics.Timer
    private let counts = NIOLockedValueBox((connections: 0, tunnels: 0))

    public init() {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets["gatehouse_upstream_connect_seconds"] = [
            .microseconds(250), .milliseconds(1), .milliseconds(5), .milliseconds(25), .milliseconds(100),
            .milliseconds(500), .seconds(1), .seconds(5), .seconds(10),
        ]
        self.registry = registry
        self.factory = factory
        var fixed: [ReasonCode: CoreMetrics.Counter] = [:]
        for reason in ReasonCode.allCases where reason.hasFixedStatus {
            fixed[reason] = CoreMetrics.Counter(
                label: "gatehouse_responses_total",
                dimensions: [("status", String(reason.status.code)), ("reason", reason.rawValue)], factory: factory)
        }
        self.fixedResponses = fixed
        self.forwardedOK = CoreMetrics.Counter(
            label: "gatehouse_responses_total", dimensions: [("status", "200"), ("reason", ReasonCode.forwarded.rawValue)],
            factory: factory)
        self.authSuccess = CoreMetrics.Counter(label: "gatehouse_auth_total", dimensions: [("result", "success")], factory: factory)
        self.authFailure = CoreMetrics.Counter(label: "gatehouse_auth_total", dimensions: [("result", "failure")], factory: factory)
        self.cacheHits = CoreMetrics.Counter(label: "gatehouse_credential_cache_hits_total", factory: factory)
        self.bytesToClient = CoreMetrics.Counter(label: "gatehouse_bytes_total", dimensions: [("direction", "to_client")], factory: factory)
        self.bytesFromClient = CoreMetrics.Counter(label: "gatehouse_bytes_total", dimensions: [("direction", "from_client")], factory: factory)
        self.activeConnections = CoreMetrics.Gauge(label: "gatehouse_active_connections", factory: factory)
        self.activeTunnels = CoreMetrics.Gauge(label: "gatehouse_active_tunnels", factory: factory)
        self.upstreamConnect = CoreMetrics.Timer(label: "gatehouse_upstream_connect_seconds", factory: factory)
        self.activeConnections.record(0)
        self.activeTunnels.record(0)
    }

    /// Counts kept by one event loop between flushes into the shared counters.
    ///
    /// A counter shared by every loop is an atomic that the loops' cores pass back and forth;
    /// a proxied request touched three or four of them, about 3% of its CPU on two cores.
    /// Each loop counts in plain integers instead, and the counts are flushed into the
    /// Prometheus counters when many have gathered and whenever `/metrics` is read
    /// (``renderFlushed(on:)``), so a scrape always sees every response up to it.
    final class LoopCounts: @unchecked Sendable {
        // @unchecked: every member is touched only on `eventLoop` (flushes are submitted to it).
        let eventLoop: EventLoop
        private let metrics: GatehouseMetrics
        private var forwardedOK = 0
        private var byReason: [ReasonCode: Int] = [:]
        private var variable: [ResponseKey: Int] = [:]
        private var bytesOut = 0
        private var bytesIn = 0
        private var authSuccess = 0
        private var authFailure = 0
        private var cacheHits = 0
        private var unflushed = 0
        /// Flush at least this often (in responses), so the shared counters never lag far.
        static let flushEvery = 256

        init(eventLoop: EventLoop, metrics: GatehouseMetrics) {
            self.eventLoop = eventLoop
            self.metrics = metrics
        }

        func responded(_ entry: AccessLogEntry) {
            if entry.status == 200 && entry.reason == .forwarded {
                self.forwardedOK += 1
            } else if entry.status == Int(entry.reason.status.code) && entry.reason.hasFixedStatus {
                self.byReason[entry.reason, default: 0] += 1
            } else {
                self.variable[ResponseKey(status: entry.status, reason: entry.reason), default: 0] += 1
            }
            self.bytesOut += entry.bytesOut
            self.bytesIn += entry.bytesIn
            self.unflushed += 1
            if self.unflushed >= Self.flushEvery { self.flush() }
        }

        func authenticated(_ success: Bool) {
            if success { self.authSuccess += 1 } else { self.authFailure += 1 }
        }

        func cacheHit() { self.cacheHits += 1 }

        /// Adds everything counted since the last flush to the shared counters.
        func flush() {
            self.unflushed = 0
            let m = self.metrics
            if self.forwardedOK > 0 { m.forwardedOK.increment(by: self.forwardedOK) }
            for (reason, count) in self.byReason where count > 0 {
                m.fixedResponses[reason]?.increment(by: count)
            }
            for (key, count) in self.variable { m.responseCounter(key).increment(by: count) }
            if self.bytesOut > 0 { m.bytesToClient.increment(by: self.bytesOut) }
            if self.bytesIn > 0 { m.bytesFromClient.increment(by: self.bytesIn) }
            if self.authSuccess > 0 { m.authSuccess.increment(by: self.authSuccess) }
            if self.authFailure > 0 { m.authFailure.increment(by: self.authFailure) }
            if self.cacheHits > 0 { m.cacheHits.increment(by: self.cacheHits) }
            self.forwardedOK = 0
            for reason in self.byReason.keys { self.byReason[reason] = 0 }
            self.variable.removeAll(keepingCapacity: true)
            self.bytesOut = 0
            self.bytesIn = 0
            self.authSuccess = 0
            self.authFailure = 0
            self.cacheHits = 0
        }
    }

    private let loops = NIOLockedValueBox<PerEventLoop<LoopCounts>?>(nil)

    /// The counts of `eventLoop` (each connection looks them up once).
    func counts(for eventLoop: EventLoop) -> LoopCounts {
        let loops = self.loops.withLockedValue { loops in
            if let loops { return loops }
            let made = PerEventLoop { [unowned self] in LoopCounts(eventLoop: $0, metrics: self) }
            loops = made
            return made
        }
        return loops.value(for: eventLoop)
    }

    /// Flushes every loop's counts, then renders: what `/metrics` serves.
    func renderFlushed(on eventLoop: EventLoop) -> EventLoopFuture<String> {
        let all = self.loops.withLockedValue { $0?.all ?? [] }
        let flushes = all.map { counts in counts.eventLoop.submit { counts.flush() } }
        return EventLoopFuture.andAllComplete(flushes, on: eventLoop).map { self.render() }
    }

    private func responseCounter(_ key: ResponseKey) -> CoreMetrics.Counter {
        if key.status == 200 && key.reason == .forwarded { return self.forwardedOK }
        if key.status == Int(key.reason.status.code), let counter = self.fixedResponses[key.reason] { return counter }
        return self.respondedVariable(key)
    }

    private func respondedVariable(_ key: ResponseKey) -> CoreMetrics.Counter {
        self.responses.withLockedValue { counters -> CoreMetrics.Counter in
            if let counter = counters[key] { return counter }
            let counter = CoreMetrics.Counter(
                label: "gatehouse_responses_total",
                dimensions: [("status", String(key.status)), ("reason", key.reason.rawValue)], factory: self.factory)
            counters[key] = counter
            return counter
        }
    }

    func upstreamConnected(nanoseconds: Int64) { self.upstreamConnect.recordNanoseconds(nanoseconds) }

    func connectionOpened() { self.adjust(connections: 1) }
    func connectionClosed() { self.adjust(connections: -1) }
    func tunnelOpened() { self.adjust(tunnels: 1) }
    func tunnelClosed() { self.adjust(tunnels: -1) }

    /// Client connections and tunnels open now.
    var open: (connections: Int, tunnels: Int) {
        self.counts.withLockedValue { ($0.connections, $0.tunnels) }
    }

    private func adjust(connections: Int = 0, tunnels: Int = 0) {
        let now = self.counts.withLockedValue { counts -> (Int, Int) in
            counts.connections += connections
            counts.tunnels += tunnels
            return (counts.connections, counts.tunnels)
        }
        if connections != 0 { self.activeConnections.record(now.0) }
        if tunnels != 0 { self.activeTunnels.record(now.1) }
    }

    /// The Prometheus text exposition format (version 0.0.4).
    public func render() -> String {
        var bytes: [UInt8] = []
        self.registry.emit(into: &bytes)
        return String(decoding: bytes, as: UTF8.self)
    }
}
