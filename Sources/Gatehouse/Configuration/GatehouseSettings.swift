import Foundation
import NIOCore
import Yams

/// Settings as written by a person, before validation: every field optional, so that the
/// sources can be layered. Precedence, highest first: command-line flags, environment
/// variables (`GATEHOUSE_*`), the YAML config file, built-in defaults.
///
/// Each value remembers where it came from (`--flag`, `GATEHOUSE_X`, or `file:line`), so a bad
/// value is reported at its source.
public struct GatehouseSettings: Sendable, Equatable {
    public struct Value<T: Sendable & Equatable>: Sendable, Equatable {
        public var value: T
        public var origin: String
        /// For a YAML list: each item's own `file:line`, so a problem with one item points at
        /// its line rather than the list's first.
        public var itemOrigins: [String]
        public init(_ value: T, origin: String, itemOrigins: [String] = []) {
            self.value = value
            self.origin = origin
            self.itemOrigins = itemOrigins
        }

        /// Where item `index` of a list came from.
        public func origin(ofItem index: Int) -> String {
            index < self.itemOrigins.count ? self.itemOrigins[index] : self.origin
        }
    }

    public var listen: Value<[String]>?
    public var tlsListen: Value<[String]>?
    public var tlsCert: Value<String>?
    public var tlsKey: Value<String>?
    public var htpasswd: Value<String>?
    public var users: Value<[String]>?
    public var realm: Value<String>?
    public var accessLog: Value<String>?
    public var logFormat: Value<String>?
    public var logLevel: Value<String>?
    public var connectPorts: Value<String>?
    public var connectTimeout: Value<String>?
    public var upstreamTimeout: Value<String>?
    public var headerTimeout: Value<String>?
    public var idleTimeout: Value<String>?
    public var tunnelIdleTimeout: Value<String>?
    public var drainTimeout: Value<String>?
    public var adminListen: Value<String>?
    public var htpasswdPollInterval: Value<String>?
    public var maxBody: Value<String>?
    public var maxConnections: Value<String>?
    public var maxConnectionsPerClient: Value<String>?
    public var maxHeaderBytes: Value<String>?
    public var maxHeaderFields: Value<String>?
    public var maxURILength: Value<String>?
    public var denyDestination: Value<[String]>?
    public var allowDestination: Value<[String]>?
    public var authFailuresPerClient: Value<String>?
    public var authFailuresPerUser: Value<String>?
    public var authFailureWindow: Value<String>?

    public init() {}

    /// The keys of the YAML file; the environment variable is `GATEHOUSE_` + the key in upper case.
    public static let keys = [
        "listen", "tls_listen", "tls_cert", "tls_key", "htpasswd", "users", "realm", "access_log", "log_format", "log_level", "connect_ports",
        "connect_timeout", "upstream_timeout", "header_timeout", "idle_timeout", "tunnel_idle_timeout",
        "drain_timeout", "admin_listen", "htpasswd_poll_interval", "max_body", "max_connections",
        "max_connections_per_client", "max_header_bytes", "max_header_fields", "max_uri_length", "deny_destination",
        "allow_destination", "auth_failures_per_client", "auth_failures_per_user", "auth_failure_window",
    ]

    /// How YAML writes null as a plain scalar (an empty value included).
    static let nullScalars: Set<String> = ["", "~", "null", "Null", "NULL"]

    /// Keys whose value is a list (a YAML sequence, or comma-separated in the environment).
    static let listKeys: Set<String> = ["listen", "tls_listen", "users", "deny_destination", "allow_destination"]

