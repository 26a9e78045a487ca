import Foundation
import Protection
import Storage
import SystemPackage
import Targets
import Testing
import TestSupport
import VirtualDisk
import Recovery

/// Backup jobs on the embedded default target: fulls, true incrementals of a raw source found by
/// checksums, verify, and the rule that a bad point is never a parent.
@Suite struct BackupJobTests {
    @Test func aFullThenFiveIncrementalsEachReadBackExactly() async throws {
        let bench = try BackupBench(size: 48 << 20, seed: 7)
        // Data in part of the disk; the rest stays a hole.
        for i in stride(from: 0, to: 12, by: 3) { try bench.write(bench.rng.bytes(3 << 20), at: i * (4 << 20) + 4096) }
        var models: [String: [UInt8]] = [:]
        var results: [BackupResult] = []
        let full = try await bench.backup(at: .day(0))
        #expect(full.kind == .full && full.fullReason != nil)
        #expect(full.bytesChanged == 4 * (4 << 20), "four chunks hold data; holes are not stored")
        models[full.version] = bench.model
        results.append(full)
        for day in 1...5 {
            let changed = try bench.scribble(writes: 1 + day)
            let r = try await bench.backup(at: .day(day))
            #expect(r.kind == .incremental)
            #expect(r.parent == results.last?.version)
            #expect(r.disks[0].changeDetection == "hashes")
            // Exactly the chunks that changed are stored, and the image holds little more.
            #expect(r.bytesChanged == UInt64(changed.count) * (4 << 20), "day \(day): \(changed.count) chunks changed")
            #expect(r.disks[0].bytesWritten == r.bytesChanged)
            let overhead = try Self.emptyDifferencingSize(parent: bench.points.pointFolder(results.last!.version).appending("disk0.vhdx"))
            #expect(Double(r.disks[0].imageSize) <= 1.5 * Double(r.bytesChanged) + Double(overhead),
                    "day \(day): image \(r.disks[0].imageSize) bytes for \(r.bytesChanged) changed (+\(overhead) of format structures)")
            models[r.version] = bench.model
            results.append(r)
        }
        // Every version reads back byte-identically through its chain: Bulwark and libvhdi.
        for r in results {
            #expect(try bench.read(r.version) == models[r.version], "\(r.version) through Bulwark")
            if let oracle = try PyVHDI.read(try bench.chainFiles(r.version)) {
                #expect(try oracle.get() == models[r.version], "\(r.version) through libvhdi")
            }
        }
        // Listed from the target alone, oldest first, with kinds and parents.
        let listed = try bench.points.listing()
        #expect(listed.map(\.version) == results.map(\.version))
        #expect(listed.map(\.kind) == [.full] + Array(repeating: .incremental, count: 5))
        // Every point verifies, and the result is recorded.
        let verified = try VerifyOperation.run(target: bench.target, machine: "guest", options: VerifyOptions())
        #expect(verified.count == 6 && verified.allSatisfy { $0.ok })
        #expect(try bench.points.listing().allSatisfy { $0.verification?.ok == true })
        #expect(try ChainCheck.check(path: bench.points.pointFolder(results.last!.version).appending("disk0.vhdx")).isClean)
    }

    /// The size of an empty differencing VHDX with the backup's block size: what the format costs.
    static func emptyDifferencingSize(parent: FilePath) throws -> UInt64 {
        let dir = try TempDir("overhead")
        let path = FilePath(dir.file("x.vhdx"))
        let image = try DiskImages.create(at: path, options: CreateOptions(format: .vhdx, type: .differencing, blockSize: 4 << 20, parentPath: parent))
        for level in image.chain { try level.close() }
        return try Self.fileSize(path)
    }

    static func fileSize(_ path: FilePath) throws -> UInt64 {
        (try FileManager.default.attributesOfItem(atPath: path.string)[.size] as? NSNumber)?.uint64Value ?? 0
    }

    @Test func dataZeroedSinceTheParentIsHidden() async throws {
        let bench = try BackupBench(size: 16 << 20, seed: 3)
        try bench.write(bench.rng.bytes(6 << 20), at: 1 << 20)
        let first = try await bench.backup(at: .day(0))
        try bench.write([UInt8](repeating: 0, count: 4 << 20), at: 4 << 20)
        let second = try await bench.backup(at: .day(1))
        #expect(second.kind == .incremental && second.bytesChanged == 4 << 20)
        #expect(try bench.read(second.version) == bench.model)
        #expect(try bench.read(first.version) != bench.model)
    }

    @Test func aPointThatFailsVerificationIsNeverAParent() async throws {
        let bench = try BackupBench(size: 16 << 20, seed: 5)
        try bench.write(bench.rng.bytes(12 << 20), at: 0)
        let first = try await bench.backup(at: .day(0))
        // Damage a byte of stored data (the image's last payload block).
        let image = bench.points.pointFolder(first.version).appending("disk0.vhdx")
        let size = try Self.fileSize(image)
        let h = try FileHandle(forUpdating: URL(fileURLWithPath: image.string))
        try h.seek(toOffset: size - 1000)
        let old = try h.read(upToCount: 1)![0]
        try h.seek(toOffset: size - 1000)
        try h.write(contentsOf: Data([old ^ 0xFF]))
        try h.close()
        let results = try VerifyOperation.run(target: bench.target, machine: "guest", options: VerifyOptions())
        let bad = try #require(results.first)
        #expect(!bad.ok)
        #expect(bad.badRange != nil && bad.problem?.contains("chunk") == true, "the first bad range is named: \(bad.problem ?? "")")
        try bench.scribble(writes: 2)
        let next = try await bench.backup(at: .day(1))
        #expect(next.kind == .full)
        #expect(next.fullReason?.contains("failed verification") == true, "\(next.fullReason ?? "")")
        #expect(try bench.read(next.version) == bench.model)
    }

    @Test func badSourcesAndTargetsFailCleanly() async throws {
        let bench = try BackupBench(size: 8 << 20)
        try FileManager.default.removeItem(atPath: bench.source)
        await #expect(throws: ProtectionError.sourceMissing(policy: "bench", source: bench.source)) { try await bench.backup(at: .day(0)) }
        #expect(try bench.points.listing().isEmpty)
    }

    @Test func aScheduledFullReplacesTheIncremental() async throws {
        let bench = try BackupBench(size: 8 << 20, extra: "schedule: \"daily\"\nfull: \"sun 23:05\"")
        try bench.write(bench.rng.bytes(1 << 20), at: 0)
        // 2026-09-01 is a Tuesday: day 0 full (first), days 1..4 incremental, day 5 (Sunday 23:05) full.
        var kinds: [PointKind] = []
        for day in 0...6 {
            try bench.scribble(writes: 1)
            kinds.append(try await bench.backup(at: .day(day, minute: 6)).kind)
        }
        #expect(kinds == [.full, .incremental, .incremental, .incremental, .incremental, .full, .incremental])
    }
}

