#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Foundation
import SystemPackage

/// What `convert` should produce.
public struct ConvertOptions: Sendable {
    /// The target format; nil means the destination's extension decides.
    public var format: DiskFormat?
    /// fixed or dynamic; nil keeps a fixed source fixed and makes everything else dynamic.
    public var type: DiskType?
    /// The target's block size; nil means the format's default.
    public var blockSize: Int?
    public init(format: DiskFormat? = nil, type: DiskType? = nil, blockSize: Int? = nil) {
        self.format = format
        self.type = type
        self.blockSize = blockSize
    }
}

/// What a conversion produced.
public struct ConvertResult: Codable, Sendable, Equatable {
    public var source: String
    public var destination: String
    public var format: DiskFormat
    public var type: DiskType
    public var virtualSize: UInt64
    /// Virtual bytes written into the destination (all-zero chunks are skipped).
    public var bytesWritten: UInt64
    /// The destination's file size and the space it occupies.
    public var fileSize: UInt64
    public var allocatedBytes: UInt64
}

/// Converts an image (or a whole chain, flattened) into a new image of any format and type.
///
/// The source is only read. The destination is written under a hidden temporary name in its folder
/// (`.NAME.partial-PID`), flushed, and renamed into place only when complete; holes stay holes and
/// all-zero chunks are not written.
public enum ConvertOperation {
    public static func convert(source: FilePath, destination: FilePath, options: ConvertOptions = ConvertOptions(),
                               progress: ProgressHandler? = nil) throws -> ConvertResult {
        let destination = FileOps.absolute(destination)
        if FileOps.exists(destination) { throw DiskError.exists(path: destination.string) }
        let chain = try PendingMergeChain.open(source)
        defer { try? chain.close() }
        let leaf = chain.leaf
        if OperationIO.key(destination) == OperationIO.key(source) { throw DiskError.exists(path: destination.string) }

        let format = options.format ?? DiskFormat.fromExtension(of: destination)
        let type = options.type ?? ((leaf.type == .fixed && leaf.format != .raw) ? .fixed : .dynamic)
        guard type != .differencing else {
            throw DiskError.invalidArgument("\(destination.string): convert makes a standalone image; --type must be fixed or dynamic")
        }
        let map = try chain.map().filter { !$0.isZero }
        let allocated = map.reduce(UInt64(0)) { $0 + UInt64($1.range.count) }

        // Free space, checked before anything is written.
        let block = UInt64(options.blockSize ?? (format == .vhdx ? 32 << 20 : 2 << 20))
        let metadata: UInt64 = format == .raw ? 0 : (8 << 20) + leaf.virtualSize / block * 8
        let needed: UInt64
        if type == .fixed {
            needed = leaf.virtualSize + metadata
        } else {
            var lastCounted: UInt64?
            var rounded: UInt64 = 0
            let unit = format == .raw ? UInt64(4096) : block
            for m in map {
                var b = m.range.lowerBound / unit
                if let last = lastCounted, b <= last { b = last + 1 }
                let end = (m.range.upperBound + unit - 1) / unit
                if b < end {
                    rounded += (end - b) * unit
                    lastCounted = end - 1
                }
            }
            needed = min(rounded, leaf.virtualSize) + metadata
        }
        let available = try FileSystemSpace.available(at: destination.removingLastComponent())
        if needed > available {
            throw DiskError.insufficientSpace(path: destination.string, needed: needed, available: available)
        }

        let name = destination.lastComponent?.string ?? "disk"
        let folder = destination.removingLastComponent()
        removeStalePartials(folder: folder, name: name)
        let temp = folder.appending(".\(name).partial-\(getpid())")
        try? FileOps.remove(temp)
        let logical = format == .vhdx ? leaf.logicalSectorSize : nil
        do {
            let target = try DiskImages.create(at: temp, options: CreateOptions(
                format: format, type: type, virtualSize: leaf.virtualSize, blockSize: options.blockSize,
                logicalSectorSize: logical))
            var written: UInt64 = 0
            do {
                written = try copy(map, from: chain, to: target, fixedTarget: type == .fixed, total: allocated, progress: progress)
                try target.flush()
                try target.close()
            } catch {
                try? target.close()
                throw error
            }
            try FileOps.rename(temp, to: destination)
            let file = try BlockFile.open(destination, writable: false)
            defer { try? file.close() }
            return ConvertResult(source: FileOps.absolute(source).string, destination: destination.string, format: format, type: type,
                                 virtualSize: leaf.virtualSize, bytesWritten: written,
                                 fileSize: try file.size(), allocatedBytes: try file.allocatedBytes())
        } catch {
            try? FileOps.remove(temp)
            throw error
        }
    }

