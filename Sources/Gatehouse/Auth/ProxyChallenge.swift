/// Builds the `Proxy-Authenticate` challenge sent with `407 Proxy Authentication Required`.
///
/// RFC 9110 §11.7.1 requires a 407 response to carry at least one `Proxy-Authenticate`
/// challenge; Gatehouse offers only the Basic scheme (RFC 7617).
public enum ProxyChallenge: Sendable {
    /// `Basic realm="<escaped>", charset="UTF-8"` per RFC 7617 §2 and §2.1.
    ///
    /// * `realm` is mandatory for Basic (RFC 7617 §2) and is always sent as a quoted-string
    ///   (RFC 9110 §11.5), with `"` and `\` backslash-escaped (RFC 9110 §5.6.4).
    /// * Control characters other than HTAB are removed from the realm: they are not allowed in
    ///   `qdtext`/`quoted-pair`, and CR/LF would allow header injection.
    /// * Non-ASCII realm text is passed through as UTF-8 (obs-text in RFC 9110 §5.6.4).
    /// * `charset="UTF-8"` (RFC 7617 §2.1) tells clients to encode user-id and password as
    ///   UTF-8, which is what ``BasicCredentials`` expects. It is the only allowed value.
    /// * Parameters are separated by `", "` after the scheme and a single SP; there is no
    ///   `Basic;` form (RFC 9110 §11.2: `challenge = auth-scheme [ 1*SP ( token68 / #auth-param ) ]`).
    public static func basic(realm: String) -> String {
        var escaped = ""
        escaped.unicodeScalars.reserveCapacity(realm.unicodeScalars.count)
        for scalar in realm.unicodeScalars {
            switch scalar {
            case "\t":
                escaped.unicodeScalars.append(scalar)
            case "\"", "\\":
                escaped.unicodeScalars.append("\\")
                escaped.unicodeScalars.append(scalar)
            default:
                // C0 controls, DEL and C1 controls are dropped.
                if scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) { continue }
                escaped.unicodeScalars.append(scalar)
            }
        }
        return "Basic realm=\"\(escaped)\", charset=\"UTF-8\""
    }
}
