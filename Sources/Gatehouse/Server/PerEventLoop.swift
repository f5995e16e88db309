import NIOConcurrencyHelpers
import NIOCore

/// One value per event loop, made on first use: state that only its own loop touches (origin
/// connection pools, metric counts) and so needs no lock once a connection has looked it up.
/// Connections look theirs up once, when they open, not per request.
final class PerEventLoop<Value: AnyObject & Sendable>: Sendable {
    private let values = NIOLockedValueBox([ObjectIdentifier: Value]())
    private let make: @Sendable (EventLoop) -> Value

    init(_ make: @escaping @Sendable (EventLoop) -> Value) {
        self.make = make
    }

    func value(for eventLoop: EventLoop) -> Value {
        let id = ObjectIdentifier(eventLoop)
        return self.values.withLockedValue { values in
            if let value = values[id] { return value }
            let value = self.make(eventLoop)
            values[id] = value
            return value
        }
    }

    var all: [Value] { self.values.withLockedValue { Array($0.values) } }
}
