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

/// Replication to a real share under faults: smbd crashing mid-transfer (back within the retry window,
/// or not), `bulwark replicate` killed at random moments, a file damaged on the server, a share whose
/// filesystem fills up, and the errors a user meets on the command line. Everything goes through the
/// built `bulwark` and libsmbclient to Samba; the server's folders are only read (or damaged) from the
/// server's side to check what the share really holds.
@Suite(.serialized) struct SMBFaultTests {
    static let piece: UInt64 = 4 << 20

    // MARK: 1. smbd crashes mid-transfer

    @Test func aServerBackWithinTheRetryWindowIsRiddenOver() async throws {
        guard try SambaServer.available() else { return }
        let big = try await BigPoints.shared()
        try await offPool {
            let server = try SambaServer()
            defer { server.stop() }
            let share = server.url(path: "/dr")
            let job = try BackgroundRun(["replicate", "--from", big.bench.targetPath, "--to", share,
                                         "--credentials", server.credentialsFile, "--limit", "20MiB/s", "--json"])
            let partial = server.shareFolder() + "/dr/BulwarkBackup/guest/\(big.versions[1])/.disk0.vhdx.partial"
            // Crash between two pieces, so that the next run has a torn piece to send again.
            try #require(waitForSize(of: partial, atLeast: 12 << 20, unalignedTo: Self.piece, while: job), "the big point's transfer never got going: \(job.err)")
            let crashed = Date()
            try server.crash()
            #expect(job.isRunning, "smbd died mid-transfer")
            try server.start()
            let restart = Date().timeIntervalSince(crashed)
            print("SMBFaultTests: smbd back \(String(format: "%.2f", restart)) s after the crash")
            #expect(job.wait(seconds: 90))
            #expect(job.status == 0, "smbd was back after \(restart) s, within the retry window: \(job.err)")
            let results = try SMBFault.jsonArray(job.out)
            #expect(results.first?["shipped"] as? [String] == big.versions)
            #expect(results.first?["bytesSent"] as? UInt64 == big.storedBytes, "the retries rewrote in place: every byte was sent once by the copier")
            #expect(try SMBFault.versions(server, share) == big.versions)
            let verify = try run(TestEnv.bulwark, ["verify", "--target", share, "--credentials", server.credentialsFile])
            #expect(verify.status == 0, "\(verify.out) \(verify.err)")
            #expect(SMBFault.leftovers(server.shareFolder() + "/dr").isEmpty, "\(SMBFault.leftovers(server.shareFolder() + "/dr"))")
        }
    }

