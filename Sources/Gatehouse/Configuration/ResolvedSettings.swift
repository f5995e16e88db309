import NIOCore

/// Validated settings, ready to run a server with.
public struct ResolvedSettings: Sendable {
    public var configuration: ProxyConfiguration
    public var htpasswdPath: String?
    public var inlineUsers: [String: String]
    public var accessLog: AccessLog.Destination
    public var logFormat: AccessLogFormat
    public var logLevel: String
    public var adminListen: ListenAddress?
    public var htpasswdPollInterval: TimeAmount
    /// Where the listen addresses were set (`--listen`, `file:line`), nil for the default.
    public var listenOrigin: String?
    /// Where the TLS certificate chain and key were set, for problems with their files.
    public var tlsCertOrigin: String?
    public var tlsKeyOrigin: String?
    /// Where the access log was set (`--access-log`, `file:line`), nil for the default.
    public var accessLogOrigin: String?

    static let logLevels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]

    /// A count or a size: `1000`, `64K`, `10M`, `2G` (binary multiples).
    static func parseSize(_ text: String) -> Int? {
        let multipliers: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
        var digits = Substring(text)
        var multiplier = 1
        if let last = digits.last?.uppercased().first, let m = multipliers[last] {
            multiplier = m
            digits = digits.dropLast()
        }
        guard !digits.isEmpty, digits.count <= 12, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let n = Int(digits) else { return nil }
        // Twelve digits times 2^30 overflows: `max_body: 9999999999G` stopped the process, and
        // on a reload the running proxy (a bad file must only be refused).
        let (size, overflow) = n.multipliedReportingOverflow(by: multiplier)
        return overflow ? nil : size
    }
}

