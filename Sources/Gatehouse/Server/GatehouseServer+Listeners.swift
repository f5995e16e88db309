import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension GatehouseServer {
    /// The listen backlog of sockets Gatehouse binds itself; inherited ones keep systemd's.
    static let listenBacklog: Int32 = 1024

    /// Runs `body`, which binds `address`; a failure of the bind itself (an address not on
    /// this machine, a port below 1024 without the capability) is said as "cannot listen on
    /// ADDRESS: reason" (NIO's own text, `bind(descriptor:ptr:bytes:): … (errno: 99)`, named
    /// no address).
    static func namingTheAddress(_ address: ListenAddress, _ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let error as IOError {
            throw ConfigurationError.cannotListen(address.description, reason: String(cString: strerror(error.errnoCode)))
        }
    }

    /// Refuses a port that another socket already listens on.
    ///
    /// Gatehouse's own listeners share their port (`SO_REUSEPORT`, one per event loop), and
    /// the kernel lets any socket of the same user that sets the option join them: a second
    /// Gatehouse (a stale process, an operator's test run beside the service) would start
    /// without a word and silently take part of the connections. So before binding, a socket
    /// without `SO_REUSEPORT` is bound to the address: that fails with `EADDRINUSE` exactly
    /// when something listens there. It has `SO_REUSEADDR`, as the listeners do, so the
    /// `TIME_WAIT` connections of a previous run do not count. Port 0 picks a free port and
    /// needs no check.
    static func refuseIfTaken(_ listen: ListenAddress) throws {
        guard listen.port != 0 else { return }
        let address: SocketAddress
        do {
            address = try SocketAddress.makeAddressResolvingHost(listen.host, port: listen.port)
        } catch {
            // Said plainly: NIO's "SocketAddressError.UnknownHost ... (error -2)" named no setting.
            throw ConfigurationError.listenHostUnknown(listen.description)
        }
        let family: Int32
        switch address {
        case .v4: family = AF_INET
        case .v6: family = AF_INET6
        case .unixDomainSocket: return
        }
        #if canImport(Glibc)
        let probe = socket(family, Int32(SOCK_STREAM.rawValue), 0)
        #else
        let probe = socket(family, SOCK_STREAM, 0)
        #endif
        guard probe >= 0 else { return }
        defer { close(probe) }
        var one: Int32 = 1
        _ = setsockopt(probe, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let result: Int32
        switch address {
        case .v4(let v4):
            var raw = v4.address
            result = withUnsafePointer(to: &raw) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(probe, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        case .v6(let v6):
            var raw = v6.address
            result = withUnsafePointer(to: &raw) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(probe, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
        case .unixDomainSocket:
            return
        }
        if result != 0 && errno == EADDRINUSE { throw ConfigurationError.listenAddressInUse(listen.description) }
    }

    /// The backlog systemd gave an inherited listening socket (the socket unit's `Backlog=`),
    /// read before NIO listens on it again with its own default of 128 (it does not apply the
    /// backlog option to a socket it is handed). Linux reports a listening socket's maximum
    /// backlog in `TCP_INFO`'s `tcpi_sacked`; nil where that is not available.
    static func inheritedBacklog(_ descriptor: CInt) -> Int32? {
        #if os(Linux)
        var info = tcp_info()
        var length = socklen_t(MemoryLayout<tcp_info>.size)
        guard getsockopt(descriptor, Int32(IPPROTO_TCP), TCP_INFO, &info, &length) == 0,
            info.tcpi_state == UInt8(TCP_LISTEN), info.tcpi_sacked > 0
        else { return nil }
        return Int32(clamping: info.tcpi_sacked)
        #else
        return nil
        #endif
    }

    /// Listens on `descriptor` again with `backlog` (changing a listening socket's backlog
    /// is what `listen` does when called twice).
    static func restoreBacklog(_ descriptor: CInt, to backlog: Int32) {
        _ = listen(descriptor, backlog)
    }
}
