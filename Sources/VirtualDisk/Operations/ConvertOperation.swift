#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Foundation
import SystemPackage
import Storage
import Synchronization

/// What `convert` should produce.
public struct ConvertOptions: Sendable {
    /// The target format; nil means the destination's extension decides.
    public var format: DiskFormat?
    /// fixed or dynamic; nil keeps a fixed source fixed and makes everything else dynamic.
    public var type: DiskType?
    /// The target's block size; nil means the format's default.
    public var blockSize: Int?
    /// Where the source chain lives (the local filesystem by default; any store space works, e.g. a
    /// share or a helper process: the chain is read through it).
    public var sourceSpace: any StoreSpace
    /// Whether a block device may be the destination: converting onto a device erases what it held,
    /// so it is refused unless allowed here (the image is written raw, holes as zeros).
    public var allowDeviceDestination: Bool
    public init(format: DiskFormat? = nil, type: DiskType? = nil, blockSize: Int? = nil,
                sourceSpace: any StoreSpace = LocalFileSystem(), allowDeviceDestination: Bool = false) {
        self.format = format
        self.type = type
        self.blockSize = blockSize
        self.sourceSpace = sourceSpace
        self.allowDeviceDestination = allowDeviceDestination
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
    /// Of `bytesWritten`, those shared with the source by reflink (xfs, btrfs) rather than copied.
    public var bytesCloned: UInt64
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
                               progress: ProgressReporter? = nil) throws -> ConvertResult {
        let destination = FileOps.absolute(destination)
        let local = LocalFileSystem()
        if local.kind(of: destination) == .blockDevice {
            return try DeviceWrite.convert(source: source, device: destination, options: options, progress: progress)
        }
        if local.exists(destination) { throw StorageError.exists(path: destination.string) }
        let chain = try DiskChain.open(source, in: options.sourceSpace)
        defer { try? chain.close() }
        let leaf = chain.leaf
        if options.sourceSpace is LocalFileSystem, OperationIO.key(destination) == OperationIO.key(source) {
            throw StorageError.exists(path: destination.string)
        }

        let format = options.format ?? DiskFormat.fromExtension(of: destination)
        let type = options.type ?? ((leaf.type == .fixed && leaf.format != .raw) ? .fixed : .dynamic)
        guard type != .differencing else {
            throw DiskError.invalidArgument("\(destination.string): convert makes a standalone image: fixed or dynamic, not differencing")
        }
        if let blockSize = options.blockSize { try DiskImages.checkBlockSize(blockSize, format: format, path: destination) }
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
        let available = try LocalFileSystem.available(at: destination.removingLastComponent())
        if needed > available {
            throw StorageError.insufficientSpace(path: destination.string, needed: needed, available: available)
        }

        let logical = format == .vhdx ? leaf.logicalSectorSize : nil
        let staged: StagedImage
        do {
            staged = try StagedImage(at: destination, options: CreateOptions(
                format: format, type: type, virtualSize: leaf.virtualSize, blockSize: options.blockSize,
                logicalSectorSize: logical))
        } catch {
            throw naming(error, destination: destination, temp: nil)
        }
        let written: (bytes: UInt64, cloned: UInt64)
        do {
            written = try copy(map, from: chain, to: staged.image, fixedTarget: type == .fixed, total: allocated, progress: progress)
            // A cancellation that came during the copy's last steps still leaves no destination.
            try progress?.checkCancelled()
            try staged.publish()
        } catch {
            staged.discard()
            throw naming(error, destination: destination, temp: staged.temporaryPath)
        }
        let store = try BlockFile.open(destination, writable: false)
        defer { try? store.close() }
        return ConvertResult(source: options.sourceSpace.absolute(source).string, destination: destination.string, format: format, type: type,
                             virtualSize: leaf.virtualSize, bytesWritten: written.bytes, bytesCloned: written.cloned,
                             fileSize: try store.size(), allocatedBytes: try store.allocatedBytes())
    }

    /// A failure while writing the temporary file, told about the destination the user named (the
    /// temporary name means nothing to them, and it is gone).
    /// No space keeps its class (and its exit status), told about the destination.
    static func naming(_ error: any Error, destination: FilePath, temp: FilePath?) -> any Error {
        if case let StorageError.insufficientSpace(_, needed, available) = error {
            return StorageError.insufficientSpace(path: destination.string, needed: needed, available: available)
        }
        var text = String(describing: error)
        guard let temp, !(error is OperationCancelled), text.contains(temp.string) else { return error }
        if text.hasPrefix(temp.string + ": ") { text.removeFirst(temp.string.count + 2) }
        text = text.replacingOccurrences(of: temp.string, with: "the temporary file")
        return DiskError.notCreated(path: destination.string, reason: text)
    }

