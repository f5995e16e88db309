// libFuzzer target for the RequestTarget parsers. Built by Scripts/fuzz.sh with the parsers' sources and
// Tests/GatehouseTests/FuzzInvariants/ (the invariants, shared with the corpus replay in swift test).

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzEntry(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let violations = RequestTargetInvariants.violations(Array(UnsafeBufferPointer(start: data, count: size)))
    if let first = violations.first { fatalError("invariant violated: \(first)") }
    return 0
}
