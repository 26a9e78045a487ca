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
        var pieces: [(range: Range<UInt64>, level: Int)] = []
        for m in map { pieces += OperationIO.chunks(of: m.range).map { ($0, m.level!) } }
        if target.format == .raw, fixedTarget, let raw = target as? RawImage,
           pieces.allSatisfy({ chain.levels[$0.level].format == .raw }) {
            // Raw to a preallocated raw file: copy inside the kernel (reflinked where possible).
            for piece in pieces {
                try raw.file.copy(from: chain.levels[piece.level].file, sourceOffset: piece.range.lowerBound,
                                  to: piece.range.lowerBound, length: UInt64(piece.range.count), buffer: buffer)
                written += UInt64(piece.range.count)
                done += UInt64(piece.range.count)
                progress?(done, total)
                OperationIO.pace()
            }
            return written
        }
        let levels = chain.levels
        let pipeline = CopyPipeline(pieces: pieces) { piece, buffer in
            try levels[piece.level].read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[..<piece.range.count]), at: piece.range.lowerBound)
        }
        var unsynced: UInt64 = 0
        try pipeline.run { piece, data in
            let slice = UnsafeRawBufferPointer(rebasing: data[..<piece.range.count])
            // Granules are aligned to the virtual granule grid: a piece starts on a chunk boundary
            // or at the start of a run, which need not be granule-aligned.
            let skew = Int(piece.range.lowerBound % UInt64(granule))
            var runs: [Range<Int>] = []
            if skew != 0 {
                let head = min(granule - skew, slice.count)
                if !OperationIO.isZero(UnsafeRawBufferPointer(rebasing: slice[..<head])) { runs.append(0..<head) }
                for r in OperationIO.nonZeroRuns(UnsafeRawBufferPointer(rebasing: slice[head...]), granule: granule) {
                    let shifted = (r.lowerBound + head)..<(r.upperBound + head)
                    if let last = runs.last, last.upperBound == shifted.lowerBound {
                        runs[runs.count - 1] = last.lowerBound..<shifted.upperBound
                    } else { runs.append(shifted) }
                }
            } else {
                runs = OperationIO.nonZeroRuns(slice, granule: granule)
            }
            for r in runs {
                try target.write(UnsafeRawBufferPointer(rebasing: slice[r]), at: piece.range.lowerBound + UInt64(r.lowerBound))
                written += UInt64(r.count)
                unsynced += UInt64(r.count)
            }
            OperationIO.startWriteback(target.file, written: &unsynced)
            done += UInt64(piece.range.count)
            progress?(done, total)
            OperationIO.pace()
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
