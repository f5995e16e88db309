@testable import Gatehouse
import NIOCore
import Testing

@Suite("AuthThrottle: failed logins per address and per user, running checks included")
struct AuthThrottleTests {
    let start = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

    @Test("the per-address limit counts failures in the window, and frees up as they age out")
    func perAddress() {
        let throttle = AuthThrottle(limits: .init(window: .seconds(60), failuresPerClient: 3, failuresPerUser: 100))
        for second in 0..<3 {
            let now = self.start + .seconds(Int64(second))
            #expect(throttle.admit(client: "a", user: "u\(second)", now: now) == nil)
            throttle.finish(client: "a", user: "u\(second)", failed: true, now: now)
        }
        // Full: retry once the oldest failure (at 0 s) leaves the window, at 60 s.
        #expect(throttle.admit(client: "a", user: "x", now: self.start + .seconds(10)) == 51)
        #expect(throttle.admit(client: "b", user: "x", now: self.start + .seconds(10)) == nil, "another address is free")
        #expect(throttle.admit(client: "a", user: "x", now: self.start + .seconds(61)) == nil)
    }

    @Test("the per-user limit applies only to addresses that failed (or are guessing) for that user")
    func perUser() {
        let throttle = AuthThrottle(limits: .init(window: .seconds(60), failuresPerClient: 100, failuresPerUser: 2))
        for _ in 0..<2 {
            #expect(throttle.admit(client: "attacker", user: "alice", now: self.start) == nil)
            throttle.finish(client: "attacker", user: "alice", failed: true, now: self.start)
        }
        #expect(throttle.admit(client: "attacker", user: "alice", now: self.start) != nil)
        #expect(throttle.admit(client: "home", user: "alice", now: self.start) == nil, "alice herself is not locked out")
    }

    @Test("running checks count until they finish; a success frees its place and records nothing")
    func running() {
        let throttle = AuthThrottle(limits: .init(window: .seconds(60), failuresPerClient: 2, failuresPerUser: 100))
        #expect(throttle.admit(client: "a", user: "u1", now: self.start) == nil)
        #expect(throttle.admit(client: "a", user: "u2", now: self.start) == nil)
        #expect(throttle.admit(client: "a", user: "u3", now: self.start) == 2, "full while both run: retry shortly")
        #expect(throttle.retryAfter(client: "a", user: "u3", countingRunning: false, now: self.start) == nil,
                "for a request that joins a running check, only failures count")
        throttle.finish(client: "a", user: "u1", failed: false, now: self.start)
        #expect(throttle.admit(client: "a", user: "u3", now: self.start) == nil)
        throttle.finish(client: "a", user: "u2", failed: false, now: self.start)
        throttle.finish(client: "a", user: "u3", failed: false, now: self.start)
        // Nothing left running, nothing recorded: the full limit is free again.
        #expect(throttle.admit(client: "a", user: "u4", now: self.start) == nil)
        #expect(throttle.admit(client: "a", user: "u5", now: self.start) == nil)
    }
}
