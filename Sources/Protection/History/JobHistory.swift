#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Foundation
import GRDB
import Storage
import Synchronization

/// A failure of the job history database, naming the file, the cause and the fix.
public struct HistoryError: Error, CustomStringConvertible, Sendable {
    /// The database (or state folder) concerned.
    public var path: String
    /// What went wrong.
    public var reason: String
    /// What to do about it.
    public var fix: String

    public init(path: String, reason: String, fix: String) {
        self.path = path
        self.reason = reason
        self.fix = fix
    }

    public var description: String { "job history \(path): \(reason); \(fix)" }
}

/// The job history: one SQLite database, `STATE/history.sqlite`, read and written through GRDB.
///
/// Durability: the journal is a write-ahead log and `synchronous = FULL`, so a committed row survives
/// `kill -9` of the writer and a power cut (each commit is fsynced), and a half-written transaction is
/// rolled back by the next open. Several processes may use the file at once (the daemon writes, `bulwark
/// jobs list` reads); a writer waits up to 10 s for another's transaction.
///
/// Calls block (SQLite does I/O): from `async` code run them on `JobHistory.pool`, a pool of their
/// own, so the daemon's bookkeeping never waits behind a long disk copy (`BlockingPool.disk`) or a
/// freeze hung until its deadline (`BlockingPool.control`).
public final class JobHistory: Sendable {
    /// Where history calls (and the daemon's policy loading) run from `async` code.
    public static let pool = BlockingPool(name: "bulwark.history", limit: 2)

    /// The database file.
    public let path: String
    private let pool: DatabasePool
    /// Rows this instance inserted (so `recoverInterrupted` can tell them from rows left by an earlier
    /// process that had the same PID, e.g. a container's PID 1 restarted).
    private let inserted = Mutex(Set<Int64>())

    /// The fix printed when the file cannot be used as a database.
    private static func corruptFix(_ path: String) -> String {
        "move it aside (mv \(path) \(path).broken, with its -wal and -shm files) and start again: a new, empty history is made; the recovery points on the targets are not affected"
    }

    /// Opens (creating when missing) `stateDirectory/history.sqlite`, mode 0600, and brings its schema
    /// up to date.
    public init(stateDirectory: String) throws {
        let path = (stateDirectory as NSString).appendingPathComponent("history.sqlite")
        self.path = path
        try Self.prepare(stateDirectory: stateDirectory, file: path)

        var config = Configuration()
        config.busyMode = .timeout(10)
        config.label = "bulwark.history"
        let pool: DatabasePool
        do {
            // A DatabasePool puts the database in WAL mode.
            pool = try DatabasePool(path: path, configuration: config)
            // FULL: fsync the WAL at every commit, so a committed job row survives a power cut too.
            // Set here, on the pool's one writer connection: GRDB sets NORMAL on it after
            // `prepareDatabase` runs, so a setting made there does not last.
            try pool.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA synchronous = FULL") }
            try pool.write { db in
                let check = try String.fetchOne(db, sql: "PRAGMA quick_check") ?? "no answer"
                if check != "ok" { throw HistoryError(path: path, reason: "the database is damaged (quick_check: \(check))", fix: Self.corruptFix(path)) }
            }
            try Self.migrator.migrate(pool)
        } catch let error as HistoryError {
            throw error
        } catch let error as DatabaseError {
            throw Self.explain(error, path: path, opening: true)
        }
        if try pool.read({ db in try Self.migrator.hasBeenSuperseded(db) }) {
            throw HistoryError(path: path, reason: "the database was written by a newer Bulwark (its schema has migrations this version does not know)",
                               fix: "run the newer bulwark, or move the file aside to start a new history")
        }
        self.pool = pool
    }

    /// Makes the folder (0700) when missing and the file (0600) before SQLite does, so SQLite never
    /// creates it with the umask's looser mode (its -wal and -shm files copy the file's mode).
    private static func prepare(stateDirectory: String, file: String) throws {
        var isDirectory: ObjCBool = false
        if !FileManager.default.fileExists(atPath: stateDirectory, isDirectory: &isDirectory) {
            do {
                try FileManager.default.createDirectory(atPath: stateDirectory, withIntermediateDirectories: true,
                                                        attributes: [.posixPermissions: 0o700])
            } catch {
                throw HistoryError(path: stateDirectory, reason: "the state folder cannot be created (\(error.localizedDescription))",
                                   fix: "create it and make it writable by the user that runs bulwark, or pass another --state-dir")
            }
        } else if !isDirectory.boolValue {
            throw HistoryError(path: stateDirectory, reason: "the state folder is not a folder",
                               fix: "remove or rename the file, or pass another --state-dir")
        }
        let fd = open(file, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            let e = errno
            throw HistoryError(path: file, reason: "cannot be opened for writing: \(String(cString: strerror(e))) (errno \(e))",
                               fix: "make the state folder and the file writable by the user that runs bulwark (it needs 0700 on the folder, 0600 on the file), or pass another --state-dir")
        }
        // An older file readable by others (copied in, or made under another umask) is made private:
        // job errors name hosts, paths and shares.
        var st = stat()
        if fstat(fd, &st) == 0, st.st_mode & 0o077 != 0 { _ = fchmod(fd, 0o600) }
        close(fd)
    }

