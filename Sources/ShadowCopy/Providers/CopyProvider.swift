import Foundation
import SystemPackage
import VirtualDisk
import Storage

/// Point-in-time copy by copying the disk file while the writers are frozen: works on any
/// filesystem (copy_file_range, which reflinks where it can, else read/write), holes kept, but the
/// hold lasts as long as the copy. The copy stops at the deadline; the data is flushed after the thaw.
public struct CopyProvider: SnapshotProvider {
    /// Bytes copied between deadline checks.
    public var chunk: UInt64

    public init(chunk: UInt64 = 64 << 20) { self.chunk = chunk }
    public var name: String { "copy" }

    public func prepare(disks: [String], context: SnapshotContext) async throws {
        try ProviderFiles.makeDirectory(context, provider: name)
        let targets = disks.map { ProviderFiles.copyPath(of: $0, context) }
        try await BlockingPool.disk.run {
            var needed: UInt64 = 0
            for (disk, target) in zip(disks, targets) {
                let f = try BlockFile.open(FilePath(disk), writable: false)
                needed += try f.allocatedBytes()
                try f.close()
                try BlockFile.create(FilePath(target)).close()
            }
            if let dir = targets.first, let free = try? LocalFileSystem.available(at: FilePath(dir)), free < needed {
                throw ShadowCopyError.providerFailed(provider: "copy", reason: "not enough free space for the copies: \(ByteCount.format(needed)) needed, \(ByteCount.format(free)) free")
            }
        }
    }

    public func snapshot(disks: [String], context: SnapshotContext, deadline: Date) async throws -> ProviderSnapshot {
        let targets = disks.map { ProviderFiles.copyPath(of: $0, context) }
        let chunk = max(chunk, 1 << 20)
        try await BlockingPool.disk.run {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
            defer { buffer.deallocate() }
            for (disk, target) in zip(disks, targets) {
                let src = try BlockFile.open(FilePath(disk), writable: false)
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
                            throw ShadowCopyError.timedOut(phase: "copy of \(disk) while frozen", seconds: 0)
                        }
                        let n = min(chunk, end - at)
                        try dst.copyRange(from: src, sourceOffset: at, to: at, length: n, buffer: buffer)
                        at += n
                    }
                    offset = end
                }
            }
        }
        return ProviderSnapshot(copies: targets)
    }

    public func finish(_ snapshot: ProviderSnapshot, context: SnapshotContext) async throws {
        let copies = snapshot.copies
        try await BlockingPool.disk.run { try ProviderFiles.sync(copies, provider: "copy") }
    }

    public func abort(disks: [String], context: SnapshotContext) async {
        ProviderFiles.removeAll(disks, context)
    }
}
