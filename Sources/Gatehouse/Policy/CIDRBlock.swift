import NIOCore

/// An IPv4 or IPv6 network in CIDR notation (`10.0.0.0/8`, `fd00::/8`, or a single address).
public struct CIDRBlock: Sendable, Hashable, CustomStringConvertible {
    let network: [UInt8]
    let prefixLength: Int

    public init(parsing text: String) throws(ConfigurationError) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard var bytes = Self.addressBytes(String(parts[0])) else { throw .invalidCIDR(text) }
        let maximum = bytes.count * 8
        var prefix = maximum
        if parts.count == 2 {
            guard let parsed = Int(parts[1]), parts[1].allSatisfy(\.isNumber), (0...maximum).contains(parsed) else {
                throw .invalidCIDR(text)
            }
            prefix = parsed
        }
        // An IPv4-mapped network (`::ffff:127.0.0.0/104`) is the IPv4 network it maps
        // (`127.0.0.0/8`): addresses are checked in their IPv4 form, so as written it would
        // never match.
        if Self.isIPv4Mapped(bytes), prefix >= 96 {
            bytes = Array(bytes[12..<16])
            prefix -= 96
        }
        self.network = Self.masked(bytes, prefix)
        self.prefixLength = prefix
    }

    /// Whether the address is in this network. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`)
    /// are checked as the IPv4 address they carry, so they cannot slip past an IPv4 rule.
    public func contains(_ address: SocketAddress) -> Bool {
        guard var bytes = Self.bytes(of: address) else { return false }
        if Self.isIPv4Mapped(bytes) {
            bytes = Array(bytes[12..<16])
        }
        guard bytes.count == self.network.count else { return false }
        return Self.masked(bytes, self.prefixLength) == self.network
    }

    /// A block from its bytes (4 or 16) and prefix length, for the constants below.
    init(network: [UInt8], prefixLength: Int) {
        self.network = Self.masked(network, prefixLength)
        self.prefixLength = prefixLength
    }

    /// 127.0.0.0/8 and ::1: the local host.
    static let loopback = [
        CIDRBlock(network: [127, 0, 0, 0], prefixLength: 8), CIDRBlock(network: Array(repeating: 0, count: 15) + [1], prefixLength: 128),
    ]
    /// 0.0.0.0 and ::, which a connect sends to the local host as well.
    static let unspecified = [
        CIDRBlock(network: [0, 0, 0, 0], prefixLength: 32), CIDRBlock(network: Array(repeating: 0, count: 16), prefixLength: 128),
    ]

    /// Whether a connection to `address` reaches this host's loopback interface: a loopback
    /// address, or the unspecified address (Linux connects `0.0.0.0` and `::` to the local host).
    static func isLocalHost(_ address: SocketAddress) -> Bool {
        Self.loopback.contains { $0.contains(address) } || Self.unspecified.contains { $0.contains(address) }
    }

    static func isIPv4Mapped(_ bytes: [UInt8]) -> Bool {
        bytes.count == 16 && bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xFF && bytes[11] == 0xFF
    }

    /// `address`'s IP as text, an IPv4-mapped IPv6 address (`::ffff:127.0.0.1`) as the IPv4
    /// address it maps: a connection to one reaches the other.
    static func unmappedIP(_ address: SocketAddress) -> String? {
        guard let bytes = Self.bytes(of: address), Self.isIPv4Mapped(bytes) else { return address.ipAddress }
        return bytes[12..<16].map(String.init).joined(separator: ".")
    }

    /// The address's 4 or 16 bytes, read from the socket address itself (no text round trip).
    static func bytes(of address: SocketAddress) -> [UInt8]? {
        switch address {
        case .v4(let v4): return withUnsafeBytes(of: v4.address.sin_addr) { Array($0) }
        case .v6(let v6): return withUnsafeBytes(of: v6.address.sin6_addr) { Array($0) }
        default: return nil
        }
    }

    static func masked(_ bytes: [UInt8], _ prefix: Int) -> [UInt8] {
        bytes.enumerated().map { index, byte in
            let bits = max(0, min(8, prefix - index * 8))
            return bits == 0 ? 0 : byte & UInt8(truncatingIfNeeded: 0xFF << (8 - bits))
        }
    }

    static func addressBytes(_ text: String) -> [UInt8]? {
        guard let address = try? SocketAddress(ipAddress: text, port: 0) else { return nil }
        switch address {
        case .v4(let v4):
            return withUnsafeBytes(of: v4.address.sin_addr) { Array($0) }
        case .v6(let v6):
            return withUnsafeBytes(of: v6.address.sin6_addr) { Array($0) }
        default:
            return nil
        }
    }

    public var description: String {
        let address: String
        if self.network.count == 4 {
            address = self.network.map(String.init).joined(separator: ".")
        } else {
            address = stride(from: 0, to: 16, by: 2).map { String(UInt16(self.network[$0]) << 8 | UInt16(self.network[$0 + 1]), radix: 16) }
                .joined(separator: ":")
        }
        return "\(address)/\(self.prefixLength)"
    }
}

/// Which destinations the proxy may connect to, checked against the address actually
/// connected to (after DNS), so a name that resolves differently later (DNS rebinding) cannot
/// get around it. Deny rules win; when allow rules exist, anything outside them is denied.
public struct DestinationPolicy: Sendable, Equatable {
    public var allow: [CIDRBlock] = []
    public var deny: [CIDRBlock] = []

    public init(allow: [CIDRBlock] = [], deny: [CIDRBlock] = []) {
        self.allow = allow
        self.deny = deny
    }

    /// Whether the proxy may connect to `address`. The unspecified address (`0.0.0.0`, `::`)
    /// is checked as the loopback address it connects to, so `--deny-destination 127.0.0.0/8`
    /// also stops `http://0.0.0.0:PORT/`.
    public func permits(_ address: SocketAddress) -> Bool {
        // Checked for every request that reuses an origin connection: no rules, no work.
        if self.deny.isEmpty && self.allow.isEmpty { return true }
        if CIDRBlock.unspecified.contains(where: { $0.contains(address) }) {
            let loopback = address.protocol == .inet6 && CIDRBlock.unspecified[1].contains(address) ? "::1" : "127.0.0.1"
            guard let local = try? SocketAddress(ipAddress: loopback, port: address.port ?? 0) else { return false }
            return self.permits(local)
        }
        if self.deny.contains(where: { $0.contains(address) }) { return false }
        if !self.allow.isEmpty && !self.allow.contains(where: { $0.contains(address) }) { return false }
        return true
    }
}