    /// A sentence for a SQLite failure.
    private static func explain(_ error: DatabaseError, path: String, opening: Bool = false, operation: String = "open") -> HistoryError {
        switch error.resultCode {
        case .SQLITE_NOTADB, .SQLITE_CORRUPT:
            return HistoryError(path: path, reason: "the file is not a valid SQLite database (\(error.message ?? "\(error.resultCode)"))", fix: corruptFix(path))
        case .SQLITE_READONLY, .SQLITE_CANTOPEN, .SQLITE_PERM:
            return HistoryError(path: path, reason: "\(operation): cannot write the database (\(error.message ?? "\(error.resultCode)"))",
                                fix: "make the state folder, the file and its -wal and -shm files writable by the user that runs bulwark")
        case .SQLITE_BUSY, .SQLITE_LOCKED:
            return HistoryError(path: path, reason: "\(operation): another process held the database for more than 10 s",
                                fix: "find the process that holds it (fuser \(path)) and try again")
        case .SQLITE_FULL, .SQLITE_IOERR:
            return HistoryError(path: path, reason: "\(operation): \(error.message ?? "I/O error") (\(error.resultCode))",
                                fix: "check that the file system holding the state folder has space and no errors")
        default:
            return HistoryError(path: path, reason: "\(operation): \(error.message ?? "\(error.resultCode)") (\(error.resultCode))",
                                fix: opening ? corruptFix(path) : "report this with the job history file attached")
        }
    }

