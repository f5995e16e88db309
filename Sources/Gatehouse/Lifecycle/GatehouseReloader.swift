import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Loads settings and users from every source, and re-loads them on SIGHUP or when the
/// htpasswd file changes.
///
/// A reload is all or nothing: if the new config or htpasswd file has any error, the old
/// settings and users stay in force and the error is logged. (A file without users is no
/// error then: see `loadCredentials`.) Open connections and tunnels are
/// untouched; new connections get the new settings; the credential cache is cleared.
public final class GatehouseReloader: Sendable {
    /// Where settings come from. Flags and environment are fixed at start-up; the file is re-read.
    public struct Sources: Sendable {
        public var flags: GatehouseSettings
        public var environment: GatehouseSettings
        public var configPath: String?

        public init(flags: GatehouseSettings, environment: GatehouseSettings, configPath: String?) {
            self.flags = flags
            self.environment = environment
            self.configPath = configPath
        }
    }

    public struct Loaded: Sendable {
        public var settings: ResolvedSettings
        public var credentials: CredentialStore
        public var htpasswdIdentity: FileIdentity?
        /// The TLS listeners' certificate and key, read (nil without `tls_listen`).
        public var tls: ListenerTLS?
        /// Non-fatal problems (unknown hash formats).
        public var warnings: [SettingsProblem]
    }

    /// Reads and validates everything. Returns either what to run with, or every problem found
    /// (each as `file:line: message` where it has a line). `reloading`: see `loadCredentials`.
    public static func load(_ sources: Sources, reloading: Bool = false) -> (loaded: Loaded?, problems: [SettingsProblem]) {
        var problems: [SettingsProblem] = []
        var file = GatehouseSettings()
        if let path = sources.configPath {
            let parsed = GatehouseSettings.load(path: path)
            // A file that could not be read or parsed at all says only that: the settings it
            // would have given (the users, say) are missing for that reason alone.
            if !parsed.problems.isEmpty && parsed.settings == GatehouseSettings() { return (nil, parsed.problems) }
            file = parsed.settings
            problems += parsed.problems
        }
        let merged = file.overridden(by: sources.environment).overridden(by: sources.flags)
        let resolved = merged.resolve()
        problems += resolved.problems
        guard let settings = resolved.settings, problems.isEmpty else { return (nil, problems) }
        switch Self.loadCredentials(settings, reloading: reloading) {
        case .success(let (store, identity, credentialWarnings)):
            var warnings = Self.relativePathWarnings(merged) + credentialWarnings
            var tls: ListenerTLS?
            if let files = settings.configuration.tlsFiles {
                let origin = settings.tlsCertOrigin ?? "tls_cert"
                let loaded: ListenerTLS
                do {
                    loaded = try ListenerTLS.load(files)
                } catch {
                    let keyOrigin: String
                    if case .tlsKey = error { keyOrigin = settings.tlsKeyOrigin ?? "tls_key" } else { keyOrigin = origin }
                    return (nil, warnings.filter(\.isWarning) + [SettingsProblem(origin: keyOrigin, message: error.description)])
                }
                let when = loaded.hasExpired() ? "has expired" : loaded.isNotYetValid() ? "is not valid yet" : nil
                if let when {
                    // At start, served anyway with a warning (the plain listeners and everything
                    // else work; a renewal may be on its way). A reload keeps the certificate
                    // being served instead: applied, it cut every new client off.
                    let problem = "the certificate in \(files.certificateChainPath) \(when): clients refuse it"
                    if reloading {
                        return (nil, warnings.filter(\.isWarning) + [SettingsProblem(origin: origin, message: problem)])
                    }
                    warnings.append(SettingsProblem(origin: origin, message: problem + " (reload once it is renewed)", isWarning: true))
                }
                tls = loaded
            }
            return (Loaded(settings: settings, credentials: store, htpasswdIdentity: identity, tls: tls, warnings: warnings), warnings)
        case .failure(let failure):
            return (nil, failure.problems)
        }
    }

    struct CredentialProblems: Error { var problems: [SettingsProblem] }

