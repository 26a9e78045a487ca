import Glibc
import Storage
import SystemPackage
import Synchronization
import VirtualDisk

/// What a mount serves: a readable virtual disk of `size` bytes. Reads may come from several threads
/// (an implementation serializes them if it must). The mount owns the disk and closes it once it is
/// unmounted.
public protocol MountableDisk: AnyObject, Sendable {
    /// The virtual size in bytes.
    var size: UInt64 { get }
    /// The logical sector size (512 or 4096): partition tables count in it.
    var sectorSize: Int { get }
    /// What the disk is, for the mount table (`bulwark:NAME`) and messages: a path, a URL and version.
    var name: String { get }
    /// Fills `buffer` with the virtual bytes at `offset` (the range lies inside the disk).
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws
    func close() throws
}

/// A disk image chain (a leaf and its parents, opened in any `StoreSpace`: a local folder, a target's
/// share) as a `MountableDisk`. Reads are serialized: an open chain has one owner at a time.
public final class ChainDisk: MountableDisk, @unchecked Sendable {
    private let lock = Mutex<Void>(())
    /// Guarded by `lock`.
    private var chain: DiskChain?
    /// Descriptors holding a shared `flock` on each level (local files): writers, whose open takes
    /// the exclusive lock, are refused as busy while the disk is served.
    private var holds: [Int32] = []
    public let size: UInt64
    public let sectorSize: Int
    public let name: String

    /// Takes over an open chain (closed by `close`).
    public init(_ chain: DiskChain, name: String? = nil) {
        size = chain.leaf.virtualSize
        sectorSize = chain.leaf.logicalSectorSize
        self.name = name ?? chain.leaf.path.string
        self.chain = chain
    }

    /// Opens `path` with its parents, read-only, in `space` (see `DiskChain.open`). On local files,
    /// `holdAgainstWriters` takes a shared lock on every level, so that no writer (`disk write`, a
    /// merge, retention) changes the bytes under the view while it lasts; a level a writer has open
    /// already is `StorageError.busy`.
    public convenience init(opening path: FilePath, format: DiskFormat? = nil, in space: any StoreSpace = LocalFileSystem(),
                            holdAgainstWriters: Bool = true) throws {
        let chain = try DiskChain.open(path, writable: false, format: format, in: space)
        var holds: [Int32] = []
        if holdAgainstWriters && space is LocalFileSystem {
            do {
                for level in chain.levels {
                    let fd = open(level.path.string, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
                    guard fd >= 0 else { throw StorageError.io(path: level.path.string, operation: "open", errno: Errno(rawValue: errno)) }
                    holds.append(fd)
                    guard flock(fd, LOCK_SH | LOCK_NB) == 0 else {
                        throw StorageError.busy(path: level.path.string, holder: LockHolders.otherHolder(of: level.path))
                    }
                }
            } catch {
                for fd in holds { _ = Glibc.close(fd) }
                try? chain.close()
                throw error
            }
        }
        self.init(chain, name: space.absolute(path).string)
        self.holds = holds
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        try lock.withLock { _ in
            guard let chain else { throw StorageError.io(path: name, operation: "read", errno: .badFileDescriptor) }
            try chain.leaf.read(into: buffer, at: offset)
        }
    }

    public func close() throws {
        let (open, held) = lock.withLock { _ -> (DiskChain?, [Int32]) in
            defer { chain = nil; holds = [] }
            return (chain, holds)
        }
        defer { for fd in held { _ = Glibc.close(fd) } }
        try open?.close()
    }
}
