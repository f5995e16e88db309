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
        #expect(GatehouseSettings.parse(yaml: "realm: [unclosed\n", path: "i.yaml").problems.first?.description.hasPrefix("i.yaml: not valid YAML") == true)
        #expect(GatehouseSettings.parse(yaml: "- a\n- b\n", path: "j.yaml").problems.first?.message == "the config file must be a mapping of keys to values")
    }
}