    /// Sets a scalar setting by its key.
    mutating func set(key: String, scalar: String, origin: String) {
        let v = Value(scalar, origin: origin)
        switch key {
        case "htpasswd": self.htpasswd = v
        case "tls_cert": self.tlsCert = v
        case "tls_key": self.tlsKey = v
        case "realm": self.realm = v
        case "access_log": self.accessLog = v
        case "log_format": self.logFormat = v
        case "log_level": self.logLevel = v
        case "connect_ports": self.connectPorts = v
        case "connect_timeout": self.connectTimeout = v
        case "upstream_timeout": self.upstreamTimeout = v
        case "header_timeout": self.headerTimeout = v
        case "idle_timeout": self.idleTimeout = v
        case "tunnel_idle_timeout": self.tunnelIdleTimeout = v
        case "drain_timeout": self.drainTimeout = v
        case "admin_listen": self.adminListen = v
        case "htpasswd_poll_interval": self.htpasswdPollInterval = v
        case "max_body": self.maxBody = v
        case "max_connections": self.maxConnections = v
        case "max_connections_per_client": self.maxConnectionsPerClient = v
        case "max_header_bytes": self.maxHeaderBytes = v
        case "max_header_fields": self.maxHeaderFields = v
        case "max_uri_length": self.maxURILength = v
        case "auth_failures_per_client": self.authFailuresPerClient = v
        case "auth_failures_per_user": self.authFailuresPerUser = v
        case "auth_failure_window": self.authFailureWindow = v
        case "users": self.users = Value(scalar.split(separator: ",").map { String($0) }, origin: origin)
        default:
            if Self.listKeys.contains(key) {
                self.set(key: key, list: scalar.split(separator: ",").map { String($0.trimmingSpaces()) }, origin: origin)
            }
        }
    }

    mutating func set(key: String, list: [String], origin: String, itemOrigins: [String] = []) {
        let v = Value(list, origin: origin, itemOrigins: itemOrigins)
        switch key {
        case "listen": self.listen = v
        case "tls_listen": self.tlsListen = v
        case "users": self.users = v
        case "deny_destination": self.denyDestination = v
        case "allow_destination": self.allowDestination = v
        default: break
        }
    }

    /// `self`, with every value that `higher` sets replaced by it.
    public func overridden(by higher: GatehouseSettings) -> GatehouseSettings {
        var out = self
        out.listen = higher.listen ?? out.listen
        out.tlsListen = higher.tlsListen ?? out.tlsListen
        out.tlsCert = higher.tlsCert ?? out.tlsCert
        out.tlsKey = higher.tlsKey ?? out.tlsKey
        out.htpasswd = higher.htpasswd ?? out.htpasswd
        out.users = higher.users ?? out.users
        out.realm = higher.realm ?? out.realm
        out.accessLog = higher.accessLog ?? out.accessLog
        out.logFormat = higher.logFormat ?? out.logFormat
        out.logLevel = higher.logLevel ?? out.logLevel
        out.connectPorts = higher.connectPorts ?? out.connectPorts
        out.connectTimeout = higher.connectTimeout ?? out.connectTimeout
        out.upstreamTimeout = higher.upstreamTimeout ?? out.upstreamTimeout
        out.headerTimeout = higher.headerTimeout ?? out.headerTimeout
        out.idleTimeout = higher.idleTimeout ?? out.idleTimeout
        out.tunnelIdleTimeout = higher.tunnelIdleTimeout ?? out.tunnelIdleTimeout
        out.drainTimeout = higher.drainTimeout ?? out.drainTimeout
        out.adminListen = higher.adminListen ?? out.adminListen
        out.htpasswdPollInterval = higher.htpasswdPollInterval ?? out.htpasswdPollInterval
        out.maxBody = higher.maxBody ?? out.maxBody
        out.maxConnections = higher.maxConnections ?? out.maxConnections
        out.maxConnectionsPerClient = higher.maxConnectionsPerClient ?? out.maxConnectionsPerClient
        out.maxHeaderBytes = higher.maxHeaderBytes ?? out.maxHeaderBytes
        out.maxHeaderFields = higher.maxHeaderFields ?? out.maxHeaderFields
        out.maxURILength = higher.maxURILength ?? out.maxURILength
        out.denyDestination = higher.denyDestination ?? out.denyDestination
        out.allowDestination = higher.allowDestination ?? out.allowDestination
        out.authFailuresPerClient = higher.authFailuresPerClient ?? out.authFailuresPerClient
        out.authFailuresPerUser = higher.authFailuresPerUser ?? out.authFailuresPerUser
        out.authFailureWindow = higher.authFailureWindow ?? out.authFailureWindow
        return out
    }

