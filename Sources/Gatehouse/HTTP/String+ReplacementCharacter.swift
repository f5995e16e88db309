#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension String {
    /// Whether the string holds U+FFFD (bytes EF BF BD), the character Swift puts in place of
    /// every byte sequence that is not UTF-8.
    ///
    /// NIO's HTTP parser turns each field value into a `String`, so obs-text (bytes 0x80–0xFF
    /// that are not UTF-8, RFC 9110 §5.5: a Latin-1 file name, a binary cookie) arrives here
    /// already replaced. A value with U+FFFD is therefore one Gatehouse cannot pass on byte
    /// for byte, and it refuses the message rather than forward altered bytes. (A client that
    /// sends U+FFFD itself is refused too: the two cannot be told apart.) Most values are
    /// ASCII; `memchr` for the first byte makes the check cost next to nothing.
    var containsReplacementCharacter: Bool {
        var copy = self
        return copy.withUTF8 { bytes in
            guard bytes.count >= 3, var base = bytes.baseAddress else { return false }
            let end = base + bytes.count
            while end - base >= 3, let found = memchr(base, 0xEF, end - base - 2) {
                let at = UnsafePointer(found.assumingMemoryBound(to: UInt8.self))
                if at[1] == 0xBF && at[2] == 0xBD { return true }
                base = at + 1
            }
            return false
        }
    }
}

