import Testing
import NIOSSL
import Gatehouse
@Test func placeholder() { #expect(1 == 1) }
