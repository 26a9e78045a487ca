import Foundation
import Protection
import Storage
import SystemPackage
import Targets
import VirtualDisk

/// What to restore: one disk of one point, into a new file or onto a whole disk (a block device).
public struct DiskRestoreOptions: Sendable {
    public var machine: String
    public var version: String
    public var disk: Int
    /// The new image (it must not exist; it appears only when complete and verified), or a block
    /// device (a whole disk, not in use, at least as large: written in place).
    public var destination: FilePath
    /// raw, vhd or vhdx (default: from the destination's extension, raw for others).
    public var format: DiskFormat?
    public var progress: ProgressReporter?
    public init(machine: String, version: String, disk: Int = 0, destination: FilePath, format: DiskFormat? = nil, progress: ProgressReporter? = nil) {
        self.machine = machine
        self.version = version
        self.disk = disk
        self.destination = destination
        self.format = format
        self.progress = progress
    }
}

public struct DiskRestoreResult: Codable, Sendable, Equatable {
    public var machine: String
    public var version: String
    public var disk: Int
    public var destination: String
    public var format: DiskFormat
    public var virtualSize: UInt64
    public var bytesWritten: UInt64
    public var seconds: Double
    /// The restored image read back with the manifest's chunk checksums.
    public var verified: Bool
}

/// Restores a disk of a recovery point: reads the point's chain straight from the target (through
/// its store space), writes a new image under a temporary name, reads it back against the manifest's
/// checksums, and only then publishes it. A mismatch removes it and fails with the first bad range.
public enum DiskRestore {
    public static func run(target: any BackupTarget, options: DiskRestoreOptions) throws -> DiskRestoreResult {
        let started = Date()
        let points = RecoveryPoints(target: target, machine: options.machine)
        let manifest = try points.manifest(options.version)
        guard let disk = manifest.disks.first(where: { $0.index == options.disk }) else {
            throw TargetError.pointNotFound(target: target.location, machine: options.machine, version: "\(options.version) disk \(options.disk) (the point has disks \(manifest.disks.map { String($0.index) }.joined(separator: ", ")))")
        }
        if LocalFileSystem().kind(of: options.destination) == .blockDevice {
            // Onto a disk: written in place (checked as system recovery checks its destinations:
            // not in use, not holding the target, large enough), each chunk verified as it streams.
            guard options.format == nil || options.format == .raw else {
                throw DiskError.invalidArgument("\(options.destination.string): a block device receives the raw disk, not \(options.format!.rawValue)")
            }
            let written = try SystemRecovery.write(disk, of: options.version, points: points, onto: options.destination,
                                                   progress: options.progress, cancel: options.progress)
            return DiskRestoreResult(machine: options.machine, version: options.version, disk: options.disk, destination: options.destination.string,
                                     format: .raw, virtualSize: disk.virtualSize, bytesWritten: written.bytesWritten,
                                     seconds: Date().timeIntervalSince(started), verified: true)
        }
        let source = points.imagePath(options.version, disk: disk)
        let format = options.format ?? {
            let f = DiskFormat.fromExtension(of: options.destination)
            return f == .vhd || f == .vhdx ? f : .raw
        }()
        let destination = LocalFileSystem().absolute(options.destination)
        let name = destination.lastComponent?.string ?? "disk"
        let staging = destination.removingLastComponent().appending(".\(name).restoring-\(ProcessState.currentPID)")
        guard !FileOps.exists(destination) else { throw StorageError.exists(path: destination.string) }
        try? FileOps.remove(staging)
        let converted: ConvertResult
        do {
            converted = try ConvertOperation.convert(source: source, destination: staging,
                                                     options: ConvertOptions(format: format, type: format == .raw ? nil : .dynamic, sourceSpace: target.space),
                                                     progress: options.progress)
            let chain = try DiskChain.open(staging, format: format)
            defer { try? chain.close() }
            if let (i, digest) = try ChainDigests.firstMismatch(chain, disk: disk, progress: options.progress) {
                let r = disk.chunkRange(i)
                throw TargetError.damaged(path: staging.string, reason: "the restored disk reads bytes \(r.lowerBound)..<\(r.upperBound) with SHA-256 \(digest); the manifest of \(options.version) has \(disk.chunks[i]); run `bulwark verify` on the target")
            }
            try LocalFileSystem().rename(staging, to: destination)
        } catch {
            try? FileOps.remove(staging)
            throw error
        }
        return DiskRestoreResult(machine: options.machine, version: options.version, disk: options.disk, destination: destination.string,
                                 format: format, virtualSize: disk.virtualSize, bytesWritten: converted.bytesWritten,
                                 seconds: Date().timeIntervalSince(started), verified: true)
    }
}
