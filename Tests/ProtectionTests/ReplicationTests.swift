import Foundation
import Protection
import Recovery
import Replication
import Storage
import SystemPackage
import Targets
import Testing
import TestSupport

/// Replication between two targets (here two local folders; the SMB share is the same protocol):
/// every point arrives whole, parents first, verified; a transfer resumes; a damaged copy is repaired.
@Suite struct ReplicationTests {
    @Test func pointsArriveWholeAndReadTheSame() async throws {
        let bench = try BackupBench(size: 16 << 20, seed: 71)
        try bench.write(bench.rng.bytes(6 << 20), at: 0)
        var versions: [String] = []
        for day in 0..<3 {
            try bench.scribble(writes: 2)
            versions.append(try await bench.backup(at: .day(day)).version)
        }
        let dest = LocalDirectoryTarget(path: FilePath(bench.dir.file("dr-site")))
        let first = try ReplicationOperation.run(from: bench.target, to: dest, options: ReplicationOptions(version: versions[1]))
        #expect(first.first?.shipped == Array(versions[0...1]), "the point asked for, with the parent it needs, parents first")
        let second = try ReplicationOperation.run(from: bench.target, to: dest, options: ReplicationOptions())
        #expect(second.first?.shipped == [versions[2]] && second.first?.present == 2)
        #expect(second.first?.lagSeconds == 0)
        let remote = RecoveryPoints(target: dest, machine: "guest")
        #expect(try remote.listing().map(\.version) == versions)
        for v in versions {
            let local = try bench.read(v)
            let chain = try remote.openDisk(v, disk: try remote.manifest(v).disks[0])
            defer { try? chain.close() }
            #expect(try chain.leaf.read(count: Int(chain.leaf.virtualSize), at: 0) == local, "\(v) reads the same on the destination")
        }
        #expect(try VerifyOperation.run(target: dest, machine: "guest", options: VerifyOptions()).allSatisfy(\.ok))
        // Nothing to do the next time.
        let third = try ReplicationOperation.run(from: bench.target, to: dest, options: ReplicationOptions())
        #expect(third.first?.shipped.isEmpty == true && third.first?.bytesSent == 0)
    }

    @Test func anInterruptedTransferResumesAfterItsLastWholePiece() async throws {
        let bench = try BackupBench(size: 24 << 20, seed: 72)
        try bench.write(bench.rng.bytes(20 << 20), at: 0)
        let v = try await bench.backup(at: .day(0)).version
        let dest = LocalDirectoryTarget(path: FilePath(bench.dir.file("dr-site")))
        // A run that died part-way: a partial copy of 10 MiB + 123 bytes of the image.
        let image = bench.points.pointFolder(v).appending("disk0.vhdx")
        let bytes = try Data(contentsOf: URL(fileURLWithPath: image.string))
        let folder = RecoveryPoints(target: dest, machine: "guest").pointFolder(v)
        try FileOps.makeFolder(folder)
        try bytes.prefix((10 << 20) + 123).write(to: URL(fileURLWithPath: folder.appending(".disk0.vhdx.partial").string))
        let r = try ReplicationOperation.run(from: bench.target, to: dest, options: ReplicationOptions(pieceSize: 1 << 20))
        #expect(r.first?.bytesResumed == 10 << 20, "the whole pieces were kept")
        #expect(r.first?.bytesSent == UInt64(bytes.count) - (10 << 20), "at most one piece is sent again")
        #expect(try Data(contentsOf: URL(fileURLWithPath: folder.appending("disk0.vhdx").string)) == bytes)
        #expect(!FileManager.default.fileExists(atPath: folder.appending(".disk0.vhdx.partial").string))
    }

