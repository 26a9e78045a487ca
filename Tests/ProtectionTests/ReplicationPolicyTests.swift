import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Protection
import Storage
import SystemPackage
import Targets
import Testing
import TestSupport

/// Policies that reach a share: a `target:` on the Samba share (backup straight to it), a
/// `replicate:` section run by hand and by the daemon after each backup, the destination's own keep
/// rules, and the replication health warning in `jobs list`.
@Suite(.serialized) struct ReplicationPolicyTests {
    static func bulwark(_ args: [String], state: String) throws -> RunResult { try BackupCLITests.bulwark(args, state: state) }

    static func json(_ r: RunResult) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any], "not a JSON object: \(r.out) \(r.err)")
    }

    static func rows(_ r: RunResult) throws -> [[String: Any]] {
        try #require(try JSONSerialization.jsonObject(with: r.stdout) as? [[String: Any]], "not a JSON list: \(r.out) \(r.err)")
    }

    @Test func aPolicyWhoseTargetIsTheShareBacksUpStraightToIt() async throws {
        guard try SambaServer.available() else { return }
        try await offPool { try Self.targetOnTheShareBody() }
    }

    static func targetOnTheShareBody() throws {
        let server = try SambaServer()
        defer { server.stop() }
        let bench = try BackupBench(size: 16 << 20, seed: 61)
        try bench.write(bench.rng.bytes(6 << 20), at: 2 << 20)
        let url = server.url(path: "/straight")
        let policy = bench.policyText.replacingOccurrences(of: "target: \(bench.targetPath)", with: "target: \(url)\ncredentials: \(server.credentialsFile)")
        try policy.write(toFile: bench.policyFile, atomically: true, encoding: .utf8)
        #expect(try Self.bulwark(["policy", "check", bench.policyFile], state: bench.state).status == 0)
        let full = try Self.bulwark(["backup", "start", "--policy", bench.policyFile, "--json"], state: bench.state)
        #expect(full.status == 0, "\(full.err)")
        let fullModel = bench.model
        try bench.scribble(writes: 3)
        let incremental = try Self.bulwark(["backup", "start", "--policy", bench.policyFile, "--json"], state: bench.state)
        #expect(incremental.status == 0, "\(incremental.err)")
        #expect(try Self.json(incremental)["pointKind"] as? String == "incremental")
        #expect(try Self.json(incremental)["target"] as? String == url)
        // The points are on the server's disk, read through the share with the same credentials.
        #expect(try server.serverFiles().contains { $0.hasPrefix("straight/BulwarkBackup/guest/") && $0.hasSuffix("disk0.vhdx") })
        let versions = try Self.bulwark(["versions", "--target", url, "--credentials", server.credentialsFile, "--json"], state: bench.state)
        let rows = try Self.rows(versions)
        #expect(rows.map { $0["kind"] as? String } == ["full", "incremental"])
        for (row, model) in zip(rows, [fullModel, bench.model]) {
            let out = bench.dir.file("restored-\(row["version"] as! String).img")
            let restore = try Self.bulwark(["restore", "disk", "--target", url, "--credentials", server.credentialsFile,
                                            "--version", row["version"] as! String, "--to", out], state: bench.state)
            #expect(restore.status == 0, "\(restore.err)")
            #expect(try Data(contentsOf: URL(fileURLWithPath: out)) == Data(model))
        }
        let verify = try Self.bulwark(["verify", "--target", url, "--credentials", server.credentialsFile], state: bench.state)
        #expect(verify.status == 0, "\(verify.err)")

        // A wrong password in the policy's credentials file: a clear error, no password shown, nothing written.
        let wrong = bench.dir.file("wrong.cred")
        try "username=\(SambaServer.user)\npassword=not-the-password-42\n".write(toFile: wrong, atomically: true, encoding: .utf8)
        chmod(wrong, 0o600)
        try policy.replacingOccurrences(of: server.credentialsFile, with: wrong).write(toFile: bench.policyFile, atomically: true, encoding: .utf8)
        let before = try server.serverFiles()
        let refused = try Self.bulwark(["backup", "start", "--policy", bench.policyFile], state: bench.state)
        #expect(refused.status != 0)
        #expect(refused.err.contains("logon failed") && !refused.err.contains("not-the-password-42"), "\(refused.err)")
        #expect(try server.serverFiles() == before)
        let failed = try #require(try JobHistory(stateDirectory: bench.state).list(limit: 1).first)
        #expect(failed.status == .failed, "a wrong password is not retried: \(failed.status)")
    }

    @Test func aPolicyReplicatesToTheShareAndJobsListShowsIt() async throws {
        guard try SambaServer.available() else { return }
        try await offPool { try Self.replicateToTheShareBody() }
    }

    static func replicateToTheShareBody() throws {
        let server = try SambaServer()
        defer { server.stop() }
        let bench = try BackupBench(size: 24 << 20, seed: 67)
        try bench.write(bench.rng.bytes(16 << 20), at: 0)
        let url = server.url(path: "/dr")
        // A work-hours window covering the whole week at 16 MiB/s: the schedule is what limits.
        try (bench.policyText + """

            replicate:
              to: \(url)
              credentials: \(server.credentialsFile)
              throttle:
                work-hours: {from: "00:00", to: "24:00", rate: 16MiB/s}
                other-hours: unlimited
            """).write(toFile: bench.policyFile, atomically: true, encoding: .utf8)
        #expect(try Self.bulwark(["backup", "start", "--policy", bench.policyFile], state: bench.state).status == 0)
        let first = try Self.bulwark(["replicate", "--policy", bench.policyFile, "--json"], state: bench.state)
        #expect(first.status == 0, "\(first.err)")
        let job: [String: Any] = try Self.json(first)
        #expect(job["kind"] as? String == "replication" && job["status"] as? String == "ok")
        let sent = try #require(job["bytesSent"] as? Int)
        let rate = try #require(job["bytesPerSecond"] as? Double)
        #expect(sent >= 16 << 20, "the image went over the wire: \(sent)")
        #expect(rate > 0 && rate <= 16.0 * 1_048_576 * 1.15, "the policy's throttle holds: \(rate) B/s")
        #expect(job["lagSeconds"] as? Double == 0, "the destination has the newest point")
        // Nothing new: nothing sent. A new backup: only the new point.
        let again: [String: Any] = try Self.json(try Self.bulwark(["replicate", "--policy", bench.policyFile, "--json"], state: bench.state))
        #expect(again["bytesSent"] as? Int == 0)
        try bench.scribble(writes: 2)
        #expect(try Self.bulwark(["backup", "start", "--policy", bench.policyFile], state: bench.state).status == 0)
        let third: [String: Any] = try Self.json(try Self.bulwark(["replicate", "--policy", bench.policyFile, "--json"], state: bench.state))
        let detail = try #require(third["detail"] as? [String: String])
        #expect(detail["shipped"]?.split(separator: ",").count == 1)
        #expect((third["bytesSent"] as? Int ?? 0) < sent, "an incremental is smaller than the full")
        let listed = try Self.rows(try Self.bulwark(["versions", "--target", url, "--credentials", server.credentialsFile, "--json"], state: bench.state))
        let sourceVersions = try bench.points.listing().map(\.version)
        #expect(listed.map { $0["version"] as? String } == sourceVersions)
        // jobs list: replication rows with rate and lag in the table, typed in JSON.
        let table = try Self.bulwark(["jobs", "list"], state: bench.state)
        #expect(table.out.contains("replication") && table.out.contains("in step") && table.out.contains("/s"), "\(table.out)")
        let all = try Self.rows(try Self.bulwark(["jobs", "list", "--json"], state: bench.state))
        #expect(all.filter { $0["kind"] as? String == "replication" }.count == 3)
        #expect(all.filter { $0["kind"] as? String == "backup" }.allSatisfy { $0["bytesSent"] == nil })
        #expect(table.err.isEmpty, "no health warning: the last replication succeeded just now")

        // The share goes away: the replication fails as retryable (the daemon tries again), naming the share.
        server.stop()
        try bench.scribble(writes: 1)
        #expect(try Self.bulwark(["backup", "start", "--policy", bench.policyFile], state: bench.state).status == 0)
        let down = try Self.bulwark(["replicate", "--policy", bench.policyFile], state: bench.state)
        #expect(down.status != 0 && down.err.contains("127.0.0.1"), "\(down.err)")
        let record = try #require(try JobHistory(stateDirectory: bench.state).lastRun(policy: "bench", kind: .replication))
        #expect(record.status == .failedRetryable, "\(record.status): \(record.error ?? "")")
    }

    @Test func theDestinationKeepsItsOwnRulesAndDoesNotGetPrunedPointsBack() async throws {
        try await offPool { try Self.destinationKeepBody() }
    }

    static func destinationKeepBody() throws {
        let bench = try BackupBench(size: 12 << 20, seed: 71)
        let replica = bench.dir.file("replica")
        try (bench.policyText + "\nreplicate: {to: \(replica), keep: {last: 2}}\n").write(toFile: bench.policyFile, atomically: true, encoding: .utf8)
        var sentPoints: [String] = []
        for round in 0..<4 {
            try bench.write(bench.rng.bytes(1 << 20), at: round * (2 << 20))
            #expect(try Self.bulwark(["backup", "start", "--policy", bench.policyFile], state: bench.state).status == 0)
            let r = try Self.bulwark(["replicate", "--policy", bench.policyFile, "--json"], state: bench.state)
            #expect(r.status == 0, "\(r.err)")
            let detail = try #require(try Self.json(r)["detail"] as? [String: String])
            sentPoints += detail["shipped"]?.split(separator: ",").map(String.init) ?? []
        }
        let source = try bench.points.listing().map(\.version)
        #expect(source.count == 4, "the source keeps its own (last 100)")
        #expect(sentPoints == source, "each point was sent once, none sent back after the destination pruned it")
        let destination = RecoveryPoints(target: LocalDirectoryTarget(path: FilePath(replica)), machine: "guest")
        #expect(try destination.listing().map(\.version) == Array(source.suffix(2)))
        // A kept point damaged on the destination is caught by verify (and so is its child, read
        // through it) and sent again by the next replication, with the parents its source form needs;
        // then the destination's keep folds them away again.
        let damaged = try destination.listing()[0]
        let image = replica + "/BulwarkBackup/guest/\(damaged.version)/disk0.vhdx"
        let h = try FileHandle(forUpdating: URL(fileURLWithPath: image))
        try h.seek(toOffset: 3 << 20)
        try h.write(contentsOf: Data(repeating: 0x5A, count: 4096))
        try h.close()
        #expect(try Self.bulwark(["verify", "--target", replica], state: bench.state).status == 1)
        let repair = try Self.bulwark(["replicate", "--policy", bench.policyFile, "--json"], state: bench.state)
        #expect(repair.status == 0, "\(repair.err)")
        let resent = try #require(try Self.json(repair)["detail"] as? [String: String])["shipped"]?.split(separator: ",").map(String.init) ?? []
        #expect(resent.contains(damaged.version), "\(resent)")
        #expect(try Self.bulwark(["verify", "--target", replica], state: bench.state).status == 0)
        #expect(try destination.listing().map(\.version) == Array(source.suffix(2)), "the destination's keep applies again")
        // The newest point on the destination reads back as the source is now.
        let out = bench.dir.file("out.img")
        let restore = try Self.bulwark(["restore", "disk", "--target", replica, "--version", source.last!, "--to", out], state: bench.state)
        #expect(restore.status == 0, "\(restore.err)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: out)) == Data(bench.model))
    }

    @Test func foldsOnEitherSideKeepTheReplicaReadable() async throws {
        try await offPool { try Self.foldsOnEitherSideBody() }
    }

    /// Retention folds on the source (keep last 2) and on the destination (keep last 3, then daily 1)
    /// change which files hold which data; a point replicated afterwards must still link to its parent
    /// on the destination, and every point on both sides must read back as it was made.
    static func foldsOnEitherSideBody() throws {
        let bench = try BackupBench(size: 12 << 20, seed: 79, keep: "{last: 2}")
        let replica = bench.dir.file("replica")
        func policy(_ keep: String) throws {
            try (bench.policyText + "\nreplicate: {to: \(replica), keep: \(keep)}\n").write(toFile: bench.policyFile, atomically: true, encoding: .utf8)
        }
        try policy("{last: 3}")
        var models: [String: [UInt8]] = [:]
        let destination = RecoveryPoints(target: LocalDirectoryTarget(path: FilePath(replica)), machine: "guest")
        for round in 0..<7 {
            if round == 5 { try policy("{daily: 1}") }   // folds the destination's newest into... itself: only the newest stays
            try bench.write(bench.rng.bytes(512 << 10), at: (round % 5) * (2 << 20) + 4096)
            let backup = try Self.bulwark(["backup", "start", "--policy", bench.policyFile, "--json"], state: bench.state)
            #expect(backup.status == 0, "\(backup.err)")
            models[try Self.json(backup)["point"] as? String ?? "?"] = bench.model
            let r = try Self.bulwark(["replicate", "--policy", bench.policyFile], state: bench.state)
            #expect(r.status == 0, "round \(round): \(r.err)")
            for target in [bench.targetPath, replica] {
                let v = try Self.bulwark(["verify", "--target", target], state: bench.state)
                #expect(v.status == 0, "round \(round), \(target): \(v.out) \(v.err)")
            }
        }
        #expect(try bench.points.listing().count == 2)
        #expect(try destination.listing().count == 1)
        for (target, points) in [(bench.targetPath, try bench.points.listing()), (replica, try destination.listing())] {
            for point in points {
                let out = bench.dir.file("check-\(UUID().uuidString).img")
                let restore = try Self.bulwark(["restore", "disk", "--target", target, "--version", point.version, "--to", out], state: bench.state)
                #expect(restore.status == 0, "\(restore.err)")
                #expect(try Data(contentsOf: URL(fileURLWithPath: out)) == Data(models[point.version] ?? []), "\(target) \(point.version)")
                try? FileManager.default.removeItem(atPath: out)
            }
        }
    }

    @Test func aReplicationLateBeyondAlertAfterIsAWarning() throws {
        let dir = try TempDir("replication-health")
        let history = try JobHistory(stateDirectory: dir.file("state"))
        let now = Date()
        func add(_ kind: JobKind, _ status: JobStatus, hoursAgo: Double, error: String? = nil) throws {
            let at = now.addingTimeInterval(-hoursAgo * 3600)
            var r = try history.insert(JobRecord(policy: "web", kind: kind, status: .running, trigger: .schedule, queued: at, started: at))
            r.finish(with: JobOutcome(status: status, target: kind == .replication ? "smb://backup@dr/bulwark" : "/srv/b", error: error), at: at.addingTimeInterval(60))
            try history.update(r)
        }
        try add(.backup, .ok, hoursAgo: 30)
        try add(.replication, .ok, hoursAgo: 29.9)
        try add(.backup, .ok, hoursAgo: 2)
        try add(.replication, .failedRetryable, hoursAgo: 1.9, error: "the share is unreachable")
        // 30 h since the last success: past the default 24 h.
        let list = try run(TestEnv.bulwark, ["jobs", "list", "--state-dir", dir.file("state")])
        #expect(list.status == 0)
        #expect(list.err.contains("warning: policy web: no successful replication to smb://backup@dr/bulwark for 29.9 h"), "\(list.err)")
        #expect(list.err.contains("the share is unreachable"))
        let json = try run(TestEnv.bulwark, ["jobs", "list", "--json", "--state-dir", dir.file("state")])
        #expect((try JSONSerialization.jsonObject(with: json.stdout) as? [[String: Any]])?.count == 4, "stdout stays one JSON value")
        // With the policy files: their alert-after decides (48 h: no warning yet).
        let policies = dir.file("policies")
        try FileManager.default.createDirectory(atPath: policies, withIntermediateDirectories: true)
        try "name: web\nmachine: web\nsources: [{disk: /dev/null}]\ntarget: /srv/b\nreplicate: {to: /srv/r, alert-after: 48h}\n"
            .write(toFile: policies + "/web.yaml", atomically: true, encoding: .utf8)
        let relaxed = try run(TestEnv.bulwark, ["jobs", "list", "--policies", policies, "--state-dir", dir.file("state")])
        #expect(relaxed.status == 0 && relaxed.err.isEmpty, "\(relaxed.err)")
        let policy = try PolicyLoader.load(file: policies + "/web.yaml")
        #expect(try ReplicationHealth.warnings(for: [policy], history: history, now: now).isEmpty)
        #expect(try ReplicationHealth.warnings(for: [policy], history: history, now: now.addingTimeInterval(20 * 3600)).first?.policy == "web")
    }

    @Test func theDaemonReplicatesAfterEachScheduledBackup() async throws {
        try await offPool { try Self.daemonBody() }
    }

    static func daemonBody() throws {
        let replica = "REPLICA"
        let bench = try BackupBench(size: 8 << 20, seed: 73, extra: "schedule: \"*:*:0/3\"\nreplicate: {to: \(replica)}")
        let replicaPath = bench.dir.file("replica")
        try bench.policyText.replacingOccurrences(of: replica, with: replicaPath).write(toFile: bench.policyFile, atomically: true, encoding: .utf8)
        try bench.write(bench.rng.bytes(1 << 20), at: 0)
        let policies = bench.dir.file("policies")
        try FileManager.default.createDirectory(atPath: policies, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: bench.policyFile, toPath: policies + "/bench.yaml")
        let daemon = Process()
        daemon.executableURL = URL(fileURLWithPath: TestEnv.bulwark)
        daemon.arguments = ["daemon", "--policies", policies, "--state-dir", bench.state]
        daemon.standardError = FileHandle.nullDevice
        daemon.standardOutput = FileHandle.nullDevice
        try daemon.run()
        defer { if daemon.isRunning { kill(daemon.processIdentifier, SIGKILL); daemon.waitUntilExit() } }
        let deadline = Date().addingTimeInterval(60)
        var jobs: [JobRecord] = []
        while Date() < deadline {
            jobs = (try? JobHistory(stateDirectory: bench.state).list(policy: "bench"))?.filter { $0.status.isFinished } ?? []
            if jobs.filter({ $0.kind == .replication }).count >= 2 { break }
            usleep(200_000)
        }
        kill(daemon.processIdentifier, SIGTERM)
        daemon.waitUntilExit()
        #expect(daemon.terminationStatus == 0)
        let replications = jobs.filter { $0.kind == .replication }
        #expect(replications.count >= 2, "\(jobs.map { "\($0.kind) \($0.status) \($0.error ?? "")" })")
        #expect(replications.allSatisfy { $0.trigger == .afterBackup && $0.status.isSuccess }, "\(replications.map { "\($0.trigger) \($0.status) \($0.error ?? "")" })")
        // Each replication started after a backup had ended.
        for r in replications {
            #expect(jobs.contains { $0.kind == .backup && ($0.ended ?? .distantFuture) <= (r.started ?? .distantPast) })
        }
        // Every point the source had when the last replication ran is on the destination.
        let destination = try RecoveryPoints(target: LocalDirectoryTarget(path: FilePath(replicaPath)), machine: "guest").listing().map(\.version)
        let source = Set(try bench.points.listing().map(\.version))
        #expect(destination.count >= 2 && Set(destination).isSubset(of: source))
    }
}
