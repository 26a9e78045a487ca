import Foundation
import Storage

/// One schedule of a policy: a calendar event seen through two closures, so the scheduler needs no
/// calendar type of its own (a policy's `CalendarEvent` fits as
/// `ScheduleEvent(event.description, next: { event.next(after: $0, in: zone) }, fired: { event.fired(between: $0, and: $1, in: zone) })`).
public struct ScheduleEvent: Sendable {
    /// The schedule as the user wrote it: shown in logs, and compared on reload to tell an edited
    /// schedule from an unchanged one.
    public var text: String
    /// The first fire time strictly after the given date, or nil when it never fires again.
    public var next: @Sendable (_ after: Date) -> Date?
    /// A fire time `t` with `from < t <= through` (the latest, when the source knows it), or nil.
    public var fired: @Sendable (_ from: Date, _ through: Date) -> Date?

    public init(_ text: String, next: @escaping @Sendable (Date) -> Date?, fired: @escaping @Sendable (Date, Date) -> Date?) {
        self.text = text
        self.next = next
        self.fired = fired
    }

    /// An event known only by its `next`: a fire in `(from, through]` is `next(from)` when not later
    /// than `through`.
    public init(_ text: String, next: @escaping @Sendable (Date) -> Date?) {
        self.init(text, next: next, fired: { from, through in
            next(from).flatMap { $0 <= through ? $0 : nil }
        })
    }
}

/// How often a job that failed with a retryable error is tried, and how long apart.
public struct RetryRule: Sendable, Equatable {
    /// Tries in all, the first included: 3 means the first run and at most 2 retries. 0 or 1: none.
    public var attempts: Int
    /// Seconds between the end of a failed try and the start of the next.
    public var delay: TimeInterval

    public init(attempts: Int, delay: TimeInterval) {
        self.attempts = attempts
        self.delay = delay
    }

    public static let none = RetryRule(attempts: 1, delay: 0)
}

/// What the scheduler knows of a policy: its name, the schedule of each job kind it runs on its own,
/// the kinds that follow each successful backup, the event that makes the next backup a full one, and
/// its retry rule.
public struct ScheduledPolicy: Sendable {
    public var name: String
    /// The schedule of each kind (`backup`, `verify`; later `prune`, `replication`).
    public var schedules: [JobKind: ScheduleEvent]
    /// When it has fired since the last scheduled backup, the next backup is a full one.
    public var full: ScheduleEvent?
    public var retry: RetryRule
    /// Kinds queued (trigger `after-backup`) each time a backup of the policy ends ok or
    /// ok-with-warnings: `replication` for a policy with `replicate:`.
    public var afterBackup: [JobKind]

    public init(name: String, schedules: [JobKind: ScheduleEvent], full: ScheduleEvent? = nil, retry: RetryRule = .none,
                afterBackup: [JobKind] = []) {
        self.name = name
        self.schedules = schedules
        self.full = full
        self.retry = retry
        self.afterBackup = afterBackup
    }

    public init(name: String, backup: ScheduleEvent? = nil, full: ScheduleEvent? = nil, verify: ScheduleEvent? = nil, retry: RetryRule = .none,
                afterBackup: [JobKind] = []) {
        var schedules: [JobKind: ScheduleEvent] = [:]
        schedules[.backup] = backup
        schedules[.verify] = verify
        self.init(name: name, schedules: schedules, full: full, retry: retry, afterBackup: afterBackup)
    }

    /// One line describing the schedules, for logs and for telling what a reload changed.
    public var summary: String {
        var parts = JobKind.allCases.compactMap { kind in schedules[kind].map { "\(kind.rawValue) \"\($0.text)\"" } }
        if let full { parts.append("full \"\(full.text)\"") }
        for kind in afterBackup { parts.append("\(kind.rawValue) after each backup") }
        if retry.attempts > 1 { parts.append("retry \(retry.attempts) attempts \(Int(retry.delay)) s apart") }
        return parts.isEmpty ? "no schedule" : parts.joined(separator: ", ")
    }
}

