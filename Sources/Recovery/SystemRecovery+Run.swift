import Foundation
import Layout
import Protection
import Storage
import SystemPackage
import Targets
import VirtualDisk

/// What a system recovery did, disk by disk.
public struct SystemRecoveryResult: Codable, Sendable, Equatable {
    public var machine: String
    public var version: String
    public var disks: [Disk]
    public var seconds: Double

    public struct Disk: Codable, Sendable, Equatable {
        public var index: Int
        public var destination: String
        public var virtualSize: UInt64
        /// Data bytes read from the target and written (the rest of the disk was unallocated in the
        /// image and is zeroed without writing where the destination can: holes, write-zeroes).
        public var bytesWritten: UInt64
        /// The partition table was fitted to a larger destination (GPT backup header moved to its end).
        public var tableFitted: Bool
        public var seconds: Double
        /// Every chunk matched the manifest's checksum as it was written.
        public var verified: Bool
    }
}

extension SystemRecovery {
    /// Writes every disk the plan restores, in order. Each destination is checked again first (the
    /// plan may have waited for a confirmation); each disk's chunks are checked against the manifest
    /// as they stream from the target, and a mismatch stops at once. A GPT disk written onto a larger
    /// destination gets its table fitted to the new size; a block device's partitions are re-read
    /// by the kernel.
    public static func run(target: any BackupTarget, plan: SystemRecoveryPlan, progress: ProgressReporter? = nil) throws -> SystemRecoveryResult {
        let started = Date()
        let points = RecoveryPoints(target: target, machine: plan.machine)
        let manifest = try points.manifest(plan.version)
        let total = plan.restored.reduce(UInt64(0)) { $0 + $1.size }
        var done: UInt64 = 0
        var results: [SystemRecoveryResult.Disk] = []
        for entry in plan.restored {
            guard let disk = manifest.disks.first(where: { $0.index == entry.index }), let destination = entry.destination else { continue }
            let base = done
            let inner = progress.map { outer in ProgressReporter { completed, _ in outer.report(base + completed, of: total) } }
            results.append(try write(disk, of: plan.version, points: points, onto: FilePath(destination), progress: inner, cancel: progress))
            done += disk.virtualSize
        }
        return SystemRecoveryResult(machine: plan.machine, version: plan.version, disks: results, seconds: Date().timeIntervalSince(started))
    }

    /// Writes one disk of a point onto an existing destination (a whole disk or an image file),
    /// checked again first, each chunk checked against the manifest as it streams; a GPT is fitted
    /// to a larger destination and a device's partitions re-read. What `run` does for each disk and
    /// `DiskRestore` for a block device.
    static func write(_ disk: ManifestDisk, of version: String, points: RecoveryPoints, onto path: FilePath,
                      progress: ProgressReporter?, cancel: ProgressReporter?) throws -> SystemRecoveryResult.Disk {
        let started = Date()
        let checked = try check(path, for: disk, target: points.target)
        let chain = try DiskChain.open(points.imagePath(version, disk: disk), in: points.target.space)
        defer { try? chain.close() }
        let store = try BlockFile.open(path, writable: true)
        defer { try? store.close() }
        let checker = ChainDigests.Checker(disk: disk)
        func failure(_ mismatch: (index: Int, digest: String)) -> RecoveryError {
            let r = disk.chunkRange(mismatch.index)
            return .mismatch(disk: disk.index, destination: path.string,
                             reason: "bytes \(r.lowerBound)..<\(r.upperBound) read from the target have SHA-256 \(mismatch.digest), the manifest says \(disk.chunks[mismatch.index])")
        }
        let written = try ChainWrite.onto(store, from: chain, progress: progress) { piece in
            try cancel?.checkCancelled()
            try checker.add(piece)
            if let bad = checker.mismatch { throw failure(bad) }
        }
        if let bad = try checker.finish() { throw failure(bad) }
        let fitted = try fitTable(store, disk: disk, size: checked.size)
        if store.isBlockDevice { rereadPartitions(store) }
        return SystemRecoveryResult.Disk(index: disk.index, destination: path.string, virtualSize: disk.virtualSize, bytesWritten: written,
                                         tableFitted: fitted, seconds: Date().timeIntervalSince(started), verified: true)
    }

    /// Fits the restored disk to a destination larger than the backed-up disk: the last MiB past
    /// the restored bytes is zeroed (a table or RAID/LVM signature the destination kept at its old
    /// end must not be found next to the new one), and a GPT gets its backup header and entries at
    /// the new end. Returns whether the partition table was changed.
    static func fitTable(_ store: BlockFile, disk: ManifestDisk, size: UInt64) throws -> Bool {
        guard size > disk.virtualSize else { return false }
        let tail = max(disk.virtualSize, size - min(size, 1 << 20))..<size
        if try !store.punchHole(at: tail.lowerBound, length: UInt64(tail.count)) {
            try store.writeZeros(count: UInt64(tail.count), at: tail.lowerBound)
        }
        let sector = disk.layout?.logicalSectorSize ?? disk.logicalSectorSize
        func read(_ offset: UInt64, _ count: Int) throws -> [UInt8] { try store.read(count: count, at: offset) }
        let table = try PartitionTable.read(size: disk.virtualSize, sectorSize: sector, read)
        guard table.scheme == .gpt else { return false }
        let writes: [GPTFit.Write]
        do {
            writes = try GPTFit.writes(oldSize: disk.virtualSize, newSize: size, sectorSize: sector, read)
        } catch let problem as GPTFit.Problem {
            throw RecoveryError.mismatch(disk: disk.index, destination: store.path.string, reason: "the restored GPT cannot be fitted to the larger disk: \(problem.text)")
        }
        for write in writes {
            try write.bytes.withUnsafeBytes { try store.write($0, at: write.offset) }
        }
        try store.flush()
        return !writes.isEmpty
    }

    /// Asks the kernel to read the new partition table (BLKRRPART), so /dev/sdX1... appear. Best
    /// effort: a disk still in use keeps its old view until the next boot, which is when it matters.
    static func rereadPartitions(_ store: BlockFile) {
        _ = ioctl(store.descriptor.rawValue, UInt(0x125F))
    }
}
