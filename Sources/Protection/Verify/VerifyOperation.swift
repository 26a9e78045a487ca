import Foundation
import Storage
import SystemPackage
import Targets
import VirtualDisk

/// What a verify of one point found.
public struct VerifyResult: Codable, Sendable, Equatable {
    public var machine: String
    public var version: String
    public var ok: Bool
    /// The first problem: a damaged file, or the first chunk whose checksum differs, with its range.
    public var problem: String?
    /// The first bad virtual range (disk index and bytes), when the problem is one.
    public var badDisk: Int?
    public var badRange: Range<UInt64>?
    public var bytesRead: UInt64
    public var seconds: Double
    /// What was not checked, and why.
    public var notes: [String] = []
}

public struct VerifyOptions: Sendable {
    /// Record the result on the target (`verify.<sequence>.json` and a new catalog generation). Needs the
    /// machine's lease; without recording, verify only reads.
    public var record: Bool
    public var now: Date?
    public var progress: ProgressReporter?
    public var log: (@Sendable (String) -> Void)?
    public init(record: Bool = true, now: Date? = nil, progress: ProgressReporter? = nil, log: (@Sendable (String) -> Void)? = nil) {
        self.record = record
        self.now = now
        self.progress = progress
        self.log = log
    }
}

/// Re-reads points through their chains against their manifests: every image file's SHA-256, then
/// every 4 MiB chunk of every disk as the chain reads it. A point that fails is recorded as failed,
/// so the next backup of its machine is a full (no new point depends on it).
public enum VerifyOperation {
    /// Verifies the given versions of `machine` (all of them when nil), oldest first.
    public static func run(target: any BackupTarget, machine: String, versions: [String]? = nil, options: VerifyOptions) throws -> [VerifyResult] {
        let points = RecoveryPoints(target: target, machine: machine)
        let known = try points.completeVersions()
        if known.isEmpty, try !RecoveryPoints.machines(on: target).contains(machine) {
            throw TargetError.machineNotFound(target: target.location, machine: machine, known: try RecoveryPoints.machines(on: target))
        }
        for v in versions ?? [] where !known.contains(v) {
            throw TargetError.pointNotFound(target: target.location, machine: machine, version: v)
        }
        let lease = options.record ? try TargetLease.acquire(target, machine: machine, purpose: "verify") : nil
        defer { lease?.release() }
        // A prune that was interrupted is finished first, so the files checked are final.
        if let lease { try FoldJournal.resume(points: points, lease: lease, log: options.log) }
        var results: [VerifyResult] = []
        for version in versions ?? known {
            try options.progress?.checkCancelled()
            let result = try verify(points: points, version: version, options: options)
            options.log?("\(version): " + (result.ok ? "ok (\(ByteCount.format(result.bytesRead)) read)" : "FAILED: \(result.problem ?? "")"))
            results.append(result)
            if let lease {
                try lease.check()
                let now = options.now ?? Date()
                try points.record(VerificationRecord(time: Timestamp.iso8601(now), ok: result.ok, problem: result.problem, bytesRead: result.bytesRead),
                                  for: version)
            }
        }
        if lease != nil { try points.rebuildCatalog(now: options.now ?? Date()) }
        return results
    }

    /// Verifies one point (read-only).
    public static func verify(points: RecoveryPoints, version: String, options: VerifyOptions) throws -> VerifyResult {
        let started = Date()
        var result = VerifyResult(machine: points.machine, version: version, ok: true, problem: nil, badDisk: nil, badRange: nil, bytesRead: 0, seconds: 0)
        defer { result.seconds = Date().timeIntervalSince(started) }
        let manifest: PointManifest
        do { manifest = try points.manifest(version) } catch {
            result.ok = false
            result.problem = "the manifest cannot be read: \(error)"
            return result
        }
        let space = points.target.space
        /// Whether the file at `path` is the one the manifest names (size and SHA-256); when not, the
        /// result says so.
        func matches(_ path: FilePath, _ file: PointFile, disk: Int?) throws -> Bool {
            let (size, digest) = try Digest.file(path, in: space, progress: options.progress)
            result.bytesRead += size
            guard size == file.size, digest == file.sha256 else {
                result.ok = false
                result.badDisk = disk
                result.problem = "\(file.name): the file is \(size) bytes with SHA-256 \(digest); the manifest has \(file.size) bytes, \(file.sha256)"
                return false
            }
            return true
        }
        for disk in manifest.disks {
            let path = points.imagePath(version, disk: disk)
            do {
                let chain = try DiskChain.open(path, in: space)
                defer { try? chain.close() }
                guard chain.leaf.virtualSize == disk.virtualSize else {
                    result.ok = false
                    result.badDisk = disk.index
                    result.problem = "\(disk.image): the chain reads a \(chain.leaf.virtualSize)-byte disk; the manifest says \(disk.virtualSize)"
                    return result
                }
                let expected = Int((disk.virtualSize + UInt64(disk.chunkSize) - 1) / UInt64(max(1, disk.chunkSize)))
                guard disk.chunkSize > 0, disk.chunks.count == expected else {
                    result.ok = false
                    result.badDisk = disk.index
                    result.problem = "the manifest lists \(disk.chunks.count) checksums for disk \(disk.index); a \(disk.virtualSize)-byte disk has \(expected)"
                    return result
                }
                let bad = try ChainDigests.firstMismatch(chain, disk: disk, progress: options.progress)
                result.bytesRead += disk.virtualSize
                if let (i, digest) = bad {
                    let range = disk.chunkRange(i)
                    result.ok = false
                    result.badDisk = disk.index
                    result.badRange = range
                    result.problem = "disk \(disk.index) bytes \(range.lowerBound)..<\(range.upperBound) (chunk \(i)) read back with SHA-256 \(digest); the manifest has \(disk.chunks[i])"
                    return result
                }
                // The virtual disk reads right; the file itself must also be the one the manifest
                // names (replication and restore check files by their digest), unless an interrupted
                // prune is changing it (a job holding the lease finishes that first).
                if points.pointsInFlux.contains(version) {
                    result.notes.append("\(disk.image): an interrupted prune is re-linking this point's files; its data verified, its file digests are checked once a job finishes the prune")
                    continue
                }
                guard try matches(path, PointFile(name: disk.image, size: disk.imageSize, sha256: disk.imageSHA256), disk: disk.index) else { return result }
            } catch let e as OperationCancelled {
                throw e
            } catch {
                result.ok = false
                result.badDisk = disk.index
                result.problem = "disk \(disk.index) (\(disk.image)) cannot be read: \(error)"
                return result
            }
        }
        // File sets: the archive and the index must be the files the manifest names, and every point
        // whose archive the index refers to must still be there.
        for set in manifest.fileSets ?? [] {
            for file in [PointFile(name: set.archive, size: set.archiveSize, sha256: set.archiveSHA256),
                         PointFile(name: set.indexFile, size: set.indexSize, sha256: set.indexSHA256)] {
                do {
                    guard try matches(points.pointFolder(version).appending(file.name), file, disk: nil) else { return result }
                } catch let e as OperationCancelled {
                    throw e
                } catch {
                    result.ok = false
                    result.problem = "file set \(set.index) (\(file.name)) cannot be read: \(error)"
                    return result
                }
            }
            for needed in set.references where needed != version {
                if (try? points.manifest(needed)) == nil {
                    result.ok = false
                    result.problem = "file set \(set.index) needs point \(needed), whose archive holds some of its files, and that point is gone"
                    return result
                }
            }
        }
        return result
    }
}
