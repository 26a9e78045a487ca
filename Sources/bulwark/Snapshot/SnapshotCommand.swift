import ArgumentParser
import Foundation
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

/// A duration argument: `10s`, `500ms`, `2m`, or plain seconds.
struct Seconds: ExpressibleByArgument {
    var value: Double
    init?(argument: String) {
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]
        for (suffix, factor) in units where argument.hasSuffix(suffix) {
            guard let v = Double(argument.dropLast(suffix.count)), v >= 0 else { return nil }
            value = v * factor
            return
        }
        guard let v = Double(argument), v >= 0 else { return nil }
        value = v
    }
    static var defaultValueDescription: String { "a duration such as 10s, 500ms or 2m" }
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
    private let lock = NSLock()
    private var value: Result<T, Error>?
    func set(_ v: Result<T, Error>) { lock.withLock { value = v } }
    func get() -> Result<T, Error>? { lock.withLock { value } }
}
