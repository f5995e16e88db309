import Gatehouse
import Testing

@Suite("MemoryTrimmer")
struct MemoryTrimmerTests {
    let trimmer = MemoryTrimmer(threshold: 16 << 20)

    @Test("trims once idle resident memory has grown by the threshold since the last trim, not before")
    func growthTriggers() {
        let floor = 20 << 20
        // 20 MB idle at the last trim; 35 MB idle now: 15 MB of growth, below 16 MiB.
        #expect(!self.trimmer.shouldTrim(.init(resident: 60 << 20, inUse: 25 << 20), floor: floor))
        #expect(self.trimmer.shouldTrim(.init(resident: 61 << 20, inUse: 25 << 20), floor: floor))
        // A large process whose memory is in use is not trimmed, however large.
        #expect(!self.trimmer.shouldTrim(.init(resident: 900 << 20, inUse: 880 << 20), floor: floor))
        // In use above resident (pages never touched) counts as nothing idle.
        #expect(MemoryTrimmer.Sample(resident: 10, inUse: 30).idleResident == 0)
    }

    #if os(Linux)
    @Test("reads this process's resident set and the allocator's bytes in use")
    func sampleReadsTheProcess() throws {
        let first = try #require(MemoryTrimmer.sample())
        #expect(first.resident > 1 << 20)
        // 64 MiB allocated and touched shows in both figures.
        let block = UnsafeMutableRawPointer.allocate(byteCount: 64 << 20, alignment: 16)
        block.initializeMemory(as: UInt8.self, repeating: 1, count: 64 << 20)
        let second = try #require(MemoryTrimmer.sample())
        block.deallocate()
        #expect(second.inUse - first.inUse >= 60 << 20)
        #expect(second.resident - first.resident >= 60 << 20)
    }
    #endif
}
