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
        // The child calls setpgid itself, but may not have run yet: do it from this side too, so a
        // kill of the group that follows at once cannot miss it (EACCES after its exec is fine).
        if options.newProcessGroup && !options.newSession { _ = setpgid(pid, pid) }
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
