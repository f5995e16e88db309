@testable import Gatehouse
import Foundation
import Testing

@Suite("Access log formats")
struct AccessLogFormatTests {
    static let entry = AccessLogEntry(
        timestamp: 1_764_477_600.123, client: "127.0.0.1:50000", user: "demo", method: "GET",
        target: "http://example.com/", version: "HTTP/1.1", status: 200, reason: .forwarded, bytesOut: 1234, bytesIn: 0,
        upstream: "93.184.216.34:80", durationMilliseconds: 12)

    @Test("squid: native layout with the reason appended")
    func squid() {
        #expect(AccessLogFormat.squid.format(Self.entry)
            == "1764477600.123     12 127.0.0.1 TCP_MISS/200 1234 GET http://example.com/ demo HIER_DIRECT/93.184.216.34:80 - reason=forwarded")
        var denied = Self.entry
        denied.status = 407
        denied.reason = .authMissing
        denied.user = nil
        denied.upstream = nil
        #expect(AccessLogFormat.squid.format(denied).contains(" TCP_DENIED/407 "))
        #expect(AccessLogFormat.squid.format(denied).contains(" - HIER_NONE/- - reason=auth_missing"))
        // A tunnel is TCP_TUNNEL, also when the drain or a second SIGTERM cut it.
        var tunnel = Self.entry
        tunnel.method = "CONNECT"
        tunnel.target = "example.com:443"
        for reason in [ReasonCode.tunnel, .shutdown] {
            tunnel.reason = reason
            #expect(AccessLogFormat.squid.format(tunnel).contains(" TCP_TUNNEL/200 "), "\(reason)")
        }
    }

    @Test("an empty user name (credentials \":password\") is logged as -, keeping the fields in place")
    func emptyUser() {
        var entry = Self.entry
        entry.user = ""
        #expect(AccessLogFormat.squid.format(entry).contains(" GET http://example.com/ - HIER_DIRECT/"))
        #expect(AccessLogFormat.common.format(entry).hasPrefix("127.0.0.1 - - ["))
    }

    @Test("squid: the response's content type in Squid's column, escaped like the other fields")
    func squidContentType() {
        var entry = Self.entry
        entry.contentType = "text/html; charset=utf-8"
        #expect(AccessLogFormat.squid.format(entry).hasSuffix(" HIER_DIRECT/93.184.216.34:80 text/html;%20charset=utf-8 reason=forwarded"))
        entry.contentType = "x\n1764477600.000 forged"
        #expect(AccessLogFormat.squid.format(entry).hasSuffix(" x%0A1764477600.000%20forged reason=forwarded"))
        entry.contentType = "%41%0A 100%"
        #expect(AccessLogFormat.squid.format(entry).hasSuffix(" %2541%250A%20100%25 reason=forwarded"), "an origin's % is escaped too")
        entry.contentType = String(repeating: "a", count: 100_000)
        #expect(AccessLogFormat.squid.format(entry).hasSuffix(" " + String(repeating: "a", count: 256) + "... reason=forwarded"))
        entry.contentType = ""
        #expect(AccessLogFormat.squid.format(entry).hasSuffix(" - reason=forwarded"))
    }

    @Test("squid: numbers padded and overflowing as Squid's printf does; IPv6 and odd clients")
    func squidNumbers() {
        var entry = Self.entry
        entry.timestamp = 1_764_477_600.007
        entry.durationMilliseconds = 1_234_567
        entry.client = "[2001:db8::1]:443"
        #expect(AccessLogFormat.squid.format(entry).hasPrefix("1764477600.007 1234567 2001:db8::1 TCP_MISS/200 "))
        entry.durationMilliseconds = 0
        entry.client = "-"
        entry.bytesOut = 0
        #expect(AccessLogFormat.squid.format(entry).hasPrefix("1764477600.007      0 - TCP_MISS/200 0 GET "))
    }

    @Test("squid and common: a user name or target cannot forge a line or reach the terminal", arguments: [
        AccessLogFormat.squid, .common,
    ])
    func escaping(format: AccessLogFormat) {
        var entry = Self.entry
        entry.user = "ev il\n1764477600.000      1 10.0.0.1 TCP_MISS/200 1 GET http://x/ admin \u{1B}[31m%\""
        entry.target = "http://example.com/a\"b%20c\u{7F}é"
        let line = format.format(entry)
        #expect(!line.contains("\n") && !line.contains("\u{1B}") && !line.contains("\u{7F}"))
        #expect(line.contains(" ev%20il%0A1764477600.000%20%20%20%20%20%201%2010.0.0.1%20TCP_MISS/200%201%20GET%20http://x/%20admin%20%1B[31m%25%22 "))
        #expect(line.contains("http://example.com/a%22b%20c%7F%C3%A9"))
        // Plain names and targets are untouched; a UTF-8 name stays recoverable.
        entry.user = "jürgen"
        #expect(format.format(entry).contains(" j%C3%BCrgen "))
        #expect(format.format(Self.entry).contains(" demo ") && format.format(Self.entry).contains("http://example.com/ "))
    }

    @Test("common: NCSA layout with the reason appended")
    func common() {
        #expect(AccessLogFormat.common.format(Self.entry)
            == "127.0.0.1 - demo [30/Nov/2025:04:40:00 +0000] \"GET http://example.com/ HTTP/1.1\" 200 1234 reason=forwarded")
    }

    @Test("json: one object with every field, strings escaped")
    func json() throws {
        var entry = Self.entry
        entry.target = "http://example.com/\"quoted\"\\\n"
        entry.client = "[::1]:5"
        let line = AccessLogFormat.json.format(entry)
        #expect(!line.contains("\n"))
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        #expect(object["time"] as? String == "2025-11-30T04:40:00.123Z")
        #expect(object["target"] as? String == entry.target)
        #expect(object["status"] as? Int == 200)
        #expect(object["reason"] as? String == "forwarded")
        #expect(object["bytes_out"] as? Int == 1234)
        #expect(object["upstream"] as? String == "93.184.216.34:80")
        #expect(object["duration_ms"] as? Int == 12)
        #expect(AccessLogFormat.squid.format(entry).contains(" ::1 "))
    }

    @Test("every reason has a status and a plain-words message")
    func reasons() {
        for reason in ReasonCode.allCases {
            #expect(!reason.message.isEmpty)
            #expect(reason.rawValue.allSatisfy { $0.isLowercase || $0 == "_" })
        }
        #expect(ReasonCode.authInvalid.message == "Proxy authentication required: the user name or password is not valid.")
    }
}
