import Foundation
@testable import Protection
import Storage
import TestSupport
import Testing

/// The SQLite header's journal mode bytes (offsets 18 and 19) are 2 in WAL mode.
func isWAL(_ path: String) throws -> Bool {
    let header = try Data(contentsOf: URL(fileURLWithPath: path)).prefix(20)
    return header.count == 20 && header[18] == 2 && header[19] == 2
}

@Suite struct JobHistoryTests {
    @Test func recordsRoundTripAndQueries() throws {
        let dir = try TempDir("history")
        let history = try JobHistory(stateDirectory: dir.file("state"))
        let t = Date(timeIntervalSince1970: 1_800_000_000.123456)
        var full = JobRecord(policy: "web", kind: .backup, status: .running, trigger: .catchUp, attempt: 2, queued: t,
                             started: t.addingTimeInterval(1.5), target: "smb://nas/backups", point: "2027-01-15T080000Z",
                             pointKind: "full", bytesRead: 1 << 40, bytesWritten: 123, bytesChanged: 456,
                             error: nil, warnings: ["guest agent absent: crash-consistent", "ünïcode \"quoted\""],
                             detail: #"{"full":"true"}"#, pid: 4242, host: "h1", bootID: "b1")
        full = try history.insert(full)
        #expect(full.id != nil)
        #expect(try history.record(id: full.id!) == full)
        full.status = .okWithWarnings
        full.ended = t.addingTimeInterval(60.25)
        try history.update(full)
        #expect(try history.record(id: full.id!) == full)
        #expect(try history.record(id: full.id!)?.duration == 58.75)

        // A record without pid, host and boot id gets this process's.
        let verify = try history.insert(JobRecord(policy: "web", kind: .verify, status: .failed, trigger: .schedule,
                                                   queued: t.addingTimeInterval(100), started: t.addingTimeInterval(100), error: "bad block"))
        #expect(verify.pid == getpid())
        #expect(verify.host == ProcessState.hostName)
        #expect(verify.bootID == ProcessState.bootID)
        let db = try history.insert(JobRecord(policy: "db", kind: .backup, status: .failed, trigger: .manual,
                                              queued: t.addingTimeInterval(200), started: t.addingTimeInterval(200)))
        let queued = try history.insert(JobRecord(policy: "web", kind: .backup, status: .queued, trigger: .retry, queued: t.addingTimeInterval(300)))

        #expect(try history.list().map(\.id) == [queued.id, db.id, verify.id, full.id])
        #expect(try history.list(policy: "web").map(\.id) == [queued.id, verify.id, full.id])
        #expect(try history.list(policy: "web", kind: .backup, limit: 1).map(\.id) == [queued.id])
        #expect(try history.lastRun(policy: "web", kind: .backup)?.id == full.id)
        #expect(try history.lastSuccess(policy: "web", kind: .backup)?.id == full.id)
        #expect(try history.lastSuccess(policy: "web", kind: .verify) == nil)
        #expect(try history.lastRun(policy: "web", kind: .verify)?.error == "bad block")
        #expect(try history.record(id: 9_999) == nil)

        #expect(try history.schedulerMark(policy: "web", kind: .backup) == nil)
        try history.setSchedulerMark(policy: "web", kind: .backup, to: t)
        try history.setSchedulerMark(policy: "web", kind: .backup, to: t.addingTimeInterval(0.5))
        try history.setSchedulerMark(policy: "web", kind: .verify, to: t)
        #expect(try history.schedulerMark(policy: "web", kind: .backup) == t.addingTimeInterval(0.5))
        #expect(try history.schedulerMarks() == [ScheduleKey(policy: "web", kind: .backup): t.addingTimeInterval(0.5),
                                                 ScheduleKey(policy: "web", kind: .verify): t])

        // Private, write-ahead logged, and readable by a second opener (the CLI while the daemon runs).
        let attributes = try FileManager.default.attributesOfItem(atPath: history.path)
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
        #expect(try isWAL(history.path))
        let settings = try history.durabilitySettings()
        #expect(settings.journalMode == "wal")
        #expect(settings.synchronous == 2)
        chmod(history.path, 0o644)
        let reader = try JobHistory(stateDirectory: dir.file("state"))
        #expect((try FileManager.default.attributesOfItem(atPath: history.path)[.posixPermissions] as? Int) == 0o600)
        #expect(try reader.list().count == 4)
        // JSON for `jobs show --json` carries every field.
        let json = String(decoding: try JSONEncoder().encode(full), as: UTF8.self)
        for key in ["pointKind", "bytesChanged", "warnings", "detail", "bootID", "ok-with-warnings", "catch-up"] { #expect(json.contains(key)) }
    }

    @Test func unusableStateFolderNamesThePathAndTheFix() throws {
        let dir = try TempDir("history")
        try Data("x".utf8).write(to: URL(fileURLWithPath: dir.file("state")))
        let error = #expect(throws: HistoryError.self) { try JobHistory(stateDirectory: dir.file("state")) }
        #expect(error?.description.contains(dir.file("state")) == true)
        #expect(error?.description.contains("not a folder") == true)
        #expect(error?.description.contains("--state-dir") == true)
    }

    @Test func corruptDatabaseNamesThePathAndTheFix() throws {
        let dir = try TempDir("history")
        var garbage = SeededRandom(seed: 7)
        try Data(garbage.bytes(8192)).write(to: URL(fileURLWithPath: dir.file("history.sqlite")))
        let error = #expect(throws: HistoryError.self) { try JobHistory(stateDirectory: dir.path) }
        let text = error?.description ?? ""
        #expect(text.contains(dir.file("history.sqlite")))
        #expect(text.contains("not a valid SQLite database"))
        #expect(text.contains("mv \(dir.file("history.sqlite"))"))
    }

