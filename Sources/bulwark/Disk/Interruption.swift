#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Storage
import Synchronization

/// Turns SIGINT and SIGTERM into a cancellation of a running engine operation, so that it stops at its
/// next check and cleans up (a staged file is removed) instead of dying with its work half done. The
/// signals are ignored while it is installed (a signal source only sees them then) and restored to
/// their defaults by `stop`. The command exits with 128 + the signal, as a shell expects.
final class Interruption {
    /// The signal received (0: none yet); written from the dispatch queue, read by the command.
    private final class Received: Sendable {
        let signal = Atomic<Int32>(0)
    }
    private let received = Received()
    private var sources: [any DispatchSourceSignal] = []

    init(cancelling reporter: ProgressReporter, signals: [Int32] = [SIGINT, SIGTERM]) {
        let received = self.received
        for sig in signals {
            Glibc.signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler {
                _ = received.signal.compareExchange(expected: 0, desired: sig, ordering: .relaxed)
                reporter.cancel()
            }
            source.resume()
            sources.append(source)
        }
    }

    /// The first signal received, if any.
    var signal: Int32? {
        let s = received.signal.load(ordering: .relaxed)
        return s == 0 ? nil : s
    }

    /// Stops listening and gives the signals their default action back.
    func stop() {
        for s in sources { s.cancel() }
        for sig in [SIGINT, SIGTERM] { Glibc.signal(sig, SIG_DFL) }
        sources = []
    }

    /// The exit code for a command stopped by `signal`: 130 for SIGINT, 143 for SIGTERM.
    static func exitCode(for signal: Int32) -> Int32 { 128 + signal }

    static func name(of signal: Int32) -> String {
        switch signal { case SIGINT: "SIGINT"; case SIGTERM: "SIGTERM"; default: "signal \(signal)" }
    }
}
