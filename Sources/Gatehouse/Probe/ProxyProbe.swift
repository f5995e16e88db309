import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// Walks the proxy handshake the way a client does, and explains each step:
///
/// 1. **tcp** — can the proxy be reached at all?
/// 2. **challenge** — without credentials, does it answer 407, which challenges does it offer
///    (scheme, realm, charset), and is the `Proxy-Authenticate` field valid RFC 9110 syntax?
/// 3. **credentials** — are the given credentials accepted?
/// 4. **connect** — may `CONNECT` reach the URL's port?
/// 5. **upstream** — what came back from the destination, and how long it took.
///
/// It speaks HTTP through NIO's encoder and parser, and works against any proxy.
public struct ProxyProbe: Sendable {
    public struct Endpoint: Sendable, Equatable {
        public var host: String
        public var port: Int
        public var user: String?
        public var password: String?
        /// An `https://` proxy URL: the probe speaks TLS to the proxy.
        public var tls = false
    }

    public enum UsageError: Error, Sendable, CustomStringConvertible {
        case invalidProxy(String)
        case invalidURL(String)
        case proxyCertificate(String)
        public var description: String {
            switch self {
            case .invalidProxy(let p): return "invalid --proxy \"\(RequestTarget.withoutUserinfo(p))\": expected http:// or https://[user:password@]host:port"
            case .proxyCertificate(let message): return message
            case .invalidURL(let u): return "invalid URL \"\(u)\": expected http://host[:port]/path or https://host[:port]/"
            }
        }
    }

    public var proxy: Endpoint
    public var proxyDescription: String
    public var url: String
    var destination: Authority
    var isHTTPS: Bool
    var originForm: String
    public var timeout: TimeAmount
    /// TLS to the proxy, for an `https://` proxy URL.
    var tls: NIOSSLContext?

