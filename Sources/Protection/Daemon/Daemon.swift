#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Dispatch
import Foundation
import Logging
import Storage

/// What a job runner reports when a job ends: its status and what goes into the job's record.
public struct JobOutcome: Sendable, Equatable {
    /// `ok`, `ok-with-warnings`, `failed-retryable`, `failed` or `canceled`.
    public var status: JobStatus
    public var target: String?
    public var point: String?
    public var pointKind: String?
    public var bytesRead: Int64
    public var bytesWritten: Int64
    public var bytesChanged: Int64
    public var error: String?
    public var warnings: [String]
    /// JSON text with kind-specific extras; the daemon adds the scheduler's (why a full was made).
    public var detail: String?

    public init(status: JobStatus, target: String? = nil, point: String? = nil, pointKind: String? = nil,
                bytesRead: Int64 = 0, bytesWritten: Int64 = 0, bytesChanged: Int64 = 0,
                error: String? = nil, warnings: [String] = [], detail: String? = nil) {
        self.status = status
        self.target = target
        self.point = point
        self.pointKind = pointKind
        self.bytesRead = bytesRead
        self.bytesWritten = bytesWritten
        self.bytesChanged = bytesChanged
        self.error = error
        self.warnings = warnings
        self.detail = detail
    }
}

/// The daemon's clock: wall time for schedules, and a sleep. Injected so tests run days in seconds.
extension JobRecord {
    /// Records how the job ended: its outcome's status, figures, error and warnings, and its detail
    /// merged over what the job was started with.
    public mutating func finish(with outcome: JobOutcome, at date: Date) {
        status = outcome.status
        ended = date
        target = outcome.target
        point = outcome.point
        pointKind = outcome.pointKind
        bytesRead = outcome.bytesRead
        bytesWritten = outcome.bytesWritten
        bytesChanged = outcome.bytesChanged
        error = outcome.error
        warnings = outcome.warnings
        detail = Daemon.mergeDetail(detail, outcome.detail)
    }
}

public struct DaemonClock: Sendable {
    public var now: @Sendable () -> Date
    /// Sleeps this many (clock) seconds; throws when the task is cancelled.
    public var sleep: @Sendable (TimeInterval) async throws -> Void

    public init(now: @escaping @Sendable () -> Date, sleep: @escaping @Sendable (TimeInterval) async throws -> Void) {
        self.now = now
        self.sleep = sleep
    }

    public static let system = DaemonClock(now: { Date() }, sleep: { try await Task.sleep(for: .seconds($0)) })
}

