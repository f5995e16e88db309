import Foundation
@testable import Gatehouse
import NIOCore
import Testing

@Suite("Settings: YAML, environment, precedence")
struct GatehouseSettingsTests {
    @Test("flags beat the environment, which beats the file, which beats the defaults")
    func precedence() throws {
        let file = GatehouseSettings.parse(
            yaml: "realm: FromFile\nconnect_ports: \"8443\"\nidle_timeout: 5s\nusers: [\"a:b\"]\n", path: "f.yaml")
        #expect(file.problems.isEmpty)
        let environment = GatehouseSettings.fromEnvironment(["GATEHOUSE_REALM": "FromEnv", "GATEHOUSE_CONNECT_PORTS": "9443", "PATH": "/bin"])
        var flags = GatehouseSettings()
        flags.realm = .init("FromFlag", origin: "--realm")
        let merged = file.settings.overridden(by: environment).overridden(by: flags)
        let resolved = try #require(merged.resolve().settings)
        #expect(resolved.configuration.realm == "FromFlag")
        #expect(resolved.configuration.connectPorts.description == "9443")
        #expect(resolved.configuration.idleTimeout == .seconds(5))
        #expect(resolved.configuration.headerTimeout == ProxyConfiguration().headerTimeout)
        #expect(resolved.inlineUsers == ["a": "b"])
    }

    @Test("a problem with one item of a YAML list is reported at that item's line")
    func listItemLines() {
        let file = GatehouseSettings.parse(
            yaml: "users:\n  - \"a:1\"\n  - \"a:2\"\n  - \"nocolon\"\ndeny_destination:\n  - 10.0.0.0/8\n  - nonsense\n", path: "u.yaml")
        #expect(file.problems.isEmpty)
        let problems = file.settings.resolve().problems
        #expect(problems.map(\.origin).sorted() == ["u.yaml:3", "u.yaml:4", "u.yaml:7"], "\(problems)")
    }

    @Test("an empty realm is refused, from the environment or a flag")
    func emptyRealm() {
        var settings = GatehouseSettings.fromEnvironment(["GATEHOUSE_REALM": "", "GATEHOUSE_USERS": "a:b"])
        var problems = settings.resolve().problems
        #expect(problems.map(\.origin) == ["GATEHOUSE_REALM"])
        #expect(problems.first?.message.contains("the realm is empty") == true)
        settings.realm = .init("  ", origin: "--realm")
        problems = settings.resolve().problems
        #expect(problems.map(\.origin) == ["--realm"])
    }

    @Test("limits: a size too large for 64 bits is a problem (it stopped the process, on a reload too), one too small names the least allowed")
    func limitBounds() {
        let file = GatehouseSettings.parse(
            yaml: "users: [\"a:b\"]\nmax_body: 9999999999G\nmax_connections: 999999999999G\nmax_uri_length: 10\nmax_header_bytes: 8G\n", path: "l.yaml")
        let problems = file.settings.resolve().problems
        #expect(problems.map(\.origin) == ["l.yaml:2", "l.yaml:3", "l.yaml:4"], "\(problems)")
        #expect(problems.first?.message.contains("fits in 64 bits") == true)
        #expect(problems.last?.message == "limit \"10\" is too small: the least this one allows is 16")
        #expect(ResolvedSettings.parseSize("8589934591G") == 8_589_934_591 << 30)
        #expect(ResolvedSettings.parseSize("8589934592G") == nil)
    }

    @Test("listen: an IPv4-looking host that is no address, and an address given twice, are problems (check passed them; serve failed)")
    func listenAddresses() {
        let file = GatehouseSettings.parse(
            yaml: "users: [\"a:b\"]\nlisten:\n  - 999.1.1.1:80\n  - 127.0.0.1:3128\n  - 127.0.0.1:3128\n  - 0.0.0.0:8080\n  - localhost:8081\n", path: "l.yaml")
        let problems = file.settings.resolve().problems
        #expect(problems.map(\.origin) == ["l.yaml:3", "l.yaml:5"], "\(problems)")
        #expect(problems.last?.message == "listen address 127.0.0.1:3128 is given more than once")
        // Port 0 twice is two ephemeral ports.
        let ephemeral = GatehouseSettings.parse(yaml: "users: [\"a:b\"]\nlisten: [127.0.0.1:0, 127.0.0.1:0]\n", path: "e.yaml")
        #expect(ephemeral.settings.resolve().problems.isEmpty)
    }