/// A (policy, kind) pair: one schedule, one scheduler mark, at most one pending job.
public struct ScheduleKey: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var policy: String
    public var kind: JobKind

    public init(policy: String, kind: JobKind) {
        self.policy = policy
        self.kind = kind
    }

    public static func < (a: ScheduleKey, b: ScheduleKey) -> Bool {
        (a.policy, JobKind.allCases.firstIndex(of: a.kind)!) < (b.policy, JobKind.allCases.firstIndex(of: b.kind)!)
    }

    public var description: String { "\(policy) \(kind.rawValue)" }
}

/// A job the scheduler hands out: what to run, why, and (for a backup) whether it is a full one.
public struct DueJob: Sendable, Hashable, CustomStringConvertible {
    public var policy: String
    public var kind: JobKind
    public var trigger: JobTrigger
    /// 1 for the first try.
    public var attempt: Int
    /// For a backup: make a full point, not an incremental one.
    public var full: Bool
    /// Why it is a full one, for the job's record.
    public var fullReason: String?
    /// The fire time it answers (for a retry, when the retry became due).
    public var fired: Date
    /// Not to start before this time (a retry's delay).
    public var notBefore: Date
    /// The job history row, once the daemon has recorded the job.
    public var record: Int64?
    /// The time through which fire times are handled once this job is handed out (nil for a retry).
    var handledThrough: Date?

    public init(policy: String, kind: JobKind, trigger: JobTrigger, attempt: Int = 1, full: Bool = false, fullReason: String? = nil,
                fired: Date, notBefore: Date? = nil, record: Int64? = nil) {
        self.policy = policy
        self.kind = kind
        self.trigger = trigger
        self.attempt = attempt
        self.full = full
        self.fullReason = fullReason
        self.fired = fired
        self.notBefore = notBefore ?? fired
        self.record = record
    }

    public var key: ScheduleKey { ScheduleKey(policy: policy, kind: kind) }

    public var description: String {
        var s = "\(policy) \(kind.rawValue)"
        if kind == .backup { s += full ? " (full)" : " (incremental)" }
        s += " [\(trigger.rawValue)"
        if attempt > 1 { s += ", attempt \(attempt)" }
        return s + "]"
    }
}

/// What a reload changed.
public struct PolicyChanges: Sendable, Equatable {
    public var added: [String] = []
    public var removed: [String] = []
    /// Policies whose schedules or retry rule changed, with their new summary.
    public var changed: [String] = []
    public var isEmpty: Bool { added.isEmpty && removed.isEmpty && changed.isEmpty }
}

/// The scheduler's core: which jobs are due, which wait, when to wake. It is a value with no clock and
/// no I/O: every method takes `now`, and the caller persists `takeChangedMarks()` (in
/// `JobHistory.setSchedulerMark`), so it is tested with made-up times.
///
/// Rules:
/// - A fire time within `grace` of `now` gives a `schedule` job; an older one (the daemon was down,
///   the machine slept, the clock jumped) a `catch-up` job, once, however many fire times were missed.
/// - A scheduler mark per (policy, kind) says "fire times up to here are handled". It advances when a
///   job is handed out, so a job that was waiting (pending) when the daemon stopped is caught up on the
///   next start, while a job that was handed out is not run again (a job that kills the daemon must not
///   run in a loop under `Restart=on-failure`). A schedule with no mark (first start, new policy) and an
///   edited schedule get the mark `now`: nothing from the past is caught up.
/// - A backup is a full one when the policy's `full` event fired after the backup's mark and at or
///   before the backup's fire time (so a `full` that coincides with the schedule counts), or when an
///   earlier full one failed for good.
/// - One job per policy at a time: a job due for a busy policy waits, at most one per (policy, kind),
///   and starts when the running one ends.
/// - A job that ends `failed-retryable` is tried again `retry.delay` seconds after it ended, up to
///   `retry.attempts` tries in all, with trigger `retry`; a fresh fire of the same schedule replaces a
///   waiting retry.
/// - When a backup ends ok (or ok with warnings), each of its policy's `afterBackup` kinds is queued to
///   start at once (trigger `after-backup`), as one pending job per kind: a replication still waiting
///   when the next backup ends answers both.
public struct Scheduler: Sendable {
    /// How late a fire time may be handled and still count as on time.
    public let grace: TimeInterval
    public private(set) var policies: [String: ScheduledPolicy] = [:]
    /// Fire times up to each mark are handled (what is persisted).
    public private(set) var marks: [ScheduleKey: Date] = [:]
    /// Jobs waiting: for a busy policy, or for a retry's delay.
    public private(set) var pending: [ScheduleKey: DueJob] = [:]
    /// The job each busy policy runs.
    public private(set) var running: [String: DueJob] = [:]
    /// Through when each schedule was looked at (at least its mark).
    private var checked: [ScheduleKey: Date] = [:]
    private var changedMarks: Set<ScheduleKey> = []
    /// Policies whose last full backup failed for good: their next backup is full, for this reason.
    private var fullOwed: [String: String] = [:]

