#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Storage

/// Finds and kills processes that are not our children, by what `/proc` says of them. The watchdog
/// uses it for the hooks of a coordinator that died: they were that coordinator's children, so
/// nobody can `waitpid` them, and here PID 1 does not reap orphans, so `kill(pid, 0)` succeeds on a
/// dead one (a zombie): whether a process still runs is read from its state in `/proc/PID/stat`.
enum ProcessScan {
    /// The live (not zombie) processes whose environment holds `variable=value`, with their process
    /// groups. The marker is inherited, so a hook's children are found too.
    static func processes(withEnvironment variable: String, equalTo value: String) -> [(pid: pid_t, pgid: pid_t)] {
        let needle = Array("\(variable)=\(value)".utf8)
        var out: [(pid_t, pid_t)] = []
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        for name in names {
            guard let pid = pid_t(name), pid != getpid() else { continue }
            guard let environ = FileManager.default.contents(atPath: "/proc/\(pid)/environ"),
                  environ.split(separator: 0).contains(where: { Array($0) == needle }),
                  let (state, pgid) = ProcessState.stat(pid), state != "Z" else { continue }
            out.append((pid, pgid))
        }
        return out
    }

    /// Whether `pid` is gone or a zombie.
    static func isDead(_ pid: pid_t) -> Bool {
        guard let (state, _) = ProcessState.stat(pid) else { return true }
        return state == "Z" || state == "X"
    }

    /// SIGKILLs every process marked `variable=value` and the whole group of each, repeating until
    /// none is left alive or `seconds` have passed (a process blocked in the kernel dies only when
    /// that call ends; it runs no more of its own code either way). Returns how many were found and
    /// how many were still alive at the end.
    @discardableResult
    static func killAll(withEnvironment variable: String, equalTo value: String, wait seconds: Double) -> (found: Int, alive: Int) {
        var seen: Set<pid_t> = []
        let deadline = Clock.now() + seconds
        while true {
            let found = processes(withEnvironment: variable, equalTo: value)
            for p in found {
                seen.insert(p.pid)
                if p.pgid > 1 { kill(-p.pgid, SIGKILL) }
                kill(p.pid, SIGKILL)
            }
            let alive = seen.filter { !isDead($0) }
            if (found.isEmpty && alive.isEmpty) || Clock.now() >= deadline { return (seen.count, alive.count) }
            usleep(10_000)
        }
    }
}
