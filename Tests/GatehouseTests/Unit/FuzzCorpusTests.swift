import Foundation
import Testing
@testable import Gatehouse

/// Replays the libFuzzer corpora kept in `Fixtures/fuzz-corpus/<target>/` (grown by
/// `Scripts/fuzz.sh`) through the same parsers and the same invariants as the fuzz targets in
/// `Scripts/fuzz/`, so every input the fuzzer ever found interesting stays a regression test.
/// A `crash-*` file in a corpus is a reproducer for a bug that the fuzzer found. The invariants
/// themselves live in `FuzzInvariants/`, shared with the fuzz targets.
@Suite("Fuzz corpus")
struct FuzzCorpusTests {
    // MARK: - Corpus loading

    static func corpus(_ target: String) throws -> [(name: String, bytes: [UInt8])] {
        // Directory lookup through Bundle; fall back to the directory of a known fixture file.
        let root = try #require(
            Bundle.module.url(forResource: "fuzz-corpus", withExtension: nil, subdirectory: "Fixtures")
                ?? Bundle.module.url(forResource: "vectors", withExtension: "htpasswd", subdirectory: "Fixtures")?
                .deletingLastPathComponent().appendingPathComponent("fuzz-corpus", isDirectory: true))
        let directory = root.appendingPathComponent(target, isDirectory: true)
        let names = try FileManager.default.contentsOfDirectory(atPath: directory.path)
            .filter { !$0.hasPrefix(".") }
            .sorted()
        #expect(!names.isEmpty, "the \(target) corpus is empty")
        return try names.map { name in
            (name, Array(try Data(contentsOf: directory.appendingPathComponent(name))))
        }
    }

    static func replay(_ target: String, _ violations: ([UInt8]) -> [String]) throws {
        for (name, bytes) in try Self.corpus(target) {
            let broken = violations(bytes)
            #expect(broken.isEmpty, "\(target)/\(name): \(broken)")
        }
    }

    @Test func basicCredentialsCorpus() throws {
        try Self.replay("BasicCredentials", BasicCredentialsInvariants.violations)
    }

    @Test func htpasswdCorpus() throws {
        try Self.replay("Htpasswd", HtpasswdInvariants.violations)
    }

    @Test func requestTargetCorpus() throws {
        try Self.replay("RequestTarget", RequestTargetInvariants.violations)
    }

}