    @Test func aServerBackTooLateFailsTheRunCleanlyAndTheNextRunResumes() async throws {
        guard try SambaServer.available() else { return }
        let big = try await BigPoints.shared()
        try await offPool {
            let server = try SambaServer()
            defer { server.stop() }
            let share = server.url(path: "/dr")
            let job = try BackgroundRun(["replicate", "--from", big.bench.targetPath, "--to", share,
                                         "--credentials", server.credentialsFile, "--limit", "20MiB/s"])
            let partial = server.shareFolder() + "/dr/BulwarkBackup/guest/\(big.versions[1])/.disk0.vhdx.partial"
            // Crash between two pieces, so that the next run has a torn piece to send again.
            try #require(waitForSize(of: partial, atLeast: 12 << 20, unalignedTo: Self.piece, while: job), "the big point's transfer never got going: \(job.err)")
            let crashed = Date()
            try server.crash()
            #expect(job.isRunning, "smbd died mid-transfer")
            #expect(job.wait(seconds: 60), "the run gave up within its bounded retries")
            let gaveUp = Date().timeIntervalSince(crashed)
            print("SMBFaultTests: the run gave up \(String(format: "%.2f", gaveUp)) s after the crash")
            #expect(job.status == 7, "an I/O error status: \(job.status) \(job.err)")
            #expect(job.err.contains("connection to the server lost") && job.err.contains(server.url()) && job.err.contains("run again"), "\(job.err)")
            #expect(try SMBFault.keepsSecrets(job.err + job.out, server))
            #expect(gaveUp < 30, "gave up after \(gaveUp) s")
            let held = try SMBFault.size(partial)
            #expect(held >= 12 << 20 && held < big.imageSizes[1], "the interrupted copy stays for the next run: \(held)")
            #expect(try !FileManager.default.fileExists(atPath: server.shareFolder() + "/dr/BulwarkBackup/guest/\(big.versions[1])/manifest.json"))

            try server.start()
            #expect(try SMBFault.versions(server, share) == [big.versions[0]], "only the complete point is listed")
            let again = try run(TestEnv.bulwark, ["replicate", "--from", big.bench.targetPath, "--to", share,
                                                  "--credentials", server.credentialsFile, "--json"])
            #expect(again.status == 0, "\(again.err)")
            let r = try #require(try SMBFault.jsonArray(again.out).first)
            #expect(r["shipped"] as? [String] == [big.versions[1]] && r["present"] as? Int == 1)
            let resumed = try #require(r["bytesResumed"] as? UInt64), sent = try #require(r["bytesSent"] as? UInt64)
            print("SMBFaultTests: the next run kept \(resumed) of the \(held) bytes held and sent \(sent)")
            #expect(resumed <= held && held - resumed < Self.piece, "at most one piece is sent again: held \(held), resumed \(resumed)")
            #expect(held % Self.piece == 0 || resumed < held, "a torn last piece is sent again")
            #expect(resumed % Self.piece == 0 && resumed + sent == big.imageSizes[1], "resumed \(resumed) + sent \(sent)")
            #expect(try SMBFault.versions(server, share) == big.versions)
            let verify = try run(TestEnv.bulwark, ["verify", "--target", share, "--credentials", server.credentialsFile])
            #expect(verify.status == 0, "\(verify.out) \(verify.err)")
            let out = big.bench.dir.file("restored-after-crash.img")
            defer { try? FileManager.default.removeItem(atPath: out) }
            let restore = try run(TestEnv.bulwark, ["restore", "disk", "--target", share, "--credentials", server.credentialsFile,
                                                    "--version", big.versions[1], "--to", out])
            #expect(restore.status == 0, "\(restore.err)")
            #expect(try Data(contentsOf: URL(fileURLWithPath: out)) == Data(big.models[1]), "restored from the share byte for byte")
            #expect(SMBFault.leftovers(server.shareFolder() + "/dr").isEmpty, "\(SMBFault.leftovers(server.shareFolder() + "/dr"))")
        }
    }

    // MARK: 2. the replicating process killed