    /// A relative path in a config file is taken from the working directory, not the file's:
    /// under systemd that is `/`, so a file that passes `gatehouse check` in a shell may fail
    /// in the service. Said as a warning (flags and environment are the caller's own).
    static func relativePathWarnings(_ settings: GatehouseSettings) -> [SettingsProblem] {
        var warnings: [SettingsProblem] = []
        for value in [settings.htpasswd, settings.accessLog, settings.tlsCert, settings.tlsKey].compactMap({ $0 }) {
            let fromFile = !value.origin.hasPrefix("--") && !value.origin.hasPrefix("GATEHOUSE_")
            let path = value.value
            guard fromFile, !path.hasPrefix("/"), !["-", "off", "none"].contains(path) else { continue }
            warnings.append(SettingsProblem(
                origin: value.origin,
                message: "relative path \"\(path)\" is resolved from the working directory (under systemd: /), not from the config file's; prefer an absolute path",
                isWarning: true))
        }
        return warnings
    }

    /// The users. Without any usable user, start-up fails (a proxy that can only refuse is a
    /// mistake to report at once). A reload applies such a file, with a warning: every request
    /// then gets 407. Refused, it kept the previous users in force, so deleting the last user
    /// (`gatehouse passwd FILE NAME --delete`) left that user able to log in, with no end.
    static func loadCredentials(
        _ settings: ResolvedSettings, reloading: Bool = false
    ) -> Result<(CredentialStore, FileIdentity?, [SettingsProblem]), CredentialProblems> {
        var file: HtpasswdFile?
        var identity: FileIdentity?
        var warnings: [SettingsProblem] = []
        if let path = settings.htpasswdPath {
            // Identity first: a file replaced between the two calls is then seen as changed again.
            identity = FileIdentity(path: path)
            let parsed: HtpasswdFile
            do {
                parsed = try HtpasswdFile.loadAll(path: path)
            } catch {
                return .failure(CredentialProblems(problems: [SettingsProblem(origin: path, message: error.description)]))
            }
            // Every problem, in line order: a fatal one does not hide the others.
            let all = parsed.problems.map {
                SettingsProblem(origin: "\($0.path):\($0.line)", message: $0.message, isWarning: !$0.isFatal)
            }
            if parsed.firstFatalProblem != nil { return .failure(CredentialProblems(problems: all)) }
            file = parsed
            warnings = all
            // A name in both places would log in with the inline password only, silently.
            let both = settings.inlineUsers.keys.filter { parsed.users[$0] != nil }.sorted()
            if !both.isEmpty {
                return .failure(CredentialProblems(problems: warnings + both.map {
                    SettingsProblem(origin: path, message: "user \"\($0)\" is both in this file and given with --user: give each user one password")
                }))
            }
        }
        let store = CredentialStore(htpasswd: file, inlineUsers: settings.inlineUsers)
        if store.isEmpty && reloading {
            return .success((store, identity, warnings + [SettingsProblem(
                origin: settings.htpasswdPath ?? "settings",
                message: "no usable users left: every request is refused (407) until a user is added", isWarning: true)]))
        }
        if store.isEmpty {
            // Every line's own problem first: they are why no user is left.
            return .failure(CredentialProblems(problems: warnings + [SettingsProblem(
                origin: settings.htpasswdPath ?? "settings", message: "no usable users: Gatehouse never runs as an open proxy")]))
        }
        return .success((store, identity, warnings))
    }

    private let sources: Sources
    private let server: GatehouseServer
    private let logger: Logger
    private let current: NIOLockedValueBox<Loaded>

    public init(sources: Sources, initial: Loaded, server: GatehouseServer, logger: Logger) {
        self.sources = sources
        self.server = server
        self.logger = logger
        self.current = NIOLockedValueBox(initial)
    }

    public var settings: ResolvedSettings { self.current.withLockedValue { $0.settings } }