extension GatehouseSettings {
    /// Validates every value; all problems are collected, each located at its source.
    public func resolve() -> (settings: ResolvedSettings?, problems: [SettingsProblem]) {
        var problems: [SettingsProblem] = []
        var configuration = ProxyConfiguration()

        func check<T>(_ value: Value<String>?, _ parse: (String) throws -> T, _ apply: (T) -> Void) {
            guard let value else { return }
            do {
                apply(try parse(value.value))
            } catch let error as ConfigurationError {
                problems.append(SettingsProblem(origin: value.origin, message: error.description))
            } catch {
                problems.append(SettingsProblem(origin: value.origin, message: "\(error)"))
            }
        }

        // Plain and TLS listeners together: one address cannot be both.
        var listening: [ListenAddress] = []
        func listenAddresses(_ list: Value<[String]>) -> [ListenAddress] {
            var addresses: [ListenAddress] = []
            for (index, item) in list.value.enumerated() {
                do {
                    let address = try ListenAddress(parsing: item)
                    // Port 0 twice is two ephemeral ports, not one address twice.
                    if address.port != 0 && listening.contains(address) {
                        // The second listener on it failed to start ("address already in use").
                        problems.append(SettingsProblem(
                            origin: list.origin(ofItem: index), message: ConfigurationError.duplicateListenAddress(address.description).description))
                    }
                    listening.append(address)
                    addresses.append(address)
                } catch {
                    problems.append(SettingsProblem(origin: list.origin(ofItem: index), message: error.description))
                }
            }
            return addresses
        }
        if let listen = self.listen {
            configuration.listen = listenAddresses(listen)
        }
        if let tlsListen = self.tlsListen {
            configuration.tlsListen = listenAddresses(tlsListen)
            // TLS listeners alone: the default plain listener is not added to them.
            if self.listen == nil { configuration.listen = [] }
        }
        if configuration.listen.isEmpty && configuration.tlsListen.isEmpty && problems.isEmpty {
            problems.append(SettingsProblem(origin: self.listen?.origin ?? self.tlsListen?.origin ?? "settings", message: "listen needs at least one address"))
        }
        problems += self.resolveTLSFiles(into: &configuration)
        if let realm = self.realm {
            // An empty realm (`GATEHOUSE_REALM=` from an unset shell variable, `--realm ""`)
            // would go out as `realm=""`, which names nothing for the user to pick a password by.
            if realm.value.allSatisfy(\.isWhitespace) {
                problems.append(SettingsProblem(origin: realm.origin, message: "the realm is empty: give it a name, or leave it out for the default \"\(configuration.realm)\""))
            } else if realm.value.unicodeScalars.contains(where: { $0.properties.generalCategory == .control && $0 != "\t" }) {
                // A field value cannot carry them (RFC 9110 §5.5); they were dropped without a
                // word, so the realm users saw was not the one configured.
                problems.append(SettingsProblem(origin: realm.origin, message: "the realm contains control characters (such as a line break): give it on one line"))
            } else {
                configuration.realm = realm.value
            }
        }
        check(self.connectPorts, { try PortSet(parsing: $0) }) { configuration.connectPorts = $0 }
        /// A duration of at least `minimum`: a zero timeout would end every connection at once,
        /// and a zero poll interval would spin a core (the drain may be zero: close at once).
        func duration(_ value: Value<String>?, minimum: TimeAmount = .nanoseconds(1), _ apply: (TimeAmount) -> Void) {
            guard let value else { return }
            do {
                let amount = try TimeAmount(parsing: value.value)
                guard amount >= minimum else {
                    let least = minimum.nanoseconds >= 1_000_000 ? "at least \(minimum.nanoseconds / 1_000_000)ms" : "more than zero"
                    problems.append(SettingsProblem(origin: value.origin, message: "duration \"\(value.value)\" is too short: it must be \(least)"))
                    return
                }
                apply(amount)
            } catch {
                problems.append(SettingsProblem(origin: value.origin, message: error.description))
            }
        }
        duration(self.connectTimeout) { configuration.connectTimeout = $0 }
        duration(self.upstreamTimeout) { configuration.upstreamTimeout = $0 }
        duration(self.headerTimeout) { configuration.headerTimeout = $0 }
        duration(self.idleTimeout) { configuration.idleTimeout = $0 }
        duration(self.tunnelIdleTimeout) { configuration.tunnelIdleTimeout = $0 }
        duration(self.drainTimeout, minimum: .zero) { configuration.drainTimeout = $0 }
        func count(_ value: Value<String>?, minimum: Int = 1, _ apply: (Int) -> Void) {
            check(value, { text throws(ConfigurationError) -> Int in
                guard let n = ResolvedSettings.parseSize(text) else { throw .invalidLimit(text, minimum: minimum) }
                guard n >= minimum else { throw .limitTooSmall(text, minimum: minimum) }
                return n
            }, apply)
        }
        count(self.maxBody) { configuration.maxBodyBytes = $0 }
        count(self.maxConnections) { configuration.maxConnections = $0 }
        count(self.maxConnectionsPerClient) { configuration.maxConnectionsPerClient = $0 }
        count(self.maxHeaderBytes, minimum: 256) { configuration.maxHeaderBytes = $0 }
        count(self.maxHeaderFields) { configuration.maxHeaderFields = $0 }
        count(self.maxURILength, minimum: 16) { configuration.maxURILength = $0 }
        count(self.authFailuresPerClient) { configuration.authThrottle.failuresPerClient = $0 }
        count(self.authFailuresPerUser) { configuration.authThrottle.failuresPerUser = $0 }
        duration(self.authFailureWindow) { configuration.authThrottle.window = $0 }
        for (list, apply) in [(self.denyDestination, { (b: CIDRBlock) in configuration.destinations.deny.append(b) }),
                              (self.allowDestination, { (b: CIDRBlock) in configuration.destinations.allow.append(b) })] {
            guard let list else { continue }
            for (index, item) in list.value.enumerated() {
                do {
                    apply(try CIDRBlock(parsing: item))
                } catch {
                    problems.append(SettingsProblem(origin: list.origin(ofItem: index), message: error.description))
                }
            }
        }
        var poll = TimeAmount.seconds(2)
        duration(self.htpasswdPollInterval, minimum: .milliseconds(100)) { poll = $0 }

        var format = AccessLogFormat.squid
        if let value = self.logFormat {
            if let parsed = AccessLogFormat(rawValue: value.value) {
                format = parsed
            } else {
                problems.append(SettingsProblem(origin: value.origin, message: "invalid log format \"\(value.value)\": expected squid, common or json"))
            }
        }
        var level = "info"
        if let value = self.logLevel {
            if ResolvedSettings.logLevels.contains(value.value) {
                level = value.value
            } else {
                problems.append(SettingsProblem(origin: value.origin, message: "invalid log level \"\(value.value)\": expected one of \(ResolvedSettings.logLevels.joined(separator: ", "))"))
            }
        }
        var admin: ListenAddress?
        if let value = self.adminListen, !value.value.isEmpty {
            do {
                let address = try ListenAddress(parsing: value.value)
                if (configuration.listen + configuration.tlsListen).contains(where: { $0.port == address.port && $0.port != 0 }) {
                    problems.append(SettingsProblem(origin: value.origin, message: "admin_listen \(address) must not be a proxy listen port: metrics never share the proxy port"))
                }
                admin = address
            } catch {
                problems.append(SettingsProblem(origin: value.origin, message: "invalid admin_listen: \(error.description)"))
            }
        }
        var inline: [String: String] = [:]
        if let users = self.users {
            for (index, entry) in users.value.enumerated() {
                guard let colon = entry.firstIndex(of: ":"), colon != entry.startIndex else {
                    problems.append(SettingsProblem(origin: users.origin(ofItem: index), message: ConfigurationError.invalidInlineUser(entry).description))
                    continue
                }
                let name = String(entry[..<colon])
                guard inline[name] == nil else {
                    problems.append(SettingsProblem(origin: users.origin(ofItem: index), message: ConfigurationError.duplicateInlineUser(name).description))
                    continue
                }
                let password = String(entry[entry.index(after: colon)...])
                // Longer passwords are refused without hashing (see `CredentialStore`): such a
                // user could never log in, which is better said now.
                guard password.utf8.count <= CredentialStore.maximumPasswordBytes else {
                    problems.append(SettingsProblem(
                        origin: users.origin(ofItem: index),
                        message: "user \"\(name)\": the password is over \(CredentialStore.maximumPasswordBytes) bytes, which no login may be"))
                    continue
                }
                inline[name] = password
            }
        }
        if self.htpasswd == nil && self.users == nil {
            problems.append(SettingsProblem(origin: "settings", message: ConfigurationError.noCredentialSource.description))
        }
        let accessLog: AccessLog.Destination
        switch self.accessLog?.value {
        case nil, "-": accessLog = .standardOutput
        case "off", "none": accessLog = .none
        case let path?: accessLog = .file(path)
        }
        guard problems.isEmpty else { return (nil, problems) }
        return (ResolvedSettings(
            configuration: configuration, htpasswdPath: self.htpasswd?.value, inlineUsers: inline, accessLog: accessLog,
            logFormat: format, logLevel: level, adminListen: admin, htpasswdPollInterval: poll,
            listenOrigin: self.listen?.origin, tlsCertOrigin: self.tlsCert?.origin, tlsKeyOrigin: self.tlsKey?.origin, accessLogOrigin: self.accessLog?.origin), [])
    }

