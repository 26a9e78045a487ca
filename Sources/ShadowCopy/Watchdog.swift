#if canImport(Glibc)
import Glibc
import Synchronization
#endif
import Foundation
import SystemPackage
import Storage

/// How to start the watchdog process. The library does not assume the `bulwark` binary: the
/// default re-executes the running program (/proc/self/exe) with `snapshot watchdog`, which the CLI
/// provides; a program embedding ShadowCopy calls `Watchdog.serve()` from an equivalent entry.
public struct WatchdogConfiguration: Sendable {
    public var executable: String
    public var arguments: [String]

    public init(executable: String, arguments: [String] = ["snapshot", "watchdog"]) {
        self.executable = executable
        self.arguments = arguments
    }

    /// /proc/self/exe resolved, with `snapshot watchdog`.
    public static var `default`: WatchdogConfiguration {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        let path = n > 0 ? String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : "/proc/self/exe"
        return WatchdogConfiguration(executable: path)
    }
}

/// One line of the coordinator → watchdog protocol (JSON, one object a line, over a socketpair
/// that is the watchdog's standard input). The watchdog answers `ready` once, on the same socket.
enum WatchdogMessage: Codable {
    /// The snapshot, where its state lives, and the monotonic time after which it thaws anyway.
    case start(snapshotID: String, stateDirectory: String, deadline: Double)
    /// About to freeze this writer: thaw it if we die.
    case frozen(identity: WriterIdentity, action: WatchdogAction)
    /// Every writer was thawed cleanly: exit without doing anything.
    case thawed
}

/// The coordinator's side of a running watchdog.
final class WatchdogHandle: @unchecked Sendable {
    let pid: pid_t
    private let fd: Int32
    private let lock = Mutex(())
    private var closed = false

    private init(pid: pid_t, fd: Int32) {
        self.pid = pid
        self.fd = fd
    }

    /// Starts the watchdog in its own session (a kill of our process group does not reach it),
    /// handing it `keep` (resource lock descriptors, so locks outlive us until it has thawed), and
    /// waits for its `ready`. Blocking.
    static func start(_ config: WatchdogConfiguration, stateDirectory: String, keep: [Int32]) throws -> WatchdogHandle {
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw ShadowCopyError.watchdogFailed(reason: "socketpair: \(Errno(rawValue: errno))")
        }
        let logPath = FilePath(stateDirectory).appending("watchdog.log").string
        let logFD = open(logPath, O_CREAT | O_WRONLY | O_APPEND | O_CLOEXEC, 0o644)
        let pid: pid_t
        do {
            defer {
                // Only the child keeps its end: its exit must read as EOF here.
                close(pair[1])
                if logFD >= 0 { close(logFD) }
            }
            pid = try Spawn.start(config.executable, config.arguments, environment: Spawn.environment,
                                  options: .init(stdin: pair[1], stdout: -1, stderr: logFD, keep: keep, newSession: true))
        } catch {
            close(pair[0])
            throw ShadowCopyError.watchdogFailed(reason: "cannot start \(config.executable): \(error)")
        }
        let handle = WatchdogHandle(pid: pid, fd: pair[0])
        // Wait for "ready".
        let deadline = Clock.now() + 5
        var got: [UInt8] = []
        while !got.contains(0x0A) {
            let remaining = deadline - Clock.now()
            if remaining <= 0 {
                handle.kill()
                throw ShadowCopyError.watchdogFailed(reason: "\(config.executable) \(config.arguments.joined(separator: " ")) did not report ready within 5 s (see \(logPath))")
            }
            var p = pollfd(fd: pair[0], events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, Int32(remaining * 1000) + 1) <= 0 { continue }
            var buf = [UInt8](repeating: 0, count: 64)
            let n = recv(pair[0], &buf, 64, Int32(MSG_DONTWAIT))
            if n > 0 { got += buf[..<n]; continue }
            if n < 0, errno == EINTR || errno == EAGAIN { continue }
            handle.kill()
            throw ShadowCopyError.watchdogFailed(reason: "\(config.executable) exited at start (see \(logPath))")
        }
        return handle
    }

    /// Sends one message. Blocking (a few bytes).
    func send(_ message: WatchdogMessage) throws {
        let data = try JSONEncoder().encode(message) + Data([0x0A])
        try lock.withLock { _ in
            guard !closed else { return }
            var done = 0
            while done < data.count {
                let n = data.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + done, $0.count - done, Int32(MSG_NOSIGNAL)) }
                if n > 0 { done += n; continue }
                if n < 0, errno == EINTR { continue }
                throw ShadowCopyError.watchdogFailed(reason: "the watchdog is gone: \(Errno(rawValue: errno))")
            }
        }
    }

    /// Clean end: tells it everything is thawed, and reaps it (waiting at most `wait` seconds).
    func finish(wait: Double = 3) {
        try? send(.thawed)
        closeAndReap(wait: wait)
    }

    /// Kills a watchdog that never became ready.
    func kill() {
        Glibc.kill(pid, SIGKILL)
        closeAndReap(wait: 2)
    }

    /// Ends the connection without `thawed`: the watchdog thaws what it was told about, then exits.
    func abandon(wait: Double = 15) {
        closeAndReap(wait: wait)
    }

    private func closeAndReap(wait: Double) {
        let first = lock.withLock { _ -> Bool in defer { closed = true }; return !closed }
        guard first else { return }
        shutdown(fd, Int32(SHUT_WR))
        let deadline = Clock.now() + wait
        while Clock.now() < deadline {
            if Spawn.wait(pid, noHang: true) != nil { close(fd); return }
            usleep(2_000)
        }
        close(fd)
    }
}

