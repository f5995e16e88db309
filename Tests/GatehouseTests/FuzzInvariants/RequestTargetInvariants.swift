// Invariants of the RequestTarget parsers, checked by the libFuzzer target Scripts/fuzz/FuzzRequestTarget.swift
// on every generated input and by FuzzCorpusTests on the saved corpus.

#if canImport(Gatehouse)
@testable import Gatehouse
#endif


/// Invariants of any successfully parsed authority.
private func checkAuthority(_ authority: Authority, _ v: FuzzViolations) {
    v.check(!authority.host.isEmpty, "empty host")
    v.check(authority.port.map { (0...65535).contains($0) } ?? true, "port out of range")
    // The host goes to the resolver and into the upstream Host header: printable ASCII only.
    v.check(authority.host.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F }, "host contains non-ASCII, space or control bytes")
    v.check(!authority.host.contains("[") && !authority.host.contains("]") && !authority.host.contains("@")
          && !authority.host.contains("/"), "host contains a delimiter")
    // The description is what goes on the wire and in logs: it must parse back to the same value.
    let reparsed = Authority(parsing: Substring(authority.description))
    v.check(reparsed == authority, "description does not re-parse to the same authority")
}

enum RequestTargetInvariants {
    /// Every invariant the input breaks; empty when all hold.
    static func violations(_ bytes: [UInt8]) -> [String] {
        FuzzViolations.collect { run(bytes, $0) }
    }
}

private func run(_ bytes: [UInt8], _ v: FuzzViolations) {
    let text = String(decoding: bytes, as: UTF8.self)

    // The byte-buffer parsers agree with the reference (String.Index) ones on every input.
    let authority = Authority(parsing: Substring(text))
    let reference = ReferenceRequestTarget.authority(Substring(text))
    v.check(authority?.host == reference?.host && authority?.port == reference?.port, "Authority differs from the reference")
    let expected = ReferenceRequestTarget.absolute(text)
    let actual: ReferenceRequestTarget.Outcome
    switch RequestTarget.parseAbsolute(text) {
    case .success(let uri):
        actual = .success(host: uri.authority.host, port: uri.authority.port, originForm: uri.originForm, hadUserinfo: uri.hadUserinfo)
    case .failure(.originForm): actual = .originForm
    case .failure(.httpsAbsoluteForm): actual = .httpsAbsoluteForm
    case .failure(.invalid): actual = .invalid
    }
    v.check(actual == expected, "parseAbsolute differs from the reference")

    // Authority on its own.
    if let authority = Authority(parsing: Substring(text)) {
        checkAuthority(authority, v)
    }

    // CONNECT target: host:port with a non-zero port.
    switch RequestTarget.parseConnect(text) {
    case .success(let authority):
        checkAuthority(authority, v)
        v.check(authority.port.map { $0 > 0 } == true, "CONNECT target without a non-zero port")
        v.check(RequestTarget.parseConnect(authority.description) == .success(authority), "CONNECT description round-trip")
    case .failure(let error):
        v.check(error == .invalid, "parseConnect failed with \(error)")
    }

    // Absolute-form target.
    switch RequestTarget.parseAbsolute(text) {
    case .success(let uri):
        checkAuthority(uri.authority, v)
        v.check(uri.authority.port != 0, "port 0 accepted")
        v.check(uri.originForm.hasPrefix("/"), "originForm does not start with '/'")
        v.check(uri.originForm.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F }, "originForm contains bytes <= 0x20 or non-ASCII")
        v.check(!uri.originForm.contains("#"), "originForm contains a fragment")
        v.check(Array(text.lowercased().utf8.prefix(7)) == Array("http://".utf8), "accepted a non-http scheme")
        v.check(uri.hadUserinfo == text.dropFirst(7).prefix { $0 != "/" && $0 != "?" && $0 != "#" }.contains("@"),
              "hadUserinfo mismatch")
        v.check(uri.port == (uri.authority.port ?? 80), "effective port")
        // Host header: the authority without the default port; it must parse back.
        let host = Authority(parsing: Substring(uri.hostHeader))
        v.check(host?.host == uri.authority.host && (host?.port ?? 80) == uri.port, "hostHeader does not re-parse")
        // Keeping the received text as the logged URL is only a shortcut: it must be exactly
        // what rebuilding it would give.
        v.check(uri.logDescription == "http://\(uri.hostHeader)\(uri.originForm)", "canonical log text differs")
        var rebuilt = uri.authority
        if rebuilt.port == 80 { rebuilt.port = nil }
        v.check(uri.hostHeader == rebuilt.description, "Host header differs from the authority's")
        // The logged URL parses back to the same target (minus userinfo and a default port).
        switch RequestTarget.parseAbsolute(uri.logDescription) {
        case .success(let again):
            v.check(again.authority.host == uri.authority.host && again.port == uri.port
                  && again.originForm == uri.originForm && !again.hadUserinfo, "logDescription round-trip differs")
        case .failure(let error):
            v.check(false, "logDescription does not re-parse (\(error))")
        }
    case .failure(let error):
        switch error {
        // Bytes, not Characters: "/" followed by a combining mark is one Character.
        case .originForm: v.check(text.utf8.first == UInt8(ascii: "/") || text == "*", "originForm error for a non-origin-form target")
        case .httpsAbsoluteForm: v.check(Array(text.lowercased().utf8.prefix(8)) == Array("https://".utf8), "httpsAbsoluteForm for a non-https target")
        case .invalid: break
        }
    }
}
