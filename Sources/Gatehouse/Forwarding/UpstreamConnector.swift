import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Opens TCP connections to origins and explains failures as reason codes.
enum UpstreamConnector {
    /// Maps a connect failure to the status and reason the client gets (502 or 504).
    static func reason(for error: Error) -> ReasonCode {
        if let error = error as? ChannelError, case .connectTimeout = error { return .upstreamConnectTimeout }
        if let error = error as? NIOConnectionError {
            if error.connectionErrors.isEmpty {
                return (error.dnsAError != nil || error.dnsAAAAError != nil) ? .upstreamDNS : .upstreamUnreachable
            }
            let reasons = error.connectionErrors.map { Self.reason(for: $0.error) }
            if reasons.contains(.outOfDescriptors) { return .outOfDescriptors }
            if reasons.contains(.upstreamRefused) { return .upstreamRefused }
            if reasons.contains(.upstreamConnectTimeout) { return .upstreamConnectTimeout }
            return .upstreamUnreachable
        }
        if let error = error as? IOError {
            switch error.errnoCode {
            case ECONNREFUSED: return .upstreamRefused
            case ETIMEDOUT: return .upstreamConnectTimeout
            case EMFILE, ENFILE: return .outOfDescriptors
            default: return .upstreamUnreachable
            }
        }
        if error is SocketAddressError { return .upstreamDNS }
        return .upstreamUnreachable
    }

    static func bootstrap(on eventLoop: EventLoop, configuration: ProxyConfiguration, halfClosure: Bool) -> ClientBootstrap {
        ClientBootstrap(group: eventLoop)
            .connectTimeout(configuration.connectTimeout)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelOption(.allowRemoteHalfClosure, value: halfClosure)
    }
}
