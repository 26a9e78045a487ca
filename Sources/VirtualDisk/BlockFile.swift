#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CLinux
import SystemPackage

/// A file opened for positioned block I/O: whole-buffer `pread`/`pwrite` that retry short transfers,
/// flushes, holes and in-kernel copies. Every failure becomes a `DiskError` naming the file.
///
/// This is blocking I/O: call it from a dedicated thread or through `BlockingIO.run`, never directly
/// from an actor or task on Swift's cooperative pool.
public final class BlockFile {
    /// The path the file was opened with.
    public let path: FilePath
    /// The underlying descriptor.
    public let descriptor: FileDescriptor
    /// Whether writes are allowed.
    public let isWritable: Bool
    private var isClosed = false

    private init(path: FilePath, descriptor: FileDescriptor, isWritable: Bool) {
        self.path = path
        self.descriptor = descriptor
        self.isWritable = isWritable
    }

    deinit { if !isClosed { try? descriptor.close() } }

    /// Opens an existing file. A writable open takes an exclusive advisory lock (`flock`), so two
    /// writers never share an image; a second one gets `DiskError.busy`.
    public static func open(_ path: FilePath, writable: Bool) throws -> BlockFile {
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(path, writable ? .readWrite : .readOnly, options: [.closeOnExec])
        } catch let errno as Errno {
            if errno == .noSuchFileOrDirectory { throw DiskError.notFound(path: path.string) }
            throw DiskError.io(path: path.string, operation: "open", errno: errno)
        }
        let file = BlockFile(path: path, descriptor: fd, isWritable: writable)
        if writable { try file.lockExclusive() }
        var st = stat()
        if fstat(fd.rawValue, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR {
            throw DiskError.invalidArgument("\(path.string): is a directory, not a disk image")
        }
        return file
    }

