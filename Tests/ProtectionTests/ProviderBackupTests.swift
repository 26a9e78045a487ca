import Foundation
import Protection
import Storage
import SystemPackage
import Targets
import Testing
import TestSupport
import VirtualDisk

/// The differencing provider path: a guest disk that is itself a VHDX is snapshotted as a frozen
/// differencing child while a real qemu-ga freezes a loop-mounted filesystem; the incremental holds
/// exactly the blocks of the child, found from its own extents without reading the rest of the disk.
@Suite(.serialized) struct ProviderBackupTests {
    @Test func theIncrementalHoldsExactlyTheFrozenChildsBlocks() async throws {
        guard try realPrerequisites("qemu-ga", "mkfs.ext4") else { return }
        let agent = try QemuAgent()
        defer { agent.stop() }
        let volume = try LoopVolume("ext4", size: "32M")
        defer { volume.cleanup() }
        try Data("guest data".utf8).write(to: URL(fileURLWithPath: volume.file("a.txt")))
        let dir = try TempDir("provider-backup")
        let size = 40 << 20
        let disk = FilePath(dir.file("vm/disk0.vhdx"))
        try FileManager.default.createDirectory(atPath: dir.file("vm"), withIntermediateDirectories: true)
        var rng = SeededRandom(seed: 21)
        var model = [UInt8](repeating: 0, count: size)
        let image = try DiskImages.create(at: disk, options: CreateOptions(format: .vhdx, type: .dynamic, virtualSize: UInt64(size)))
        for i in [0, 3, 6, 9] {
            let bytes = rng.bytes(2 << 20)
            try image.write(bytes, at: UInt64(i << 20))
            model.replaceSubrange(i << 20..<(i << 20) + bytes.count, with: bytes)
        }
        try image.close()
        let policyFile = dir.file("policy.yaml")
        try """
        name: vm-nightly
        machine: vm
        sources:
          - disk: \(disk.string)
        consistency:
          writers: [{qga: \(agent.socket), mountpoints: [\(volume.mountpoint)]}]
          provider: differencing
        target: \(dir.file("target"))
        keep: {last: 10}
        """.write(toFile: policyFile, atomically: true, encoding: .utf8)
        let policy = try PolicyLoader.load(file: policyFile)
        let options = BackupOptions(stateDirectory: FilePath(dir.file("state")), now: .day(0), timeZone: TimeZone(identifier: "UTC")!)
        let full = try await BackupOperation.run(policy: policy, options: options)
        #expect(full.kind == .full && full.consistency == "application-consistent" && full.provider == "differencing")
        let points = RecoveryPoints(target: LocalDirectoryTarget(path: FilePath(dir.file("target"))), machine: "vm")
        let first = try points.manifest(full.version)
        #expect(first.consistency.writers.contains { $0.kind == "qga" && $0.froze })
        let live = try #require(first.disks[0].providerLeaf, "the new live leaf is recorded")
        #expect(FileManager.default.fileExists(atPath: live))

        // The guest writes into the live leaf (the child the provider made).
        let leaf = try DiskChain.open(FilePath(live), writable: true)
        var written = Set<Int>()
        for _ in 0..<5 {
            let n = Int(rng.next() % (600 << 10)) + 1
            let at = Int(rng.next() % UInt64(size - n))
            let bytes = rng.bytes(n)
            try leaf.leaf.write(bytes, at: UInt64(at))
            model.replaceSubrange(at..<at + n, with: bytes)
            for c in (at >> 22)...((at + n - 1) >> 22) { written.insert(c) }
        }
        try leaf.close()

        var next = options
        next.now = .day(1)
        let incremental = try await BackupOperation.run(policy: policy, options: next)
        #expect(incremental.kind == .incremental)
        #expect(incremental.disks[0].changeDetection == "provider", "the changes came from the frozen child")
        #expect(incremental.disks[0].bytesRead == UInt64(written.count) << 22, "only the chunks the child touches were read")
        // The incremental's own blocks are exactly the chunks the child's writes touched.
        let chain = try DiskChain.open(points.pointFolder(incremental.version).appending("disk0.vhdx"))
        defer { try? chain.close() }
        let stored = Set(try chain.changedRanges(levels: 0..<1).flatMap { r in Int(r.lowerBound >> 22)...Int((r.upperBound - 1) >> 22) })
        #expect(stored == written)
        #expect(try chain.leaf.read(count: size, at: 0) == model)
        #expect(volume.writeCompletes(within: 5), "the guest filesystem was thawed")
        let verified = try VerifyOperation.run(target: points.target, machine: "vm", options: VerifyOptions(record: false))
        #expect(verified.allSatisfy { $0.ok })

        // A full on demand continues from the live leaf: the guest's chain stays one line.
        var third = options
        third.now = .day(2)
        third.forceFull = true
        let again = try await BackupOperation.run(policy: policy, options: third)
        #expect(again.kind == .full)
        let newLeaf = try #require(try points.manifest(again.version).disks[0].providerLeaf)
        let guestChain = try DiskChain.open(FilePath(newLeaf))
        defer { try? guestChain.close() }
        #expect(guestChain.levels.count == 4, "base, the two frozen children, the new live leaf")
        #expect(try guestChain.leaf.read(count: size, at: 0) == model)
        #expect(try DiskChain.open(points.pointFolder(again.version).appending("disk0.vhdx")).use { try $0.leaf.read(count: size, at: 0) } == model)
    }
}
