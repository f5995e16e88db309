import NIOCore

extension TimeAmount {
    /// Parses durations such as `500ms`, `10s`, `2m` or `1h`. A bare number is rejected: a unit
    /// is required so that `--idle-timeout 60` cannot silently mean 60 ms or 60 minutes.
    public init(parsing text: String) throws(ConfigurationError) {
        let units: [(suffix: String, nanoseconds: Int64)] = [
            ("ms", 1_000_000), ("s", 1_000_000_000), ("m", 60_000_000_000), ("h", 3_600_000_000_000),
        ]
        for unit in units where text.hasSuffix(unit.suffix) {
            let number = text.dropLast(unit.suffix.count)
            // "2ms" also ends in "s"; the "ms" entry comes first, and a number never ends in "m".
            guard !number.isEmpty, number.allSatisfy({ $0.isASCII && $0.isNumber }), let value = Int64(number),
                value <= Int64.max / unit.nanoseconds
            else { continue }
            self = .nanoseconds(value * unit.nanoseconds)
            return
        }
        throw .invalidDuration(text)
    }

    /// Renders a duration the way it is written on the command line.
    public var humanReadable: String {
        let ns = self.nanoseconds
        if ns % 3_600_000_000_000 == 0 && ns != 0 { return "\(ns / 3_600_000_000_000)h" }
        if ns % 60_000_000_000 == 0 && ns != 0 { return "\(ns / 60_000_000_000)m" }
        if ns % 1_000_000_000 == 0 { return "\(ns / 1_000_000_000)s" }
        return "\(ns / 1_000_000)ms"
    }
}