    /// Creates a new file; fails with `DiskError.exists` if one is there already.
    public static func create(_ path: FilePath, permissions: FilePermissions = [.ownerReadWrite, .groupRead, .otherRead]) throws -> BlockFile {
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(path, .readWrite, options: [.create, .exclusiveCreate, .closeOnExec], permissions: permissions)
        } catch let errno as Errno {
            if errno == .fileExists { throw DiskError.exists(path: path.string) }
            throw DiskError.io(path: path.string, operation: "create", errno: errno)
        }
        let file = BlockFile(path: path, descriptor: fd, isWritable: true)
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
            guard e == .wouldBlock else { throw DiskError.io(path: path.string, operation: "flock", errno: e) }
            guard waited < Self.lockPatience else { throw DiskError.busy(path: path.string) }
            usleep(10_000)
            waited += 10_000
        }
    }

    /// Microseconds a writable open waits for another holder of the lock before reporting it busy.
    static let lockPatience: UInt32 = 1_000_000

    /// Closes the descriptor (and so releases the lock). Later calls do nothing.
    public func close() throws {
        guard !isClosed else { return }
        isClosed = true
        do { try descriptor.close() } catch let e as Errno {
            throw DiskError.io(path: path.string, operation: "close", errno: e)
        }
    }

    /// The file's current size in bytes.
    public func size() throws -> UInt64 {
        var st = stat()
        guard fstat(descriptor.rawValue, &st) == 0 else { throw fail("fstat") }
        return UInt64(st.st_size)
    }

    /// Bytes the file occupies on its filesystem (sparse files occupy less than their size).
    public func allocatedBytes() throws -> UInt64 {
        var st = stat()
        guard fstat(descriptor.rawValue, &st) == 0 else { throw fail("fstat") }
        return UInt64(st.st_blocks) * 512
    }

    /// Reads exactly `buffer.count` bytes at `offset`; reading past the end is `DiskError.truncated`.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        var done = 0
        while done < buffer.count {
            let n: Int
            do {
                n = try descriptor.read(fromAbsoluteOffset: Int64(offset) + Int64(done),
                                        into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]))
            } catch let e as Errno {
                throw DiskError.io(path: path.string, operation: "read at \(offset + UInt64(done))", errno: e)
            }
            if n == 0 {
                throw DiskError.truncated(path: path.string, needed: offset + UInt64(buffer.count), actual: (try? size()) ?? offset + UInt64(done))
            }
            done += n
        }
    }

    /// Reads `count` bytes at `offset` into a new array.
    public func read(count: Int, at offset: UInt64) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        try bytes.withUnsafeMutableBytes { try read(into: $0, at: offset) }
        return bytes
    }

    /// Writes all of `buffer` at `offset`.
    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        guard isWritable else { throw DiskError.readOnly(path: path.string) }
        var done = 0
        while done < buffer.count {
            do {
                done += try descriptor.write(toAbsoluteOffset: Int64(offset) + Int64(done),
                                             UnsafeRawBufferPointer(rebasing: buffer[done...]))
            } catch let e as Errno {
                if e == .noSpace {
                    throw DiskError.insufficientSpace(path: path.string, needed: UInt64(buffer.count - done), available: 0)
                }
                throw DiskError.io(path: path.string, operation: "write at \(offset + UInt64(done))", errno: e)
            }
        }
    }

    /// Writes `bytes` at `offset`.
    public func write(_ bytes: [UInt8], at offset: UInt64) throws {
        try bytes.withUnsafeBytes { try write($0, at: offset) }
    }

    /// Writes `count` zero bytes at `offset`, in bounded chunks.
    public func writeZeros(count: UInt64, at offset: UInt64) throws {
        let chunk = Int(min(count, 1 << 20))
        guard chunk > 0 else { return }
        let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        var done: UInt64 = 0
        while done < count {
            let n = Int(min(UInt64(chunk), count - done))
            try write(UnsafeRawBufferPointer(rebasing: zeros[..<n]), at: offset + done)
            done += UInt64(n)
        }
    }

    /// Sets the file's size; growing leaves a hole that reads as zeros.
    public func truncate(to size: UInt64) throws {
        guard isWritable else { throw DiskError.readOnly(path: path.string) }
        guard ftruncate(descriptor.rawValue, off_t(size)) == 0 else { throw fail("ftruncate to \(size)") }
    }

    /// Flushes data and metadata to stable storage (`fsync`).
    public func sync() throws {
        guard fsync(descriptor.rawValue) == 0 else { throw fail("fsync") }
    }

    /// Deallocates `length` bytes at `offset`, keeping the size; the range reads as zeros afterwards.
    /// Returns false when the filesystem cannot punch holes (the caller may write zeros instead).
    @discardableResult
    public func punchHole(at offset: UInt64, length: UInt64) throws -> Bool {
        guard isWritable else { throw DiskError.readOnly(path: path.string) }
        if bulwark_fallocate(descriptor.rawValue, BULWARK_FALLOC_PUNCH_HOLE | BULWARK_FALLOC_KEEP_SIZE, Int64(offset), Int64(length)) == 0 {
            return true
        }
        let e = Errno(rawValue: errno)
        if e == .notSupported || e == .invalidArgument { return false }
        throw DiskError.io(path: path.string, operation: "fallocate(punch hole)", errno: e)
    }

    /// Reserves space for `length` bytes at `offset` so later writes cannot fail for lack of space.
    public func preallocate(at offset: UInt64, length: UInt64) throws {
        guard isWritable else { throw DiskError.readOnly(path: path.string) }
        if bulwark_fallocate(descriptor.rawValue, 0, Int64(offset), Int64(length)) != 0 {
            let e = Errno(rawValue: errno)
            if e == .notSupported { return }
            if e == .noSpace {
                throw DiskError.insufficientSpace(path: path.string, needed: length, available: (try? FileSystemSpace.available(at: path)) ?? 0)
            }
            throw DiskError.io(path: path.string, operation: "fallocate", errno: e)
        }
    }

    /// The next data region at or after `offset` (`SEEK_DATA`), or nil when only a hole follows.
    public func nextData(from offset: UInt64) throws -> UInt64? {
        let r = lseek(descriptor.rawValue, off_t(offset), 3 /* SEEK_DATA */)
        if r < 0 {
            let e = Errno(rawValue: errno)
            if e == .noSuchAddressOrDevice { return nil }
            if e == .invalidArgument { return offset }  // filesystem without SEEK_DATA: all data
            throw DiskError.io(path: path.string, operation: "lseek(SEEK_DATA)", errno: e)
        }
        return UInt64(r)
    }

    /// The next hole at or after `offset` (`SEEK_HOLE`); the file's end counts as a hole.
    public func nextHole(from offset: UInt64) throws -> UInt64 {
        let r = lseek(descriptor.rawValue, off_t(offset), 4 /* SEEK_HOLE */)
        if r < 0 {
            let e = Errno(rawValue: errno)
            if e == .invalidArgument || e == .noSuchAddressOrDevice { return try size() }
            throw DiskError.io(path: path.string, operation: "lseek(SEEK_HOLE)", errno: e)
        }
        return UInt64(r)
    }

    /// Copies `length` bytes from `source` at `sourceOffset` to this file at `offset` inside the kernel
    /// (`copy_file_range`, which reflinks where the filesystem can), falling back to read/write.
    public func copy(from source: BlockFile, sourceOffset: UInt64, to offset: UInt64, length: UInt64, buffer: UnsafeMutableRawBufferPointer) throws {
        guard isWritable else { throw DiskError.readOnly(path: path.string) }
        var done: UInt64 = 0
        var inKernel = true
        while done < length {
            if inKernel {
                var inOff = Int64(sourceOffset + done)
                var outOff = Int64(offset + done)
                let n = bulwark_copy_file_range(source.descriptor.rawValue, &inOff, descriptor.rawValue, &outOff, Int(min(length - done, 1 << 30)))
                if n > 0 { done += UInt64(n); continue }
                if n == 0 { throw DiskError.truncated(path: source.path.string, needed: sourceOffset + length, actual: (try? source.size()) ?? 0) }
                let e = Errno(rawValue: errno)
                if e == .noSpace { throw DiskError.insufficientSpace(path: path.string, needed: length - done, available: 0) }
                inKernel = false  // EXDEV, ENOSYS, EINVAL...: copy through user space
                continue
            }
            let n = Int(min(UInt64(buffer.count), length - done))
            let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[..<n])
            try source.read(into: slice, at: sourceOffset + done)
            try write(UnsafeRawBufferPointer(slice), at: offset + done)
            done += UInt64(n)
        }
    }

    /// Makes `length` bytes of this file at `offset` share `source`'s blocks at `sourceOffset` (a
    /// reflink: no data is read or written). Returns false where the filesystem cannot (no reflink
    /// support, different filesystems, offsets or length not aligned to its block); throws on real
    /// failures (no space for the metadata, I/O errors).
    public func cloneRange(from source: BlockFile, sourceOffset: UInt64, to offset: UInt64, length: UInt64) throws -> Bool {
        guard isWritable else { throw DiskError.readOnly(path: path.string) }
        if bulwark_ficlone_range(descriptor.rawValue, Int64(offset), source.descriptor.rawValue, Int64(sourceOffset), Int64(length)) == 0 {
            return true
        }
        switch Errno(rawValue: errno) {
        case .notSupported, .notSupportedOnSocket, .improperLink, .invalidArgument, .notPermitted, .operationNotSupportedByDevice,
             .inappropriateIOCTLForDevice, .badFileDescriptor:
            return false
        case .noSpace:
            throw DiskError.insufficientSpace(path: path.string, needed: length, available: (try? FileSystemSpace.available(at: path)) ?? 0)
        default:
            throw fail("reflink \(length) bytes from \(source.path.string)")
        }
    }

    private func fail(_ operation: String) -> DiskError {
        DiskError.io(path: path.string, operation: operation, errno: Errno(rawValue: errno))
    }
}

