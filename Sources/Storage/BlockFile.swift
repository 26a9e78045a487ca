#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CLinux
import SystemPackage
import Synchronization

/// A local file or block device opened for positioned I/O: the POSIX `ByteStore`. Whole-buffer
/// `pread`/`pwrite` that retry short transfers, flushes, holes, in-kernel copies and reflinks. Every
/// failure becomes a `StorageError` naming the file.
///
/// Only regular files and block devices are opened (the kind is checked on a non-blocking descriptor
/// first, so a FIFO in place of an image fails at once instead of hanging). A block device's size and
/// sector sizes come from `BLKGETSIZE64`, `BLKSSZGET` and `BLKPBSZGET`; it cannot be truncated.
///
/// Blocking I/O: call it from a thread of `BlockingPool`, never from Swift's cooperative pool.
/// Positioned reads and writes are safe from several threads at once.
public final class BlockFile: ByteStore {
    /// The path the file was opened with.
    public let path: FilePath
    /// The underlying descriptor (for local-only work such as FIFREEZE or FICLONE between files).
    public let descriptor: FileDescriptor
    /// Whether writes are allowed.
    public let isWritable: Bool
    /// Whether this is a block device (fixed size, sector sizes from the device).
    public let isBlockDevice: Bool
    public let deviceSectorSizes: (logical: Int, physical: Int)?
    public var space: any StoreSpace { LocalFileSystem() }
    private let closed = Mutex(false)

    private init(path: FilePath, descriptor: FileDescriptor, isWritable: Bool, isBlockDevice: Bool,
                 sectors: (logical: Int, physical: Int)?) {
        self.path = path
        self.descriptor = descriptor
        self.isWritable = isWritable
        self.isBlockDevice = isBlockDevice
        self.deviceSectorSizes = sectors
    }

    deinit { if !closed.withLock({ $0 }) { try? descriptor.close() } }

    /// Opens an existing regular file or block device. A writable open takes an exclusive advisory
    /// lock (`flock`), so two writers never share an image; a second one gets `StorageError.busy`.
    public static func open(_ path: FilePath, writable: Bool) throws -> BlockFile {
        let fd: FileDescriptor
        do {
            // Non-blocking first: opening a FIFO must not wait for a writer.
            fd = try FileDescriptor.open(path, writable ? .readWrite : .readOnly, options: [.closeOnExec, .nonBlocking])
        } catch let errno as Errno {
            if errno == .noSuchFileOrDirectory { throw StorageError.notFound(path: path.string) }
            if errno == .isDirectory { throw StorageError.notAFile(path: path.string, kind: "folder") }
            if errno == .noSuchAddressOrDevice { throw StorageError.notAFile(path: path.string, kind: "FIFO or socket with no peer") }
            throw StorageError.io(path: path.string, operation: "open", errno: errno)
        }
        var st = stat()
        guard fstat(fd.rawValue, &st) == 0 else {
            let e = Errno(rawValue: errno)
            try? fd.close()
            throw StorageError.io(path: path.string, operation: "fstat", errno: e)
        }
        let mode = st.st_mode & S_IFMT
        guard mode == S_IFREG || mode == S_IFBLK else {
            try? fd.close()
            throw StorageError.notAFile(path: path.string, kind: LocalFileSystem.kindName(mode))
        }
        // Back to blocking I/O for the file itself.
        let flags = fcntl(fd.rawValue, F_GETFL)
        if flags >= 0 { _ = fcntl(fd.rawValue, F_SETFL, flags & ~O_NONBLOCK) }
        var sectors: (logical: Int, physical: Int)?
        if mode == S_IFBLK {
            var logical: Int32 = 512
            var physical: UInt32 = 512
            if bulwark_blk_sector_sizes(fd.rawValue, &logical, &physical) == 0 {
                sectors = (Int(logical), Int(physical))
            } else {
                sectors = (512, 512)
            }
        }
        let file = BlockFile(path: path, descriptor: fd, isWritable: writable, isBlockDevice: mode == S_IFBLK, sectors: sectors)
        if writable { try file.lockExclusive() }
        return file
    }

