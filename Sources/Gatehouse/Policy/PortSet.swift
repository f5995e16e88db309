/// The set of destination ports that `CONNECT` may reach.
///
/// A forward proxy that tunnels to any port is an open relay for SMTP, SSH and anything else,
/// which is why Squid's default `SSL_ports` ACL allows only 443. Gatehouse follows that default.
public struct PortSet: Sendable, Hashable, CustomStringConvertible {
    public private(set) var ranges: [ClosedRange<Int>]

    public init(_ ranges: [ClosedRange<Int>]) {
        self.ranges = ranges
    }

    /// Parses a comma-separated list of ports and inclusive ranges, for example `443,8443,9000-9100`.
    public init(parsing text: String) throws(ConfigurationError) {
        var ranges: [ClosedRange<Int>] = []
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            let item = item.trimmingSpaces()
            let bounds = item.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
            guard let low = bounds.first.flatMap({ Self.port($0) }) else { throw .invalidPortList(text) }
            let high = bounds.count == 2 ? Self.port(bounds[1]) : low
            guard let high, low <= high else { throw .invalidPortList(text) }
            ranges.append(low...high)
        }
        guard !ranges.isEmpty else { throw .invalidPortList(text) }
        self.ranges = ranges
    }

    private static func port(_ text: Substring) -> Int? {
        guard !text.isEmpty, text.count <= 5, text.allSatisfy({ $0.isASCII && $0.isNumber }), let value = Int(text),
            (1...65535).contains(value)
        else { return nil }
        return value
    }

    public func contains(_ port: Int) -> Bool {
        self.ranges.contains { $0.contains(port) }
    }

    public var description: String {
        self.ranges.map { $0.lowerBound == $0.upperBound ? "\($0.lowerBound)" : "\($0.lowerBound)-\($0.upperBound)" }
            .joined(separator: ",")
    }
}

extension Substring {
    func trimmingSpaces() -> Substring {
        var result = self
        while let first = result.first, first == " " || first == "\t" { result.removeFirst() }
        while let last = result.last, last == " " || last == "\t" { result.removeLast() }
        return result
    }
}
