import Foundation
import Protection
import Storage
import SystemPackage
import Targets
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// The job commands as an administrator runs them: typed JSON, clear errors with the right exit
/// status, a source that vanishes mid-job, and the daemon running a schedule under a real signal.
@Suite struct BackupCLITests {
    static func bulwark(_ args: [String], state: String, env: [String: String] = [:]) throws -> RunResult {
        try run(TestEnv.bulwark, args, environment: env.merging(["BULWARK_STATE_DIR": state]) { $1 })
    }

    @Test func jobsAndVersionsPrintTypedJSON() async throws {
        try await offPool { try Self.jobsAndVersionsPrintTypedJSONBody() }
    }

    static func jobsAndVersionsPrintTypedJSONBody() throws {
        let bench = try BackupBench(size: 16 << 20, seed: 41)
        try bench.write(bench.rng.bytes(5 << 20), at: 1 << 20)
        let first = try Self.bulwark(["backup", "start", "--policy", bench.policyFile, "--json"], state: bench.state)
        #expect(first.status == 0, "\(first.err)")
        let job = try #require(try JSONSerialization.jsonObject(with: first.stdout) as? [String: Any])
        #expect(job["status"] as? String == "ok" && job["kind"] as? String == "backup" && job["pointKind"] as? String == "full")
        #expect(job["bytesChanged"] as? Int == 8 << 20, "two 4 MiB chunks hold the data")
        #expect(job["id"] as? Int == 1)
        try bench.scribble(writes: 1)
        #expect(try Self.bulwark(["backup", "start", "--policy", bench.policyFile], state: bench.state).status == 0)

        let versions = try Self.bulwark(["versions", "--target", bench.targetPath, "--json"], state: bench.state)
        let rows = try #require(try JSONSerialization.jsonObject(with: versions.stdout) as? [[String: Any]])
        #expect(rows.count == 2)
        #expect(rows.map { $0["kind"] as? String } == ["full", "incremental"])
        #expect(rows[1]["parent"] as? String == rows[0]["version"] as? String)
        #expect(rows[0]["virtualBytes"] as? Int == 16 << 20 && rows[0]["protected"] as? Bool == false)
        let jobs = try Self.bulwark(["jobs", "list", "--json"], state: bench.state)
        let list = try #require(try JSONSerialization.jsonObject(with: jobs.stdout) as? [[String: Any]])
        #expect(list.map { $0["id"] as? Int } == [2, 1], "newest first")
        let show = try Self.bulwark(["jobs", "show", "2"], state: bench.state)
        #expect(show.status == 0 && show.out.contains("incremental") && show.out.contains("bytes changed"))
        #expect(try Self.bulwark(["jobs", "show", "99"], state: bench.state).status == 64)
        let dry = try Self.bulwark(["prune", "--policy", bench.policyFile, "--dry-run", "--json"], state: bench.state)
        let plan = try #require(try JSONSerialization.jsonObject(with: dry.stdout) as? [String: Any])
        let decisions = try #require(plan["decisions"] as? [[String: Any]])
        #expect(decisions.count == 2 && decisions.allSatisfy { $0["keep"] as? Bool == true && $0["rule"] is String })
        // Restore: the newest version, byte for byte; a version that does not exist: exit 3.
        let out = bench.dir.file("restored.img")
        let restore = try Self.bulwark(["restore", "disk", "--target", bench.targetPath, "--version", rows[1]["version"] as! String, "--to", out], state: bench.state)
        #expect(restore.status == 0, "\(restore.err)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: out)) == Data(bench.model))
        let missing = try Self.bulwark(["restore", "disk", "--target", bench.targetPath, "--version", "2020-01-01T000000Z", "--to", out + "2"], state: bench.state)
        #expect(missing.status == 3 && missing.err.contains("no recovery point 2020-01-01T000000Z"), "\(missing.err)")
    }

    @Test func badPoliciesAreReportedWithLinesAndChangeNothing() throws {
        let dir = try TempDir("bad-policy")
        let file = dir.file("bad.yaml")
        try """
        name: web01
        machine: web01
        sources:
          - disk: \(dir.file("missing.img"))
        shedule: "mon..sat 23:05"
        target: \(dir.file("target"))
        keep: {last: -1}
        """.write(toFile: file, atomically: true, encoding: .utf8)
        let check = try run(TestEnv.bulwark, ["policy", "check", file])
        #expect(check.status == 1)
        #expect(check.out.contains("bad.yaml:5:1:") && check.out.contains("did you mean 'schedule'"), "\(check.out)")
        #expect(check.out.contains("bad.yaml:7:"), "the negative keep count is reported too: \(check.out)")
        let backup = try run(TestEnv.bulwark, ["backup", "start", "--policy", file], environment: ["BULWARK_STATE_DIR": dir.file("state")])
        #expect(backup.status == 64, "a policy error is a usage error: \(backup.err)")
        #expect(backup.err.contains("bad.yaml:5:1"))
        #expect(!FileManager.default.fileExists(atPath: dir.file("target")), "nothing was written")
    }

