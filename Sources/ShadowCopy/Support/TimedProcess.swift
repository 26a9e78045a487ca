#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization

/// A child started in its own process group (its pid is the group id), which another thread can
/// stop: `stop` sends SIGKILL to the whole group, so whatever the child started (`sleep 30 &`, a
/// pipeline) ends with it.
///
/// The group id stays reserved while the child is an unreaped zombie, so the runner kills the group
/// and marks the process finished *before* reaping it; a `stop` after that does nothing and can never
/// hit a recycled group id.
final class ProcessGroup: Sendable {
    /// The child's pid, which is also its process group id.
    let pgid: pid_t
    private let state = Mutex(State())

    private struct State {
        var stopped = false
        var finished = false
    }

    init(pgid: pid_t) { self.pgid = pgid }

    /// Kills the whole group (SIGKILL: the children of a Foundation `Process` may hold SIGTERM
    /// blocked). Does nothing once the child has finished.
    func stop() {
        state.withLock { s in
            guard !s.finished else { return }
            s.stopped = true
            kill(-pgid, SIGKILL)
            kill(pgid, SIGKILL)
        }
    }

    /// Whether `stop` was called before the child finished.
    var wasStopped: Bool { state.withLock { $0.stopped } }
    var isFinished: Bool { state.withLock { $0.finished } }

    /// Called by the runner when the child has exited but is not reaped yet: kills what is left of
    /// its group and marks it finished.
    fileprivate func finish() {
        state.withLock { s in
            guard !s.finished else { return }
            kill(-pgid, SIGKILL)
            s.finished = true
        }
    }

    /// Waits until the child has finished, at most `seconds`; returns whether it did.
    func waitFinished(seconds: Double) -> Bool {
        let deadline = Clock.now() + seconds
        while !isFinished {
            if Clock.now() >= deadline { return false }
            usleep(5_000)
        }
        return true
    }
}

/// Runs a program to completion under a timeout, in its own process group, its stdout and stderr
/// drained together (one pipe) line by line. Blocking.
///
/// The end is the program's own exit (waited for with `waitid`), not the end of its output: a
/// background child that inherited the pipe (`sleep 30 &`) would otherwise keep it open and make a
/// finished hook look hung until its timeout. On every way out (exit, timeout, `stop`) the whole
/// group is killed with SIGKILL, so nothing a hook started outlives its call; a hook that needs a
/// helper to outlive it (a lock holder released by its thaw) must start it in a session of its own
/// (`setsid`).
enum TimedProcess {
    struct Outcome {
        var status: Int32?
        var timedOut: Bool
        /// Stopped from outside (`ProcessGroup.stop`) before it finished.
        var stopped: Bool
        var statusText: String
    }

    /// How long to wait for a killed child to die before leaving it to a background reaper (a child
    /// blocked in the kernel, say writing into a frozen filesystem, dies only once that ends).
    static let killGrace = 2.0

    static func run(_ path: String, _ arguments: [String], environment: [String: String], timeout: Double,
                    onStart: (ProcessGroup) -> Void = { _ in },
                    onLine: (String) -> Void) throws -> Outcome {
        let (r, w) = try Spawn.pipe()
        let pid: pid_t
        do {
            pid = try Spawn.start(path, arguments, environment: environment,
                                  options: .init(stdout: w, stderr: w, newProcessGroup: true))
        } catch {
            close(r); close(w)
            throw error
        }
        close(w)
        defer { close(r) }
        _ = fcntl(r, F_SETFL, fcntl(r, F_GETFL) | O_NONBLOCK)
        let group = ProcessGroup(pgid: pid)
        onStart(group)
        let deadline = Clock.now() + timeout
        var pending: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        var outputOpen = true
        func drain() {
            while outputOpen {
                let n = read(r, &buffer, buffer.count)
                if n > 0 { pending += buffer[..<n]; continue }
                if n == 0 { outputOpen = false }
                else if errno == EINTR { continue }
                else if errno != EAGAIN { outputOpen = false }
                break
            }
            while let nl = pending.firstIndex(of: 0x0A) {
                onLine(String(decoding: pending[..<nl], as: UTF8.self))
                pending.removeSubrange(...nl)
            }
        }
        var timedOut = false
        while !hasExited(pid) {
            if group.wasStopped { break }
            let remaining = deadline - Clock.now()
            if remaining <= 0 { timedOut = true; break }
            // Short polls: the exit is noticed within 20 ms even while a leftover child keeps the
            // output open.
            var p = pollfd(fd: r, events: Int16(POLLIN), revents: 0)
            if outputOpen { _ = poll(&p, 1, Int32(min(remaining * 1000 + 1, 20))) } else { usleep(UInt32(min(remaining, 0.02) * 1e6)) }
            drain()
        }
        if timedOut || group.wasStopped { group.stop() }
        // The child is dead or dying: give it the grace to become a zombie, kill the rest of its
        // group while the zombie still holds the group id, then reap it.
        let graceEnd = Clock.now() + killGrace
        while !hasExited(pid), Clock.now() < graceEnd { usleep(2_000) }
        drain()
        if !pending.isEmpty { onLine(String(decoding: pending, as: UTF8.self)) }
        let stopped = group.wasStopped && !timedOut
        guard hasExited(pid) else {
            // Stuck in the kernel with SIGKILL pending: it cannot run any more of its own code.
            group.finish()
            Thread.detachNewThread { _ = Spawn.wait(pid) }
            return Outcome(status: nil, timedOut: timedOut, stopped: stopped,
                           statusText: "killed (its process could not end within \(killGrace) s: blocked in the kernel)")
        }
        group.finish()
        let status = Spawn.wait(pid)
        if timedOut {
            return Outcome(status: nil, timedOut: true, stopped: false, statusText: "killed after its timeout of \(timeout) s")
        }
        if stopped {
            return Outcome(status: status, timedOut: false, stopped: true, statusText: "killed: the snapshot stopped it")
        }
        return Outcome(status: status, timedOut: false, stopped: false, statusText: status.map { Spawn.describe($0).text } ?? "unknown status")
    }

    /// Whether `pid` (our child) has exited, without reaping it (`waitid` with WNOWAIT).
    static func hasExited(_ pid: pid_t) -> Bool {
        var info = siginfo_t()
        while true {
            let rc = waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT)
            if rc == 0 { return info.si_signo == SIGCHLD }
            if errno == EINTR { continue }
            return true  // ECHILD: already reaped
        }
    }
}