    /// `marks` are the persisted marks (`JobHistory.schedulerMarks()`); schedules without one get `now`.
    public init(policies: [ScheduledPolicy], marks: [ScheduleKey: Date], now: Date, grace: TimeInterval = 60) {
        self.grace = grace
        for policy in policies {
            self.policies[policy.name] = policy
            for kind in policy.schedules.keys {
                let key = ScheduleKey(policy: policy.name, kind: kind)
                if let mark = marks[key] {
                    self.marks[key] = mark
                } else {
                    self.marks[key] = now
                    changedMarks.insert(key)
                }
                checked[key] = self.marks[key]
            }
        }
    }

    /// The marks changed since the last call, to persist.
    public mutating func takeChangedMarks() -> [ScheduleKey: Date] {
        defer { changedMarks.removeAll() }
        var out: [ScheduleKey: Date] = [:]
        for key in changedMarks { out[key] = marks[key] }
        return out
    }

    /// Finds the schedules that fired up to `now` and hands out the jobs to start now: one per idle
    /// policy. Each job handed out counts as running until `jobEnded`.
    public mutating func due(now: Date) -> [DueJob] {
        for name in policies.keys.sorted() {
            let policy = policies[name]!
            for kind in JobKind.allCases {
                guard let event = policy.schedules[kind] else { continue }
                let key = ScheduleKey(policy: name, kind: kind)
                let from = checked[key] ?? now
                guard now > from else { continue }
                checked[key] = now
                // First look for a fire within the grace, so a source that answers the earliest fire
                // of a long window does not turn an on-time job into a catch-up.
                guard let fire = event.fired(max(from, now.addingTimeInterval(-grace)), now) ?? event.fired(from, now) else { continue }
                var job = DueJob(policy: name, kind: kind, trigger: now.timeIntervalSince(fire) <= grace ? .schedule : .catchUp,
                                 fired: fire, notBefore: now)
                job.handledThrough = now
                if kind == .backup, let reason = fullReason(policy, key: key, through: now) {
                    job.full = true
                    job.fullReason = reason
                }
                if var waiting = pending[key] {
                    if waiting.trigger == .retry {
                        // A fresh fire supersedes a waiting retry.
                        job.full = job.full || waiting.full
                        job.fullReason = job.fullReason ?? waiting.fullReason
                        pending[key] = job
                    } else {
                        // Still one pending job: it now answers this fire too.
                        waiting.handledThrough = now
                        if job.full && !waiting.full {
                            waiting.full = true
                            waiting.fullReason = job.fullReason
                        }
                        pending[key] = waiting
                    }
                } else {
                    pending[key] = job
                }
            }
        }
        var out: [DueJob] = []
        for name in Set(pending.keys.map(\.policy)).sorted() where running[name] == nil {
            let ready = pending.values.filter { $0.policy == name && $0.notBefore <= now }
                .sorted { ($0.fired, $0.key) < ($1.fired, $1.key) }
            guard let job = ready.first else { continue }
            pending[job.key] = nil
            running[name] = job
            if let through = job.handledThrough, through > (marks[job.key] ?? .distantPast) {
                marks[job.key] = through
                changedMarks.insert(job.key)
            }
            if job.full { fullOwed[name] = nil }
            out.append(job)
        }
        return out
    }

    /// Why the backup of `policy` due through `through` is a full one, or nil.
    private func fullReason(_ policy: ScheduledPolicy, key: ScheduleKey, through: Date) -> String? {
        if let owed = fullOwed[policy.name] { return owed }
        guard let full = policy.full, let mark = marks[key], let t = full.fired(mark, through) else { return nil }
        return "the full schedule \"\(full.text)\" fired at \(Timestamp.iso8601(t))"
    }