    @Test("a realm with control characters (a line break) is refused; they were dropped without a word")
    func realmControlCharacters() {
        var settings = GatehouseSettings.fromEnvironment(["GATEHOUSE_USERS": "a:b"])
        settings.realm = .init("a\r\nX-Injected: yes", origin: "--realm")
        #expect(settings.resolve().problems.map(\.message) == ["the realm contains control characters (such as a line break): give it on one line"])
        settings.realm = .init("tab\tand ünïcode", origin: "--realm")
        #expect(settings.resolve().problems.isEmpty)
    }

    @Test("a password with a comma fits in the YAML list form of users (the one-line form splits at commas)")
    func commaInPassword() throws {
        let list = GatehouseSettings.parse(yaml: "users:\n  - \"bob:pa,ss\"\n", path: "l.yaml")
        #expect(list.problems.isEmpty)
        #expect(try #require(list.settings.resolve().settings).inlineUsers == ["bob": "pa,ss"])
        let line = GatehouseSettings.parse(yaml: "users: bob:pa,x:y\n", path: "s.yaml")
        #expect(try #require(line.settings.resolve().settings).inlineUsers == ["bob": "pa", "x": "y"])
    }

    @Test("the same inline user twice is an error, as in an htpasswd file, and shows no password")
    func duplicateInlineUser() {
        let parsed = GatehouseSettings.parse(yaml: "users:\n  - \"x:pw1\"\n  - \"x:pw2\"\n", path: "d.yaml")
        let problems = parsed.settings.resolve().problems.map(\.description)
        #expect(problems.contains { $0.contains("--user \"x\" is given more than once") }, "\(problems)")
        #expect(!problems.contains { $0.contains("pw1") || $0.contains("pw2") })
    }

    @Test("an inline password over 1,024 bytes (which no login may be) is an error, naming the user and not the password")
    func overlongInlinePassword() {
        let long = String(repeating: "p", count: 1_025)
        let parsed = GatehouseSettings.parse(yaml: "users:\n  - \"x:\(long)\"\n  - \"y:\(long.dropLast())\"\n", path: "o.yaml")
        let resolved = parsed.settings.resolve()
        let problems = resolved.problems.map(\.description)
        #expect(problems.count == 1, "\(problems)")
        #expect(problems.contains { $0.contains("user \"x\": the password is over 1024 bytes") }, "\(problems)")
        #expect(!problems.contains { $0.contains("ppp") })
    }

    @Test("problems name their source: file line, environment variable or flag")
    func origins() {
        let file = GatehouseSettings.parse(yaml: "users: [\"a:b\"]\n\nheader_timeout: soon\nlisten: 127.0.0.1:80\n", path: "g.yaml")
        var settings = file.settings.overridden(by: GatehouseSettings.fromEnvironment(["GATEHOUSE_LOG_FORMAT": "xml"]))
        settings.drainTimeout = .init("1x", origin: "--drain-timeout")
        let problems = settings.resolve().problems.map(\.description)
        #expect(problems.contains { $0.hasPrefix("g.yaml:3: invalid duration \"soon\"") }, "\(problems)")
        #expect(problems.contains { $0.hasPrefix("GATEHOUSE_LOG_FORMAT: invalid log format \"xml\"") })
        #expect(problems.contains { $0.hasPrefix("--drain-timeout: invalid duration \"1x\"") })
    }

