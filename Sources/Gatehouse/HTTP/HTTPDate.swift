import NIOConcurrencyHelpers

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The `Date` field's value, IMF-fixdate (RFC 9110 §5.6.7): `Sun, 06 Nov 1994 08:49:37 GMT`,
/// always 29 bytes.
///
/// RFC 9110 §6.6.1: a recipient with a clock that forwards a response without `Date` MUST add
/// one, and a server MUST send one with its 2xx–4xx responses (Gatehouse's own 407s, say).
/// Formatted once per second, not per response.
enum HTTPDate {
    /// What a prebuilt answer carries until it is written (`OwnResponseEncoder` fills in the
    /// time): the same length as every date.
    static let placeholder = "Thu, 01 Jan 1970 00:00:00 GMT"

    private static let cache = NIOLockedValueBox<(second: Int, text: String)>((-1, placeholder))

    /// The current time as IMF-fixdate.
    static func now() -> String {
        let second = Int(time(nil))
        return Self.cache.withLockedValue { cache in
            if cache.second != second { cache = (second, Self.format(second)) }
            return cache.text
        }
    }

    private static let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    private static let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

    static func format(_ seconds: Int) -> String {
        var time = time_t(seconds)
        var parts = tm()
        gmtime_r(&time, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let day = Self.days[Int(parts.tm_wday) % 7]
        let month = Self.months[Int(parts.tm_mon) % 12]
        let year = String(parts.tm_year + 1900)
        return "\(day), \(two(parts.tm_mday)) \(month) \(year) \(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)) GMT"
    }
}
