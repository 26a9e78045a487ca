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
