/// The invariants the libFuzzer targets (Scripts/fuzz/) check on every input, shared with
/// the corpus replay in `swift test` (FuzzCorpusTests): one definition, two drivers. The fuzz
/// build compiles these files into its own module, next to the parsers' sources.
final class FuzzViolations {
    private(set) var messages: [String] = []

    func check(_ condition: Bool, _ message: @autoclosure () -> String) {
        if !condition { self.messages.append(message()) }
    }

    /// Every invariant `run` finds broken; empty when all hold.
    static func collect(_ run: (FuzzViolations) -> Void) -> [String] {
        let v = FuzzViolations()
        run(v)
        return v.messages
    }
}
