/// What `gatehouse probe` found, step by step, in words for people and in JSON for scripts.
public struct ProbeReport: Sendable {
    public enum Outcome: String, Sendable {
        case ok, warning, failed, skipped
    }

    public struct Step: Sendable {
        public var name: String
        public var outcome: Outcome
        public var summary: String
        public var details: [String]
        public var milliseconds: Int?

        public init(name: String, outcome: Outcome, summary: String, details: [String] = [], milliseconds: Int? = nil) {
            self.name = name
            self.outcome = outcome
            self.summary = summary
            self.details = details
            self.milliseconds = milliseconds
        }
    }

    /// The exit status names the first step that failed.
    public enum ExitCode: Int32, Sendable {
        case ok = 0
        case usage = 64
        case tcp = 2
        case challenge = 3
        case credentials = 4
        case connect = 5
        case upstream = 6
    }

    public var proxy: String
    public var url: String
    public var steps: [Step] = []
    public var exitCode: ExitCode = .ok

    public init(proxy: String, url: String) {
        self.proxy = proxy
        self.url = url
    }

    mutating func add(_ step: Step, failing code: ExitCode) {
        self.steps.append(step)
        if step.outcome == .failed && self.exitCode == .ok { self.exitCode = code }
    }

    /// Plain words, one block per step.
    public var text: String {
        var out = "Probing proxy \(self.proxy) for \(self.url)\n"
        for step in self.steps {
            let mark: String
            switch step.outcome {
            case .ok: mark = "ok  "
            case .warning: mark = "warn"
            case .failed: mark = "FAIL"
            case .skipped: mark = "skip"
            }
            let timing = step.milliseconds.map { " (\($0) ms)" } ?? ""
            out += "[\(mark)] \(step.name): \(step.summary)\(timing)\n"
            for detail in step.details { out += "       \(detail)\n" }
        }
        out += self.exitCode == .ok ? "Result: all steps passed.\n" : "Result: failed at step \"\(self.failedStep ?? "?")\" (exit \(self.exitCode.rawValue)).\n"
        return out
    }

    public var failedStep: String? { self.steps.first { $0.outcome == .failed }?.name }

    /// One JSON object.
    public var json: String {
        let steps = self.steps.map { step in
            var s = "{\"name\":\(AccessLogFormat.jsonString(step.name)),\"outcome\":\"\(step.outcome.rawValue)\","
            s += "\"summary\":\(AccessLogFormat.jsonString(step.summary)),"
            s += "\"details\":[\(step.details.map(AccessLogFormat.jsonString).joined(separator: ","))]"
            if let ms = step.milliseconds { s += ",\"ms\":\(ms)" }
            return s + "}"
        }
        return "{\"proxy\":\(AccessLogFormat.jsonString(self.proxy)),\"url\":\(AccessLogFormat.jsonString(self.url)),"
            + "\"steps\":[\(steps.joined(separator: ","))],\"failed_step\":\(self.failedStep.map(AccessLogFormat.jsonString) ?? "null"),"
            + "\"exit_code\":\(self.exitCode.rawValue)}"
    }
}
