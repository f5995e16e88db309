@testable import Gatehouse
import NIOCore
import NIOPosix
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Origin connect failures as reason codes")
struct UpstreamConnectorTests {
    @Test("errno values: refused 502, timed out 504, no file descriptor left 503 (the proxy's fault, not the destination's)")
    func errnoReasons() {
        #expect(UpstreamConnector.reason(for: IOError(errnoCode: ECONNREFUSED, reason: "connect")) == .upstreamRefused)
        #expect(UpstreamConnector.reason(for: IOError(errnoCode: ETIMEDOUT, reason: "connect")) == .upstreamConnectTimeout)
        #expect(UpstreamConnector.reason(for: IOError(errnoCode: EHOSTUNREACH, reason: "connect")) == .upstreamUnreachable)
        for code in [EMFILE, ENFILE] {
            let reason = UpstreamConnector.reason(for: IOError(errnoCode: code, reason: "socket"))
            #expect(reason == .outOfDescriptors, "it was 502 upstream_unreachable")
            #expect(reason.status == .serviceUnavailable && reason.defaultRetryAfter == 5)
        }
    }

    @Test("the open-file limit a connection limit needs: two per busy client and a margin")
    func openFilesNeeded() {
        #expect(OpenFileLimit.needed(forConnections: 16_384) == 32_832)
        let (soft, hard) = OpenFileLimit.current
        #expect(soft > 0 && soft <= hard)
    }
}
