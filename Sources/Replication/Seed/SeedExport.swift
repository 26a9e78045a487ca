import Foundation
import Storage
import SystemPackage
import Targets
#if canImport(Glibc)
import Glibc
#endif

/// What to put in a seed.
public struct SeedExportOptions: Sendable {
    public var machine: String
    /// The point to seed (default: the newest); every parent it needs goes with it.
    public var version: String?
    public var progress: ProgressReporter?
    public var log: (@Sendable (String) -> Void)?
    public var pieceSize: Int

    public init(machine: String, version: String? = nil, progress: ProgressReporter? = nil, log: (@Sendable (String) -> Void)? = nil, pieceSize: Int = 4 << 20) {
        self.machine = machine
        self.version = version
        self.progress = progress
        self.log = log
        self.pieceSize = pieceSize
    }
}

/// What an export wrote.
public struct SeedExportResult: Codable, Sendable, Equatable {
    public var file: String
    public var machine: String
    /// The points in the seed, oldest first.
    public var versions: [String]
    /// Image bytes in the seed.
    public var imageBytes: UInt64
    /// The seed file's size.
    public var fileBytes: UInt64
    public var seconds: Double
}

/// Writes a seed (Hyper-V Replica's initial replication over removable media): one pax archive with
/// a recovery point and every parent it needs, read through the target's store (a share works as a
/// source), streamed a piece at a time. The archive is written as `.FILE.partial` beside FILE, synced,
/// and linked to FILE only when complete; an existing FILE is never overwritten. The machine's folder
/// is leased while it is read (no retention folds a point under the export).
public enum SeedExportOperation {
    public static func run(from source: any BackupTarget, to file: FilePath, options: SeedExportOptions) throws -> SeedExportResult {
        let started = Date()
        let path = file.string
        if access(path, F_OK) == 0 { throw StorageError.exists(path: path) }
        guard let name = file.lastComponent?.string else { throw StorageError.invalidArgument("\(path) is not a file name") }
        let machine = options.machine
        guard try RecoveryPoints.machines(on: source).contains(machine) else {
            throw TargetError.machineNotFound(target: source.location, machine: machine, known: try RecoveryPoints.machines(on: source))
        }
        let lease = try TargetLease.acquire(source, machine: machine, purpose: "seed export to \(path)")
        defer { lease.release() }
        let points = RecoveryPoints(target: source, machine: machine)
        let listed = try points.listing()
        guard let chosen = options.version ?? listed.last?.version else {
            throw TargetError.pointNotFound(target: source.location, machine: machine, version: "(newest)")
        }
        guard listed.contains(where: { $0.version == chosen }) else {
            throw TargetError.pointNotFound(target: source.location, machine: machine, version: chosen)
        }
        // The chain, full first.
        var manifests: [PointManifest] = []
        var next: String? = chosen
        while let v = next {
            let m = try points.manifest(v)
            manifests.insert(m, at: 0)
            next = m.parent
            if manifests.count > 100_000 { throw TargetError.damaged(path: points.folder.string, reason: "the chain of \(chosen) loops") }
        }
        let total = manifests.reduce(UInt64(0)) { $0 + $1.storedBytes }
        let header = SeedHeader(machine: machine, versions: manifests.map(\.version), source: source.location,
                                created: Timestamp.iso8601(Date()), creator: "bulwark", imageBytes: total)

        let partial = file.removingLastComponent().appending(".\(name).partial").string
        let fd = open(partial, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            let e = Errno(rawValue: errno)
            if e == .fileExists {
                throw StorageError.busy(path: partial, holder: nil)
            }
            throw StorageError.io(path: partial, operation: "create", errno: e)
        }
        var fdOpen = true
        var complete = false
        defer {
            if fdOpen { Glibc.close(fd) }
            if !complete { unlink(partial) }
        }
        let writer = try SeedArchiveWriter(fd: fd, path: partial)
        let now = Date()
        let headerBytes = try RecoveryPoints.encode(header)
        try writer.begin(SeedHeader.entryName, size: UInt64(headerBytes.count), mtime: now)
        try headerBytes.withUnsafeBytes { try writer.write($0) }
        try writer.finishEntry()

        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: options.pieceSize, alignment: 4096)
        defer { buffer.deallocate() }
        var done: UInt64 = 0
        for manifest in manifests {
            let prefix = "\(machine)/\(manifest.version)/"
            options.log?("\(machine)/\(manifest.version): \(manifest.files.count) file(s)")
            let bytes = try RecoveryPoints.encode(manifest)
            try writer.begin(prefix + manifestFileName(manifest), size: UInt64(bytes.count), mtime: now)
            try bytes.withUnsafeBytes { try writer.write($0) }
            try writer.finishEntry()
            for file in manifest.files {
                try lease.check()
                let imagePath = points.pointFolder(manifest.version).appending(file.name)
                let input = try source.space.open(imagePath, writable: false)
                defer { try? input.close() }
                guard try input.size() == file.size else {
                    throw TargetError.damaged(path: imagePath.string, reason: "the file is \(try input.size()) bytes; its manifest says \(file.size)")
                }
                input.advise(.sequential)
                try writer.begin(prefix + file.name, size: file.size, mtime: now)
                var offset: UInt64 = 0
                while offset < file.size {
                    try options.progress?.checkCancelled()
                    let n = Int(min(UInt64(buffer.count), file.size - offset))
                    let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[..<n])
                    try input.read(into: slice, at: offset)
                    try writer.write(UnsafeRawBufferPointer(slice))
                    offset += UInt64(n)
                    done += UInt64(n)
                    options.progress?.report(done, of: total)
                }
                input.advise(.dontNeed(0..<file.size))
                try writer.finishEntry()
            }
        }
        try writer.close()
        guard fsync(fd) == 0 else { throw StorageError.io(path: partial, operation: "fsync", errno: Errno(rawValue: errno)) }
        var st = stat()
        let size = fstat(fd, &st) == 0 ? UInt64(st.st_size) : 0
        Glibc.close(fd)
        fdOpen = false
        // link(2) never replaces an existing name: FILE appears complete or not at all.
        guard link(partial, path) == 0 else {
            let e = Errno(rawValue: errno)
            throw e == .fileExists ? StorageError.exists(path: path) : StorageError.io(path: path, operation: "link", errno: e)
        }
        complete = true
        unlink(partial)
        let dir = open(file.removingLastComponent().string.isEmpty ? "." : file.removingLastComponent().string, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dir >= 0 { fsync(dir); Glibc.close(dir) }
        return SeedExportResult(file: path, machine: machine, versions: header.versions, imageBytes: total, fileBytes: size,
                                seconds: Date().timeIntervalSince(started))
    }
}
