@testable import Gatehouse
import NIOCore
import Testing

@Suite("Configuration parsing")
struct ConfigurationParsingTests {
    @Test("listen addresses: IPv4, bracketed IPv6, port 0")
    func listen() throws {
        #expect(try ListenAddress(parsing: "127.0.0.1:3128") == ListenAddress(host: "127.0.0.1", port: 3128))
        #expect(try ListenAddress(parsing: "[::1]:0") == ListenAddress(host: "::1", port: 0))
        #expect(try ListenAddress(parsing: "[::1]:0").description == "[::1]:0")
        for bad in ["127.0.0.1", "::1:80", "[::1]", "host:99999", ":80", "1.2.3.4:-1"] {
            #expect(throws: ConfigurationError.invalidListenAddress(bad)) { try ListenAddress(parsing: bad) }
        }
    }

    @Test("CONNECT port lists with ranges")
    func ports() throws {
        let set = try PortSet(parsing: "443, 8443,9000-9100")
        #expect(set.contains(443) && set.contains(8443) && set.contains(9000) && set.contains(9100))
        #expect(!set.contains(80) && !set.contains(9101))
        #expect(set.description == "443,8443,9000-9100")
        for bad in ["", "0", "65536", "9100-9000", "a", "443,", "1-2-3"] {
            #expect(throws: ConfigurationError.invalidPortList(bad)) { try PortSet(parsing: bad) }
        }
    }

    @Test("durations need a unit")
    func durations() throws {
        #expect(try TimeAmount(parsing: "500ms") == .milliseconds(500))
        #expect(try TimeAmount(parsing: "10s") == .seconds(10))
        #expect(try TimeAmount(parsing: "2m") == .minutes(2))
        #expect(try TimeAmount(parsing: "1h") == .hours(1))
        #expect(TimeAmount.seconds(90).humanReadable == "90s")
        for bad in ["10", "s", "-1s", "1.5s", "10 s", "10sec", ""] {
            #expect(throws: ConfigurationError.invalidDuration(bad)) { try TimeAmount(parsing: bad) }
        }
    }

    @Test("the defaults match the README")
    func defaults() {
        let configuration = ProxyConfiguration()
        #expect(configuration.listen == [ListenAddress(host: "127.0.0.1", port: 3128)])
        #expect(configuration.connectPorts.description == "443")
        #expect(configuration.realm == "Gatehouse")
        #expect(configuration.headerTimeout <= .seconds(30))
    }
}

@Suite("Configuration errors never show a password")
struct SecretFreeErrorTests {
    @Test("an inline user without a colon is not echoed; one with a colon shows only its name")
    func inlineUser() {
        #expect(!ConfigurationError.invalidInlineUser("hunter2secret").description.contains("hunter2"))
        let named = ConfigurationError.invalidInlineUser(":secret").description
        #expect(!named.contains("secret"))
    }

    @Test("probe's invalid --proxy message hides user:password")
    func probeProxy() {
        let message = ProxyProbe.UsageError.invalidProxy("http://alice:SECRET@127.0.0.1:99999").description
        #expect(!message.contains("SECRET"))
        #expect(message.contains("\"http://127.0.0.1:99999\""))
        #expect(!ProxyProbe.UsageError.invalidProxy("alice:SECRET@host").description.contains("SECRET"))
    }
}