    @Test func killedReplicationsToTheShareResumeAndNeverShowAHalfPoint() async throws {
        guard try SambaServer.available() else { return }
        let bench = try BackupBench(size: 24 << 20, seed: 131)
        try bench.write(bench.rng.bytes(20 << 20), at: 0)
        for day in 0..<3 {
            try bench.scribble(writes: 3, maxLength: 2 << 20)
            _ = try await bench.backup(at: .day(day))
        }
        try await offPool {
            let server = try SambaServer()
            defer { server.stop() }
            let sourceVersions = try bench.points.listing().map(\.version)
            let manifests = try Dictionary(uniqueKeysWithValues: sourceVersions.map { ($0, try bench.points.manifest($0)) })
            let share = server.url(path: "/dr")
            let serverSide = server.shareFolder() + "/dr"
            let onServer = RecoveryPoints(target: LocalDirectoryTarget(path: FilePath(serverSide)), machine: "guest")
            let args = ["replicate", "--from", bench.targetPath, "--to", share, "--credentials", server.credentialsFile, "--limit", "16MiB/s"]
            var rng = SeededRandom(seed: 132)
            var kills = 0, rounds = 0, resumes = 0
            while kills < 20 && rounds < 40 {
                rounds += 1
                if rounds % 7 == 0 { try? FileManager.default.removeItem(atPath: serverSide) }
                let before = SMBFault.partials(serverSide)
                let outcome = try KilledRun.run(args, after: UInt32.random(in: 100_000...2_000_000, using: &rng))
                if outcome.killed { kills += 1 } else { #expect(outcome.status == 0, "round \(rounds): \(outcome.err)") }
                // Every resume kept all but less than a piece of what the interrupted copy held.
                for line in outcome.err.split(separator: "\n") {
                    guard let resume = SMBFault.Resume(String(line)) else { continue }
                    resumes += 1
                    #expect(resume.start <= resume.held && resume.held - resume.start < Self.piece && resume.start % Self.piece == 0,
                            "round \(rounds): \(line)")
                    #expect(before["BulwarkBackup/guest/\(resume.version)/.\(resume.file).partial"] == resume.held, "round \(rounds): \(line) \(before)")
                }
                // The share lists only whole points, parents first, each file complete and as on the source.
                let listed = try SMBFault.versions(server, share)
                #expect(listed == Array(sourceVersions.prefix(listed.count)), "round \(rounds): \(listed)")
                for v in listed {
                    let disk = manifests[v]!.disks[0]
                    let digest = try Digest.file(onServer.pointFolder(v).appending(disk.image), in: LocalFileSystem())
                    #expect(digest.size == disk.imageSize && digest.sha256 == disk.imageSHA256, "round \(rounds): \(v) listed but not whole")
                }
            }
            print("SMBFaultTests: \(kills) kills in \(rounds) rounds, \(resumes) resumed copies")
            #expect(kills >= 20, "\(kills) kills in \(rounds) rounds")
            #expect(resumes > 0, "no kill left a copy to resume")

            // A temporary that a publisher killed mid-publish left (its process is gone) is cleaned up.
            let machineFolder = serverSide + "/BulwarkBackup/guest"
            try FileManager.default.createDirectory(atPath: machineFolder, withIntermediateDirectories: true)
            let dead = try SMBFault.deadPID()
            FileManager.default.createFile(atPath: machineFolder + "/.catalog.99.json.partial-\(dead)", contents: Data("{".utf8))
            _ = try run(sys("chown"), ["-R", SambaServer.user, serverSide])

            let before = SMBFault.partials(serverSide).filter { $0.key.hasSuffix(".vhdx.partial") }
            let published = Set(SMBFault.files(serverSide).filter { $0.hasSuffix(".vhdx") })
            let have = Set(try onServer.completeVersions())
            let final = try run(TestEnv.bulwark, args + ["--json"])
            #expect(final.status == 0, "\(final.err)")
            let r = try #require(try SMBFault.jsonArray(final.out).first)
            let shipped = try #require(r["shipped"] as? [String])
            #expect(shipped == sourceVersions.filter { !have.contains($0) })
            let sent = try #require(r["bytesSent"] as? UInt64), resumed = try #require(r["bytesResumed"] as? UInt64)
            let toShip = shipped.reduce(UInt64(0)) { $0 + manifests[$1]!.storedBytes }
            #expect(sent + resumed == toShip)
            // Sent = what was missing, plus less than a piece for each interrupted copy.
            let alreadyThere = shipped.reduce(UInt64(0)) { total, v in
                let image = "BulwarkBackup/guest/\(v)/\(manifests[v]!.disks[0].image)"
                return total + (published.contains(image) ? manifests[v]!.storedBytes : before["BulwarkBackup/guest/\(v)/.\(manifests[v]!.disks[0].image).partial"] ?? 0)
            }
            #expect(sent <= toShip - alreadyThere + UInt64(before.count) * Self.piece, "sent \(sent) of \(toShip), \(alreadyThere) was there in \(before)")

            #expect(try SMBFault.versions(server, share) == sourceVersions)
            let verify = try run(TestEnv.bulwark, ["verify", "--target", share, "--credentials", server.credentialsFile, "--json"])
            #expect(verify.status == 0, "\(verify.out) \(verify.err)")
            #expect(try SMBFault.jsonArray(verify.out).map { $0["ok"] as? Bool } == sourceVersions.map { _ in true })
            let remote = RecoveryPoints(target: try server.target(path: "/dr"), machine: "guest")
            for v in sourceVersions {
                let chain = try remote.openDisk(v, disk: manifests[v]!.disks[0])
                defer { try? chain.close() }
                #expect(try chain.leaf.read(count: Int(chain.leaf.virtualSize), at: 0) == (try bench.read(v)), "\(v) reads off the share as on the source")
            }
            #expect(SMBFault.leftovers(serverSide).isEmpty, "\(SMBFault.leftovers(serverSide))")
        }
    }

