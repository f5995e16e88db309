@testable import Gatehouse
import NIOCore
import Testing

@Suite("Destination policy: CIDR blocks")
struct DestinationPolicyTests {
    static func address(_ ip: String) throws -> SocketAddress { try SocketAddress(ipAddress: ip, port: 80) }

    @Test("IPv4 and IPv6 networks; an IPv4-mapped address is checked as the IPv4 address it carries")
    func contains() throws {
        let ten = try CIDRBlock(parsing: "10.0.0.0/8")
        #expect(ten.contains(try Self.address("10.1.2.3")))
        #expect(ten.contains(try Self.address("::ffff:10.1.2.3")))
        #expect(!ten.contains(try Self.address("11.0.0.1")))
        let ula = try CIDRBlock(parsing: "fd00::/8")
        #expect(ula.contains(try Self.address("fd12::1")))
        #expect(!ula.contains(try Self.address("fe80::1")))
    }

    @Test("a network written in IPv4-mapped form is the IPv4 network it maps (it never matched before)")
    func mappedNetworks() throws {
        let loopback = try CIDRBlock(parsing: "::ffff:127.0.0.0/104")
        #expect(loopback.description == "127.0.0.0/8")
        #expect(loopback.contains(try Self.address("127.0.0.1")))
        #expect(loopback.contains(try Self.address("::ffff:127.9.9.9")))
        let policy = DestinationPolicy(allow: [try CIDRBlock(parsing: "::ffff:192.0.2.0/120")])
        #expect(policy.permits(try Self.address("192.0.2.2")))
        #expect(!policy.permits(try Self.address("192.0.3.1")))
    }

    @Test("the unspecified address is checked as the loopback address it connects to; no rules permit everything")
    func unspecified() throws {
        let policy = DestinationPolicy(deny: [try CIDRBlock(parsing: "127.0.0.0/8"), try CIDRBlock(parsing: "::1")])
        #expect(!policy.permits(try Self.address("0.0.0.0")))
        #expect(!policy.permits(try Self.address("::")))
        #expect(!policy.permits(try Self.address("::ffff:0.0.0.0")))
        #expect(policy.permits(try Self.address("192.0.2.1")))
        #expect(DestinationPolicy().permits(try Self.address("0.0.0.0")))
    }
}