    @Test func aDamagedCopyIsCaughtByVerifyAndRepairedByTheNextReplication() async throws {
        let bench = try BackupBench(size: 12 << 20, seed: 73)
        try bench.write(bench.rng.bytes(8 << 20), at: 0)
        let v = try await bench.backup(at: .day(0)).version
        let dest = LocalDirectoryTarget(path: FilePath(bench.dir.file("dr-site")))
        _ = try ReplicationOperation.run(from: bench.target, to: dest, options: ReplicationOptions())
        let copy = RecoveryPoints(target: dest, machine: "guest").pointFolder(v).appending("disk0.vhdx")
        let h = try FileHandle(forUpdating: URL(fileURLWithPath: copy.string))
        try h.seek(toOffset: (try h.seekToEnd()) - 5000)
        try h.write(contentsOf: Data([1, 2, 3, 4]))
        try h.close()
        let verified = try VerifyOperation.run(target: dest, machine: "guest", options: VerifyOptions())
        #expect(verified.first?.ok == false)
        let repaired = try ReplicationOperation.run(from: bench.target, to: dest, options: ReplicationOptions())
        #expect(repaired.first?.shipped == [v])
        #expect(try VerifyOperation.run(target: dest, machine: "guest", options: VerifyOptions()).allSatisfy(\.ok))
        #expect(try RecoveryPoints(target: dest, machine: "guest").listing().map(\.version) == [v])
    }
}

/// `bulwark replicate` killed at random moments (throttled with --limit so the kills land inside
/// transfers): the destination lists only complete points at every moment, and the next run finishes.
@Suite(.serialized) struct ReplicationCrashTests {
    @Test func killedReplicationsResumeAndNeverShowAHalfPoint() async throws {
        try await offPool { try Self.body() }
    }

    static func body() throws {
        let bench = try BackupBench(size: 24 << 20, seed: 81)
        try bench.write(bench.rng.bytes(20 << 20), at: 0)
        for day in 0..<3 {
            try bench.scribble(writes: 3, maxLength: 2 << 20)
            let r = try run(TestEnv.bulwark, ["backup", "start", "--policy", bench.policyFile], environment: ["BULWARK_STATE_DIR": bench.state])
            #expect(r.status == 0, "day \(day): \(r.err)")
        }
        let source = bench.points
        let sourceVersions = try source.listing().map(\.version)
        let destPath = bench.dir.file("dr-site")
        let dest = RecoveryPoints(target: LocalDirectoryTarget(path: FilePath(destPath)), machine: "guest")
        let args = ["replicate", "--from", bench.targetPath, "--to", destPath, "--limit", "16MiB/s"]
        var rng = SeededRandom(seed: 82)
        var kills = 0, rounds = 0
        while kills < 20 && rounds < 40 {
            rounds += 1
            // Start over now and then, so kills land early in transfers as well as late.
            if rounds % 7 == 0 { try? FileManager.default.removeItem(atPath: destPath) }
            let outcome = try KilledRun.run(args, after: UInt32.random(in: 50_000...1_500_000, using: &rng))
            if outcome.killed { kills += 1 } else { #expect(outcome.status == 0, "\(outcome.err)") }
            // Whatever the destination lists is whole and reads as on the source.
            for entry in try dest.listing() {
                let disk = try dest.manifest(entry.version).disks[0]
                let chain = try dest.openDisk(entry.version, disk: disk)
                defer { try? chain.close() }
                #expect(try chain.leaf.read(count: Int(chain.leaf.virtualSize), at: 0) == (try bench.read(entry.version)), "round \(rounds): \(entry.version)")
            }
        }
        #expect(kills >= 20)
        let final = try run(TestEnv.bulwark, args + ["--json"])
        #expect(final.status == 0, "\(final.err)")
        #expect(try dest.listing().map(\.version) == sourceVersions)
        let verified = try VerifyOperation.run(target: dest.target, machine: "guest", options: VerifyOptions(record: false))
        #expect(verified.count == sourceVersions.count && verified.allSatisfy(\.ok))
        let leftovers = try FileManager.default.subpathsOfDirectory(atPath: dest.folder.string).filter { $0.contains(".partial") || $0.contains("lease.json") }
        #expect(leftovers.isEmpty, "\(leftovers)")
    }
}