    // MARK: 3. a file damaged on the server

    @Test func aFileDamagedOnTheShareIsCaughtByVerifyAndRepairedByTheNextReplication() async throws {
        guard try SambaServer.available() else { return }
        let bench = try BackupBench(size: 16 << 20, seed: 141)
        try bench.write(bench.rng.bytes(10 << 20), at: 0)
        let full = try await bench.backup(at: .day(0)).version
        try bench.scribble(writes: 4, maxLength: 1 << 20)
        let incremental = try await bench.backup(at: .day(1)).version
        try await offPool {
            let server = try SambaServer()
            defer { server.stop() }
            let share = server.url(path: "/dr")
            let replicate = ["replicate", "--from", bench.targetPath, "--to", share, "--credentials", server.credentialsFile, "--json"]
            let first = try run(TestEnv.bulwark, replicate)
            #expect(first.status == 0, "\(first.err)")
            // Damage the full point's image on the server's disk (the parent of the other point).
            let image = server.shareFolder() + "/dr/BulwarkBackup/guest/\(full)/disk0.vhdx"
            let size = try SMBFault.size(image)
            let h = try #require(FileHandle(forUpdatingAtPath: image))
            try h.seek(toOffset: size / 2)
            try h.write(contentsOf: Data((0..<64).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }))
            try h.close()

            let verify = try run(TestEnv.bulwark, ["verify", "--target", share, "--credentials", server.credentialsFile])
            #expect(verify.status == 1, "\(verify.out) \(verify.err)")
            #expect(verify.out.contains("guest/\(full): FAILED"), "\(verify.out)")
            let rows = try SMBFault.jsonArray(try run(TestEnv.bulwark, ["versions", "--target", share, "--credentials", server.credentialsFile, "--json"]).stdout)
            #expect(rows.first { $0["version"] as? String == full }?["verified"] as? Bool == false, "the failure is recorded on the share")

            let repair = try run(TestEnv.bulwark, replicate)
            #expect(repair.status == 0, "\(repair.err)")
            let r = try #require(try SMBFault.jsonArray(repair.out).first)
            #expect((r["shipped"] as? [String])?.contains(full) == true, "\(r)")
            #expect(r["bytesSent"] as? UInt64 == (try bench.points.manifest(full).storedBytes), "only the damaged file is sent again")
            let again = try run(TestEnv.bulwark, ["verify", "--target", share, "--credentials", server.credentialsFile])
            #expect(again.status == 0, "\(again.out) \(again.err)")
            #expect(try SMBFault.versions(server, share) == [full, incremental])
            let remote = RecoveryPoints(target: try server.target(path: "/dr"), machine: "guest")
            for v in [full, incremental] {
                let chain = try remote.openDisk(v, disk: try remote.manifest(v).disks[0])
                defer { try? chain.close() }
                #expect(try chain.leaf.read(count: Int(chain.leaf.virtualSize), at: 0) == (try bench.read(v)), "\(v)")
            }
            #expect(SMBFault.leftovers(server.shareFolder() + "/dr").isEmpty, "\(SMBFault.leftovers(server.shareFolder() + "/dr"))")
        }
    }

    // MARK: 4. the share's filesystem fills up

    @Test func aFullShareFailsClearlyAndShowsNoHalfPoint() async throws {
        guard try SambaServer.available(),
              try TestEnv.tools("mkfs.ext4", "losetup", "mount", "umount") else { return }
        let big = try await BigPoints.shared()
        try await offPool {
            let volume = try LoopVolume("ext4", size: "64M")
            defer { volume.cleanup() }
            // smbd serves the folder as the Samba user, who must walk down to it.
            for path in [volume.dir.path, volume.mountpoint] { chmod(path, 0o755) }
            var above = URL(fileURLWithPath: volume.dir.path).deletingLastPathComponent()
            while above.path != "/" {
                var st = stat()
                guard stat(above.path, &st) == 0, st.st_mode & S_IXOTH != 0 else {
                    throw TestFailure("\(above.path) is not searchable by others, so smbd cannot serve the loop volume below it; point BULWARK_TEST_TMP elsewhere")
                }
                above.deleteLastPathComponent()
            }
            let folder = volume.file("share")
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false)
            let server = try SambaServer(environment: ["BULWARK_SAMBA_EXTRA_SHARE": "small:\(folder)"])
            defer { server.stop() }
            let share = server.url(share: "small", path: "/dr")
            let source = try SMBFault.snapshot(big.bench.targetPath)

            let first = try run(TestEnv.bulwark, ["replicate", "--from", big.bench.targetPath, "--to", share, "--credentials", server.credentialsFile,
                                                  "--machine", "guest", "--version", big.versions[0]])
            #expect(first.status == 0, "the small point fits: \(first.err)")
            let free = try SMBFault.freeBytes(folder)
            #expect(free < big.imageSizes[1], "the big point (\(big.imageSizes[1]) bytes) cannot fit in \(free)")

            // Replication measures the room first: the point that cannot fit is refused with the
            // sizes before a byte of it is written.
            let full = try run(TestEnv.bulwark, ["replicate", "--from", big.bench.targetPath, "--to", share, "--credentials", server.credentialsFile])
            #expect(full.status == 6, "the no-space status: \(full.status) \(full.err)")
            #expect(full.err.contains("not enough room for guest/\(big.versions[1])") && full.err.contains(server.url(share: "small")), "\(full.err)")
            #expect(full.err.contains("free space there or prune old recovery points") && full.err.contains("nothing was written"), "\(full.err)")
            #expect(try SMBFault.keepsSecrets(full.err + full.out, server))

            // Only the complete point is listed; the big one left nothing at all.
            #expect(try SMBFault.versions(server, share) == [big.versions[0]])
            let bigFolder = folder + "/dr/BulwarkBackup/guest/\(big.versions[1])"
            let inBig = (try? FileManager.default.contentsOfDirectory(atPath: bigFolder)) ?? []
            #expect(inBig.isEmpty, "\(inBig)")
            #expect(!SMBFault.files(folder).contains { $0.hasSuffix("lease.json") }, "the lease was released")
            let verify = try run(TestEnv.bulwark, ["verify", "--target", share, "--credentials", server.credentialsFile])
            #expect(verify.status == 0, "the complete point still verifies: \(verify.out) \(verify.err)")
            #expect(try SMBFault.snapshot(big.bench.targetPath) == source, "the source is untouched")
            let again = try run(TestEnv.bulwark, ["replicate", "--from", big.bench.targetPath, "--to", share, "--credentials", server.credentialsFile])
            #expect(again.status == 6 && again.err.contains("not enough room"), "\(again.err)")

            // A backup straight to the full share (a policy whose target is the share) meets the
            // full disk mid-write: the job fails with the share's own error, and shows no half point.
            let policy = big.bench.dir.file("full-share.yaml")
            try big.bench.policyText.replacingOccurrences(of: "target: \(big.bench.targetPath)", with: "target: \(share)\ncredentials: \(server.credentialsFile)")
                .write(toFile: policy, atomically: true, encoding: .utf8)
            let state = big.bench.dir.file("full-share-state")
            let backup = try run(TestEnv.bulwark, ["backup", "start", "--policy", policy, "--full"], environment: ["BULWARK_STATE_DIR": state])
            #expect(backup.status == 6, "the no-space status: \(backup.status) \(backup.err)")
            #expect(backup.err.contains("the share is full") && backup.err.contains("free space there or prune old recovery points"), "\(backup.err)")
            #expect(try SMBFault.keepsSecrets(backup.err + backup.out, server))
            #expect(try SMBFault.versions(server, share) == [big.versions[0]])
            let leftovers = SMBFault.files(folder).filter { !$0.contains(big.versions[0]) && !$0.contains("catalog.") && !$0.hasSuffix("/guest") && !$0.hasSuffix("BulwarkBackup") && $0 != "dr" }
            #expect(leftovers.allSatisfy { ($0 as NSString).lastPathComponent.hasPrefix(".") || !$0.contains("disk0") }, "no visible half point: \(leftovers)")
            let recorded = try #require(try JobHistory(stateDirectory: state).list(limit: 1).first)
            #expect(recorded.status == .failed && recorded.error?.contains("the share is full") == true, "\(recorded.status) \(recorded.error ?? "")")
        }
    }

    // MARK: 5. the errors a user meets on the command line

    @Test func replicateNamesTheShareAndTheCauseOfWrongPasswordMissingShareAndReadOnlyShare() async throws {
        guard try SambaServer.available() else { return }
        let bench = try BackupBench(size: 8 << 20, seed: 151)
        try bench.write(bench.rng.bytes(1 << 20), at: 0)
        _ = try await bench.backup(at: .day(0))
        try await offPool {
            let server = try SambaServer()
            defer { server.stop() }
            let source = try SMBFault.snapshot(bench.targetPath)
            let wrongFile = bench.dir.file("wrong-credentials")
            try "username=\(SambaServer.user)\npassword=not-the-password\ndomain=WORKGROUP\n".write(toFile: wrongFile, atomically: true, encoding: .utf8)
            chmod(wrongFile, 0o600)
            let cases: [(url: String, credentials: String, status: Int32, cause: String)] = [
                (server.url(path: "/dr"), wrongFile, 1, "logon failed for user \(SambaServer.user)"),
                (server.url(share: "nosuch", path: "/dr"), server.credentialsFile, 3, "share not found"),
                (server.url(share: "readonly", path: "/dr"), server.credentialsFile, 1, "read-only"),
            ]
            for c in cases {
                let r = try run(TestEnv.bulwark, ["replicate", "--from", bench.targetPath, "--to", c.url, "--credentials", c.credentials])
                #expect(r.status == c.status, "\(c.url): \(r.status) \(r.err)")
                let shareURL = c.url.replacingOccurrences(of: "/dr", with: "")
                #expect(r.err.contains(shareURL) && r.err.contains(c.cause), "\(c.url): \(r.err)")
                #expect(try SMBFault.keepsSecrets(r.err + r.out, server) && !r.err.contains("not-the-password"), "\(r.err)")
                #expect(try SMBFault.snapshot(bench.targetPath) == source, "\(c.url): the source is untouched")
            }
            #expect(try server.serverFiles() == [], "nothing was written on the writable share")
            #expect(try server.serverFiles("readonly") == ["hello.txt"])
        }
    }
}

