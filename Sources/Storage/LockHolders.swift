#if canImport(Glibc)
import Glibc
#endif
import SystemPackage

/// Who holds a file's writer lock (the `flock` every writable `BlockFile` open takes): which process, from `/proc/locks`, so a user can tell a running
/// backup from a stuck one.
public enum LockHolders {
    /// A process holding a lock on the file.
    public struct Holder: Sendable, Equatable {
        public var pid: Int32
        /// Its command name (`/proc/PID/comm`), when readable.
        public var command: String?
    }

    /// Whether another open file description holds the writer lock on `path` (a shared lock cannot be
    /// taken). Readers take no lock, so this is exactly "a writer has it open".
    public static func isLocked(_ path: FilePath) -> Bool {
        // Non-blocking: a FIFO in place of an image must not hang the question.
        let fd = open(path.string, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        guard flock(fd, LOCK_SH | LOCK_NB) == 0 else { return errno == EWOULDBLOCK }
        _ = flock(fd, LOCK_UN)
        return false
    }

    /// The processes holding (not waiting for) a flock on `path`'s inode; empty when none or unknown.
    public static func holders(of path: FilePath) -> [Holder] {
        var st = stat()
        guard stat(path.string, &st) == 0, let table = read("/proc/locks") else { return [] }
        let major = (UInt64(st.st_dev) >> 8) & 0xfff | (UInt64(st.st_dev) >> 32) & ~0xfff
        let minor = UInt64(st.st_dev) & 0xff | (UInt64(st.st_dev) >> 12) & ~0xff
        let device = "\(hex(major)):\(hex(minor))"
        var exact: [Int32] = [], sameInode: [Int32] = []
        for line in table.split(separator: "\n") {
            // "1: FLOCK  ADVISORY  WRITE 1234 fe:00:16222060 0 EOF"; "1: -> FLOCK ..." is a waiter.
            let fields = line.split(separator: " ")
            guard fields.count >= 6, fields[1] == "FLOCK", let pid = Int32(fields[4]), pid > 0 else { continue }
            let id = fields[5].split(separator: ":")
            guard id.count == 3, UInt64(id[2]) == UInt64(st.st_ino) else { continue }
            if "\(id[0]):\(id[1])" == device { exact.append(pid) } else { sameInode.append(pid) }
        }
        // Stacked filesystems (overlayfs) report the lower device: fall back to the inode alone.
        let pids = exact.isEmpty ? sameInode : exact
        return pids.map { pid in
            Holder(pid: pid, command: read("/proc/\(pid)/comm").map { $0.trimmingWhitespace() })
        }
    }

    /// A process other than this one that holds the lock on `path` (the one `StorageError.busy`
    /// names), or nil when none is known.
    public static func otherHolder(of path: FilePath) -> Int32? {
        holders(of: path).first { $0.pid != getpid() }?.pid
    }

    private static func hex(_ v: UInt64) -> String {
        let s = String(v, radix: 16)
        return s.count < 2 ? "0" + s : s
    }

    private static func read(_ path: String) -> String? { try? FileOps.readSmallFile(FilePath(path)) }
}
