import Foundation
import SystemPackage
import Storage

/// Point-in-time copy by copying the disk files: works on any filesystem (copy_file_range, which
/// reflinks where it can, else read/write), holes kept. A differencing disk is copied with its whole
/// chain, the copies re-pointed at each other, so the snapshot stands alone: the parents (never
/// written while they have children) before the freeze, only the leaves while frozen, so the hold
/// lasts as long as the leaves' copy. The copy stops at the deadline; re-pointing and flushing
/// happen after the thaw.
public struct CopyProvider: SnapshotProvider {
    /// Bytes copied between deadline checks.
    public var chunk: UInt64

    public init(chunk: UInt64 = 64 << 20) { self.chunk = chunk }
    public var name: String { "copy" }

    public func prepare(disks: [String], context: SnapshotContext) async throws {
        try ProviderFiles.makeDirectory(context, provider: name)
        let chunk = max(self.chunk, 1 << 20)
        try await BlockingPool.disk.run {
            let (items, _) = try ProviderFiles.cachedPlan(disks, context)
            var needed: UInt64 = 0
            for item in items {
                let f = try BlockFile.open(FilePath(item.source), writable: false)
                needed += try f.allocatedBytes()
                try f.close()
                try BlockFile.create(FilePath(item.target)).close()
            }
            let dir = ProviderFiles.directory(context)
            if let free = try? LocalFileSystem.available(at: FilePath(dir)), free < needed {
                throw ShadowCopyError.providerFailed(provider: "copy", reason: "not enough free space in \(dir) for the copies: \(ByteCount.format(needed)) needed, \(ByteCount.format(free)) free")
            }
            for item in items where !item.isLeaf {
                try Self.copy(item.source, to: item.target, chunk: chunk, deadline: .distantFuture)
            }
        }
    }

    public func snapshot(disks: [String], context: SnapshotContext, deadline: Date) async throws -> ProviderSnapshot {
        let chunk = max(self.chunk, 1 << 20)
        let leaves = try await BlockingPool.disk.run {
            let (items, leaves) = try ProviderFiles.cachedPlan(disks, context)
            for item in items where item.isLeaf {
                try Self.copy(item.source, to: item.target, chunk: chunk, deadline: deadline)
            }
            return leaves
        }
        return ProviderSnapshot(copies: leaves)
    }

    /// Copies the data ranges of `source` into `target` (holes stay holes), checking `deadline`
    /// between chunks.
    static func copy(_ source: String, to target: String, chunk: UInt64, deadline: Date) throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        let src = try BlockFile.open(FilePath(source), writable: false)
        let dst = try BlockFile.open(FilePath(target), writable: true)
        defer { try? src.close(); try? dst.close() }
        let size = try src.size()
        try dst.truncate(to: size)
        var offset: UInt64 = 0
        while offset < size, let data = try src.nextData(from: offset), data < size {
            let end = min(try src.nextHole(from: data), size)
            var at = data
            while at < end {
                if Date() >= deadline {
                    throw ShadowCopyError.timedOut(phase: "copy of \(source) while frozen", seconds: 0)
                }
                let n = min(chunk, end - at)
                try dst.copyRange(from: src, sourceOffset: at, to: at, length: n, buffer: buffer)
                at += n
            }
            offset = end
        }
    }

    public func finish(_ snapshot: ProviderSnapshot, context: SnapshotContext) async throws {
        try await ProviderFiles.finishCopies(context, provider: "copy")
    }

    public func abort(disks: [String], context: SnapshotContext) async {
        ProviderFiles.removeAll(context)
    }
}
