#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import NIOCore
import NIOSSL

/// Where the certificate chain and private key of the TLS listeners are: PEM files, the chain
/// with the server's own certificate first (what certbot writes as `fullchain.pem` and
/// `privkey.pem`).
public struct TLSFiles: Sendable, Hashable {
    public var certificateChainPath: String
    public var privateKeyPath: String

    public init(certificateChainPath: String, privateKeyPath: String) {
        self.certificateChainPath = certificateChainPath
        self.privateKeyPath = privateKeyPath
    }
}

/// The server side of TLS for the `tls_listen` listeners: clients that use an `https://` proxy
/// URL (curl's `--proxy https://…`, `https_proxy=https://…`) send their `Proxy-Authorization`
/// inside TLS instead of in clear, where anyone on the path could read the Basic password.
///
/// Loaded at start and again on every reload (`SIGHUP`), so a renewed certificate reaches new
/// connections without a restart; open ones keep the one they started with. Loading reads
/// files and may read the system's trust store (see `NIOSSLContext.init`): never on an event
/// loop.
public struct ListenerTLS: Sendable {
    let context: NIOSSLContext
    /// When the first certificate of the chain (the server's own) stops being valid.
    public let notValidAfter: time_t

    /// In BoringSSL's rule syntax (its names for single suites differ from OpenSSL's).
    static let cipherSuites = "ECDH+AESGCM:ECDH+CHACHA20"

    /// Reads both files and checks that the key belongs to the certificate.
    public static func load(_ files: TLSFiles) throws(ConfigurationError) -> ListenerTLS {
        // NIOSSL says "failed to load" for a file it cannot open as well: the system's reason is clearer.
        for path in [files.certificateChainPath, files.privateKeyPath] where access(path, R_OK) != 0 {
            let message = "\(path): cannot read it (\(String(cString: strerror(errno))))"
            throw path == files.certificateChainPath ? .tlsFiles(message) : .tlsKey(message)
        }
        let chain: [NIOSSLCertificate]
        do {
            chain = try NIOSSLCertificate.fromPEMFile(files.certificateChainPath)
        } catch {
            throw .tlsFiles("\(files.certificateChainPath): cannot read a PEM certificate chain (\(Self.explain(error)))")
        }
        guard let leaf = chain.first else {
            throw .tlsFiles("\(files.certificateChainPath): no certificate in the file (expected PEM, \"-----BEGIN CERTIFICATE-----\")")
        }
        let key: NIOSSLPrivateKey
        do {
            key = try NIOSSLPrivateKey(file: files.privateKeyPath, format: .pem)
        } catch {
            throw .tlsKey("\(files.privateKeyPath): cannot read a PEM private key (\(Self.explain(error)); a key protected by a passphrase is not supported)")
        }
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        // TLS 1.0 and 1.1 are deprecated (RFC 8996); every client of a proxy that takes
        // Basic credentials speaks 1.2.
        configuration.minimumTLSVersion = .tlsv12
        // TLS 1.2 with forward secrecy and AEAD only (Mozilla's "intermediate" list): with an
        // RSA certificate BoringSSL also offered RSA key exchange and CBC suites, and a
        // recorded session, Basic password included, could be read once the key leaked.
        // (TLS 1.3's suites are fixed and all good.)
        configuration.cipherSuites = Self.cipherSuites
        // Closing sends close_notify and waits for the client's before closing the socket
        // (NIO's default: 5 s). Everything was sent before it, and nothing that comes after it
        // matters (RFC 8446 §6.1 does not ask for the wait); a client that keeps its side open
        // (or is gone) held each connection that long, and a drain's end too.
        configuration.shutdownTimeout = .milliseconds(250)
        let context: NIOSSLContext
        do {
            context = try NIOSSLContext(configuration: configuration)
        } catch {
            // BoringSSL reports a key of another certificate as a key that failed to load.
            throw .tlsKey("\(files.privateKeyPath): the private key does not belong to the certificate in \(files.certificateChainPath)")
        }
        return ListenerTLS(context: context, notValidAfter: leaf.notValidAfter, notValidBefore: leaf.notValidBefore)
    }

    /// When the server's certificate starts being valid.
    public let notValidBefore: time_t

    /// Whether the server's certificate has expired at `now` (seconds since 1970).
    public func hasExpired(at now: time_t = time(nil)) -> Bool { self.notValidAfter < now }
    /// Whether the server's certificate is not valid yet at `now`.
    public func isNotYetValid(at now: time_t = time(nil)) -> Bool { self.notValidBefore > now }

    /// A TCP EOF without TLS's close_notify first (a "ragged" EOF): NIOSSL reports it as an
    /// error and then passes the EOF on. It is a half-close like any other (curl, Python and
    /// many others end that way): closing on the error cut the answer a tunnel's origin was
    /// still sending back (23 of 41 bytes arrived, then a clean close, with the log counting all).
    static func isRaggedEOF(_ error: Error) -> Bool {
        if case .uncleanShutdown? = error as? NIOSSLError { return true }
        return false
    }

    private static func explain(_ error: Error) -> String {
        switch error {
        case let error as NIOSSLError:
            switch error {
            case .noSuchFilesystemObject: return "no such file"
            case .failedToLoadCertificate: return "not a PEM certificate"
            case .failedToLoadPrivateKey: return "not a PEM private key"
            default: return "\(error)"
            }
        case let error as IOError:
            return error.description
        default:
            return "\(error)"
        }
    }
}
