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
        guard let (state, _) = stat(pid) else { return true }
        return state != "Z" && state != "X"
    }

    /// The state letter and the process group of `pid` from `/proc/PID/stat`, or nil when it is gone
    /// (or the table cannot be read).
    public static func stat(_ pid: Int32) -> (state: Character, processGroup: Int32)? {
        guard let text = try? FileOps.readSmallFile(FilePath("/proc/\(pid)/stat"), limit: 4096),
              let close = text.lastIndex(of: ")") else { return nil }
        // After "(comm)": state ppid pgrp ...
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count >= 3, let state = fields[0].first, let group = Int32(fields[2]) else { return nil }
        return (state, group)
    }

    /// This process's PID.
    public static var currentPID: Int32 { getpid() }

    /// When `pid` started, in clock ticks since boot (`/proc/PID/stat` field 22), or nil when it is
    /// gone. With the boot id it tells a PID reused by another process from the one that wrote a record.
    public static func startTicks(_ pid: Int32) -> UInt64? {
        guard let text = try? FileOps.readSmallFile(FilePath("/proc/\(pid)/stat"), limit: 4096),
              let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // fields[0] is field 3 (state); starttime is field 22.
        guard fields.count > 19 else { return nil }
        return UInt64(fields[19])
    }

    /// This boot's random id (`/proc/sys/kernel/random/boot_id`): a record naming another boot id was
    /// written before a reboot, so its process is gone whatever its PID.
    public static let bootID: String = (try? FileOps.readSmallFile(FilePath("/proc/sys/kernel/random/boot_id"), limit: 256))?
        .trimmingWhitespace() ?? "unknown"

    /// This machine's host name.
    public static var hostName: String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
        return String(cString: buffer)
    }
}

