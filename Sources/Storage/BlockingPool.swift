import Dispatch
import Foundation
import Synchronization

/// A bounded pool of threads for blocking work (pread/pwrite, fsync, ioctl, libsmbclient, a guest
/// agent's socket), outside Swift's cooperative pool, so an `async` caller never stalls other tasks
/// while the kernel works (swift-nio's `NIOThreadPool`).
///
/// The concurrency contract of Bulwark's libraries: every blocking call made from `async` code goes
/// through a pool. There are two, so that work that can hang does not starve the rest:
/// - `disk`: image and file I/O, which always returns;
/// - `control`: freeze and thaw (FIFREEZE blocks until the filesystem is quiet), guest agent calls,
///   hook processes: calls that can hang until a deadline, which their callers enforce.
/// Each pool starts at most `limit` threads; further work waits in order for a free thread.
public final class BlockingPool: Sendable {
    /// Image and file I/O.
    public static let disk = BlockingPool(name: "bulwark.disk", limit: 4)
    /// Freeze, thaw, guest agents and hooks: calls that can block until a deadline.
    public static let control = BlockingPool(name: "bulwark.control", limit: 8)

    private typealias Job = @Sendable () -> Void
    private struct State {
        var jobs: [Job] = []
        var next = 0
        var threads = 0
        var idle = 0
    }

    /// The pool's name (its threads carry it).
    public let name: String
    /// The most threads the pool runs at once.
    public let limit: Int
    private let state = Mutex(State())
    private let pending = DispatchSemaphore(value: 0)

    public init(name: String, limit: Int) {
        self.name = name
        self.limit = max(1, limit)
    }

    /// Threads started so far (never more than `limit`).
    public var threadCount: Int { state.withLock { $0.threads } }

    /// Runs `body` on one of the pool's threads and returns its result.
    public func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            submit { continuation.resume(with: Result { try body() }) }
        }
    }

    /// Queues `job`; a thread is started when more jobs wait than threads are idle, below the limit.
    private func submit(_ job: @escaping Job) {
        let start = state.withLock { s -> Bool in
            s.jobs.append(job)
            guard s.jobs.count - s.next > s.idle, s.threads < limit else { return false }
            s.threads += 1
            return true
        }
        if start {
            let thread = Thread { [self] in work() }
            thread.name = name
            thread.stackSize = 1 << 20
            thread.start()
        }
        pending.signal()
    }

    /// A pool thread: one signal per queued job, so every wake-up finds a job.
    private func work() {
        while true {
            state.withLock { $0.idle += 1 }
            pending.wait()
            let job = state.withLock { s -> Job in
                s.idle -= 1
                let job = s.jobs[s.next]
                s.next += 1
                if s.next > 64, s.next * 2 > s.jobs.count {
                    s.jobs.removeFirst(s.next)
                    s.next = 0
                }
                return job
            }
            job()
        }
    }
}

/// The error a cancelled operation throws (from `ProgressReporter.checkCancelled`). Operations that
/// stop this way leave no partial file visible.
public struct OperationCancelled: Error, Sendable, CustomStringConvertible {
    public init() {}
    public var description: String { "the operation was cancelled" }
}

/// Reports the progress of a long operation (bytes done out of a total) and carries its cancellation:
/// the caller may `cancel()` from any thread, and the operation stops at its next check.
public final class ProgressReporter: Sendable {
    public typealias Handler = @Sendable (_ completed: UInt64, _ total: UInt64) -> Void
    private let handler: Handler
    private let cancelled = Atomic<Bool>(false)

    /// `handler` is called from the operation's thread, at most once per chunk of work.
    public init(_ handler: @escaping Handler = { _, _ in }) {
        self.handler = handler
    }

    /// Reports `completed` of `total` bytes.
    public func report(_ completed: UInt64, of total: UInt64) { handler(completed, total) }

    /// Asks the operation to stop at its next check.
    public func cancel() { cancelled.store(true, ordering: .relaxed) }

    public var isCancelled: Bool { cancelled.load(ordering: .relaxed) }

    /// Throws `OperationCancelled` once `cancel()` was called.
    public func checkCancelled() throws {
        if isCancelled { throw OperationCancelled() }
    }
}
