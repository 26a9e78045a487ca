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

/// Runs async library work from a synchronous command: the work runs as a task; SIGINT and SIGTERM
/// cancel it (the coordinator thaws every writer on cancellation), and the process then exits with
/// 128 + the signal number.
enum AsyncBridge {
    static func run<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
        let box = ResultBox<T>()
        let done = DispatchSemaphore(value: 0)
        let task = Task {
            box.set(await Result { try await body() })
            done.signal()
        }
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
        done.wait()
        sources.forEach { $0.cancel() }
        if case .success(let sig)? = received.get() { throw ExitCode(128 + sig) }
        return try box.get()!.get()
    }
}

final class ResultBox<T: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Result<T, Error>?
    func set(_ v: Result<T, Error>) { lock.withLock { value = v } }
    func get() -> Result<T, Error>? { lock.withLock { value } }
}

extension Result where Failure == Error {
    init(catching body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}
