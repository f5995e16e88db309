import Logging

#if canImport(Glibc)
import Glibc
#endif

/// Diagnostic log lines on stderr in the form journald reads best: a `<N>` syslog priority
/// prefix (`sd-daemon(3)`) and no timestamp of our own (the journal adds one), so
/// `journalctl -p warning -u gatehouse` filters by severity.
public struct JournaldLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    private let label: String

    public init(label: String, level: Logger.Level) {
        self.label = label
        self.logLevel = level
    }

    /// Whether stderr is connected to the journal (systemd sets `JOURNAL_STREAM`).
    public static func isJournalStream(environment: [String: String]) -> Bool {
        environment["JOURNAL_STREAM"] != nil
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let priority: Int
        switch event.level {
        case .trace, .debug: priority = 7
        case .info: priority = 6
        case .notice: priority = 5
        case .warning: priority = 4
        case .error: priority = 3
        case .critical: priority = 2
        }
        var all = self.metadata
        if let extra = event.metadata { all.merge(extra) { $1 } }
        var line = "<\(priority)>\(event.message)"
        if !all.isEmpty {
            line += " " + all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        }
        line += "\n"
        var bytes = Array(line.utf8)
        _ = bytes.withUnsafeMutableBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
    }
}
