import Storage
import Targets
import VirtualDisk

/// The chunk checksums of a virtual disk as a chain reads it, compared with a manifest's: what
/// verify and restore check.
public enum ChainDigests {
    /// The first chunk whose SHA-256 differs from `disk.chunks` (its index and the digest read), or
    /// nil when every chunk matches. The chain must have the manifest's virtual size.
    public static func firstMismatch(_ chain: DiskChain, disk: ManifestDisk, progress: ProgressReporter? = nil) throws -> (index: Int, digest: String)? {
        let expected = disk.chunkSize > 0 ? Int((disk.virtualSize + UInt64(disk.chunkSize) - 1) / UInt64(disk.chunkSize)) : -1
        guard disk.chunks.count == expected, chain.leaf.virtualSize == disk.virtualSize else {
            throw TargetError.damaged(path: disk.image, reason: "the manifest lists \(disk.chunks.count) checksums of \(disk.chunkSize) bytes for a \(disk.virtualSize)-byte disk, and the chain reads \(chain.leaf.virtualSize) bytes")
        }
        let checker = Checker(disk: disk)
        try ChainReader(chain, chunkSize: disk.chunkSize).forEach(progress: progress) { try checker.add($0) }
        return try checker.finish()
    }

    /// Checks a stream of pieces (a `ChainReader`'s, in order) against the manifest's checksums as
    /// it goes, so a restore verifies what it writes without reading it twice.
    public final class Checker {
        let disk: ManifestDisk
        let assembler: ChunkAssembler
        public private(set) var mismatch: (index: Int, digest: String)? = nil

        public init(disk: ManifestDisk) {
            self.disk = disk
            assembler = ChunkAssembler(chunkSize: disk.chunkSize, virtualSize: disk.virtualSize)
        }

        public func add(_ piece: ChainReader.Chunk) throws {
            switch piece {
            case let .data(offset, bytes): try assembler.add(data: bytes, at: offset, check)
            case let .hole(range): try assembler.add(hole: range, check)
            }
        }

        /// The first mismatching chunk once every piece was added (the last chunk is checked here).
        public func finish() throws -> (index: Int, digest: String)? {
            try assembler.flush(check)
            return mismatch
        }

        private func check(_ chunk: ChunkAssembler.Complete) throws {
            guard mismatch == nil else { return }
            let digest = chunk.isAllZero ? Digest.zeros(chunk.length) : chunk.withBytes { Digest.sha256($0) }
            if digest != disk.chunks[chunk.index] { mismatch = (chunk.index, digest) }
        }
    }
}