/// Free space of filesystems.
public enum FileSystemSpace {
    /// Bytes available to unprivileged writers on the filesystem holding `path` (or its directory).
    public static func available(at path: FilePath) throws -> UInt64 {
        var st = statvfs()
        var probe = path
        while statvfs(probe.string, &st) != 0 {
            let e = Errno(rawValue: errno)
            guard e == .noSuchFileOrDirectory, !probe.removingLastComponent().isEmpty, probe.removingLastComponent() != probe else {
                throw DiskError.io(path: path.string, operation: "statvfs", errno: e)
            }
            probe = probe.removingLastComponent()
        }
        return UInt64(st.f_bavail) * UInt64(st.f_frsize)
    }
}

/// Whole-file helpers used by operations that publish a file atomically.
public enum FileOps {
    /// Renames `from` to `to` atomically and flushes the directory so the rename is durable.
    public static func rename(_ from: FilePath, to: FilePath) throws {
        guard Glibc.rename(from.string, to.string) == 0 else {
            throw DiskError.io(path: from.string, operation: "rename to \(to.string)", errno: Errno(rawValue: errno))
        }
        try syncDirectory(of: to)
    }

    /// Removes a file; a missing file is not an error.
    public static func remove(_ path: FilePath) throws {
        if unlink(path.string) != 0, errno != ENOENT {
            throw DiskError.io(path: path.string, operation: "unlink", errno: Errno(rawValue: errno))
        }
    }

    /// Whether a file (or anything) exists at `path`.
    public static func exists(_ path: FilePath) -> Bool {
        var st = stat()
        return stat(path.string, &st) == 0
    }

    /// fsyncs the directory holding `path`, making a create, rename or unlink in it durable.
    public static func syncDirectory(of path: FilePath) throws {
        var dir = path.removingLastComponent()
        if dir.isEmpty { dir = "." }
        let fd = Glibc.open(dir.string, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw DiskError.io(path: dir.string, operation: "open directory", errno: Errno(rawValue: errno)) }
        defer { Glibc.close(fd) }
        _ = fsync(fd)
    }

    /// The canonical absolute path of an existing file (symlinks resolved).
    public static func canonical(_ path: FilePath) -> FilePath {
        guard let p = realpath(path.string, nil) else { return absolute(path) }
        defer { free(p) }
        return FilePath(platformString: p)
    }

    /// `path` made absolute against the current directory, without touching the filesystem.
    public static func absolute(_ path: FilePath) -> FilePath {
        if path.isAbsolute { return path.lexicallyNormalized() }
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        guard getcwd(&buffer, buffer.count) != nil else { return path }
        return FilePath(platformString: buffer).pushing(path).lexicallyNormalized()
    }
}