    @Test("YAML structure problems: unknown keys with suggestions, duplicates, wrong shapes, syntax")
    func structure() {
        let parsed = GatehouseSettings.parse(yaml: "realm: a\nlisten: {x: 1}\nhtpasswrd: /x\n", path: "h.yaml")
        let messages = parsed.problems.map(\.description)
        #expect(messages.contains("h.yaml:2: \"listen\" must be a single value"), "\(messages)")
        #expect(messages.contains("h.yaml:3: unknown key \"htpasswrd\"; did you mean \"htpasswd\"?"))
        let duplicate = GatehouseSettings.parse(yaml: "realm: a\nrealm: b\n", path: "d.yaml").problems.map(\.description)
        #expect(duplicate.first?.contains("realm") == true, "\(duplicate)")
        #expect(duplicate.first?.hasPrefix("d.yaml:2: ") == true, "the second one's line (it had none)")
        let unclosed = GatehouseSettings.parse(yaml: "realm: [unclosed\n", path: "i.yaml").problems.first?.description ?? ""
        #expect(unclosed.hasPrefix("i.yaml:") && unclosed.contains(": not valid YAML: "), "\(unclosed)")
        #expect(GatehouseSettings.parse(yaml: "- a\n- b\n", path: "j.yaml").problems.first?.message == "the config file must be a mapping of keys to values")
    }

    @Test("durations must be positive (a zero poll interval spun a core): the poll interval at least 100ms; the drain may be zero")
    func durationMinimums() {
        let parsed = GatehouseSettings.parse(
            yaml: "users: [\"a:b\"]\nhtpasswd_poll_interval: 0s\nidle_timeout: 0s\ndrain_timeout: 0s\nconnect_timeout: 50ms\n", path: "p.yaml")
        let problems = parsed.settings.resolve().problems.map(\.description)
        #expect(problems == [
            "p.yaml:3: duration \"0s\" is too short: it must be more than zero",
            "p.yaml:2: duration \"0s\" is too short: it must be at least 100ms",
        ], "\(problems)")
        let fine = GatehouseSettings.parse(yaml: "users: [\"a:b\"]\nhtpasswd_poll_interval: 100ms\ndrain_timeout: 0s\n", path: "q.yaml")
        #expect(fine.settings.resolve().problems.isEmpty)
    }

    @Test("a key with YAML's null (empty, ~, null) is an error, not the text \"~\" or \"\"; quoted, it is text")
    func nullValues() {
        for value in ["", "~", "null", "NULL"] {
            let parsed = GatehouseSettings.parse(yaml: "realm: \(value)\n", path: "n.yaml")
            #expect(parsed.problems.map(\.description) == [
                "n.yaml:1: \"realm\" has no value: give one (quoted if it is \"-\" or \"~\"), or leave the key out for the default",
            ], "\(value)")
            #expect(parsed.settings.realm == nil)
        }
        #expect(GatehouseSettings.parse(yaml: "realm: \"~\"\naccess_log: \"-\"\n", path: "n.yaml").settings.realm?.value == "~")
    }

    @Test("a config file that is not valid YAML is reported alone, without the missing users it would have given")
    func unparsableFileAlone() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("gh-\(UUID().uuidString).yaml").path
        try "users: [\"a:b\"]\naccess_log: -\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let (loaded, problems) = GatehouseReloader.load(.init(flags: GatehouseSettings(), environment: GatehouseSettings(), configPath: path))
        #expect(loaded == nil)
        #expect(problems.count == 1, "\(problems)")
        #expect(problems.first?.description == "\(path):2: not valid YAML: block sequence entries are not allowed in this context (a value of - alone must be quoted: \"-\")", "\(problems)")
    }

    @Test("a relative path in a config file is a warning: it is resolved from the working directory, / under systemd")
    func relativePathWarning() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("gh-\(UUID().uuidString).yaml").path
        try "users: [\"a:b\"]\naccess_log: logs/access.log\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        var flags = GatehouseSettings()
        flags.htpasswd = nil
        let (loaded, problems) = GatehouseReloader.load(.init(flags: flags, environment: GatehouseSettings(), configPath: path))
        #expect(loaded != nil)
        #expect(problems.map(\.description) == [
            "\(path):2: warning: relative path \"logs/access.log\" is resolved from the working directory (under systemd: /), not from the config file's; prefer an absolute path",
        ])
        var fromFlag = GatehouseSettings()
        fromFlag.accessLog = .init("logs/access.log", origin: "--access-log")
        #expect(GatehouseReloader.load(.init(flags: fromFlag, environment: GatehouseSettings(), configPath: path)).problems.isEmpty,
                "a flag's relative path is the caller's own")
    }

}