/// The watchdog process: holds its end of the coordinator's socket and thaws every writer it was
/// told about when the socket closes without `thawed` (the coordinator died, even by SIGKILL) or
/// when the deadline passes. Writers it thaws are recorded as failed (retryable when the
/// coordinator died, timed out at the deadline), so the next snapshot resets them and says so.
public enum Watchdog {
    /// Serves on descriptor `fd` (the CLI's hidden `bulwark snapshot watchdog` passes 0); returns the
    /// process exit status.
    public static func serve(fd: Int32 = 0) -> Int32 {
        signal(SIGINT, SIG_IGN)
        signal(SIGTERM, SIG_IGN)
        signal(SIGHUP, SIG_IGN)
        signal(SIGPIPE, SIG_IGN)
        _ = "ready\n".withCString { Glibc.write(fd, $0, 6) }
        var snapshotID = "", stateDirectory = ""
        var deadline = Double.infinity
        var frozen: [(WriterIdentity, WatchdogAction)] = []
        var pending: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        var reason = "the coordinator exited while writers were frozen"
        var errorClass = WriterErrorClass.retryable
        loop: while true {
            let remaining = deadline - Clock.now()
            if remaining <= 0 {
                reason = "the freeze ran past its deadline"
                errorClass = .timedOut
                break
            }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let rc = poll(&p, 1, remaining.isFinite ? Int32(min(remaining * 1000 + 1, 60_000)) : 60_000)
            if rc < 0, errno == EINTR { continue }
            if rc <= 0 { continue }
            let n = read(fd, &buffer, buffer.count)
            if n <= 0 {
                if n < 0, errno == EINTR { continue }
                break
            }
            pending += buffer[..<n]
            while let nl = pending.firstIndex(of: 0x0A) {
                let line = Data(pending[..<nl])
                pending.removeSubrange(...nl)
                guard let message = try? JSONDecoder().decode(WatchdogMessage.self, from: line) else { continue }
                switch message {
                case let .start(id, dir, d):
                    snapshotID = id
                    stateDirectory = dir
                    deadline = d
                case let .frozen(identity, action):
                    frozen.append((identity, action))
                case .thawed:
                    return 0
                }
            }
        }
        if frozen.isEmpty { return 0 }
        note("snapshot \(snapshotID): \(reason); thawing \(frozen.count) writer(s)")
        var outcomes: [(WriterIdentity, String?)] = []
        for (identity, action) in frozen.reversed() {
            do {
                try thaw(action)
                outcomes.append((identity, nil))
                note("thawed \(identity.name) (\(identity.covers.joined(separator: ", ")))")
            } catch {
                outcomes.append((identity, "\(error)"))
                note("could not thaw \(identity.name): \(error)")
            }
        }
        if !stateDirectory.isEmpty {
            try? WriterStateStore(directory: stateDirectory).update { map in
                for (identity, failure) in outcomes {
                    map[identity.id] = WriterRecord(identity: identity, state: .failed, lastError: errorClass,
                                                    lastErrorMessage: "\(reason); the watchdog thawed it" + (failure.map { " (thaw failed: \($0))" } ?? ""),
                                                    snapshotID: snapshotID)
                }
            }
        }
        return 0
    }

    /// Thaws one writer (blocking); retries an agent that is briefly busy.
    public static func thaw(_ action: WatchdogAction) throws {
        switch action {
        case let .filesystem(mountpoint):
            try FilesystemFreezer.thaw(mountpoint)
        case let .guestAgent(socket, timeout):
            var lastError: Error?
            for attempt in 0..<3 {
                do {
                    let client = try GuestAgentClient(socket: socket, timeout: timeout)
                    defer { client.close() }
                    try client.thaw()
                    return
                } catch {
                    lastError = error
                    if attempt < 2 { usleep(100_000) }
                }
            }
            throw lastError!
        case let .hook(path, environment, timeout):
            // The dead coordinator's freeze of this hook may still be running (its process group
            // survives the coordinator): kill it, and wait for it, before the thaw, or its freeze
            // could finish after the thaw and leave the application frozen for good.
            if let marker = environment[HookWriter.runMarkerVariable] {
                let (found, alive) = ProcessScan.killAll(withEnvironment: HookWriter.runMarkerVariable, equalTo: marker,
                                                         wait: TimedProcess.killGrace)
                if found > 0 {
                    note("killed \(found) process(es) of hook \(path) still running" + (alive > 0 ? " (\(alive) blocked in the kernel, SIGKILL pending)" : ""))
                }
            }
            try HookWriter.run(path: path, phase: "thaw", environment: environment, timeout: timeout,
                               log: SnapshotLog(echo: { note($0) }))
        }
    }

    private static func note(_ line: String) {
        let stamp = Timestamp.iso8601()
        _ = try? FileDescriptor.standardError.writeAll(Array("\(stamp) watchdog[\(getpid())]: \(line)\n".utf8))
    }
}