    /// Records a job started outside the scheduler (a manual run) so nothing else of its policy starts
    /// meanwhile. False when the policy is busy: the caller should not start it.
    public mutating func jobStarted(_ job: DueJob) -> Bool {
        guard running[job.policy] == nil else { return false }
        running[job.policy] = job
        return true
    }

    /// Whether a job of `policy` runs.
    public func isRunning(policy: String) -> Bool { running[policy] != nil }

    /// Records the end of `job` at `now`; a retryable failure with tries left queues a retry.
    public mutating func jobEnded(_ job: DueJob, status: JobStatus, now: Date) {
        if running[job.policy]?.key == job.key { running[job.policy] = nil }
        guard let policy = policies[job.policy] else { return }
        if job.kind == .backup, status.isSuccess {
            for kind in policy.afterBackup where kind != .backup {
                let key = ScheduleKey(policy: job.policy, kind: kind)
                if let waiting = pending[key], waiting.trigger != .retry { continue }
                pending[key] = DueJob(policy: job.policy, kind: kind, trigger: .afterBackup, fired: now, notBefore: now)
            }
        }
        if status == .failedRetryable, job.attempt < policy.retry.attempts {
            var retry = job
            retry.attempt += 1
            retry.trigger = .retry
            retry.notBefore = now.addingTimeInterval(policy.retry.delay)
            retry.fired = retry.notBefore
            retry.record = nil
            retry.handledThrough = nil
            if var waiting = pending[job.key] {
                // A fire that came meanwhile runs anyway; keep the full decision.
                if retry.full && !waiting.full { waiting.full = true; waiting.fullReason = retry.fullReason }
                pending[job.key] = waiting
            } else {
                pending[job.key] = retry
            }
            return
        }
        if job.kind == .backup, job.full, !status.isSuccess {
            fullOwed[job.policy] = "the last full backup (attempt \(job.attempt)) ended \(status.rawValue)"
        }
    }

    /// The earliest time something becomes due after `now`: a schedule's next fire, or a waiting job of
    /// an idle policy (a retry's delay). Nil when nothing will ever be due. A time at or before `now`
    /// means `due(now:)` has work already.
    public func nextWake(after now: Date) -> Date? {
        var best: Date?
        func consider(_ d: Date?) {
            guard let d else { return }
            if best == nil || d < best! { best = d }
        }
        for (name, policy) in policies {
            for (kind, event) in policy.schedules {
                let key = ScheduleKey(policy: name, kind: kind)
                consider(event.next(checked[key] ?? now))
            }
        }
        for job in pending.values where running[job.policy] == nil { consider(job.notBefore) }
        return best
    }

    /// Replaces the policies (a reload). Running jobs go on; waiting jobs of removed policies or removed
    /// schedules are dropped; a new or edited schedule gets the mark `now` (it takes effect from now,
    /// with no catch-up of fire times the new schedule would have had in the past).
    @discardableResult
    public mutating func update(policies new: [ScheduledPolicy], now: Date) -> PolicyChanges {
        var changes = PolicyChanges()
        let newByName = Dictionary(new.map { ($0.name, $0) }, uniquingKeysWith: { _, last in last })
        for name in policies.keys.sorted() where newByName[name] == nil {
            changes.removed.append(name)
            for key in pending.keys where key.policy == name { pending[key] = nil }
            for key in checked.keys where key.policy == name { checked[key] = nil }
            for key in marks.keys where key.policy == name { marks[key] = nil }
            fullOwed[name] = nil
        }
        for name in newByName.keys.sorted() {
            let policy = newByName[name]!
            let old = policies[name]
            if old == nil { changes.added.append(name) } else if old!.summary != policy.summary { changes.changed.append(name) }
            for kind in JobKind.allCases {
                let key = ScheduleKey(policy: name, kind: kind)
                if let waiting = pending[key], policy.schedules[kind] == nil, !policy.afterBackup.contains(kind),
                   waiting.trigger == .afterBackup || old?.schedules[kind] == nil {
                    pending[key] = nil   // it followed backups, and no longer does
                }
                let before = old?.schedules[kind]?.text
                guard let event = policy.schedules[kind] else {
                    if before != nil { pending[key] = nil; checked[key] = nil; marks[key] = nil }
                    continue
                }
                if before != event.text {
                    marks[key] = now
                    checked[key] = now
                    changedMarks.insert(key)
                }
            }
        }
        policies = newByName
        return changes
    }
}