    /// Copies the mapped runs: in-kernel for raw to fixed raw, otherwise read, skip all-zero granules, write.
    static func copy(_ map: [MappedExtent], from chain: DiskChain, to target: any DiskImage, fixedTarget: Bool, total: UInt64,
                     progress: ProgressHandler?) throws -> UInt64 {
        let buffer = OperationIO.buffer()
        defer { buffer.deallocate() }
        // Zero detection granule: a target block (so a skipped granule never allocates), capped at 1 MiB.
        let granule = target.format == .raw ? 64 << 10 : min(max(target.blockSize, 4096), 1 << 20)
        var done: UInt64 = 0
        var written: UInt64 = 0
        progress?(0, total)
        for m in map {
            let level = chain.levels[m.level!]
            for piece in OperationIO.chunks(of: m.range) {
                if target.format == .raw, level.format == .raw, fixedTarget, let raw = target as? RawImage {
                    try raw.file.copy(from: level.file, sourceOffset: piece.lowerBound, to: piece.lowerBound,
                                      length: UInt64(piece.count), buffer: buffer)
                    written += UInt64(piece.count)
                } else {
                    let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[..<piece.count])
                    try level.read(into: slice, at: piece.lowerBound)
                    // Granules are aligned to virtual offsets: the piece starts on a chunk boundary or
                    // at the start of a run, so align the first granule to the virtual granule grid.
                    let skew = Int(piece.lowerBound % UInt64(granule))
                    var runs: [Range<Int>] = []
                    if skew != 0 {
                        let head = min(granule - skew, piece.count)
                        if !OperationIO.isZero(UnsafeRawBufferPointer(rebasing: slice[..<head])) { runs.append(0..<head) }
                        for r in OperationIO.nonZeroRuns(UnsafeRawBufferPointer(rebasing: slice[head...]), granule: granule) {
                            let shifted = (r.lowerBound + head)..<(r.upperBound + head)
                            if let last = runs.last, last.upperBound == shifted.lowerBound {
                                runs[runs.count - 1] = last.lowerBound..<shifted.upperBound
                            } else { runs.append(shifted) }
                        }
                    } else {
                        runs = OperationIO.nonZeroRuns(UnsafeRawBufferPointer(slice), granule: granule)
                    }
                    for r in runs {
                        try target.write(UnsafeRawBufferPointer(rebasing: slice[r]), at: piece.lowerBound + UInt64(r.lowerBound))
                        written += UInt64(r.count)
                    }
                }
                done += UInt64(piece.count)
                progress?(done, total)
                OperationIO.pace()
            }
        }
        return written
    }

    /// Removes `.NAME.partial-PID` files left by conversions whose process is gone.
    static func removeStalePartials(folder: FilePath, name: String) {
        let prefix = ".\(name).partial-"
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: folder.string) else { return }
        for n in names where n.hasPrefix(prefix) {
            if let pid = Int32(n.dropFirst(prefix.count)), !OperationIO.isRunning(pid) {
                try? FileOps.remove(folder.appending(n))
            }
        }
    }
}