    /// Settings from `GATEHOUSE_*` environment variables. Lists (`GATEHOUSE_LISTEN`,
    /// `GATEHOUSE_USERS`) are comma-separated.
    public static func fromEnvironment(_ environment: [String: String]) -> GatehouseSettings {
        var settings = GatehouseSettings()
        for key in Self.keys {
            let name = "GATEHOUSE_" + key.uppercased()
            if let value = environment[name] { settings.set(key: key, scalar: value, origin: name) }
        }
        return settings
    }

    /// Reads a YAML config file. Problems carry `path:line`.
    public static func load(path: String) -> (settings: GatehouseSettings, problems: [SettingsProblem]) {
        let text: String
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            return (GatehouseSettings(), [SettingsProblem(origin: path, message: "cannot read the config file: no such file")])
        }
        guard !isDirectory.boolValue else {
            return (GatehouseSettings(), [SettingsProblem(origin: path, message: "cannot read the config file: it is a directory")])
        }
        // Read as bytes, then decoded: Foundation's String(contentsOfFile:) fails on a device
        // such as /dev/null ("not UTF-8 text"), and its message for an unreadable or
        // non-UTF-8 file says little; say what to check.
        // A FIFO would block until something writes to it: refused, as a directory is.
        var info = stat()
        if stat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFIFO {
            return (GatehouseSettings(), [SettingsProblem(origin: path, message: "cannot read the config file: it is a FIFO")])
        }
        guard let handle = FileHandle(forReadingAtPath: path) else {
            return (GatehouseSettings(), [SettingsProblem(origin: path, message: "cannot read the config file: permission denied")])
        }
        // At most 1 MiB (a device such as /dev/zero was read until memory ran out).
        let limit = 1 << 20
        let data = (try? handle.read(upToCount: limit + 1)) ?? Data()
        try? handle.close()
        guard data.count <= limit else {
            return (GatehouseSettings(), [SettingsProblem(origin: path, message: "cannot read the config file: it is larger than 1 MiB")])
        }
        guard let decoded = String(validating: data, as: UTF8.self) else {
            return (GatehouseSettings(), [SettingsProblem(origin: path, message: "cannot read the config file: it is not UTF-8 text")])
        }
        text = decoded
        return Self.parse(yaml: text, path: path)
    }

    public static func parse(yaml text: String, path: String) -> (settings: GatehouseSettings, problems: [SettingsProblem]) {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            let (line, message) = Self.describe(error)
            let at = line ?? Self.lineOfDuplicateKey(in: text, message: message)
            return (GatehouseSettings(), [SettingsProblem(origin: at.map { "\(path):\($0)" } ?? path, message: "not valid YAML: \(message)")])
        } catch {
            return (GatehouseSettings(), [SettingsProblem(origin: path, message: "not valid YAML: \(error)")])
        }
        guard let root else { return (GatehouseSettings(), []) }  // an empty file
        guard case .mapping(let mapping) = root else {
            return (GatehouseSettings(), [SettingsProblem(origin: Self.origin(path, root.mark), message: "the config file must be a mapping of keys to values")])
        }
        var settings = GatehouseSettings()
        var problems: [SettingsProblem] = []
        var seen: Set<String> = []
        for (keyNode, valueNode) in mapping {
            let origin = Self.origin(path, keyNode.mark)
            guard let key = keyNode.string else {
                problems.append(SettingsProblem(origin: origin, message: "keys must be plain strings"))
                continue
            }
            guard Self.keys.contains(key) else {
                let normalized = key.lowercased().replacingOccurrences(of: "-", with: "_")
                let suggestion = Self.keys.min { Self.distance($0, normalized) < Self.distance($1, normalized) }
                    .flatMap { Self.distance($0, normalized) <= 2 ? $0 : nil }
                problems.append(SettingsProblem(origin: origin, message: "unknown key \"\(key)\"" + (suggestion.map { "; did you mean \"\($0)\"?" } ?? "")))
                continue
            }
            guard seen.insert(key).inserted else {
                problems.append(SettingsProblem(origin: origin, message: "\"\(key)\" is set twice"))
                continue
            }
            let valueOrigin = Self.origin(path, valueNode.mark ?? keyNode.mark)
            switch (key, valueNode) {
            case (_, .sequence(let items)) where Self.listKeys.contains(key):
                var values: [String] = []
                var origins: [String] = []
                for item in items {
                    guard let s = item.string else {
                        problems.append(SettingsProblem(origin: Self.origin(path, item.mark), message: "\(key) entries must be strings"))
                        continue
                    }
                    values.append(s)
                    origins.append(Self.origin(path, item.mark))
                }
                settings.set(key: key, list: values, origin: valueOrigin, itemOrigins: origins)
            case (_, .scalar(let scalar)) where scalar.style == .plain && Self.nullScalars.contains(scalar.string):
                // `realm:` or `access_log: ~` is YAML's null, not the text "~" or "": taken
                // literally it made a realm "~" and a log file named "~".
                problems.append(SettingsProblem(
                    origin: valueOrigin, message: "\"\(key)\" has no value: give one (quoted if it is \"-\" or \"~\"), or leave the key out for the default"))
            case (_, .scalar(let scalar)):
                settings.set(key: key, scalar: scalar.string, origin: valueOrigin)
            default:
                problems.append(SettingsProblem(origin: valueOrigin, message: "\"\(key)\" must be a single value"))
            }
        }
        return (settings, problems)
    }

    /// Levenshtein distance, for "did you mean" suggestions.
    static func distance(_ a: String, _ b: String) -> Int {
        let a = Array(a.utf8), b = Array(b.utf8)
        var previous = Array(0...b.count)
        for i in 1...max(a.count, 1) where !a.isEmpty {
            var current = [i] + Array(repeating: 0, count: b.count)
            for j in 1...max(b.count, 1) where !b.isEmpty {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            previous = current
        }
        return a.isEmpty ? b.count : previous[b.count]
    }

    static func origin(_ path: String, _ mark: Mark?) -> String {
        guard let mark else { return path }
        return "\(path):\(mark.line)"
    }

    /// The line and message of a YAML syntax error. Yams writes `LINE:COLUMN: error: scanner:
    /// MESSAGE:` and then the line itself; the message is kept, with a hint for the common slip
    /// of an unquoted `-` (as in `access_log: -`).
    /// Yams reports a key given twice without its place: the line of its second top-level
    /// occurrence (the one to remove), when the message names it.
    static func lineOfDuplicateKey(in text: String, message: String) -> Int? {
        guard let range = message.range(of: "duplicated key(s): '") else { return nil }
        let key = message[range.upperBound...].prefix { $0 != "'" }
        guard !key.isEmpty else { return nil }
        var seen = 0
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated()
        where line.hasPrefix(key + ":") || line.hasPrefix("\"\(key)\":") {
            seen += 1
            if seen == 2 { return index + 1 }
        }
        return nil
    }

    static func describe(_ error: YamlError) -> (line: Int?, message: String) {
        var first = Substring("\(error)".split(separator: "\n").first ?? "syntax error")
        var line: Int?
        let parts = first.split(separator: ":", maxSplits: 2)
        if parts.count == 3, let number = Int(parts[0]), Int(parts[1]) != nil {
            line = number
            first = parts[2].drop(while: { $0 == " " })
        }
        for prefix in ["error: ", "scanner: ", "parser: "] where first.hasPrefix(prefix) { first = first.dropFirst(prefix.count) }
        while first.hasSuffix(":") { first = first.dropLast() }
        var message = String(first)
        if message.contains("block sequence entries are not allowed") {
            message += " (a value of - alone must be quoted: \"-\")"
        }
        return (line, message)
    }
}

/// One problem with the settings, located at its source (`file:line`, `--flag`, `GATEHOUSE_X`).
public struct SettingsProblem: Error, Sendable, Equatable, CustomStringConvertible {
    public var origin: String
    public var message: String
    public var isWarning: Bool

    public init(origin: String, message: String, isWarning: Bool = false) {
        self.origin = origin
        self.message = message
        self.isWarning = isWarning
    }

    public var description: String { "\(self.origin): \(self.isWarning ? "warning: " : "")\(self.message)" }
}