/// Two points of a 96 MiB disk, made once for the suite: a full of 8 MiB of data and an incremental
/// adding 64 MiB (random, so nothing compresses or deduplicates away).
struct BigPoints: @unchecked Sendable {
    let bench: BackupBench
    let versions: [String]
    let models: [[UInt8]]
    let imageSizes: [UInt64]
    var storedBytes: UInt64 { imageSizes.reduce(0, +) }

    nonisolated(unsafe) private static var made: BigPoints?

    static func shared() async throws -> BigPoints {
        if let made { return made }
        let bench = try BackupBench(size: 96 << 20, seed: 121)
        try bench.write(bench.rng.bytes(8 << 20), at: 0)
        let full = try await bench.backup(at: .day(0)).version
        let first = bench.model
        try bench.write(bench.rng.bytes(64 << 20), at: 24 << 20)
        let incremental = try await bench.backup(at: .day(1)).version
        let versions = [full, incremental]
        let sizes = try versions.map { try bench.points.manifest($0).storedBytes }
        let points = BigPoints(bench: bench, versions: versions, models: [first, bench.model], imageSizes: sizes)
        made = points
        return points
    }
}

/// A `bulwark` command running in the background, its output in files.
final class BackgroundRun: @unchecked Sendable {
    let process = Process()
    private let outFile: String
    private let errFile: String

