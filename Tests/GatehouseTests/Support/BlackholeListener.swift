#if canImport(Glibc)
import Glibc
#endif

/// A TCP listener with a full accept queue, so that new connections hang in SYN-SENT: the
/// only reliable way to make a connect time out on loopback.
final class BlackholeListener: @unchecked Sendable {
    let port: Int
    private var fds: [Int32] = []

    struct SetupError: Error {}

    init() throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard listener >= 0 else { throw SetupError() }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, length) }
        }
        guard bound == 0, listen(listener, 0) == 0 else { throw SetupError() }
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) }
        }
        self.port = Int(UInt16(bigEndian: address.sin_port))
        self.fds.append(listener)
        // Fill the accept queue (backlog 0 still admits one or two on Linux).
        for _ in 0..<4 {
            let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            _ = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(client, $0, length) }
            }
            self.fds.append(client)
        }
        usleep(50_000)
    }

    func close() {
        for fd in self.fds { Glibc.close(fd) }
        self.fds.removeAll()
    }
}
