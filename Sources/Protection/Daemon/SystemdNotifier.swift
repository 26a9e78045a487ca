#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Foundation

/// A failure to tell systemd something.
public struct NotifyError: Error, CustomStringConvertible, Sendable {
    public var socket: String
    public var reason: String
    public var description: String {
        "systemd notification socket \(socket): \(reason); the service manager will not see the daemon's state (check NotifyAccess= and that the socket still exists)"
    }
}

/// The sd_notify(3) protocol without libsystemd: one datagram per message, `KEY=value` lines, to the
/// AF_UNIX socket named by `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).
///
/// The environment is a parameter, as everywhere in Bulwark's libraries: the command line passes
/// `ProcessInfo.processInfo.environment`, tests pass their own socket. Without `NOTIFY_SOCKET` (not run by
/// systemd, or `Type=simple`) every message is dropped silently.
public struct SystemdNotifier: Sendable {
    /// Where messages go, as `NOTIFY_SOCKET` gives it; nil when not run with a notify socket.
    public let socket: String?
    /// How often systemd expects `WATCHDOG=1` (`WATCHDOG_USEC`), nil when the watchdog is off or the
    /// setting is meant for another process (`WATCHDOG_PID` names another PID). Ping at half of it.
    public let watchdogInterval: TimeInterval?

    public init(environment: [String: String], pid: Int32 = getpid()) {
        if let s = environment["NOTIFY_SOCKET"], !s.isEmpty, s.hasPrefix("/") || s.hasPrefix("@") {
            socket = s
        } else {
            socket = nil
        }
        var interval: TimeInterval?
        if let text = environment["WATCHDOG_USEC"], let usec = UInt64(text), usec > 0 {
            if let owner = environment["WATCHDOG_PID"], let ownerPID = Int32(owner), ownerPID != pid {
                interval = nil
            } else {
                interval = TimeInterval(usec) / 1_000_000
            }
        }
        watchdogInterval = interval
    }

    /// Whether messages are sent anywhere.
    public var isEnabled: Bool { socket != nil }

    /// The service is up (after start, and after a reload).
    public func ready(status: String? = nil) throws {
        try send(["READY=1"] + (status.map { ["STATUS=\($0)"] } ?? []))
    }

    /// The service is reloading its configuration: `RELOADING=1` with the monotonic clock, as
    /// `Type=notify-reload` requires; send `ready()` when done.
    public func reloading() throws {
        try send(["RELOADING=1", "MONOTONIC_USEC=\(Self.monotonicMicroseconds())"])
    }

    /// The service is stopping.
    public func stopping(status: String? = nil) throws {
        try send(["STOPPING=1"] + (status.map { ["STATUS=\($0)"] } ?? []))
    }

    /// The watchdog ping.
    public func watchdog() throws { try send(["WATCHDOG=1"]) }

    /// A one-line status (`systemctl status` shows it).
    public func status(_ text: String) throws { try send(["STATUS=\(text.replacingOccurrences(of: "\n", with: " "))"]) }

    /// Sends `lines` as one datagram.
    public func send(_ lines: [String]) throws {
        guard let socket else { return }
        let message = Array(lines.joined(separator: "\n").utf8)
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw NotifyError(socket: socket, reason: "socket(): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        var path = Array(socket.utf8)
        let abstract = path.first == UInt8(ascii: "@")
        if abstract { path[0] = 0 }
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard path.count < capacity else { throw NotifyError(socket: socket, reason: "the path is longer than \(capacity - 1) bytes") }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: path)
            if !abstract { raw[path.count] = 0 }
        }
        // An abstract name is exactly its bytes (no terminating NUL); a path includes the NUL.
        let length = socklen_t(MemoryLayout<sa_family_t>.size + path.count + (abstract ? 0 : 1))
        while true {
            // MSG_DONTWAIT: a service manager that does not read must never block the daemon.
            let n = message.withUnsafeBytes { bytes in
                withUnsafePointer(to: &addr) { a in
                    a.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        sendto(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT), $0, length)
                    }
                }
            }
            if n >= 0 { return }
            if errno == EINTR { continue }
            throw NotifyError(socket: socket, reason: "sendto(): \(String(cString: strerror(errno)))")
        }
    }

    /// CLOCK_MONOTONIC in microseconds (what `MONOTONIC_USEC=` carries).
    public static func monotonicMicroseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000 + UInt64(ts.tv_nsec) / 1_000
    }
}