    init(_ arguments: [String], environment: [String: String] = [:]) throws {
        let base = NSTemporaryDirectory() + "bulwark-bg-\(UUID().uuidString.prefix(8))"
        outFile = base + ".out"
        errFile = base + ".err"
        FileManager.default.createFile(atPath: outFile, contents: nil)
        FileManager.default.createFile(atPath: errFile, contents: nil)
        process.executableURL = URL(fileURLWithPath: TestEnv.bulwark)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: outFile))
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errFile))
        try process.run()
    }

    var isRunning: Bool { process.isRunning }

    /// Waits at most `seconds` for the exit; false (and the process killed) when it still ran.
    func wait(seconds: Double) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        let exited = !process.isRunning
        if !exited { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        return exited
    }

    var status: Int32 { process.terminationStatus }
    var out: String { (try? String(contentsOfFile: outFile, encoding: .utf8)) ?? "" }
    var err: String { (try? String(contentsOfFile: errFile, encoding: .utf8)) ?? "" }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: outFile)
        try? FileManager.default.removeItem(atPath: errFile)
    }
}

/// Waits until the file at `path` (on the server's side) has at least `bytes`, while `run` runs.
/// With `unalignedTo`, also waits until the size is not a multiple of it.
func waitForSize(of path: String, atLeast bytes: UInt64, unalignedTo unit: UInt64? = nil, while run: BackgroundRun, seconds: Double = 60) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline && run.isRunning {
        if let size = try? SMBFault.size(path), size >= bytes, unit.map({ size % $0 != 0 }) ?? true { return true }
        usleep(5_000)
    }
    return false
}

