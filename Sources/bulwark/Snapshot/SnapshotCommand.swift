import ArgumentParser
import Foundation
import Synchronization
import ShadowCopy

/// `bulwark snapshot ...`: consistent point-in-time copies of guest disks (the VSS analog).
struct SnapshotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot",
        abstract: "Freeze writers, take a point-in-time copy of disks, thaw.",
        subcommands: [SnapshotCreate.self, SnapshotWatchdog.self]
    )
}

/// The watchdog process the coordinator starts before the first freeze (hidden; see `Watchdog`).
struct SnapshotWatchdog: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "watchdog",
        abstract: "Thaw frozen writers if the coordinator dies (started by snapshot create).",
        shouldDisplay: false
    )

    func run() throws {
        throw ExitCode(Watchdog.serve(fd: 0))
    }
}

/// A duration argument: `10s`, `500ms`, `2m`, `1h`, or plain seconds. Parsing never fails here: a
/// bad value keeps its `problem`, which the command's `validate` reports, so the message can say
/// what a duration is (argument-parser would only say "invalid value"). Options of this type use
/// `parsing: .unconditional`, so `--timeout -1` reaches us as a value instead of being taken for an
/// option (argument-parser then said "Missing value").
struct Seconds: ExpressibleByArgument, CustomStringConvertible {
    var value: Double
    /// Why the argument is not a duration (nil when it is one).
    var problem: String?
    /// The argument as given (nil for a default).
    var text: String?

    init(_ value: Double) { self.value = value }

    init(argument: String) {
        value = .nan
        text = argument
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]
        var number = Substring(argument), factor = 1.0
        for (suffix, f) in units where argument.hasSuffix(suffix) {
            number = argument.dropLast(suffix.count)
            factor = f
            break
        }
        guard let v = Double(number), v.isFinite, v >= 0, !number.hasPrefix("+") else {
            problem = "\(argument) is not a valid duration: give a positive number with a unit ms, s, m or h (10s, 500ms, 2m; plain numbers are seconds)"
            return
        }
        value = v * factor
    }

    /// `10s`, `500ms`, `2m`: the shortest exact form (what `--help` shows as the default).
    var description: String {
        if value.isNaN { return "invalid" }
        for (suffix, f) in [("h", 3600.0), ("m", 60), ("s", 1)] where value >= f && (value / f).rounded() == value / f {
            return "\(Int(value / f))\(suffix)"
        }
        if value < 1, (value * 1000).rounded() == value * 1000 { return "\(Int(value * 1000))ms" }
        return "\(value)s"
    }

    var defaultValueDescription: String { description }

    /// The problem of `--name`'s value as a usage error (nil when it is a valid duration).
    func validationError(option name: String) -> ValidationError? {
        problem.map { ValidationError("--\(name) \($0)") }
    }

    /// The value as the user wrote it.
    var given: String { text ?? description }
}

/// Runs async library work so that SIGINT and SIGTERM cancel it (the coordinator thaws every writer
/// on cancellation); the process then exits with 128 + the signal number.
enum SignalCancellation {
    static func run<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) async throws -> T {
        let task = Task { try await body() }
        let received = ResultBox<Int32>()
        let queue = DispatchQueue(label: "bulwark.signals")
        var sources: [DispatchSourceSignal] = []
        // A parent may have started us with these signals blocked (Foundation's Process does):
        // unblock them on this thread so they are delivered.
        var unblock = sigset_t()
        sigemptyset(&unblock)
        sigaddset(&unblock, SIGINT)
        sigaddset(&unblock, SIGTERM)
        pthread_sigmask(SIG_UNBLOCK, &unblock, nil)
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: queue)
            source.setEventHandler {
                Output.note("received signal \(sig): thawing and stopping")
                received.set(.success(sig))
                task.cancel()
            }
            source.resume()
            sources.append(source)
        }
        let result = await task.result
        sources.forEach { $0.cancel() }
        if case .success(let sig)? = received.get() { throw ExitCode(128 + sig) }
        return try result.get()
    }
}

final class ResultBox<T: Sendable>: @unchecked Sendable {
    private let lock = Mutex(())
    private var value: Result<T, Error>?
    func set(_ v: Result<T, Error>) { lock.withLock { _ in value = v } }
    func get() -> Result<T, Error>? { lock.withLock { _ in value } }
}
