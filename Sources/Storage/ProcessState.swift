#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import SystemPackage

/// Facts about other processes of this machine, for telling stale leftovers (a temporary file, a lock
/// record) from live ones.
public enum ProcessState {
    /// Whether process `pid` is running: it exists and is not a zombie (a container's PID 1 may never
    /// reap orphans, so `kill(pid, 0)` alone would call a dead orphan alive).
    public static func isRunning(_ pid: Int32) -> Bool {
        guard pid > 0 else { return false }
        guard kill(pid, 0) == 0 || errno == EPERM else { return false }
        guard let stat = try? FileOps.readSmallFile(FilePath("/proc/\(pid)/stat"), limit: 4096) else { return true }
        // "pid (comm) S ...": the state follows the last ')'.
        guard let close = stat.lastIndex(of: ")") else { return true }
        let rest = stat[stat.index(after: close)...].drop { $0 == " " }
        return rest.first != "Z" && rest.first != "X"
    }
}