extension SambaServer {
    /// SIGKILL to smbd and every process it forked (its process group): the server dies as in a crash,
    /// without closing anything cleanly.
    func crash() throws {
        let text = try String(contentsOfFile: state.file("smbd.pgid"), encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        guard let group = Int32(text), group > 1 else { throw TestFailure("no smbd process group in \(state.path)") }
        guard kill(-group, SIGKILL) == 0 else { throw TestFailure("kill -9 -\(group): errno \(errno)") }
        // SIGKILL is delivered asynchronously: wait until the leader is gone (or a zombie, which
        // `tools/samba` counts as gone) and the port refuses, so that `start` does not find it running.
        for _ in 0..<250 where SMBFault.isAlive(group) || SMBFault.portAnswers(port) { usleep(20_000) }
        if SMBFault.isAlive(group) { throw TestFailure("smbd (PID \(group)) still runs 5 s after SIGKILL") }
    }
}

/// Helpers of the fault tests: the command line's JSON, the server's side of the share.
enum SMBFault {
    static func jsonArray(_ text: String) throws -> [[String: Any]] { try jsonArray(Data(text.utf8)) }
    static func jsonArray(_ data: Data) throws -> [[String: Any]] {
        guard let rows = try JSONSerialization.jsonObject(with: data) as? [[String: Any]] else {
            throw TestFailure("not a JSON array: \(String(decoding: data, as: UTF8.self))")
        }
        return rows
    }

