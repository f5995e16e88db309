import NIOHTTP1

extension HTTPHeaders {
    /// Header fields that describe one connection and must not be forwarded by an intermediary
    /// (RFC 9110 §7.6.1), plus the proxy's own credentials (RFC 9110 §11.7.2: a proxy consumes
    /// `Proxy-Authorization` addressed to it) and the non-standard `Proxy-Connection`.
    static let hopByHopNames: [String] = [
        "connection", "proxy-connection", "keep-alive", "te", "trailer", "upgrade",
        "proxy-authorization", "proxy-authenticate",
    ]

    /// Removes every hop-by-hop field: the fixed list and every field named in `Connection`
    /// (and `Proxy-Connection`, which some clients use the same way).
    public mutating func removeHopByHopFields() {
        // Per exchange, twice: skip the option parsing when no field names any options.
        guard self.contains(name: "connection") || self.contains(name: "proxy-connection") else {
            for name in Self.hopByHopNames where self.contains(name: name) { self.remove(name: name) }
            return
        }
        var named: [String] = []
        for value in self["connection"] + self["proxy-connection"] {
            for token in value.split(separator: ",") {
                let name = token.trimmingSpaces().lowercased()
                if !name.isEmpty { named.append(name) }
            }
        }
        for name in Self.hopByHopNames { self.remove(name: name) }
        for name in named where !Self.framingNames.contains(name) { self.remove(name: name) }
    }

    /// `Connection: content-length` must not make a proxy drop message framing; RFC 9112 §9.6
    /// lists only hop-by-hop fields as valid connection options.
    private static let framingNames: Set<String> = ["content-length", "transfer-encoding", "host"]

    /// Whether the `Connection` field carries the given option (case-insensitive).
    func hasConnectionOption(_ option: String) -> Bool {
        self["connection"].contains { value in
            value.split(separator: ",").contains { $0.trimmingSpaces().lowercased() == option }
        }
    }
}

