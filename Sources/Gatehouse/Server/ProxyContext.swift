import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1

/// What every connection of one server shares: configuration, users, the access log, and the
/// registry of open connections used to force-close stragglers at the end of a drain.
final class ProxyContext: Sendable {
    let configuration: ProxyConfiguration
    let authenticator: Authenticator
    let accessLog: AccessLog
    let logger: Logger
    /// `Basic realm="…", charset="UTF-8"`, built once.
    let challenge: String
    /// Listen addresses actually bound, for loop detection and reporting.
    let connections = ConnectionRegistry()
    /// Parser limits: header section size (431) and field count.
    let decoderLimits: NIOHTTPDecoderLimitConfiguration

    init(configuration: ProxyConfiguration, authenticator: Authenticator, accessLog: AccessLog, logger: Logger) {
        self.configuration = configuration
        self.authenticator = authenticator
        self.accessLog = accessLog
        self.logger = logger
        self.challenge = ProxyChallenge.basic(realm: configuration.realm)
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderFieldSize = configuration.maxHeaderBytes
        limits.maxHeaderListSize = configuration.maxHeaderBytes
        limits.maxHeaderFieldCount = 256
        self.decoderLimits = limits
    }
}

/// The open client connections of a server, so a drain that runs out of time can close them.
final class ConnectionRegistry: Sendable {
    private let channels = NIOLockedValueBox([ObjectIdentifier: Channel]())

    func add(_ channel: Channel) {
        let id = ObjectIdentifier(channel)
        self.channels.withLockedValue { $0[id] = channel }
        channel.closeFuture.whenComplete { _ in
            self.channels.withLockedValue { $0[id] = nil }
        }
    }

    var count: Int { self.channels.withLockedValue { $0.count } }

    func closeAll() {
        let all = self.channels.withLockedValue { Array($0.values) }
        for channel in all { channel.close(promise: nil) }
    }
}
