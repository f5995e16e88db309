/// Deliberate deviations from normal behaviour, for people testing how *their client* handles
/// a proxy's 407s and failures. Off by default; `GatehouseTesting` exposes them.
///
/// Each mirrors something real proxies do: Squid and corporate proxies offer `Negotiate` and
/// `Digest` next to `Basic`, some close the connection after a 407, some only demand
/// credentials for `CONNECT`, and every proxy eventually reports a dead origin.
public struct TestingBehaviours: Sendable, Equatable {
    /// Extra `Proxy-Authenticate` challenges sent *before* the Basic one (RFC 9110 §11.6.1
    /// allows several), e.g. `Negotiate` or `Digest realm="x", nonce="…"`, so that the client
    /// has to pick Basic from a list.
    public var extraChallenges: [String] = []
    /// Answer 407 with `Connection: close` and close, instead of keeping the connection.
    public var closeAfterChallenge = false
    /// Require credentials only for `CONNECT`; plain-http forwards pass without them.
    public var authenticateConnectOnly = false
    /// Instead of contacting the origin, answer every authenticated request with this failure
    /// (for example ``ReasonCode/upstreamRefused`` for a 502, ``ReasonCode/upstreamTimeout``
    /// for a 504).
    public var upstreamFailure: ReasonCode? = nil

    public init(
        extraChallenges: [String] = [], closeAfterChallenge: Bool = false, authenticateConnectOnly: Bool = false,
        upstreamFailure: ReasonCode? = nil
    ) {
        self.extraChallenges = extraChallenges
        self.closeAfterChallenge = closeAfterChallenge
        self.authenticateConnectOnly = authenticateConnectOnly
        self.upstreamFailure = upstreamFailure
    }

    /// Whether every behaviour is off.
    public var isDefault: Bool { self == TestingBehaviours() }
}
