import Foundation
import Gatehouse
import GatehouseTesting
import NIOCore
import NIOSSL

/// The user every integration test authenticates as. The password has characters that must
/// be percent-encoded in a proxy URL, so every curl test also checks that path.
enum TestUser {
    static let name = "alice"
    static let password = "s3cret:p@ss%"
    static var basic: String {
        "Basic " + Data("\(name):\(password)".utf8).base64EncodedString()
    }
}

/// Starts an origin and a proxy in front of it, runs `body`, and stops both.
func withProxyAndOrigin<T: Sendable>(
    configure: @Sendable (inout ProxyConfiguration) -> Void = { _ in },
    _ body: @Sendable (GatehouseFixture, TestOrigin) async throws -> T
) async throws -> T {
    let origin = try await TestOrigin.start()
    var configuration = ProxyConfiguration()
    configuration.drainTimeout = .seconds(2)
    configure(&configuration)
    let frozen = configuration
    do {
        let result = try await GatehouseFixture.withProxy(
            users: [TestUser.name: TestUser.password], configuration: frozen
        ) { proxy in
            try await body(proxy, origin)
        }
        await origin.stop()
        return result
    } catch {
        await origin.stop()
        throw error
    }
}

/// A proxy (with the test user) that allows `CONNECT` to `port` only; with `tls`, it has a
/// TLS listener too (``GatehouseFixture/tlsPort``).
func withTunnelProxy<T: Sendable>(
    toPort port: Int, tls: Bool = false, _ body: @Sendable (GatehouseFixture) async throws -> T
) async throws -> T {
    var configuration = ProxyConfiguration()
    configuration.connectPorts = try PortSet(parsing: "\(port)")
    if tls { configuration.tlsFiles = TLSFixture.files }
    let frozen = configuration
    return try await GatehouseFixture.withProxy(users: [TestUser.name: TestUser.password], configuration: frozen, body)
}

extension GatehouseFixture {
    var authenticatedURL: String { self.proxyURL(user: TestUser.name, password: TestUser.password) }
}

/// The fixture's certificate and key for the local TLS origin (CN and SAN 127.0.0.1).
enum TLSFixture {
    static var certificatePath: String {
        Bundle.module.path(forResource: "origin-cert", ofType: "pem", inDirectory: "Fixtures") ?? ""
    }
    static var keyPath: String {
        Bundle.module.path(forResource: "origin-key", ofType: "pem", inDirectory: "Fixtures") ?? ""
    }
    /// A second certificate and key (ECDSA like the first, also for 127.0.0.1), for replacing the first.
    static var otherCertificatePath: String {
        Bundle.module.path(forResource: "proxy-cert", ofType: "pem", inDirectory: "Fixtures") ?? ""
    }
    static var otherKeyPath: String {
        Bundle.module.path(forResource: "proxy-key", ofType: "pem", inDirectory: "Fixtures") ?? ""
    }
    /// An RSA certificate and key for 127.0.0.1 (the cipher suites offered depend on the key type).
    static var rsaFiles: TLSFiles {
        TLSFiles(
            certificateChainPath: Bundle.module.path(forResource: "rsa-cert", ofType: "pem", inDirectory: "Fixtures") ?? "",
            privateKeyPath: Bundle.module.path(forResource: "rsa-key", ofType: "pem", inDirectory: "Fixtures") ?? "")
    }
    static var files: TLSFiles { TLSFiles(certificateChainPath: certificatePath, privateKeyPath: keyPath) }
    static var otherFiles: TLSFiles { TLSFiles(certificateChainPath: otherCertificatePath, privateKeyPath: otherKeyPath) }

    /// A client context that trusts `certificatePath` only.
    static func clientContext(trusting path: String = certificatePath) throws -> NIOSSLContext {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(path))
        return try NIOSSLContext(configuration: configuration)
    }
}
