// libFuzzer target for `RequestTarget.parseConnect(_:)`, `RequestTarget.parseAbsolute(_:)` and
// `Authority(parsing:)`. Built by Scripts/fuzz.sh together with
// Sources/Gatehouse/HTTP/{Authority,RequestTarget}.swift.
// The same invariants are checked over the saved corpus by Tests/GatehouseTests/Unit/FuzzCorpusTests.swift.

private func check(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition { fatalError("invariant violated: \(message())") }
}

/// Invariants of any successfully parsed authority.
private func checkAuthority(_ authority: Authority) {
    check(!authority.host.isEmpty, "empty host")
    check(authority.port.map { (0...65535).contains($0) } ?? true, "port out of range")
    // The host goes to the resolver and into the upstream Host header: printable ASCII only.
    check(authority.host.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F }, "host contains non-ASCII, space or control bytes")
    check(!authority.host.contains("[") && !authority.host.contains("]") && !authority.host.contains("@")
          && !authority.host.contains("/"), "host contains a delimiter")
    // The description is what goes on the wire and in logs: it must parse back to the same value.
    let reparsed = Authority(parsing: Substring(authority.description))
    check(reparsed == authority, "description does not re-parse to the same authority")
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzEntry(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)

    // Authority on its own.
    if let authority = Authority(parsing: Substring(text)) {
        checkAuthority(authority)
    }

    // CONNECT target: host:port with a non-zero port.
    switch RequestTarget.parseConnect(text) {
    case .success(let authority):
        checkAuthority(authority)
        check(authority.port.map { $0 > 0 } == true, "CONNECT target without a non-zero port")
        check(RequestTarget.parseConnect(authority.description) == .success(authority), "CONNECT description round-trip")
    case .failure(let error):
        check(error == .invalid, "parseConnect failed with \(error)")
    }

    // Absolute-form target.
    switch RequestTarget.parseAbsolute(text) {
    case .success(let uri):
        checkAuthority(uri.authority)
        check(uri.authority.port != 0, "port 0 accepted")
        check(uri.originForm.hasPrefix("/"), "originForm does not start with '/'")
        check(uri.originForm.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F }, "originForm contains bytes <= 0x20 or non-ASCII")
        check(!uri.originForm.contains("#"), "originForm contains a fragment")
        check(text.lowercased().hasPrefix("http://"), "accepted a non-http scheme")
        check(uri.hadUserinfo == text.dropFirst(7).prefix { $0 != "/" && $0 != "?" && $0 != "#" }.contains("@"),
              "hadUserinfo mismatch")
        check(uri.port == (uri.authority.port ?? 80), "effective port")
        // Host header: the authority without the default port; it must parse back.
        let host = Authority(parsing: Substring(uri.hostHeader))
        check(host?.host == uri.authority.host && (host?.port ?? 80) == uri.port, "hostHeader does not re-parse")
        // The logged URL parses back to the same target (minus userinfo and a default port).
        switch RequestTarget.parseAbsolute(uri.logDescription) {
        case .success(let again):
            check(again.authority.host == uri.authority.host && again.port == uri.port
                  && again.originForm == uri.originForm && !again.hadUserinfo, "logDescription round-trip differs")
        case .failure(let error):
            fatalError("invariant violated: logDescription does not re-parse (\(error))")
        }
    case .failure(let error):
        switch error {
        case .originForm: check(text.hasPrefix("/") || text == "*", "originForm error for a non-origin-form target")
        case .httpsAbsoluteForm: check(text.lowercased().hasPrefix("https://"), "httpsAbsoluteForm for a non-https target")
        case .invalid: break
        }
    }
    return 0
}