    /// Creates a new file; fails with `StorageError.exists` if one is there already.
    public static func create(_ path: FilePath, permissions: FilePermissions = [.ownerReadWrite, .groupRead, .otherRead]) throws -> BlockFile {
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(path, .readWrite, options: [.create, .exclusiveCreate, .closeOnExec], permissions: permissions)
        } catch let errno as Errno {
            if errno == .fileExists { throw StorageError.exists(path: path.string) }
            if errno == .noSuchFileOrDirectory { throw StorageError.notFound(path: path.removingLastComponent().string) }
            if errno == .noSpace { throw StorageError.insufficientSpace(path: path.string, needed: 1, available: 0) }
            throw StorageError.io(path: path.string, operation: "create", errno: errno)
        }
        let file = BlockFile(path: path, descriptor: fd, isWritable: true, isBlockDevice: false, sectors: nil)
        try file.lockExclusive()
        return file
    }

    /// Takes the writer's lock, waiting up to `lockPatience` for a holder to go: a lock can outlive
    /// its owner's close for a moment, when another thread of the process forked and the child still
    /// holds a copy of the descriptor until its exec closes it.
    private func lockExclusive() throws {
        var waited: UInt32 = 0
        while flock(descriptor.rawValue, LOCK_EX | LOCK_NB) != 0 {
            let e = Errno(rawValue: errno)
            guard e == .wouldBlock else { throw StorageError.io(path: path.string, operation: "flock", errno: e) }
            guard waited < Self.lockPatience else {
                throw StorageError.busy(path: path.string, holder: LockHolders.otherHolder(of: path))
            }
            usleep(10_000)
            waited += 10_000
        }
    }

    /// Microseconds a writable open waits for another holder of the lock before reporting it busy.
    static let lockPatience: UInt32 = 1_000_000

    /// Closes the descriptor (and so releases the lock). Later calls do nothing.
    public func close() throws {
        let wasClosed = closed.withLock { c -> Bool in defer { c = true }; return c }
        guard !wasClosed else { return }
        do { try descriptor.close() } catch let e as Errno {
            throw StorageError.io(path: path.string, operation: "close", errno: e)
        }
    }

    /// The file's current size in bytes (a block device's from `BLKGETSIZE64`).
    public func size() throws -> UInt64 {
        if isBlockDevice {
            var bytes: UInt64 = 0
            guard bulwark_blk_size(descriptor.rawValue, &bytes) == 0 else { throw fail("ioctl(BLKGETSIZE64)") }
            return bytes
        }
        var st = stat()
        guard fstat(descriptor.rawValue, &st) == 0 else { throw fail("fstat") }
        return UInt64(st.st_size)
    }

    /// Bytes the file occupies on its filesystem (sparse files occupy less than their size).
    public func allocatedBytes() throws -> UInt64 {
        if isBlockDevice { return try size() }
        var st = stat()
        guard fstat(descriptor.rawValue, &st) == 0 else { throw fail("fstat") }
        return UInt64(st.st_blocks) * 512
    }

    /// Reads exactly `buffer.count` bytes at `offset`; reading past the end is `StorageError.endOfFile`.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        var done = 0
        while done < buffer.count {
            let n: Int
            do {
                n = try descriptor.read(fromAbsoluteOffset: Int64(offset) + Int64(done),
                                        into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]))
            } catch let e as Errno {
                throw StorageError.io(path: path.string, operation: "read at \(offset + UInt64(done))", errno: e)
            }
            if n == 0 {
                throw StorageError.endOfFile(path: path.string, needed: offset + UInt64(buffer.count), actual: (try? size()) ?? offset + UInt64(done))
            }
            done += n
        }
    }

    /// Writes all of `buffer` at `offset`.
    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        guard isWritable else { throw StorageError.readOnly(path: path.string) }
        var done = 0
        while done < buffer.count {
            do {
                done += try descriptor.write(toAbsoluteOffset: Int64(offset) + Int64(done),
                                             UnsafeRawBufferPointer(rebasing: buffer[done...]))
            } catch let e as Errno {
                if e == .noSpace {
                    throw StorageError.insufficientSpace(path: path.string, needed: UInt64(buffer.count - done),
                                                         available: (try? LocalFileSystem.available(at: path)) ?? 0)
                }
                throw StorageError.io(path: path.string, operation: "write at \(offset + UInt64(done))", errno: e)
            }
        }
    }

    /// Sets the file's size; growing leaves a hole that reads as zeros. A block device keeps its
    /// size: asking for another one is refused.
    public func truncate(to size: UInt64) throws {
        guard isWritable else { throw StorageError.readOnly(path: path.string) }
        if isBlockDevice {
            let current = try self.size()
            guard size <= current else {
                throw StorageError.unsupported(path: path.string, reason: "a block device of \(ByteCount.format(current)) cannot grow to \(ByteCount.format(size))")
            }
            return
        }
        guard size <= UInt64(Int64.max) else { throw StorageError.invalidArgument("\(path.string): size \(size) is too large for a file") }
        guard ftruncate(descriptor.rawValue, off_t(size)) == 0 else { throw fail("ftruncate to \(size)") }
    }

    /// Flushes data and metadata to stable storage (`fsync`).
    public func flush() throws {
        guard fsync(descriptor.rawValue) == 0 else { throw fail("fsync") }
    }

    /// Flushes data (and the metadata needed to read it back) without the rest (`fdatasync`).
    public func flushData() throws {
        guard fdatasync(descriptor.rawValue) == 0 else { throw fail("fdatasync") }
    }

    @discardableResult
    public func punchHole(at offset: UInt64, length: UInt64) throws -> Bool {
        guard isWritable else { throw StorageError.readOnly(path: path.string) }
        if bulwark_fallocate(descriptor.rawValue, BULWARK_FALLOC_PUNCH_HOLE | BULWARK_FALLOC_KEEP_SIZE, Int64(offset), Int64(length)) == 0 {
            return true
        }
        let e = Errno(rawValue: errno)
        if e == .notSupported || e == .invalidArgument || e == .operationNotSupportedByDevice { return false }
        throw StorageError.io(path: path.string, operation: "fallocate(punch hole)", errno: e)
    }

    public func preallocate(at offset: UInt64, length: UInt64) throws {
        guard isWritable else { throw StorageError.readOnly(path: path.string) }
        guard !isBlockDevice else { return }
        if bulwark_fallocate(descriptor.rawValue, 0, Int64(offset), Int64(length)) != 0 {
            let e = Errno(rawValue: errno)
            if e == .notSupported { return }
            if e == .noSpace {
                throw StorageError.insufficientSpace(path: path.string, needed: length, available: (try? LocalFileSystem.available(at: path)) ?? 0)
            }
            throw StorageError.io(path: path.string, operation: "fallocate", errno: e)
        }
    }

    public func nextData(from offset: UInt64) throws -> UInt64? {
        if isBlockDevice { return offset < (try size()) ? offset : nil }
        let r = lseek(descriptor.rawValue, off_t(offset), 3 /* SEEK_DATA */)
        if r < 0 {
            let e = Errno(rawValue: errno)
            if e == .noSuchAddressOrDevice { return nil }
            if e == .invalidArgument { return offset }  // filesystem without SEEK_DATA: all data
            throw StorageError.io(path: path.string, operation: "lseek(SEEK_DATA)", errno: e)
        }
        return UInt64(r)
    }

    public func nextHole(from offset: UInt64) throws -> UInt64 {
        if isBlockDevice { return try size() }
        let r = lseek(descriptor.rawValue, off_t(offset), 4 /* SEEK_HOLE */)
        if r < 0 {
            let e = Errno(rawValue: errno)
            if e == .invalidArgument || e == .noSuchAddressOrDevice { return try size() }
            throw StorageError.io(path: path.string, operation: "lseek(SEEK_HOLE)", errno: e)
        }
        return UInt64(r)
    }

    public func advise(_ advice: StoreAdvice) {
        switch advice {
        case .sequential:
            _ = posix_fadvise(descriptor.rawValue, 0, 0, POSIX_FADV_SEQUENTIAL)
        case .willNeed(let r):
            _ = posix_fadvise(descriptor.rawValue, off_t(r.lowerBound), off_t(r.count), POSIX_FADV_WILLNEED)
        case .dontNeed(let r):
            _ = posix_fadvise(descriptor.rawValue, off_t(r.lowerBound), off_t(r.count), POSIX_FADV_DONTNEED)
        case .startWriteback(let r):
            _ = bulwark_start_writeback(descriptor.rawValue, Int64(r?.lowerBound ?? 0), Int64(r?.count ?? 0))
        }
    }

    /// The filesystem block size (the unit of reflinks); 4096 if it cannot be read.
    public var allocationUnit: UInt64 {
        var st = statvfs()
        guard fstatvfs(descriptor.rawValue, &st) == 0, st.f_bsize > 0 else { return 4096 }
        return UInt64(st.f_bsize)
    }

    /// Copies `length` bytes from `source` at `sourceOffset` to this file at `offset`: inside the kernel
    /// (`copy_file_range`, which reflinks where the filesystem can) when both are local files, else
    /// through `buffer`.
    public func copyRange(from source: any ByteStore, sourceOffset: UInt64, to offset: UInt64, length: UInt64, buffer: UnsafeMutableRawBufferPointer) throws {
        guard isWritable else { throw StorageError.readOnly(path: path.string) }
        guard let local = source as? BlockFile else {
            return try copyThroughBuffer(from: source, sourceOffset: sourceOffset, to: offset, length: length, buffer: buffer)
        }
        var done: UInt64 = 0
        while done < length {
            var inOff = Int64(sourceOffset + done)
            var outOff = Int64(offset + done)
            let n = bulwark_copy_file_range(local.descriptor.rawValue, &inOff, descriptor.rawValue, &outOff, Int(min(length - done, 1 << 30)))
            if n > 0 { done += UInt64(n); continue }
            if n == 0 { throw StorageError.endOfFile(path: local.path.string, needed: sourceOffset + length, actual: (try? local.size()) ?? 0) }
            let e = Errno(rawValue: errno)
            if e == .noSpace { throw StorageError.insufficientSpace(path: path.string, needed: length - done, available: 0) }
            break  // EXDEV, ENOSYS, EINVAL...: copy through user space
        }
        if done < length {
            try copyThroughBuffer(from: source, sourceOffset: sourceOffset + done, to: offset + done, length: length - done, buffer: buffer)
        }
    }

    /// Makes `length` bytes of this file at `offset` share `source`'s blocks at `sourceOffset` (a
    /// reflink: no data is read or written). Returns false where the filesystem cannot (no reflink
    /// support, different filesystems, offsets or length not aligned to its block, a source that is
    /// not a local file); throws on real failures (no space for the metadata, I/O errors).
    public func cloneRange(from source: any ByteStore, sourceOffset: UInt64, to offset: UInt64, length: UInt64) throws -> Bool {
        guard isWritable else { throw StorageError.readOnly(path: path.string) }
        guard let local = source as? BlockFile, !isBlockDevice, !local.isBlockDevice else { return false }
        if bulwark_ficlone_range(descriptor.rawValue, Int64(offset), local.descriptor.rawValue, Int64(sourceOffset), Int64(length)) == 0 {
            return true
        }
        switch Errno(rawValue: errno) {
        case .notSupported, .notSupportedOnSocket, .improperLink, .invalidArgument, .notPermitted, .operationNotSupportedByDevice,
             .inappropriateIOCTLForDevice, .badFileDescriptor:
            return false
        case .noSpace:
            throw StorageError.insufficientSpace(path: path.string, needed: length, available: (try? LocalFileSystem.available(at: path)) ?? 0)
        default:
            throw fail("reflink \(length) bytes from \(local.path.string)")
        }
    }

    private func fail(_ operation: String) -> StorageError {
        StorageError.io(path: path.string, operation: operation, errno: Errno(rawValue: errno))
    }
}

