// Invariants of the BasicCredentials parsers, checked by the libFuzzer target Scripts/fuzz/FuzzBasicCredentials.swift
// on every generated input and by FuzzCorpusTests on the saved corpus.

#if canImport(Gatehouse)
@testable import Gatehouse
#endif

/// Independent RFC 4648 §4 base64 encoder (with padding), so the round-trip checks do not rely
/// on the code under test.
func fuzzBase64(_ bytes: [UInt8]) -> String {
    let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    var out: [UInt8] = []
    var index = 0
    while index < bytes.count {
        let remaining = bytes.count - index
        let b0 = UInt32(bytes[index])
        let b1 = remaining > 1 ? UInt32(bytes[index + 1]) : 0
        let b2 = remaining > 2 ? UInt32(bytes[index + 2]) : 0
        let group = b0 << 16 | b1 << 8 | b2
        out.append(alphabet[Int(group >> 18 & 0x3F)])
        out.append(alphabet[Int(group >> 12 & 0x3F)])
        out.append(remaining > 1 ? alphabet[Int(group >> 6 & 0x3F)] : UInt8(ascii: "="))
        out.append(remaining > 2 ? alphabet[Int(group & 0x3F)] : UInt8(ascii: "="))
        index += 3
    }
    return String(decoding: out, as: UTF8.self)
}


private func isOWS(_ byte: UInt8) -> Bool { byte == 0x20 || byte == 0x09 }

enum BasicCredentialsInvariants {
    /// Every invariant the input breaks; empty when all hold.
    static func violations(_ bytes: [UInt8]) -> [String] {
        FuzzViolations.collect { run(bytes, $0) }
    }
}

private func run(_ bytes: [UInt8], _ v: FuzzViolations) {
    let text = String(decoding: bytes, as: UTF8.self)

    // 1. The whole input as a Proxy-Authorization field value.
    do {
        let credentials = try BasicCredentials(proxyAuthorization: text)
        v.check(!credentials.user.utf8.contains(UInt8(ascii: ":")), "user contains ':'")
        // The accepted value must be `<OWS>basic<SP>...`, case-insensitively.
        let trimmed = Array(text.utf8.drop(while: isOWS))
        v.check(trimmed.count > 6, "accepted value too short")
        v.check(String(decoding: trimmed.prefix(6), as: UTF8.self).lowercased() == "basic ", "scheme is not Basic")
        // Re-encoding user:password must parse back to the same credentials.
        let reencoded = "Basic " + fuzzBase64(Array((credentials.user + ":" + credentials.password).utf8))
        let again = try? BasicCredentials(proxyAuthorization: reencoded)
        v.check(again == credentials, "re-encoded credentials do not round-trip")
    } catch {
        switch error {
        case .wrongScheme, .malformedBase64, .missingColon, .invalidUTF8: break
        }
    }

    // 2. The input as the decoded credentials: `Basic base64(input)` is accepted exactly when
    //    the input is UTF-8 and contains a colon, and splits at the first colon.
    let header = "Basic " + fuzzBase64(bytes)
    let isUTF8 = text.utf8.elementsEqual(bytes)
    do {
        let credentials = try BasicCredentials(proxyAuthorization: header)
        v.check(!bytes.isEmpty && isUTF8, "accepted empty or non-UTF-8 credentials")
        let colon = bytes.firstIndex(of: UInt8(ascii: ":"))
        v.check(colon != nil, "accepted credentials without a colon")
        if let colon {
            v.check(Array(credentials.user.utf8) == Array(bytes[..<colon]), "user is not the text before the first colon")
            v.check(Array(credentials.password.utf8) == Array(bytes[(colon + 1)...]), "password is not the text after the first colon")
        }
    } catch {
        switch error {
        case .malformedBase64: v.check(bytes.isEmpty, "canonical base64 rejected as malformed")
        case .invalidUTF8: v.check(!isUTF8, "valid UTF-8 rejected")
        case .missingColon: v.check(isUTF8 && !bytes.contains(UInt8(ascii: ":")), "colon present but missingColon")
        case .wrongScheme: v.check(false, "Basic scheme rejected")
        }
    }

    // 3. The strict decoder only accepts canonical base64: decode then encode is the identity.
    if let decoded = BasicCredentials.strictBase64Decode(bytes[...]) {
        v.check(fuzzBase64(decoded) == text && text.utf8.elementsEqual(bytes), "strict base64 accepted a non-canonical encoding")
    }
    // And it decodes every canonical encoding.
    v.check(BasicCredentials.strictBase64Decode(Array(fuzzBase64(bytes).utf8)[...]) == (bytes.isEmpty ? nil : bytes),
          "strict base64 does not decode a canonical encoding")
}