    /// Copies the mapped runs: into a fixed target shared by reflink where the filesystem allows it;
    /// in-kernel for raw to fixed raw; otherwise read, all-zero granules skipped, written. Returns the
    /// bytes written and, of those, the bytes shared.
    static func copy(_ map: [MappedExtent], from chain: DiskChain, to target: any DiskImage, fixedTarget: Bool, total: UInt64,
                     progress: ProgressReporter?) throws -> (bytes: UInt64, cloned: UInt64) {
        let buffer = OperationIO.buffer()
        defer { buffer.deallocate() }
        // Zero detection granule: a target block (so a skipped granule never allocates), capped at 1 MiB.
        let granule = target.format == .raw ? 64 << 10 : min(max(target.blockSize, 4096), 1 << 20)
        var done: UInt64 = 0
        var written: UInt64 = 0
        progress?.report(0, of: total)
        var pieces: [(range: Range<UInt64>, level: Int)] = []
        for m in map { pieces += OperationIO.chunks(of: m.range).map { ($0, m.level!) } }
        // A fixed target stores every byte anyway: where it can share the source's blocks, it does
        // (a dynamic one is written, so that zeros stay unstored).
        var cloned: UInt64 = 0
        if fixedTarget {
            cloned = try Reflink.clone(&pieces, range: { $0.range }, level: { $0.level }, from: chain.levels, into: target) { bytes in
                written += bytes
                done += bytes
                progress?.report(done, of: total)
                try OperationIO.pace(progress)
            }
        }
        if target.format == .raw, fixedTarget, pieces.allSatisfy({ chain.levels[$0.level].format == .raw }) {
            // Raw to a preallocated raw file: copy inside the store (in the kernel, reflinked where possible).
            for piece in pieces {
                try progress?.checkCancelled()
                try target.store.copyRange(from: chain.levels[piece.level].store, sourceOffset: piece.range.lowerBound,
                                  to: piece.range.lowerBound, length: UInt64(piece.range.count), buffer: buffer)
                written += UInt64(piece.range.count)
                done += UInt64(piece.range.count)
                progress?.report(done, of: total)
                try OperationIO.pace(progress)
            }
            return (written, cloned)
        }
        let levels = chain.levels
        for level in levels { OperationIO.adviseSequential(level.store) }
        // Targets whose bytes sit at fixed file offsets are written straight into the store, from two
        // threads; the others through the format, in order.
        let layout = try target.directLayout()
        let counters = Mutex(())
        let pipeline = CopyPipeline(pieces: pieces, writers: layout == nil ? 1 : 2,
                                    lookahead: OperationIO.lookahead(pieceBytes: pieces.map(\.range.count)),
                                    prefetch: { OperationIO.prefetch(levels[$0.level], $0.range) }) { piece, buffer in
            try levels[piece.level].read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[..<piece.range.count]), at: piece.range.lowerBound)
        }
        var unsynced: UInt64 = 0
        try pipeline.run { piece, data in
            try progress?.checkCancelled()
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
            var bytes: UInt64 = 0
            for r in runs {
                let bytesOfRun = UnsafeRawBufferPointer(rebasing: slice[r])
                let at = piece.range.lowerBound + UInt64(r.lowerBound)
                if let layout {
                    try writeDirect(bytesOfRun, at: at, layout: layout, store: target.store)
                } else {
                    try target.write(bytesOfRun, at: at)
                }
                bytes += UInt64(r.count)
            }
            counters.withLock { _ in
                written += bytes
                unsynced += bytes
                OperationIO.startWriteback(target.store, written: &unsynced)
                done += UInt64(piece.range.count)
                progress?.report(done, of: total)
            }
            try OperationIO.pace(progress)
        }
        return (written, cloned)
    }

    /// Writes `bytes` at virtual `offset` straight into `store` through `layout`.
    static func writeDirect(_ bytes: UnsafeRawBufferPointer, at offset: UInt64,
                            layout: [StoreRun], store: any ByteStore) throws {
        var done = 0
        while done < bytes.count {
            let v = offset + UInt64(done)
            var lo = 0, hi = layout.count - 1
            while lo < hi {  // the last run starting at or before v
                let mid = (lo + hi + 1) / 2
                if layout[mid].range.lowerBound <= v { lo = mid } else { hi = mid - 1 }
            }
            let run = layout[lo]
            guard run.range.contains(v) else {
                throw DiskError.corrupt(path: store.path.string, reason: "virtual offset \(v) is not stored in the new image")
            }
            let n = Int(min(UInt64(bytes.count - done), run.range.upperBound - v))
            try store.write(UnsafeRawBufferPointer(rebasing: bytes[done..<done + n]), at: run.fileOffset + (v - run.range.lowerBound))
            done += n
        }
    }
}
