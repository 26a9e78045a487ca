import Foundation
import GRDB

/// What a job does.
public enum JobKind: String, Codable, Sendable, CaseIterable {
    case backup, verify, prune, replication
}

/// Where a job is in its life. `queued` and `running` are the only unfinished states: a row left in
/// one of them by a process that died is found by `JobHistory.recoverInterrupted()`.
public enum JobStatus: String, Codable, Sendable, CaseIterable {
    case queued, running, ok
    case okWithWarnings = "ok-with-warnings"
    /// Failed for a reason that may pass (a target offline, a lease held, a guest agent busy): the
    /// scheduler tries again after the policy's retry delay.
    case failedRetryable = "failed-retryable"
    case failed, canceled

    /// Whether the job has ended (every state but `queued` and `running`).
    public var isFinished: Bool { self != .queued && self != .running }
    /// Whether the job made (or checked) what it was asked to.
    public var isSuccess: Bool { self == .ok || self == .okWithWarnings }
}

/// Why a job ran.
public enum JobTrigger: String, Codable, Sendable {
    /// Someone asked for it (`bulwark backup ...`).
    case manual
    /// Its schedule fired and it started on time.
    case schedule
    /// Its schedule fired while the daemon was not running (or the clock jumped): run once on start.
    case catchUp = "catch-up"
    /// An earlier attempt failed with a retryable error.
    case retry
    /// A backup of its policy ended well (a replication follows each backup).
    case afterBackup = "after-backup"
}

/// One row of the job history: everything `bulwark jobs show --json` prints, so the command line needs
/// nothing but this type (it is `Codable`; dates encode as the encoder's strategy decides).
public struct JobRecord: Codable, Sendable, Equatable, Identifiable {
    /// The row id, nil until inserted.
    public var id: Int64?
    /// The policy's name.
    public var policy: String
    public var kind: JobKind
    public var status: JobStatus
    public var trigger: JobTrigger
    /// 1 for the first try, 2 for the first retry, ...
    public var attempt: Int
    public var queued: Date
    public var started: Date?
    public var ended: Date?
    /// The target the job wrote to or read from (a path or an `smb://` URL, never with a password).
    public var target: String?
    /// The recovery point (version id) made or checked.
    public var point: String?
    /// "full" or "incremental" for a backup.
    public var pointKind: String?
    public var bytesRead: Int64
    public var bytesWritten: Int64
    /// Bytes found changed since the previous point (what an incremental copies).
    public var bytesChanged: Int64
    /// Why it failed, as a sentence naming the thing, the cause and the fix.
    public var error: String?
    /// Stored as JSON text.
    public var warnings: [String]
    /// JSON text with kind-specific extras (e.g. why a full was made).
    public var detail: String?
    /// The process that runs (or ran) the job, with `host` and `bootID`, so a later process can tell a
    /// row left behind by a killed one from a live one.
    public var pid: Int32?
    public var host: String?
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`) when the row was written: after a
    /// reboot a PID means another process, so a row of an earlier boot is never live.
    public var bootID: String?

    public init(
        id: Int64? = nil, policy: String, kind: JobKind, status: JobStatus = .queued, trigger: JobTrigger,
        attempt: Int = 1, queued: Date = Date(), started: Date? = nil, ended: Date? = nil,
        target: String? = nil, point: String? = nil, pointKind: String? = nil,
        bytesRead: Int64 = 0, bytesWritten: Int64 = 0, bytesChanged: Int64 = 0,
        error: String? = nil, warnings: [String] = [], detail: String? = nil,
        pid: Int32? = nil, host: String? = nil, bootID: String? = nil
    ) {
        self.id = id
        self.policy = policy
        self.kind = kind
        self.status = status
        self.trigger = trigger
        self.attempt = attempt
        self.queued = queued
        self.started = started
        self.ended = ended
        self.target = target
        self.point = point
        self.pointKind = pointKind
        self.bytesRead = bytesRead
        self.bytesWritten = bytesWritten
        self.bytesChanged = bytesChanged
        self.error = error
        self.warnings = warnings
        self.detail = detail
        self.pid = pid
        self.host = host
        self.bootID = bootID
    }

    /// How long it ran (nil until it has started and ended).
    public var duration: TimeInterval? {
        guard let started, let ended else { return nil }
        return ended.timeIntervalSince(started)
    }
}

extension JobRecord: FetchableRecord, MutablePersistableRecord {
    public static let databaseTableName = "job"

    /// Dates are stored as seconds since 1970 (REAL), not GRDB's default text with milliseconds: any
    /// SQLite tool reads them (`datetime(queued, 'unixepoch')`) and they keep sub-microsecond precision
    /// (a `Date` is a Double since 2001, so the shift to 1970 may change its last bit: compare records
    /// as `insert` returns them, read back).
    public static func databaseDateEncodingStrategy(for column: String) -> DatabaseDateEncodingStrategy {
        .timeIntervalSince1970
    }

    public static func databaseDateDecodingStrategy(for column: String) -> DatabaseDateDecodingStrategy {
        .timeIntervalSince1970
    }

    public mutating func didInsert(_ inserted: InsertionSuccess) {
        id = inserted.rowID
    }
}