/// A failure of the daemon itself (not of a job).
public struct DaemonError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// `bulwark daemon`: runs each policy's jobs on its schedules and records them in the job history.
///
/// `run()` loads the policies, marks rows left `queued`/`running` by a killed daemon as failed, tells
/// systemd it is ready, and then loops: it wakes at the next fire time (at least every
/// `recheckInterval`, so a wall-clock jump or a suspend is noticed), starts the due jobs as child tasks
/// (jobs of different policies run at once, never two of one policy), records each as queued, running,
/// then its outcome, and re-queues retryable failures. SIGHUP (`reload()`) reloads the policies and keeps
/// running jobs; SIGTERM or SIGINT (`shutdown()`) stops starting jobs, cancels the running ones (task
/// cancellation lets them roll back), waits for them, records them `canceled` and returns.
///
/// The job runner is a closure so this type knows nothing of how a backup is made: it gets the
/// `DueJob` (with its history row id in `record`) and returns a `JobOutcome`; on cancellation it should
/// stop soon and return `.canceled`.
///
/// Signals: while `run(handlingSignals: true)` runs, SIGHUP, SIGTERM and SIGINT are ignored by the
/// process and reach the daemon through dispatch sources. An ignored signal stays ignored across
/// `exec`, so a job must start its child processes with default dispositions and an empty mask (as
/// ShadowCopy's spawn does); Foundation's `Process` passes both on, and its children would ignore
/// SIGTERM.
///
/// Wiring, for the `daemon` command:
/// ```swift
/// let environment = ProcessInfo.processInfo.environment
/// LoggingSystem.bootstrap { JournalLogHandler(label: $0, environment: environment) }
/// let daemon = Daemon(history: try JobHistory(stateDirectory: stateDirectory),
///                     logger: Logger(label: "bulwark.daemon"),
///                     notifier: SystemdNotifier(environment: environment),
///                     loadPolicies: { try policies(in: folder).map(ScheduledPolicy.init) },
///                     runJob: { job in await runner.run(job) })
/// try await daemon.run()   // returns after SIGTERM: exit 0
/// ```
public actor Daemon {
    private enum Event: Sendable {
        case timer(Int)
        case ended(DueJob, JobOutcome)
        case reload
        case shutdown
        case watchdog
    }

    private let history: JobHistory
    private let logger: Logger
    private let notifier: SystemdNotifier
    private let clock: DaemonClock
    private let recheckInterval: TimeInterval
    private let grace: TimeInterval
    private let loadPolicies: @Sendable () throws -> [ScheduledPolicy]
    private let runJob: @Sendable (DueJob) async -> JobOutcome
    private let events: AsyncStream<Event>
    private let continuation: AsyncStream<Event>.Continuation

    private var scheduler: Scheduler?
    private var records: [ScheduleKey: JobRecord] = [:]
    private var timer: Task<Void, Never>?
    private var timerGeneration = 0
    private var started = false
    private var stopping = false
    private var notifyFailed = false

    /// - Parameters:
    ///   - recheckInterval: the longest sleep, in clock seconds: the daemon looks at the wall clock at
    ///     least this often, so a clock step or a suspend delays a job by at most this much.
    ///   - grace: how late a fire time may be seen and still count as on time (else `catch-up`).
    public init(history: JobHistory, logger: Logger, notifier: SystemdNotifier, clock: DaemonClock = .system,
                recheckInterval: TimeInterval = 60, grace: TimeInterval = 60,
                loadPolicies: @escaping @Sendable () throws -> [ScheduledPolicy],
                runJob: @escaping @Sendable (DueJob) async -> JobOutcome) {
        self.history = history
        self.logger = logger
        self.notifier = notifier
        self.clock = clock
        self.recheckInterval = recheckInterval
        self.grace = grace
        self.loadPolicies = loadPolicies
        self.runJob = runJob
        (events, continuation) = AsyncStream.makeStream(of: Event.self, bufferingPolicy: .unbounded)
    }

    /// Reloads the policies (what SIGHUP does). Safe from any thread, before or during `run()`.
    public nonisolated func reload() { continuation.yield(.reload) }

    /// Stops the daemon (what SIGTERM and SIGINT do): `run()` returns once running jobs have ended.
    public nonisolated func shutdown() { continuation.yield(.shutdown) }

    /// Runs until `shutdown()` (or SIGTERM/SIGINT when `handlingSignals`). Throws when the policies
    /// cannot be loaded at start or the job history cannot be read: systemd then reports the start as
    /// failed, with the message in the journal.
    public func run(handlingSignals: Bool = true) async throws {
        guard !started else { throw DaemonError("Daemon.run() was called twice; make a new Daemon") }
        started = true
        var sources: [any DispatchSourceSignal] = []
        if handlingSignals { sources = installSignalHandlers() }
        defer {
            for source in sources { source.cancel() }
            if handlingSignals { for sig in [SIGHUP, SIGTERM, SIGINT] { signal(sig, SIG_DFL) } }
        }

        let history = self.history, load = self.loadPolicies
        let policies = try await JobHistory.pool.run { try load() }
        let now = clock.now()
        let recovered = try await JobHistory.pool.run { try history.recoverInterrupted(now: now) }
        for r in recovered {
            logger.warning("\(r.kind.rawValue) job \(r.id ?? 0) was left \(JobStatus.running.rawValue) by a process that ended: recorded as failed",
                           metadata: ["policy": "\(r.policy)"])
        }
        let marks = try await JobHistory.pool.run { try history.schedulerMarks() }
        scheduler = Scheduler(policies: policies, marks: marks, now: now, grace: grace)
        await persistMarks()
        logger.info("started with \(policies.count) \(policies.count == 1 ? "policy" : "policies")")
        for p in policies.sorted(by: { $0.name < $1.name }) {
            logger.info("schedules: \(p.summary)", metadata: ["policy": "\(p.name)"])
        }
        notify { try $0.ready(status: self.statusLine()) }

        var watchdog: Task<Void, Never>?
        if let interval = notifier.watchdogInterval {
            let clock = self.clock, continuation = self.continuation
            watchdog = Task {
                while !Task.isCancelled {
                    do { try await clock.sleep(interval / 2) } catch { return }
                    continuation.yield(.watchdog)
                }
            }
        }
        defer { watchdog?.cancel() }

        await withDiscardingTaskGroup { group in
            await tick(&group)
            loop: for await event in events {
                switch event {
                case .timer(let generation):
                    if generation == timerGeneration, !stopping { await tick(&group) }
                case .ended(let job, let outcome):
                    await ended(job, outcome)
                    if stopping {
                        if scheduler!.running.isEmpty { break loop }
                    } else {
                        await tick(&group)
                    }
                case .reload:
                    if !stopping {
                        await reloadPolicies()
                        await tick(&group)
                    }
                case .shutdown:
                    if !stopping {
                        stopping = true
                        timer?.cancel()
                        let count = scheduler!.running.count
                        logger.notice("stopping: \(count == 0 ? "no job runs" : "canceling \(count) running job\(count == 1 ? "" : "s")")")
                        notify { try $0.stopping(status: count == 0 ? "stopping" : "stopping: canceling \(count) job\(count == 1 ? "" : "s")") }
                        group.cancelAll()
                    }
                    if scheduler!.running.isEmpty { break loop }
                case .watchdog:
                    notify { try $0.watchdog() }
                }
            }
        }
        timer?.cancel()
        logger.notice("stopped")
    }

    /// Starts the due jobs and sets the timer for the next wake.
    private func tick(_ group: inout DiscardingTaskGroup) async {
        let now = clock.now()
        let due = scheduler!.due(now: now)
        await persistMarks()
        for var job in due {
            var record = JobRecord(policy: job.policy, kind: job.kind, status: .queued, trigger: job.trigger, attempt: job.attempt,
                                   queued: now, detail: Self.detail(job))
            let history = self.history
            do {
                let queued = record
                record = try await JobHistory.pool.run { try history.insert(queued) }
                record.status = .running
                record.started = clock.now()
                let running = record
                try await JobHistory.pool.run { try history.update(running) }
            } catch {
                // The job runs anyway: a backup matters more than its line in the history.
                logger.error("cannot record the job in the history: \(error)", metadata: ["policy": "\(job.policy)"])
                if record.started == nil { record.started = clock.now() }
                record.status = .running
            }
            job.record = record.id
            records[job.key] = record
            logger.info("starting \(job)\(job.fullReason.map { " because \($0)" } ?? "")", metadata: ["policy": "\(job.policy)"])
            let runJob = self.runJob, continuation = self.continuation, started = job
            group.addTask {
                let outcome = await runJob(started)
                continuation.yield(.ended(started, outcome))
            }
        }
        if !due.isEmpty { notify { try $0.status(self.statusLine()) } }
        armTimer(now: now)
    }

    private func armTimer(now: Date) {
        timer?.cancel()
        timerGeneration += 1
        var delay = recheckInterval
        if let wake = scheduler!.nextWake(after: now) {
            // A wake at or before `now` right after a tick means a schedule source that does not move
            // forward: fall back to the recheck interval rather than spin.
            if wake > now { delay = min(delay, wake.timeIntervalSince(now)) }
        }
        let generation = timerGeneration, clock = self.clock, continuation = self.continuation
        timer = Task {
            do { try await clock.sleep(delay) } catch { return }
            continuation.yield(.timer(generation))
        }
    }

    /// Records the end of `job` and tells the scheduler.
    private func ended(_ job: DueJob, _ outcome: JobOutcome) async {
        let now = clock.now()
        var record = records.removeValue(forKey: job.key)
            ?? JobRecord(id: job.record, policy: job.policy, kind: job.kind, trigger: job.trigger, attempt: job.attempt, queued: now)
        var status = outcome.status
        var error = outcome.error
        if !status.isFinished {
            status = .failed
            error = "the job runner returned the unfinished status \(outcome.status.rawValue) (a bug in the runner)"
        }
        if stopping, !status.isSuccess, status != .canceled {
            // It failed because it was canceled by the shutdown.
            error = error.map { "canceled by the daemon's shutdown (\($0))" } ?? "canceled by the daemon's shutdown"
            status = .canceled
        }
        var settled = outcome
        settled.status = status
        settled.error = error
        record.finish(with: settled, at: now)
        if record.id != nil {
            let history = self.history, finished = record
            do { try await JobHistory.pool.run { try history.update(finished) } } catch {
                logger.error("cannot record the end of \(job) in the history: \(error)", metadata: ["policy": "\(job.policy)"])
            }
        }
        scheduler!.jobEnded(job, status: status, now: now)
        let metadata: Logger.Metadata = ["policy": "\(job.policy)", "job": "\(record.id.map(String.init) ?? "-")"]
        let retry = scheduler!.pending[job.key].flatMap { $0.trigger == .retry && $0.attempt == job.attempt + 1 ? $0 : nil }
        switch status {
        case .ok, .okWithWarnings:
            var text = "\(job) ended \(status.rawValue)"
            if let point = outcome.point { text += ": point \(point)" }
            logger.info("\(text)", metadata: metadata)
            for w in outcome.warnings { logger.warning("\(job): \(w)", metadata: metadata) }
        case .canceled:
            logger.notice("\(job) canceled", metadata: metadata)
        default:
            var text = "\(job) ended \(status.rawValue): \(error ?? "no reason given")"
            if let retry { text += "; attempt \(retry.attempt) at \(Timestamp.iso8601(retry.notBefore))" }
            logger.error("\(text)", metadata: metadata)
        }
        if !stopping { notify { try $0.status(self.statusLine()) } }
    }

    private func reloadPolicies() async {
        notify { try $0.reloading() }
        let load = self.loadPolicies
        do {
            let policies = try await JobHistory.pool.run { try load() }
            let changes = scheduler!.update(policies: policies, now: clock.now())
            await persistMarks()
            if changes.isEmpty {
                logger.notice("reloaded the policies: nothing changed")
            } else {
                logger.notice("reloaded the policies: \(changes.added.count) added, \(changes.changed.count) changed, \(changes.removed.count) removed; running jobs go on")
                for name in changes.added { logger.notice("added: \(scheduler!.policies[name]!.summary)", metadata: ["policy": "\(name)"]) }
                for name in changes.changed { logger.notice("changed: \(scheduler!.policies[name]!.summary)", metadata: ["policy": "\(name)"]) }
                for name in changes.removed { logger.notice("removed\(scheduler!.isRunning(policy: name) ? " (its running job goes on)" : "")", metadata: ["policy": "\(name)"]) }
            }
        } catch {
            logger.error("reload failed, the previous policies stay in force: \(error)")
        }
        notify { try $0.ready(status: self.statusLine()) }
    }

    private func persistMarks() async {
        let marks = scheduler!.takeChangedMarks()
        guard !marks.isEmpty else { return }
        let history = self.history
        do {
            try await JobHistory.pool.run {
                for (key, date) in marks { try history.setSchedulerMark(policy: key.policy, kind: key.kind, to: date) }
            }
        } catch {
            logger.error("cannot save the scheduler's state in the history (a restart may catch up a job twice): \(error)")
        }
    }

    /// Sends a notification; a failure is logged once (systemd's view is lost, the jobs are not).
    private func notify(_ body: (SystemdNotifier) throws -> Void) {
        do { try body(notifier) } catch {
            if !notifyFailed { logger.warning("\(error)") }
            notifyFailed = true
        }
    }

    /// The line `systemctl status` shows.
    private func statusLine() -> String {
        guard let scheduler else { return "starting" }
        let running = scheduler.running.values.sorted { $0.policy < $1.policy }.map { "\($0.policy) \($0.kind.rawValue)" }
        var parts: [String] = []
        parts.append(running.isEmpty ? "idle" : "running: " + running.joined(separator: ", "))
        if !scheduler.pending.isEmpty { parts.append("\(scheduler.pending.count) waiting") }
        if let wake = scheduler.nextWake(after: clock.now()) { parts.append("next wake \(Timestamp.iso8601(wake))") }
        return parts.joined(separator: "; ")
    }

    /// The scheduler's part of a record's `detail`: fire time and why a full.
    static func detail(_ job: DueJob) -> String? {
        var d: [String: String] = ["fired": Timestamp.iso8601(job.fired)]
        if job.kind == .backup { d["full"] = job.full ? "true" : "false" }
        if let reason = job.fullReason { d["fullReason"] = reason }
        return json(d)
    }

    /// The scheduler's detail with the runner's (a JSON object) merged over it.
    static func mergeDetail(_ base: String?, _ extra: String?) -> String? {
        guard let extra else { return base }
        guard let base,
              let a = try? JSONSerialization.jsonObject(with: Data(base.utf8)) as? [String: Any],
              let b = try? JSONSerialization.jsonObject(with: Data(extra.utf8)) as? [String: Any] else { return extra }
        let merged = a.merging(b) { _, new in new }
        guard let data = try? JSONSerialization.data(withJSONObject: merged, options: [.sortedKeys]) else { return extra }
        return String(decoding: data, as: UTF8.self)
    }

    private static func json(_ d: [String: String]) -> String? {
        guard let data = try? JSONSerialization.data(withJSONObject: d, options: [.sortedKeys]) else { return nil }
        return String(decoding: data, as: UTF8.self)
    }

    /// SIGHUP reloads, SIGTERM and SIGINT stop. Each signal is ignored first, so its default action
    /// (ending the process) does not run, and delivered through a dispatch source instead.
    private nonisolated func installSignalHandlers() -> [any DispatchSourceSignal] {
        [SIGHUP, SIGTERM, SIGINT].map { sig in
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler { [continuation] in
                continuation.yield(sig == SIGHUP ? .reload : .shutdown)
            }
            source.resume()
            return source
        }
    }
}