    @Test func aSourceThatVanishesMidJobFailsTheJobCleanly() async throws {
        try await offPool { try Self.aSourceThatVanishesMidJobFailsTheJobCleanlyBody() }
    }

    static func aSourceThatVanishesMidJobFailsTheJobCleanlyBody() throws {
        let bench = try BackupBench(size: 64 << 20, seed: 43)
        try bench.write(bench.rng.bytes(60 << 20), at: 0)
        #expect(try Self.bulwark(["backup", "start", "--policy", bench.policyFile], state: bench.state).status == 0)
        let before = try bench.points.listing()
        // The second job reads slowly; the source is truncated to nothing under it.
        let p = Process()
        p.executableURL = URL(fileURLWithPath: TestEnv.bulwark)
        p.arguments = ["backup", "start", "--policy", bench.policyFile]
        p.environment = ProcessInfo.processInfo.environment.merging(["BULWARK_STATE_DIR": bench.state, "BULWARK_TEST_SLOW_IO": "100000"]) { $1 }
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        usleep(400_000)
        try FileHandle(forWritingTo: URL(fileURLWithPath: bench.source)).truncate(atOffset: 0)
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        #expect(p.terminationStatus != 0)
        #expect(text.contains(bench.source), "the error names the source: \(text)")
        #expect(try bench.points.listing() == before, "no new point, the earlier one untouched")
        #expect(try bench.points.incompleteVersions().isEmpty, "the half-written point was removed")
        let history = try JobHistory(stateDirectory: bench.state)
        #expect(try history.list().first?.status == .failed)
        let verified = try VerifyOperation.run(target: bench.target, machine: "guest", options: VerifyOptions(record: false))
        #expect(verified.allSatisfy { $0.ok })
    }

    @Test func theDaemonRunsTheScheduleAndStopsCleanlyOnSIGTERM() async throws {
        try await offPool { try Self.theDaemonRunsTheScheduleAndStopsCleanlyOnSIGTERMBody() }
    }

    static func theDaemonRunsTheScheduleAndStopsCleanlyOnSIGTERMBody() throws {
        let bench = try BackupBench(size: 8 << 20, seed: 47, keep: "{last: 2}", extra: "schedule: \"*:*:0/2\"")
        try bench.write(bench.rng.bytes(1 << 20), at: 0)
        let policies = bench.dir.file("policies")
        try FileManager.default.createDirectory(atPath: policies, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: bench.policyFile, toPath: policies + "/bench.yaml")
        try "name: [broken\n".write(toFile: policies + "/broken.yaml", atomically: true, encoding: .utf8)
        let receiver = try DatagramReceiver(bench.dir.file("notify.sock"))
        let daemon = Process()
        daemon.executableURL = URL(fileURLWithPath: TestEnv.bulwark)
        daemon.arguments = ["daemon", "--policies", policies, "--state-dir", bench.state]
        daemon.environment = ProcessInfo.processInfo.environment.merging(["NOTIFY_SOCKET": receiver.address]) { $1 }
        let log = bench.dir.file("daemon.log")
        FileManager.default.createFile(atPath: log, contents: nil)
        daemon.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        daemon.standardOutput = FileHandle.nullDevice
        try daemon.run()
        defer { if daemon.isRunning { kill(daemon.processIdentifier, SIGKILL); daemon.waitUntilExit() } }
        var ready = false
        while let m = receiver.receive(timeout: 30) { if m.hasPrefix("READY=1") { ready = true; break } }
        #expect(ready, "the daemon tells systemd it is ready")
        // Scheduled backups happen (every 2 s) and are recorded.
        let deadline = Date().addingTimeInterval(40)
        var jobs: [JobRecord] = []
        while Date() < deadline {
            jobs = (try? JobHistory(stateDirectory: bench.state).list(policy: "bench"))?.filter { $0.status.isFinished } ?? []
            if jobs.count >= 3 { break }
            usleep(200_000)
        }
        #expect(jobs.count >= 3, "scheduled jobs ran: \(jobs.map(\.status))")
        #expect(jobs.allSatisfy { $0.kind == .backup && $0.trigger == .schedule && $0.status.isSuccess }, "\(jobs.map { "\($0.status) \($0.error ?? "")" })")
        #expect(try bench.points.listing().count == 2, "retention keeps the last 2")
        kill(daemon.processIdentifier, SIGTERM)
        daemon.waitUntilExit()
        #expect(daemon.terminationReason == .exit && daemon.terminationStatus == 0)
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(text.contains("broken.yaml"), "a broken policy is logged and skipped: \(text)")
        #expect(try JobHistory(stateDirectory: bench.state).list().allSatisfy { $0.status.isFinished })
    }
}
