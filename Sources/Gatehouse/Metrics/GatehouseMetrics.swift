import CoreMetrics
import Metrics
import NIOConcurrencyHelpers
import Prometheus

/// The proxy's metrics, recorded through swift-metrics into a Prometheus registry of the
/// server's own (so several servers in one process, as in tests, never mix their figures).
public final class GatehouseMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    private let factory: PrometheusMetricsFactory
    private struct ResponseKey: Hashable {
        var status: Int
        var reason: ReasonCode
    }

    private let responses = NIOLockedValueBox([ResponseKey: CoreMetrics.Counter]())
    /// Counters for the reasons whose status never varies (all of Gatehouse's own answers),
    /// made up front: the busiest path (a 407 per credential-less request) then takes no lock.
    private let fixedResponses: [ReasonCode: CoreMetrics.Counter]
    /// The commonest line of all: a forwarded 200.
    private let forwardedOK: CoreMetrics.Counter
    private let authSuccess: CoreMetrics.Counter
    private let authFailure: CoreMetrics.Counter
    private let cacheHits: CoreMetrics.Counter
    private let bytesToClient: CoreMetrics.Counter
    private let bytesFromClient: CoreMetrics.Counter
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

    func responded(_ entry: AccessLogEntry) {
        if entry.status == 200 && entry.reason == .forwarded {
            self.forwardedOK.increment()
        } else if entry.status == Int(entry.reason.status.code), let counter = self.fixedResponses[entry.reason] {
            counter.increment()
        } else {
            self.respondedVariable(entry)
        }
        if entry.bytesOut > 0 { self.bytesToClient.increment(by: entry.bytesOut) }
        if entry.bytesIn > 0 { self.bytesFromClient.increment(by: entry.bytesIn) }
    }

    private func respondedVariable(_ entry: AccessLogEntry) {
        let key = ResponseKey(status: entry.status, reason: entry.reason)
        let counter = self.responses.withLockedValue { counters -> CoreMetrics.Counter in
            if let counter = counters[key] { return counter }
            let counter = CoreMetrics.Counter(
                label: "gatehouse_responses_total",
                dimensions: [("status", String(entry.status)), ("reason", entry.reason.rawValue)], factory: self.factory)
            counters[key] = counter
            return counter
        }
        counter.increment()
    }

    func authenticated(_ success: Bool) {
        (success ? self.authSuccess : self.authFailure).increment()
    }

    func cacheHit() { self.cacheHits.increment() }

    func upstreamConnected(nanoseconds: Int64) { self.upstreamConnect.recordNanoseconds(nanoseconds) }

    func connectionOpened() { self.adjust(connections: 1) }
    func connectionClosed() { self.adjust(connections: -1) }
    func tunnelOpened() { self.adjust(tunnels: 1) }
    func tunnelClosed() { self.adjust(tunnels: -1) }

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
