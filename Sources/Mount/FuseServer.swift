import CFuse
import Foundation
import Glibc

/// The filesystem FUSE serves: one folder of read-only files, each a window on the disk. The
/// callbacks are C functions; they find this object through FUSE's private data.
final class FuseServer: @unchecked Sendable {
    let disk: any MountableDisk
    let files: [MountedFile]
    let uid = getuid()
    let gid = getgid()
    let time = timespec(tv_sec: Int(Glibc.time(nil)), tv_nsec: 0)

    init(disk: any MountableDisk, files: [MountedFile]) {
        self.disk = disk
        self.files = files
    }

    static var current: FuseServer {
        Unmanaged<FuseServer>.fromOpaque(fuse_get_context()!.pointee.private_data).takeUnretainedValue()
    }

    /// The index of the file at a FUSE path (`/disk`), nil for the root and unknown names.
    func index(of path: UnsafePointer<CChar>?) -> Int? {
        guard let path else { return nil }
        let name = String(cString: path)
        guard name.hasPrefix("/") else { return nil }
        return files.firstIndex { $0.name == name.dropFirst() }
    }

    func fill(_ st: UnsafeMutablePointer<stat>, file: Int?) {
        memset(st, 0, MemoryLayout<stat>.size)
        st.pointee.st_uid = uid
        st.pointee.st_gid = gid
        st.pointee.st_atim = time
        st.pointee.st_mtim = time
        st.pointee.st_ctim = time
        st.pointee.st_blksize = 4096
        if let file {
            st.pointee.st_mode = S_IFREG | 0o444
            st.pointee.st_nlink = 1
            st.pointee.st_size = Int(files[file].size)
            st.pointee.st_blocks = Int((files[file].size + 511) / 512)
            st.pointee.st_ino = UInt(file + 2)
        } else {
            st.pointee.st_mode = S_IFDIR | 0o555
            st.pointee.st_nlink = 2
            st.pointee.st_ino = 1
        }
    }

    static let operations: fuse_operations = {
        var ops = fuse_operations()
        ops.getattr = { path, st, _ in
            let server = FuseServer.current
            guard let path, let st else { return -EINVAL }
            if strcmp(path, "/") == 0 {
                server.fill(st, file: nil)
                return 0
            }
            guard let i = server.index(of: path) else { return -ENOENT }
            server.fill(st, file: i)
            return 0
        }
        ops.readdir = { path, buffer, filler, _, _, _ in
            let server = FuseServer.current
            guard let path, strcmp(path, "/") == 0 else { return -ENOTDIR }
            guard let filler else { return -EIO }
            _ = filler(buffer, ".", nil, 0, fuse_fill_dir_flags(rawValue: 0))
            _ = filler(buffer, "..", nil, 0, fuse_fill_dir_flags(rawValue: 0))
            for f in server.files { _ = filler(buffer, f.name, nil, 0, fuse_fill_dir_flags(rawValue: 0)) }
            return 0
        }
        ops.open = { path, info in
            let server = FuseServer.current
            guard let i = server.index(of: path) else {
                return path.map { strcmp($0, "/") == 0 } == true ? -EISDIR : -ENOENT
            }
            guard let info else { return -EINVAL }
            guard info.pointee.flags & O_ACCMODE == O_RDONLY, info.pointee.flags & O_TRUNC == 0 else { return -EROFS }
            info.pointee.fh = UInt64(i)
            // The disk never changes under the mount: the kernel may keep what it read.
            bulwark_fuse_keep_cache(info)
            return 0
        }
        ops.read = { path, buffer, size, offset, info in
            let server = FuseServer.current
            guard let buffer, offset >= 0 else { return -EINVAL }
            let i: Int
            if let info, Int(info.pointee.fh) < server.files.count {
                i = Int(info.pointee.fh)
            } else if let found = server.index(of: path) {
                i = found
            } else {
                return -ENOENT
            }
            let file = server.files[i]
            let start = UInt64(offset)
            guard start < file.size else { return 0 }
            let count = Int(min(UInt64(size), file.size - start))
            do {
                try server.disk.read(into: UnsafeMutableRawBufferPointer(start: buffer, count: count), at: file.offset + start)
            } catch {
                FileHandle.standardError.write(Data("bulwark: read of \(file.name) at \(start)+\(count) from \(server.disk.name) failed: \(error)\n".utf8))
                return -EIO
            }
            return Int32(count)
        }
        ops.write = { _, _, _, _, _ in -EROFS }
        ops.truncate = { _, _, _ in -EROFS }
        ops.create = { _, _, _ in -EROFS }
        ops.unlink = { _ in -EROFS }
        ops.mkdir = { _, _ in -EROFS }
        ops.rename = { _, _, _ in -EROFS }
        ops.chmod = { _, _, _ in -EROFS }
        ops.chown = { _, _, _, _ in -EROFS }
        ops.statfs = { _, st in
            guard let st else { return -EINVAL }
            memset(st, 0, MemoryLayout<statvfs>.size)
            st.pointee.f_bsize = 4096
            st.pointee.f_frsize = 4096
            st.pointee.f_namemax = 255
            st.pointee.f_files = UInt(FuseServer.current.files.count + 1)
            return 0
        }
        return ops
    }()
}