    /// The schema, one migration per change; never edit a shipped migration, add a new one.
    private static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.create(table: "job") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("policy", .text).notNull()
                t.column("kind", .text).notNull()
                t.column("status", .text).notNull()
                t.column("trigger", .text).notNull()
                t.column("attempt", .integer).notNull().defaults(to: 1)
                t.column("queued", .double).notNull()
                t.column("started", .double)
                t.column("ended", .double)
                t.column("target", .text)
                t.column("point", .text)
                t.column("pointKind", .text)
                t.column("bytesRead", .integer).notNull().defaults(to: 0)
                t.column("bytesWritten", .integer).notNull().defaults(to: 0)
                t.column("bytesChanged", .integer).notNull().defaults(to: 0)
                t.column("error", .text)
                t.column("warnings", .text).notNull().defaults(to: "[]")
                t.column("detail", .text)
                t.column("pid", .integer)
                t.column("host", .text)
                t.column("bootID", .text)
            }
            try db.create(index: "job_policy_kind_started", on: "job", columns: ["policy", "kind", "started"])
            try db.create(index: "job_status", on: "job", columns: ["status"])
            try db.create(table: "scheduler_mark") { t in
                t.column("policy", .text).notNull()
                t.column("kind", .text).notNull()
                // Seconds since 1970: fire times up to here have been handled.
                t.column("handled", .double).notNull()
                t.primaryKey(["policy", "kind"])
            }
        }
        return migrator
    }

    private func write<T>(_ operation: String, _ body: (Database) throws -> T) throws -> T {
        do { return try pool.write(body) } catch let error as DatabaseError { throw Self.explain(error, path: path, operation: operation) }
    }

    private func read<T>(_ operation: String, _ body: (Database) throws -> T) throws -> T {
        do { return try pool.read(body) } catch let error as DatabaseError { throw Self.explain(error, path: path, operation: operation) }
    }

    /// The connection settings durability rests on (`journal_mode`, `synchronous`: 2 is FULL), for tests.
    func durabilitySettings() throws -> (journalMode: String, synchronous: Int) {
        try pool.write { db in
            (try String.fetchOne(db, sql: "PRAGMA journal_mode") ?? "", try Int.fetchOne(db, sql: "PRAGMA synchronous") ?? -1)
        }
    }

    // MARK: Jobs

    /// Inserts `record` and returns it as stored, with its id. A record without `pid`, `host` or `bootID` gets
    /// this process's.
    @discardableResult
    public func insert(_ record: JobRecord) throws -> JobRecord {
        var record = record
        record.id = nil
        if record.pid == nil { record.pid = getpid() }
        if record.host == nil { record.host = ProcessState.hostName }
        if record.bootID == nil { record.bootID = ProcessState.bootID }
        let done = try write("insert a job") { db -> JobRecord in
            var r = record
            try r.insert(db)
            // Read back as stored, so the caller's copy compares equal to what `record(id:)` gives.
            return try JobRecord.fetchOne(db, key: r.id) ?? r
        }
        if let id = done.id { inserted.withLock { _ = $0.insert(id) } }
        return done
    }

    /// Replaces the row with `record`'s id.
    public func update(_ record: JobRecord) throws {
        guard record.id != nil else {
            throw HistoryError(path: path, reason: "update of a job record that was never inserted (it has no id)", fix: "insert it first (this is a bug in the caller)")
        }
        try write("update job \(record.id!)") { db in try record.update(db) }
    }

    /// Jobs, newest first (by queue time), optionally of one policy and kind, at most `limit`.
    public func list(policy: String? = nil, kind: JobKind? = nil, limit: Int? = nil) throws -> [JobRecord] {
        try read("list jobs") { db in
            var request = JobRecord.all()
            if let policy { request = request.filter(Column("policy") == policy) }
            if let kind { request = request.filter(Column("kind") == kind.rawValue) }
            request = request.order(Column("queued").desc, Column("id").desc)
            if let limit { request = request.limit(limit) }
            return try request.fetchAll(db)
        }
    }

    /// The job with `id`, or nil.
    public func record(id: Int64) throws -> JobRecord? {
        try read("read job \(id)") { db in try JobRecord.fetchOne(db, key: id) }
    }

    /// The job of `policy` and `kind` that started last (whatever its status).
    public func lastRun(policy: String, kind: JobKind) throws -> JobRecord? {
        try read("read the last \(kind.rawValue) of \(policy)") { db in
            try JobRecord.filter(Column("policy") == policy && Column("kind") == kind.rawValue && Column("started") != nil)
                .order(Column("started").desc, Column("id").desc).fetchOne(db)
        }
    }

    /// The job of `policy` and `kind` that was queued first (whatever its status).
    public func firstRun(policy: String, kind: JobKind) throws -> JobRecord? {
        try read("read the first \(kind.rawValue) of \(policy)") { db in
            try JobRecord.filter(Column("policy") == policy && Column("kind") == kind.rawValue)
                .order(Column("queued").asc, Column("id").asc).fetchOne(db)
        }
    }

    /// The job of `policy` and `kind` that started last among those that ended `ok` or
    /// `ok-with-warnings`.
    public func lastSuccess(policy: String, kind: JobKind) throws -> JobRecord? {
        try read("read the last successful \(kind.rawValue) of \(policy)") { db in
            try JobRecord.filter(Column("policy") == policy && Column("kind") == kind.rawValue
                                 && [JobStatus.ok.rawValue, JobStatus.okWithWarnings.rawValue].contains(Column("status")))
                .order(Column("started").desc, Column("id").desc).fetchOne(db)
        }
    }

    /// Marks as `failed` every `queued` or `running` row of this host whose process is gone (or is of
    /// an earlier boot, or has this process's PID without having been inserted by this instance), and
    /// returns the rows as updated. Rows of other hosts are left alone: their processes cannot be seen.
    /// The daemon calls it on start, before it starts jobs.
    public func recoverInterrupted(now: Date = Date()) throws -> [JobRecord] {
        let host = ProcessState.hostName, boot = ProcessState.bootID, me = getpid()
        let mine = inserted.withLock { $0 }
        return try write("recover interrupted jobs") { db -> [JobRecord] in
            let open = try JobRecord.filter([JobStatus.queued.rawValue, JobStatus.running.rawValue].contains(Column("status"))).fetchAll(db)
            var fixed: [JobRecord] = []
            for var r in open {
                if let h = r.host, h != host { continue }
                let pid = r.pid ?? 0
                let live: Bool
                if let b = r.bootID, b != boot {
                    live = false
                } else if pid == me {
                    live = r.id.map(mine.contains) ?? false
                } else {
                    live = ProcessState.isRunning(pid)
                }
                if live { continue }
                r.status = .failed
                r.ended = now
                r.error = r.pid.map { "interrupted: the process running it (PID \($0)) ended without finishing (killed or crashed)" }
                    ?? "interrupted: the process running it ended without finishing (killed or crashed)"
                try r.update(db)
                fixed.append(r)
            }
            return fixed
        }
    }

    // MARK: Scheduler state

    /// The time through which the scheduler has handled fire times of `policy`'s `kind` schedule.
    public func schedulerMark(policy: String, kind: JobKind) throws -> Date? {
        try read("read the scheduler mark of \(policy) \(kind.rawValue)") { db in
            try Double.fetchOne(db, sql: "SELECT handled FROM scheduler_mark WHERE policy = ? AND kind = ?", arguments: [policy, kind.rawValue])
                .map(Date.init(timeIntervalSince1970:))
        }
    }

    public func setSchedulerMark(policy: String, kind: JobKind, to date: Date) throws {
        try write("write the scheduler mark of \(policy) \(kind.rawValue)") { db in
            try db.execute(sql: "INSERT INTO scheduler_mark (policy, kind, handled) VALUES (?, ?, ?) ON CONFLICT(policy, kind) DO UPDATE SET handled = excluded.handled",
                           arguments: [policy, kind.rawValue, date.timeIntervalSince1970])
        }
    }

    /// Every mark, for starting a scheduler in one read.
    public func schedulerMarks() throws -> [ScheduleKey: Date] {
        try read("read the scheduler marks") { db in
            var marks: [ScheduleKey: Date] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT policy, kind, handled FROM scheduler_mark") {
                guard let kind = JobKind(rawValue: row["kind"]) else { continue }
                marks[ScheduleKey(policy: row["policy"], kind: kind)] = Date(timeIntervalSince1970: row["handled"])
            }
            return marks
        }
    }

}