    /// `tls_cert` and `tls_key` come together, and with `tls_listen`. The files themselves are
    /// read by `ListenerTLS.load`.
    private func resolveTLSFiles(into configuration: inout ProxyConfiguration) -> [SettingsProblem] {
        var problems: [SettingsProblem] = []
        for value in [self.tlsCert, self.tlsKey].compactMap({ $0 }) where value.value.isEmpty {
            problems.append(SettingsProblem(origin: value.origin, message: "the path is empty"))
        }
        guard problems.isEmpty else { return problems }
        switch (self.tlsCert, self.tlsKey) {
        case (let cert?, let key?):
            configuration.tlsFiles = TLSFiles(certificateChainPath: cert.value, privateKeyPath: key.value)
        case (let cert?, nil):
            return [SettingsProblem(origin: cert.origin, message: ConfigurationError.tlsIncomplete("tls_cert is given without tls_key: give the private key too").description)]
        case (nil, let key?):
            return [SettingsProblem(origin: key.origin, message: ConfigurationError.tlsIncomplete("tls_key is given without tls_cert: give the certificate chain too").description)]
        case (nil, nil):
            break
        }
        if let tlsListen = self.tlsListen, !tlsListen.value.isEmpty, configuration.tlsFiles == nil {
            problems.append(SettingsProblem(origin: tlsListen.origin, message: ConfigurationError.tlsIncomplete(
                "tls_listen needs tls_cert and tls_key: the certificate chain and private key (PEM files) its listeners present").description))
        }
        if configuration.tlsListen.isEmpty, configuration.tlsFiles != nil, let cert = self.tlsCert {
            problems.append(SettingsProblem(origin: cert.origin, message: ConfigurationError.tlsIncomplete(
                "tls_cert and tls_key are given, but no tls_listen address would use them").description))
        }
        return problems
    }
}
