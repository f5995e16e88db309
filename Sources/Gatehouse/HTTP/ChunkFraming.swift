import NIOHTTP1

/// Bytes NIO's encoder adds around a body when it chunks it (RFC 9112 §7.1), for the access
/// log: each non-empty part gets its size in hex and two CRLFs; the end is `0` CRLF, the
/// trailer fields, and CRLF.
enum ChunkFraming {
    static func overhead(ofPart bytes: Int) -> Int {
        guard bytes > 0 else { return 0 }
        let hexDigits = (Int.bitWidth - bytes.leadingZeroBitCount + 3) / 4
        return hexDigits + 4
    }

    static func endSize(trailers: HTTPHeaders?) -> Int {
        var size = 5
        for (name, value) in trailers ?? [:] { size += name.utf8.count + value.utf8.count + 4 }
        return size
    }
}
