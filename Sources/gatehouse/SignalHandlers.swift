import Dispatch
import Foundation

/// SIGHUP, SIGUSR1 and a second SIGTERM/SIGINT, via dispatch sources (the first SIGTERM and
/// SIGINT belong to ServiceLifecycle, which starts the graceful drain).
final class SignalHandlers: @unchecked Sendable {
    private let queue = DispatchQueue(label: "gatehouse.signals")
    private var sources: [DispatchSourceSignal] = []
    private var terminations = 0

    func onHangUp(_ handler: @escaping @Sendable () -> Void) {
        self.install(SIGHUP, ignore: true, handler)
    }

    func onUser1(_ handler: @escaping @Sendable () -> Void) {
        self.install(SIGUSR1, ignore: true, handler)
    }

    /// Called on the second SIGTERM or SIGINT; the first one is left to the graceful drain.
    func onSecondTermination(_ handler: @escaping @Sendable () -> Void) {
        for signal in [SIGTERM, SIGINT] {
            let source = DispatchSource.makeSignalSource(signal: signal, queue: self.queue)
            source.setEventHandler { [unowned self] in
                self.terminations += 1
                if self.terminations >= 2 { handler() }
            }
            source.resume()
            self.sources.append(source)
        }
    }

    /// Returns once no second-termination handler is running. One that is running ends the
    /// process with status 1: closing every connection lets the drain finish, and the main
    /// path must not get to exit 0 first.
    func waitForSecondTerminationHandler() {
        self.queue.sync {}
    }

    private func install(_ signal: Int32, ignore: Bool, _ handler: @escaping @Sendable () -> Void) {
        // The default action of SIGHUP and SIGUSR1 is to terminate: ignore it, and let the
        // dispatch source (which sees the signal all the same) do the work.
        if ignore { Foundation.signal(signal, SIG_IGN) }
        let source = DispatchSource.makeSignalSource(signal: signal, queue: self.queue)
        source.setEventHandler(handler: handler)
        source.resume()
        self.sources.append(source)
    }
}
