#if canImport(Glibc)
import Glibc
#endif
import CLinux
import SystemPackage

/// Starting child processes with exactly the descriptors they should have (see `bulwark_spawn`).
enum Spawn {
    struct Options {
        var stdin: Int32 = -1
        var stdout: Int32 = -1
        var stderr: Int32 = -1
        /// Become descriptors 3, 4, ... in the child.
        var keep: [Int32] = []
        var newSession = false
        var newProcessGroup = false
    }

    /// Starts `path` with `arguments` (argv[1...]) and `environment`; returns the pid.
    static func start(_ path: String, _ arguments: [String], environment: [String: String], options: Options) throws -> pid_t {
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        let flags = (options.newSession ? BULWARK_SPAWN_SETSID : 0) | (options.newProcessGroup ? BULWARK_SPAWN_SETPGID : 0)
        let pid = options.keep.withUnsafeBufferPointer { keep in
            bulwark_spawn(path, argv, envp, options.stdin, options.stdout, options.stderr,
                          keep.baseAddress, Int32(keep.count), Int32(flags))
        }
        guard pid > 0 else { throw ShadowCopyError.system(operation: "spawn \(path)", errno: Errno(rawValue: errno)) }
        return pid
    }

    /// A pipe whose ends are close-on-exec (the child gets its end through `Options`).
    static func pipe() throws -> (read: Int32, write: Int32) {
        var fds: [Int32] = [-1, -1]
        guard bulwark_pipe_cloexec(&fds) == 0 else { throw ShadowCopyError.system(operation: "pipe2", errno: Errno(rawValue: errno)) }
        return (fds[0], fds[1])
    }

    /// waitpid, retrying on EINTR; returns the raw status or nil (no such child / still running
    /// with `noHang`).
    static func wait(_ pid: pid_t, noHang: Bool = false) -> Int32? {
        var status: Int32 = 0
        while true {
            let r = waitpid(pid, &status, noHang ? WNOHANG : 0)
            if r == pid { return status }
            if r == 0 { return nil }
            if errno == EINTR { continue }
            return nil
        }
    }

    /// Describes a raw wait status ("exit status 3", "killed by signal 9").
    static func describe(_ status: Int32) -> (exitCode: Int32?, text: String) {
        if status & 0x7f == 0 { let code = (status >> 8) & 0xff; return (code, "exit status \(code)") }
        return (nil, "killed by signal \(status & 0x7f)")
    }

    /// The environment of this process.
    static var environment: [String: String] {
        var env: [String: String] = [:]
        var p = environ
        while let entry = p.pointee {
            let s = String(cString: entry)
            if let eq = s.firstIndex(of: "=") { env[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
            p += 1
        }
        return env
    }
}

/// Runs a program to completion under a timeout, its stdout and stderr drained together (one pipe)
/// line by line; on timeout its whole process group is killed. Blocking.
enum TimedProcess {
    struct Outcome {
        var status: Int32?
        var timedOut: Bool
        var statusText: String
    }

    static func run(_ path: String, _ arguments: [String], environment: [String: String], timeout: Double,
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
        let deadline = Clock.now() + timeout
        var pending: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        var timedOut = false
        func flushLines(final: Bool) {
            while let nl = pending.firstIndex(of: 0x0A) {
                onLine(String(decoding: pending[..<nl], as: UTF8.self))
                pending.removeSubrange(...nl)
            }
            if final, !pending.isEmpty { onLine(String(decoding: pending, as: UTF8.self)); pending.removeAll() }
        }
        var eof = false
        while !eof {
            let remaining = deadline - Clock.now()
            if remaining <= 0 { timedOut = true; break }
            var p = pollfd(fd: r, events: Int16(POLLIN), revents: 0)
            let rc = poll(&p, 1, Int32(min(remaining * 1000 + 1, 60_000)))
            if rc < 0, errno == EINTR { continue }
            if rc <= 0 { continue }
            let n = read(r, &buffer, buffer.count)
            if n > 0 { pending += buffer[..<n]; flushLines(final: false) }
            else if n == 0 { eof = true }
            else if errno != EINTR && errno != EAGAIN { eof = true }
        }
        flushLines(final: true)
        // Output closed: wait for the exit, still under the deadline.
        var status: Int32?
        while !timedOut {
            if let s = Spawn.wait(pid, noHang: true) { status = s; break }
            if Clock.now() >= deadline { timedOut = true; break }
            usleep(5_000)
        }
        if timedOut {
            kill(-pid, SIGKILL)
            kill(pid, SIGKILL)
            _ = Spawn.wait(pid)
            return Outcome(status: nil, timedOut: true, statusText: "killed after its timeout of \(timeout) s")
        }
        return Outcome(status: status, timedOut: false, statusText: status.map { Spawn.describe($0).text } ?? "unknown status")
    }
}