    @Test func recoverInterruptedFailsRowsOfDeadProcessesOnly() throws {
        let dir = try TempDir("history")
        let history = try JobHistory(stateDirectory: dir.path)
        // A process that has ended (and was reaped): its PID is dead.
        let ended = Process()
        ended.executableURL = URL(fileURLWithPath: "/bin/true")
        try ended.run()
        ended.waitUntilExit()
        let deadPID = ended.processIdentifier
        // A live one.
        let sleeper = Process()
        sleeper.executableURL = URL(fileURLWithPath: "/bin/sleep")
        sleeper.arguments = ["60"]
        try sleeper.run()
        // SIGKILL, not terminate(): Foundation's Process passes on the spawning thread's signal mask,
        // and a test runs on a thread that blocks SIGTERM.
        defer { kill(sleeper.processIdentifier, SIGKILL); sleeper.waitUntilExit() }

        let host = ProcessState.hostName, boot = ProcessState.bootID
        func row(_ status: JobStatus, pid: Int32, host: String = host, boot: String? = boot) throws -> JobRecord {
            try history.insert(JobRecord(policy: "web", kind: .backup, status: status, trigger: .schedule, queued: Date(), started: Date(),
                                         pid: pid, host: host, bootID: boot))
        }
        let dead = try row(.running, pid: deadPID)
        let deadQueued = try row(.queued, pid: deadPID)
        let live = try row(.running, pid: sleeper.processIdentifier)
        let otherHost = try row(.running, pid: deadPID, host: "elsewhere")
        let earlierBoot = try row(.running, pid: sleeper.processIdentifier, boot: "an-earlier-boot")
        let finished = try row(.ok, pid: deadPID)
        let mine = try row(.running, pid: getpid())

        let now = Date(timeIntervalSince1970: 1_800_000_000)
        let fixed = try history.recoverInterrupted(now: now)
        #expect(Set(fixed.map(\.id)) == [dead.id, deadQueued.id, earlierBoot.id])
        let after = try history.record(id: dead.id!)!
        #expect(after.status == .failed)
        #expect(after.ended == now)
        #expect(after.error == "interrupted: the process running it (PID \(deadPID)) ended without finishing (killed or crashed)")
        for r in [live, otherHost, finished, mine] { #expect(try history.record(id: r.id!) == r) }
        // A second opener in this process does not know `mine`: a row with our PID that it did not
        // insert was left by an earlier process with the same PID.
        let other = try JobHistory(stateDirectory: dir.path)
        #expect(try other.recoverInterrupted().map(\.id) == [mine.id])
    }

    /// The real thing: a second process (this test bundle, re-run with only `historyWriterChild`)
    /// writes job rows as fast as it can and is killed with SIGKILL mid-write. Every row it reported
    /// committed must be there, the database must pass its check on open, and its rows left `running`
    /// are recovered as interrupted.
    @Test func survivesKillOfTheWriter() throws {
        let dir = try TempDir("history")
        _ = try JobHistory(stateDirectory: dir.path)
        let child = Process()
        child.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
        child.arguments = ["--testing-library", "swift-testing", "--filter", "historyWriterChild"]
        child.environment = ProcessInfo.processInfo.environment.merging(["BULWARK_HISTORY_WRITER": dir.path]) { $1 }
        let out = Pipe()
        child.standardOutput = out
        child.standardError = FileHandle.nullDevice
        try child.run()
        var committed: [Int64] = []
        var text = ""
        let deadline = Date().addingTimeInterval(60)
        while committed.count < 200, Date() < deadline {
            let data = out.fileHandleForReading.availableData
            if data.isEmpty { break }
            text += String(decoding: data, as: UTF8.self)
            while let nl = text.firstIndex(of: "\n") {
                let line = text[..<nl]
                if line.hasPrefix("COMMITTED "), let id = Int64(line.dropFirst(10)) { committed.append(id) }
                text = String(text[text.index(after: nl)...])
            }
        }
        kill(child.processIdentifier, SIGKILL)
        child.waitUntilExit()
        #expect(child.terminationReason == .uncaughtSignal)
        #expect(committed.count >= 200, "the writer child reported \(committed.count) commits")

        let history = try JobHistory(stateDirectory: dir.path)
        let rows = try history.list()
        let ids = Set(rows.compactMap(\.id))
        #expect(committed.allSatisfy(ids.contains))
        #expect(rows.allSatisfy { $0.pid == child.processIdentifier })
        let running = rows.filter { $0.status == .running }.count
        let recovered = try history.recoverInterrupted()
        #expect(recovered.count == running)
        #expect(running >= 1)
        #expect(try history.list().allSatisfy { $0.status == .ok || $0.status == .failed })
        #expect(try history.schedulerMark(policy: "web", kind: .backup) != nil)
    }

    /// The writer of `survivesKillOfTheWriter`; does nothing unless run by it.
    @Test func historyWriterChild() throws {
        guard let dir = ProcessInfo.processInfo.environment["BULWARK_HISTORY_WRITER"] else { return }
        let history = try JobHistory(stateDirectory: dir)
        let start = Date()
        while Date().timeIntervalSince(start) < 60 {
            // Each row is inserted running, reported, then finished: a kill leaves at most a few running.
            var r = try history.insert(JobRecord(policy: "web", kind: .backup, status: .running, trigger: .schedule, started: Date()))
            FileHandle.standardOutput.write(Data("COMMITTED \(r.id!)\n".utf8))
            r.status = .ok
            r.ended = Date()
            r.bytesWritten = 1 << 20
            try history.update(r)
            try history.setSchedulerMark(policy: "web", kind: .backup, to: Date())
            _ = try history.insert(JobRecord(policy: "web", kind: .backup, status: .running, trigger: .schedule, started: Date()))
        }
    }
}