    /// - Parameter proxyCACertificates: For an `https://` proxy: a PEM file of the certificates
    ///   to trust for it (its own, or its CA's); the system's trust store when nil.
    public init(
        proxy: String, url: String = "http://example.com/", timeout: TimeAmount = .seconds(10), proxyCACertificates: String? = nil
    ) throws(UsageError) {
        guard let endpoint = Self.parseProxy(proxy) else { throw .invalidProxy(proxy) }
        self.proxy = endpoint
        if endpoint.tls {
            var configuration = TLSConfiguration.makeClientConfiguration()
            configuration.minimumTLSVersion = .tlsv12
            do {
                if let path = proxyCACertificates {
                    configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(path))
                }
                self.tls = try NIOSSLContext(configuration: configuration)
            } catch {
                throw .proxyCertificate("cannot use --proxy-cacert \"\(proxyCACertificates ?? "")\": \(error)")
            }
        } else {
            self.tls = nil
        }
        self.proxyDescription = Authority(host: endpoint.host, port: endpoint.port).description
        self.url = url
        self.timeout = timeout
        let lower = url.lowercased()
        if lower.hasPrefix("https://") {
            let rest = url.dropFirst(8)
            let authorityText = rest.prefix { $0 != "/" && $0 != "?" && $0 != "#" }
            guard var authority = Authority(parsing: authorityText) else { throw .invalidURL(url) }
            authority.port = authority.port ?? 443
            self.destination = authority
            self.isHTTPS = true
            self.originForm = "/"
        } else {
            guard case .success(let uri) = RequestTarget.parseAbsolute(url) else { throw .invalidURL(url) }
            self.destination = Authority(host: uri.authority.host, port: uri.port)
            self.isHTTPS = false
            self.originForm = uri.originForm
        }
    }

    /// `http://[user:password@]host[:port]` with percent-encoded userinfo; port 3128 if absent.
    static func parseProxy(_ text: String) -> Endpoint? {
        var rest = Substring(text)
        var tls = false
        if let scheme = rest.firstRange(of: "://") {
            switch rest[..<scheme.lowerBound].lowercased() {
            case "http": break
            case "https": tls = true
            default: return nil
            }
            rest = rest[scheme.upperBound...]
        }
        if let slash = rest.firstIndex(of: "/") { rest = rest[..<slash] }
        var user: String?
        var password: String?
        if let at = rest.lastIndex(of: "@") {
            let userinfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
            let parts = userinfo.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            user = String(parts[0]).removingPercentEncoding
            password = parts.count > 1 ? String(parts[1]).removingPercentEncoding : ""
            if user == nil || password == nil { return nil }
        }
        guard let authority = Authority(parsing: rest) else { return nil }
        return Endpoint(host: authority.host, port: authority.port ?? 3128, user: user, password: password, tls: tls)
    }

    var basicHeader: String? {
        guard let user = self.proxy.user, let password = self.proxy.password else { return nil }
        return "Basic " + Data("\(user):\(password)".utf8).base64EncodedString()
    }

    func request(connect: Bool, credentials: Bool) -> HTTPRequestHead {
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: self.destination.description)
        headers.add(name: "User-Agent", value: "gatehouse-probe")
        if credentials, let basic = self.basicHeader { headers.add(name: "Proxy-Authorization", value: basic) }
        if connect {
            return HTTPRequestHead(version: .http1_1, method: .CONNECT, uri: self.destination.description, headers: headers)
        }
        headers.add(name: "Connection", value: "close")
        let target = "http://\(self.destination.description)\(self.originForm)"
        return HTTPRequestHead(version: .http1_1, method: .GET, uri: target, headers: headers)
    }

    public func run(group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async -> ProbeReport {
        var report = ProbeReport(proxy: self.proxyDescription, url: self.url)
        let client = ProbeClient(host: self.proxy.host, port: self.proxy.port, timeout: self.timeout, group: group, tls: self.tls)

        // 1. TCP
        let tcpStart = NIODeadline.now()
        do {
            try await client.connectOnly()
            report.add(.init(name: "tcp", outcome: .ok, summary: "the proxy at \(self.proxyDescription) accepts TCP connections",
                             milliseconds: Self.ms(since: tcpStart)), failing: .tcp)
        } catch {
            report.add(.init(name: "tcp", outcome: .failed, summary: "cannot connect to the proxy at \(self.proxyDescription)",
                             details: [Self.describe(error), "check the host and port, and that the proxy is running and reachable"],
                             milliseconds: Self.ms(since: tcpStart)), failing: .tcp)
            return report
        }

        // 2. Challenge
        let anonymousStart = NIODeadline.now()
        let anonymous: ProbeClient.Response
        do {
            anonymous = try await client.send(self.request(connect: self.isHTTPS, credentials: false))
        } catch let error as NIOSSLError {
            let text = "\(error)"
            var hint = "check that this port speaks TLS and that the proxy's certificate is trusted"
            if text.contains("CERTIFICATE_VERIFY_FAILED") {
                hint = "the proxy's certificate is not trusted: give it (or its CA) with --proxy-cacert PATH"
            } else if text.contains("WRONG_VERSION_NUMBER") {
                hint = "this port does not speak TLS: use an http:// proxy URL"
            }
            report.add(.init(name: "challenge", outcome: .failed, summary: "TLS with the proxy failed",
                             details: [text, hint]), failing: .challenge)
            return report
        } catch {
            report.add(.init(name: "challenge", outcome: .failed, summary: "the proxy did not answer a request without credentials",
                             details: ["\(error)"]), failing: .challenge)
            return report
        }
        if anonymous.head.status == .badRequest {
            // A well-formed request refused outright: not a proxy that lets it through. Gatehouse's
            // TLS listeners answer plain HTTP so (`tls_required`); read as an open proxy and the
            // destination's own 400 before, which passed.
            report.add(.init(name: "challenge", outcome: .failed, summary: "the proxy refused a well-formed request: 400 Bad Request",
                             details: Self.bodyLines(anonymous) + [
                                "if this port speaks TLS, the proxy URL is https:// (with --proxy-cacert for a certificate the system does not trust)",
                             ]), failing: .challenge)
            return report
        }
        let requiresAuth = anonymous.head.status == .proxyAuthenticationRequired
        report.add(Self.challengeStep(anonymous), failing: .challenge)
        if report.exitCode != .ok { return report }

        // 3. Credentials
        var authenticated: ProbeClient.Response? = requiresAuth ? nil : anonymous
        var authenticatedMs = Self.ms(since: anonymousStart)
        if requiresAuth {
            if self.basicHeader == nil {
                report.add(.init(name: "credentials", outcome: .failed, summary: "the proxy requires credentials, but none were given",
                                 details: ["put them in the proxy URL: --proxy http://user:password@\(self.proxyDescription)"]),
                           failing: .credentials)
                return report
            }
            let start = NIODeadline.now()
            do {
                let response = try await client.send(self.request(connect: self.isHTTPS, credentials: true))
                authenticatedMs = Self.ms(since: start)
                if response.head.status == .proxyAuthenticationRequired {
                    report.add(.init(name: "credentials", outcome: .failed,
                                     summary: "the proxy rejected the credentials for user \"\(self.proxy.user ?? "")\" (407 again)",
                                     details: Self.bodyLines(response) + [
                                        "check the user name and password; special characters in the proxy URL must be percent-encoded (@ → %40, : → %3A, % → %25)",
                                     ]), failing: .credentials)
                    return report
                }
                if response.head.status == .tooManyRequests || response.head.status == .serviceUnavailable {
                    // The proxy did not check them (throttled after failed logins, or busy):
                    // nothing is known about the credentials, so this is no pass.
                    let retry = response.head.headers.first(name: "Retry-After").map { " (Retry-After: \($0) s)" } ?? ""
                    report.add(.init(name: "credentials", outcome: .failed,
                                     summary: "the proxy did not check the credentials: \(response.head.status.code) \(response.head.status.reasonPhrase)\(retry)",
                                     details: Self.bodyLines(response) + [
                                        "429: too many failed logins from this address or for this user; wait and try again",
                                     ]), failing: .credentials)
                    return report
                }
                authenticated = response
                report.add(.init(name: "credentials", outcome: .ok, summary: "accepted for user \"\(self.proxy.user ?? "")\"",
                                 milliseconds: authenticatedMs), failing: .credentials)
            } catch ProbeClient.ProbeError.timedOut {
                // The proxy refused the request without credentials at once. With them it said
                // nothing for the whole timeout: no 407, so it went on to the destination, and
                // that is what is slow. (This blamed the credentials, exit 4.)
                report.add(.init(name: "credentials", outcome: .warning,
                                 summary: "no 407 within \(Self.describe(self.timeout)): the proxy most likely accepted them and is waiting for the destination"),
                           failing: .credentials)
                report.add(.init(name: "connect", outcome: .skipped, summary: "not tried: the destination is not answering"), failing: .connect)
                report.add(.init(name: "upstream", outcome: .failed,
                                 summary: "no answer from \(self.destination) through the proxy within \(Self.describe(self.timeout))",
                                 details: ["the destination is slow or unreachable and the proxy is still waiting; a longer --timeout shows which"]),
                           failing: .upstream)
                return report
            } catch {
                report.add(.init(name: "credentials", outcome: .failed, summary: "no answer to the request with credentials",
                                 details: ["\(error)"]), failing: .credentials)
                return report
            }
        } else {
            report.add(.init(name: "credentials", outcome: .skipped, summary: "the proxy did not ask for credentials"), failing: .credentials)
        }

        // 4. CONNECT to the URL's port (for https the authenticated request already was one).
        var connectResponse: ProbeClient.Response? = self.isHTTPS ? authenticated : nil
        var connectMs = authenticatedMs
        if !self.isHTTPS {
            let start = NIODeadline.now()
            connectResponse = try? await client.send(self.request(connect: true, credentials: true))
            connectMs = Self.ms(since: start)
        }
        var connectStep = self.connectStep(connectResponse, milliseconds: connectMs)
        if !self.isHTTPS && connectStep.outcome == .failed {
            // A plain-http URL does not need CONNECT: worth knowing, not a failure.
            connectStep.outcome = .warning
            connectStep.details.append("this http:// URL is fetched without CONNECT; https:// URLs on this port would fail")
        }
        report.add(connectStep, failing: .connect)

        // 5. Upstream
        if self.isHTTPS && connectStep.outcome == .failed {
            report.add(.init(name: "upstream", outcome: .skipped, summary: "no tunnel, so the destination was not tried"), failing: .upstream)
            return report
        }
        report.add(self.upstreamStep(self.isHTTPS ? connectResponse : authenticated, milliseconds: self.isHTTPS ? connectMs : authenticatedMs),
                   failing: .upstream)
        return report
    }

    /// The innermost useful words of a connect error ("Connection refused", "timed out").
    static func describe(_ error: Error) -> String {
        if let error = error as? NIOConnectionError {
            if let first = error.connectionErrors.first { return Self.describe(first.error) }
            if let dns = error.dnsAError ?? error.dnsAAAAError { return "host name lookup failed: \(dns)" }
        }
        if let error = error as? IOError { return String(cString: strerror(error.errnoCode)) }
        if let error = error as? ChannelError, case .connectTimeout = error { return "connection timed out" }
        return "\(error)"
    }

    /// `1500 ms`, `10 s`.
    static func describe(_ amount: TimeAmount) -> String {
        let ms = amount.nanoseconds / 1_000_000
        return ms % 1000 == 0 ? "\(ms / 1000) s" : "\(ms) ms"
    }

    static func ms(since start: NIODeadline) -> Int {
        Int((NIODeadline.now() - start).nanoseconds / 1_000_000)
    }

    static func bodyLines(_ response: ProbeClient.Response) -> [String] {
        let body = response.body.trimmingCharacters(in: .whitespacesAndNewlines)
        return body.isEmpty ? [] : ["the proxy said: \(body.prefix(300))"]
    }

    static func challengeStep(_ response: ProbeClient.Response) -> ProbeReport.Step {
        let status = response.head.status
        guard status == .proxyAuthenticationRequired else {
            return .init(name: "challenge", outcome: .warning,
                         summary: "the proxy answered \(status.code) \(status.reasonPhrase) without asking for credentials",
                         details: [
                            "it does not require authentication for this request (an open proxy, or authentication disabled)",
                            "or it is not a proxy at all: a web server at that address answers the same way",
                         ])
        }
        let fields = response.head.headers["proxy-authenticate"]
        guard !fields.isEmpty else {
            return .init(name: "challenge", outcome: .failed, summary: "407 without a Proxy-Authenticate field",
                         details: ["RFC 9110 §15.5.8 requires a 407 to carry Proxy-Authenticate; clients cannot know which scheme to use"])
        }
        var details: [String] = []
        var challenges: [AuthChallenge] = []
        var invalid = false
        for field in fields {
            switch AuthChallenge.parse(field) {
            case .success(let parsed):
                challenges += parsed
            case .failure(let error):
                invalid = true
                details.append("Proxy-Authenticate: \(field)")
                details.append("  is not valid RFC 9110 §11.3 syntax \(error)")
            }
        }
        for challenge in challenges {
            var line = "offers \(challenge.scheme)"
            if let realm = challenge.parameters["realm"] { line += ", realm \"\(realm)\"" }
            if let charset = challenge.parameters["charset"] { line += ", charset \(charset)" }
            details.append(line)
        }
        if invalid {
            return .init(name: "challenge", outcome: .failed, summary: "the proxy's challenge is malformed; clients may ignore it", details: details)
        }
        guard let basic = challenges.first(where: { $0.scheme.lowercased() == "basic" }) else {
            return .init(name: "challenge", outcome: .failed, summary: "407, but Basic is not among the offered schemes",
                         details: details + ["this probe (and curl -U without --proxy-anyauth) can only use Basic"])
        }
        var outcome = ProbeReport.Outcome.ok
        if basic.parameters["realm"] == nil {
            outcome = .warning
            details.append("the Basic challenge has no realm, which RFC 7617 §2 requires")
        }
        if let charset = basic.parameters["charset"], charset.lowercased() != "utf-8" {
            outcome = .warning
            details.append("charset \(charset) is not allowed; RFC 7617 §2.1 permits only UTF-8")
        } else if basic.parameters["charset"] == nil {
            details.append("no charset: non-ASCII user names or passwords may be encoded differently by each client (RFC 7617 §2.1)")
        }
        if challenges.count > 1 { details.append("several schemes are offered: clients must pick one they support") }
        return .init(name: "challenge", outcome: outcome, summary: "407 with a valid Basic challenge", details: details)
    }

    func connectStep(_ response: ProbeClient.Response?, milliseconds: Int) -> ProbeReport.Step {
        let port = self.destination.port ?? 443
        guard let response else {
            return .init(name: "connect", outcome: .failed, summary: "no answer to CONNECT \(self.destination)")
        }
        switch response.head.status.code {
        case 200..<300:
            return .init(name: "connect", outcome: .ok, summary: "CONNECT to port \(port) is allowed (tunnel established)", milliseconds: milliseconds)
        case 403, 405:
            return .init(name: "connect", outcome: .failed, summary: "CONNECT to port \(port) is refused by the proxy's policy (\(response.head.status.code))",
                         details: Self.bodyLines(response) + ["https URLs on this port cannot go through this proxy"])
        case 407:
            return .init(name: "connect", outcome: .failed, summary: "CONNECT was answered 407: the credentials are not accepted for CONNECT",
                         details: Self.bodyLines(response))
        case 502, 503, 504:
            return .init(name: "connect", outcome: .ok,
                         summary: "CONNECT to port \(port) is allowed by policy (the proxy tried the destination)", milliseconds: milliseconds)
        default:
            return .init(name: "connect", outcome: .failed, summary: "CONNECT got \(response.head.status.code) \(response.head.status.reasonPhrase)",
                         details: Self.bodyLines(response))
        }
    }

    func upstreamStep(_ response: ProbeClient.Response?, milliseconds: Int) -> ProbeReport.Step {
        guard let response else {
            return .init(name: "upstream", outcome: .failed, summary: "no response for \(self.url)")
        }
        let status = response.head.status
        switch status.code {
        case 502, 503, 504:
            return .init(name: "upstream", outcome: .failed,
                         summary: "the proxy could not reach \(self.destination): \(status.code) \(status.reasonPhrase)",
                         details: Self.bodyLines(response), milliseconds: milliseconds)
        default:
            let what = self.isHTTPS ? "tunnel to \(self.destination) open (TLS not attempted)" : "\(status.code) \(status.reasonPhrase) from \(self.destination)"
            return .init(name: "upstream", outcome: .ok, summary: what, milliseconds: milliseconds)
        }
    }
}