    /// The versions `bulwark versions --json` lists on the share (a failure of the command fails).
    static func versions(_ server: SambaServer, _ share: String) throws -> [String] {
        let r = try run(TestEnv.bulwark, ["versions", "--target", share, "--credentials", server.credentialsFile, "--json"])
        guard r.status == 0 else { throw TestFailure("bulwark versions \(share): \(r.status) \(r.err)") }
        return try jsonArray(r.stdout).compactMap { $0["version"] as? String }
    }

    /// Whether `text` holds neither the share's password nor the credentials file's content.
    static func keepsSecrets(_ text: String, _ server: SambaServer) throws -> Bool {
        let password = try String(contentsOfFile: server.credentialsFile, encoding: .utf8)
            .split(separator: "\n").first { $0.hasPrefix("password=") }.map { String($0.dropFirst("password=".count)) } ?? ""
        return !password.isEmpty && !text.contains(password)
    }

    static func size(_ path: String) throws -> UInt64 {
        (try FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.uint64Value ?? 0
    }

    /// Every file under `folder` (relative paths), sorted; none when it does not exist.
    static func files(_ folder: String) -> [String] {
        var out: [String] = []
        guard let e = FileManager.default.enumerator(atPath: folder) else { return [] }
        while let p = e.nextObject() as? String {
            var dir: ObjCBool = false
            if FileManager.default.fileExists(atPath: folder + "/" + p, isDirectory: &dir), !dir.boolValue { out.append(p) }
        }
        return out.sorted()
    }

    /// The sizes of the interrupted copies (`.NAME.partial`) under `folder`, by relative path.
    static func partials(_ folder: String) -> [String: UInt64] {
        var out: [String: UInt64] = [:]
        for p in files(folder) where p.hasSuffix(".partial") { out[p] = try? size(folder + "/" + p) }
        return out
    }

    /// Temporary files and leases left under `folder`.
    static func leftovers(_ folder: String) -> [String] {
        files(folder).filter { $0.contains(".partial") || $0.hasSuffix("lease.json") }
    }

    /// Each file under `folder` with its size and SHA-256.
    static func snapshot(_ folder: String) throws -> [String: String] {
        var out: [String: String] = [:]
        for p in files(folder) {
            let d = try Digest.file(FilePath(folder + "/" + p), in: LocalFileSystem())
            out[p] = "\(d.size) \(d.sha256)"
        }
        return out
    }

    static func freeBytes(_ folder: String) throws -> UInt64 {
        var s = statvfs()
        guard statvfs(folder, &s) == 0 else { throw TestFailure("statvfs \(folder): errno \(errno)") }
        return UInt64(s.f_bavail) * UInt64(s.f_frsize)
    }

    /// The PID of a process that has exited.
    static func deadPID() throws -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: sys("true"))
        try p.run()
        p.waitUntilExit()
        return p.processIdentifier
    }

    /// Whether a process exists and is not a zombie.
    static func isAlive(_ pid: Int32) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let end = stat.range(of: ") ", options: .backwards) else { return false }
        return !stat[end.upperBound...].hasPrefix("Z")
    }

    static func portAnswers(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }

    /// A resume as `bulwark replicate` logs it: "MACHINE/VERSION: FILE: resuming at byte N of SIZE; the
    /// interrupted copy held M bytes".
    struct Resume {
        var version: String
        var file: String
        var start: UInt64
        var held: UInt64

        init?(_ line: String) {
            guard let match = line.firstMatch(of: #/replicate: [^/]+/([^:]+): ([^:]+): resuming at byte (\d+) of \d+; the interrupted copy held (\d+) bytes/#),
                  let start = UInt64(match.3), let held = UInt64(match.4) else { return nil }
            version = String(match.1)
            file = String(match.2)
            self.start = start
            self.held = held
        }
    }
}
