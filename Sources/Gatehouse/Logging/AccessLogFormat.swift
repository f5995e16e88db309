#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The layout of an access-log line.
public enum AccessLogFormat: String, Sendable, CaseIterable {
    /// Squid's native format, so tools that read Squid's `access.log` read this one:
    /// `time elapsed client code/status bytes method URL user hierarchy/peer type`, with
    /// Gatehouse's reason code appended as `reason=…`.
    case squid
    /// The NCSA common log format with `reason=…` appended.
    case common
    /// One JSON object per line.
    case json

    public func format(_ entry: AccessLogEntry) -> String {
        switch self {
        case .squid: return Self.squidLine(entry)
        case .common: return Self.commonLine(entry)
        case .json: return Self.jsonLine(entry)
        }
    }

    private static func squidLine(_ e: AccessLogEntry) -> String {
        let totalMillis = Int((e.timestamp * 1000).rounded())
        let time = "\(totalMillis / 1000).\(pad(totalMillis % 1000, 3))"
        let elapsed = leftPad(String(e.durationMilliseconds), 6)
        let code: String
        switch e.reason {
        case .forwarded, .upstreamTruncated, .clientClosed: code = "TCP_MISS"
        case .tunnel: code = "TCP_TUNNEL"
        case .authMissing, .authScheme, .authMalformed, .authInvalid, .connectPortDenied: code = "TCP_DENIED"
        default: code = e.upstream == nil ? "NONE_NONE" : "TCP_MISS"
        }
        let hierarchy = e.upstream.map { "HIER_DIRECT/\($0)" } ?? "HIER_NONE/-"
        return "\(time) \(elapsed) \(clientHost(e.client)) \(code)/\(e.status) \(e.bytesOut) \(e.method) \(e.target) "
            + "\(e.user ?? "-") \(hierarchy) - reason=\(e.reason.rawValue)"
    }

    private static func commonLine(_ e: AccessLogEntry) -> String {
        "\(clientHost(e.client)) - \(e.user ?? "-") [\(commonTime(e.timestamp))] \"\(e.method) \(e.target) \(e.version)\" "
            + "\(e.status) \(e.bytesOut) reason=\(e.reason.rawValue)"
    }

    private static func jsonLine(_ e: AccessLogEntry) -> String {
        var s = "{\"time\":\"\(isoTime(e.timestamp))\",\"client\":\(jsonString(e.client)),"
        s += "\"user\":\(e.user.map(jsonString) ?? "null"),\"method\":\(jsonString(e.method)),"
        s += "\"target\":\(jsonString(e.target)),\"status\":\(e.status),\"reason\":\"\(e.reason.rawValue)\","
        s += "\"bytes_out\":\(e.bytesOut),\"bytes_in\":\(e.bytesIn),"
        s += "\"upstream\":\(e.upstream.map(jsonString) ?? "null"),\"duration_ms\":\(e.durationMilliseconds)}"
        return s
    }

    /// The client's IP without the port, as Squid and common logs show it.
    private static func clientHost(_ client: String) -> String {
        if client.hasPrefix("["), let close = client.firstIndex(of: "]") {
            return String(client[client.index(after: client.startIndex)..<close])
        }
        if let colon = client.lastIndex(of: ":"), client.firstIndex(of: ":") == colon {
            return String(client[..<colon])
        }
        return client
    }

    static func jsonString(_ value: String) -> String {
        var out = "\""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F {
                    out += "\\u" + leftPad(String(scalar.value, radix: 16), 4, "0")
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }

    private static func brokenDown(_ timestamp: Double) -> tm {
        var seconds = time_t(timestamp)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        return parts
    }

    private static func isoTime(_ timestamp: Double) -> String {
        let totalMillis = Int((timestamp * 1000).rounded())
        let t = brokenDown(Double(totalMillis / 1000))
        let millis = totalMillis % 1000
        return "\(t.tm_year + 1900)-\(pad(Int(t.tm_mon) + 1, 2))-\(pad(Int(t.tm_mday), 2))T"
            + "\(pad(Int(t.tm_hour), 2)):\(pad(Int(t.tm_min), 2)):\(pad(Int(t.tm_sec), 2)).\(pad(millis, 3))Z"
    }

    private static let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

    private static func commonTime(_ timestamp: Double) -> String {
        let t = brokenDown(timestamp)
        return "\(pad(Int(t.tm_mday), 2))/\(months[Int(t.tm_mon) % 12])/\(t.tm_year + 1900):"
            + "\(pad(Int(t.tm_hour), 2)):\(pad(Int(t.tm_min), 2)):\(pad(Int(t.tm_sec), 2)) +0000"
    }

    private static func pad(_ value: Int, _ width: Int) -> String { leftPad(String(value), width, "0") }

    private static func leftPad(_ s: String, _ width: Int, _ fill: Character = " ") -> String {
        s.count >= width ? s : String(repeating: fill, count: width - s.count) + s
    }
}