/// A point of several disks: published whole, each disk its own chain, restored one by one.
@Suite struct MultiDiskTests {
    @Test func everyDiskOfAPointIsCapturedAndRestored() async throws {
        let bench = try BackupBench(size: 12 << 20, seed: 51)
        let second = bench.dir.file("data.img")
        var other = SeededRandom(seed: 52)
        FileManager.default.createFile(atPath: second, contents: Data(other.bytes(8 << 20)))
        bench.policyText = bench.policyText.replacingOccurrences(of: "  - disk: \(bench.source)\n", with: "  - disk: \(bench.source)\n  - disk: \(second)\n")
        try bench.policyText.write(toFile: bench.policyFile, atomically: true, encoding: .utf8)
        try bench.write(bench.rng.bytes(2 << 20), at: 0)
        let full = try await bench.backup(at: .day(0))
        #expect(full.disks.count == 2 && full.disks.map(\.image) == ["disk0.vhdx", "disk1.vhdx"])
        try bench.scribble(writes: 2)
        let incremental = try await bench.backup(at: .day(1))
        #expect(incremental.disks[1].changedBytes == 0, "the second disk did not change")
        #expect(incremental.disks[0].changedBytes > 0)
        let manifest = try bench.points.manifest(incremental.version)
        #expect(manifest.disks.map(\.source) == [bench.source, second])
        for disk in manifest.disks {
            let out = FilePath(bench.dir.file("restored-\(disk.index).img"))
            let r = try DiskRestore.run(target: bench.target, options: DiskRestoreOptions(machine: "guest", version: incremental.version, disk: disk.index, destination: out))
            #expect(r.verified)
            let expected = disk.index == 0 ? Data(bench.model) : try Data(contentsOf: URL(fileURLWithPath: second))
            #expect(try Data(contentsOf: URL(fileURLWithPath: out.string)) == expected)
        }
        // A restore onto an existing file is refused, and nothing is overwritten.
        let existing = FilePath(bench.dir.file("restored-0.img"))
        #expect(throws: StorageError.exists(path: existing.string)) {
            try DiskRestore.run(target: bench.target, options: DiskRestoreOptions(machine: "guest", version: full.version, destination: existing))
        }
    }
}