    /// Re-reads the config and the htpasswd file (SIGHUP). Returns whether anything was applied.
    @discardableResult
    public func reload() -> Bool {
        let (loaded, problems) = Self.load(self.sources, reloading: true)
        guard let loaded else {
            for problem in problems {
                self.logger.error("reload rejected; the previous settings and users stay in force", metadata: ["problem": "\(problem)"])
            }
            return false
        }
        for warning in loaded.warnings { self.logger.warning("\(warning)") }
        let old = self.current.withLockedValue { current -> Loaded in
            defer { current = loaded }
            return current
        }
        for name in Self.restartOnlyChanges(old.settings, loaded.settings) {
            self.logger.warning("\(name) changed, but only takes effect after a restart; the running value stays")
        }
        var configuration = loaded.settings.configuration
        configuration.listen = old.settings.configuration.listen
        configuration.tlsListen = old.settings.configuration.tlsListen
        configuration.testing = self.server.configuration.testing
        self.server.update(configuration: configuration)
        self.server.replaceCredentials(loaded.credentials)
        // New TLS connections get the files as they are now (a renewed certificate).
        if let tls = loaded.tls { self.server.replaceTLS(tls) }
        self.logger.info("reloaded settings and users", metadata: ["users": "\(loaded.credentials.hashes.count + loaded.credentials.inlinePasswords.count)"])
        return true
    }

    /// Re-reads the htpasswd file if it changed since it was last read. Called periodically.
    @discardableResult
    public func reloadCredentialsIfChanged() -> Bool {
        let (settings, identity) = self.current.withLockedValue { ($0.settings, $0.htpasswdIdentity) }
        guard let path = settings.htpasswdPath, FileIdentity(path: path) != identity else { return false }
        switch Self.loadCredentials(settings, reloading: true) {
        case .success(let (store, newIdentity, warnings)):
            for warning in warnings { self.logger.warning("\(warning)") }
            self.current.withLockedValue {
                $0.credentials = store
                $0.htpasswdIdentity = newIdentity
            }
            self.server.replaceCredentials(store)
            self.logger.info("htpasswd file changed: users reloaded", metadata: ["path": "\(path)"])
            return true
        case .failure(let failure):
            // Remember this version so the same broken file is not reported every poll.
            self.current.withLockedValue { $0.htpasswdIdentity = FileIdentity(path: path) }
            for problem in failure.problems {
                self.logger.error("htpasswd change rejected; the previous users stay in force", metadata: ["problem": "\(problem)"])
            }
            return false
        }
    }

    /// Polls the htpasswd file every `htpasswdPollInterval`: timed by `eventLoop`, done on
    /// `thread`, a pool of its own.
    ///
    /// Looking at the file can block: a network mount that went away hangs `stat` and `open`.
    /// On an event loop that stalled every connection the loop serves (half of them on two
    /// cores). A poll still running when the next is due is not queued behind it.
    public func startPolling(on eventLoop: EventLoop, thread: NIOThreadPool) -> RepeatedTask {
        let interval = self.settings.htpasswdPollInterval
        let busy = NIOLockedValueBox(false)
        return eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
            let start = busy.withLockedValue { busy in
                defer { busy = true }
                return !busy
            }
            guard start else { return }
            thread.submit { _ in
                self.reloadCredentialsIfChanged()
                busy.withLockedValue { $0 = false }
            }
        }
    }

    static func restartOnlyChanges(_ old: ResolvedSettings, _ new: ResolvedSettings) -> [String] {
        var names: [String] = []
        if old.configuration.listen != new.configuration.listen { names.append("listen") }
        if old.configuration.tlsListen != new.configuration.tlsListen { names.append("tls_listen") }
        if old.adminListen != new.adminListen { names.append("admin_listen") }
        if old.accessLog != new.accessLog { names.append("access_log") }
        if old.logFormat != new.logFormat { names.append("log_format") }
        if old.logLevel != new.logLevel { names.append("log_level") }
        if old.htpasswdPollInterval != new.htpasswdPollInterval { names.append("htpasswd_poll_interval") }
        return names
    }
}

extension String {
    init(contentsOfFileAtPath path: String) throws {
        self = try String(contentsOfFile: path, encoding: .utf8)
    }
}
