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
        var bytes: [UInt8] = []
        self.append(entry, to: &bytes)
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Appends the entry's line (without the newline) to `bytes`. The log writer formats every
    /// line of the busiest format straight into one reused buffer: building a `String` per line
    /// by interpolation cost more than a tenth of the CPU of a proxied request.
    func append(_ entry: AccessLogEntry, to bytes: inout [UInt8]) {
        switch self {
        case .squid: Self.appendSquidLine(entry, to: &bytes)
        case .common: bytes.append(contentsOf: Self.commonLine(entry).utf8)
        case .json: bytes.append(contentsOf: Self.jsonLine(entry).utf8)
        }
    }

    /// The longest origin `Content-Type` logged whole (real ones are a few dozen bytes).
    static let maximumContentTypeBytes = 256

    private static func appendSquidLine(_ e: AccessLogEntry, to bytes: inout [UInt8]) {
        let totalMillis = Int((e.timestamp * 1000).rounded())
        appendDecimal(totalMillis / 1000, to: &bytes)
        bytes.append(UInt8(ascii: "."))
        appendDecimal(totalMillis % 1000, width: 3, fill: UInt8(ascii: "0"), to: &bytes)
        bytes.append(UInt8(ascii: " "))
        appendDecimal(e.durationMilliseconds, width: 6, fill: UInt8(ascii: " "), to: &bytes)
        bytes.append(UInt8(ascii: " "))
        appendClientHost(e.client, to: &bytes)
        bytes.append(UInt8(ascii: " "))
        let code: StaticString
        switch e.reason {
        case .forwarded, .upstreamTruncated, .clientClosed, .clientStalled: code = "TCP_MISS/"
        case .tunnel: code = "TCP_TUNNEL/"
        // A tunnel cut by the drain or a second SIGTERM was a tunnel all the same.
        case .shutdown where e.status == 200 && e.method == "CONNECT": code = "TCP_TUNNEL/"
        case .authMissing, .authScheme, .authMalformed, .authInvalid, .connectPortDenied: code = "TCP_DENIED/"
        default: code = e.upstream == nil ? "NONE_NONE/" : "TCP_MISS/"
        }
        appendStatic(code, to: &bytes)
        appendDecimal(e.status, to: &bytes)
        bytes.append(UInt8(ascii: " "))
        appendDecimal(e.bytesOut, to: &bytes)
        bytes.append(UInt8(ascii: " "))
        bytes.append(contentsOf: e.method.utf8)
        bytes.append(UInt8(ascii: " "))
        appendEscaped(e.target, keepingPercent: true, to: &bytes)
        bytes.append(UInt8(ascii: " "))
        // An empty name (credentials `:password`) would leave an empty field and shift the
        // fields after it for tools that split on spaces: `-`, as for no name.
        if let user = e.user, !user.isEmpty { appendEscaped(user, keepingPercent: false, to: &bytes) } else { bytes.append(UInt8(ascii: "-")) }
        if let upstream = e.upstream {
            appendStatic(" HIER_DIRECT/", to: &bytes)
            bytes.append(contentsOf: upstream.utf8)
        } else {
            appendStatic(" HIER_NONE/-", to: &bytes)
        }
        bytes.append(UInt8(ascii: " "))
        if let type = e.contentType, !type.isEmpty {
            if type == OwnResponse.plainText {
                // Gatehouse's own answers (every 407): escaped once, not per line.
                appendStatic("text/plain;%20charset=utf-8", to: &bytes)
            } else if type.utf8.count <= Self.maximumContentTypeBytes {
                // The origin's text: escaped like a user name (its `%` too, so that no tool
                // decoding the log turns an origin's `%0A` into a line break).
                appendEscaped(type, keepingPercent: false, to: &bytes)
            } else {
                // An origin's value of any length would make a line of that length: cut.
                appendEscaped(String(decoding: type.utf8.prefix(Self.maximumContentTypeBytes), as: UTF8.self), keepingPercent: false, to: &bytes)
                appendStatic("...", to: &bytes)
            }
        } else {
            bytes.append(UInt8(ascii: "-"))
        }
        appendStatic(" reason=", to: &bytes)
        bytes.append(contentsOf: e.reason.rawValue.utf8)
    }

    /// Text the client chose (the user name from its credentials, the request target), made
    /// safe for a space-separated line: every byte outside visible ASCII, and `"`, becomes
    /// `%XX`, as Squid escapes these fields. Without it a user name such as
    /// `x\n1764477600.000 … reason=forwarded` would forge a log line, and escape sequences
    /// would reach the terminal of whoever reads the log. A user name's `%` is escaped too,
    /// so the name can be recovered exactly (`j%C3%BCrgen` is `jürgen`); a URL keeps its
    /// own `%XX` escapes as they are.
    static func appendEscaped(_ text: String, keepingPercent: Bool, to bytes: inout [UInt8]) {
        var text = text
        text.withUTF8 { utf8 in
            // Over the contiguous bytes: the generic UTF8View walk cost twice as much.
            if !utf8.contains(where: { needsEscape($0, keepingPercent: keepingPercent) }) {
                bytes.append(contentsOf: utf8)
                return
            }
            let hex: StaticString = "0123456789ABCDEF"
            for byte in utf8 {
                if needsEscape(byte, keepingPercent: keepingPercent) {
                    bytes.append(UInt8(ascii: "%"))
                    bytes.append(hex.utf8Start[Int(byte >> 4)])
                    bytes.append(hex.utf8Start[Int(byte & 0x0F)])
                } else {
                    bytes.append(byte)
                }
            }
        }
    }

    private static func needsEscape(_ byte: UInt8, keepingPercent: Bool) -> Bool {
        byte <= 0x20 || byte >= 0x7F || byte == UInt8(ascii: "\"") || (byte == UInt8(ascii: "%") && !keepingPercent)
    }

    static func escaped(_ text: String, keepingPercent: Bool) -> String {
        var bytes: [UInt8] = []
        appendEscaped(text, keepingPercent: keepingPercent, to: &bytes)
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func appendStatic(_ text: StaticString, to bytes: inout [UInt8]) {
        bytes.append(contentsOf: UnsafeBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }

    /// `value` in decimal, left-padded with `fill` to `width`.
    private static func appendDecimal(_ value: Int, width: Int = 0, fill: UInt8 = UInt8(ascii: " "), to bytes: inout [UInt8]) {
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                     UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        let negative = value < 0
        var magnitude = value.magnitude
        var count = 0
        withUnsafeMutableBytes(of: &digits) { buffer in
            repeat {
                buffer[19 - count] = UInt8(ascii: "0") + UInt8(magnitude % 10)
                magnitude /= 10
                count += 1
            } while magnitude > 0
            let length = count + (negative ? 1 : 0)
            if length < width { bytes.append(contentsOf: repeatElement(fill, count: width - length)) }
            if negative { bytes.append(UInt8(ascii: "-")) }
            bytes.append(contentsOf: buffer[(20 - count)...])
        }
    }

    /// The client's IP without the port, as Squid and common logs show it.
    private static func appendClientHost(_ client: String, to bytes: inout [UInt8]) {
        let utf8 = client.utf8
        if utf8.first == UInt8(ascii: "["), let close = utf8.firstIndex(of: UInt8(ascii: "]")) {
            bytes.append(contentsOf: utf8[utf8.index(after: utf8.startIndex)..<close])
            return
        }
        if let colon = utf8.lastIndex(of: UInt8(ascii: ":")), utf8.firstIndex(of: UInt8(ascii: ":")) == colon {
            bytes.append(contentsOf: utf8[..<colon])
            return
        }
        bytes.append(contentsOf: utf8)
    }

    private static func commonLine(_ e: AccessLogEntry) -> String {
        "\(clientHost(e.client)) - \(e.user.flatMap { $0.isEmpty ? nil : escaped($0, keepingPercent: false) } ?? "-") [\(commonTime(e.timestamp))] "
            + "\"\(e.method) \(escaped(e.target, keepingPercent: true)) \(e.version)\" "
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
