import Foundation
import Storage

/// A QEMU guest agent connection: JSON commands over the agent's unix socket, every call bounded by
/// `timeout`. Opening the connection runs the `guest-sync-delimited` handshake (a 0xFF sentinel
/// flushes the agent's parser; its answer is preceded by 0xFF, and the id must come back), so stale
/// answers of an earlier client are skipped.
///
/// Blocking: use from a `BlockingPool` thread. One connection per phase: the agent serves one client at
/// a time, and a fresh connection lets the watchdog thaw while a hung coordinator holds none.
public final class GuestAgentClient {
    public let socketPath: String
    public let timeout: Double
    private let socket: UnixSocket
    private var pending: [UInt8] = []

    /// Connects and synchronizes. Throws `agentUnavailable` (no socket, refused), `agentTimedOut`.
    public init(socket path: String, timeout: Double) throws {
        socketPath = path
        self.timeout = timeout
        do {
            socket = try UnixSocket(connectingTo: path, deadline: Clock.now() + timeout)
        } catch UnixSocket.Failure.timedOut {
            throw ShadowCopyError.agentTimedOut(socket: path, command: "connect", seconds: timeout)
        } catch UnixSocket.Failure.unavailable(let reason) {
            throw ShadowCopyError.agentUnavailable(socket: path, reason: reason)
        } catch {
            throw ShadowCopyError.agentUnavailable(socket: path, reason: "\(error)")
        }
        try synchronize()
    }

    public func close() { socket.close() }

    private func synchronize() throws {
        let id = Int.random(in: 1..<Int(Int32.max))
        let request = try JSONSerialization.data(withJSONObject: ["execute": "guest-sync-delimited", "arguments": ["id": id]])
        let deadline = Clock.now() + timeout
        try io("guest-sync-delimited") { try socket.send([0xFF] + Array(request) + [0x0A], deadline: deadline) }
        // Skip everything up to the agent's 0xFF delimiter.
        while true {
            if let i = pending.firstIndex(of: 0xFF) { pending.removeSubrange(...i); break }
            pending.removeAll()
            let more = try io("guest-sync-delimited") { try socket.receive(deadline: deadline) }
            pending += more
        }
        while true {
            let answer = try readObject("guest-sync-delimited", deadline: deadline)
            if let value = answer["return"] as? Int, value == id { return }
            if answer["error"] != nil { throw agentError("guest-sync-delimited", answer) }
        }
    }

    /// Runs `command` and returns its `return` value.
    @discardableResult
    public func execute(_ command: String, arguments: [String: Any]? = nil) throws -> Any {
        var request: [String: Any] = ["execute": command]
        if let arguments { request["arguments"] = arguments }
        let data = try JSONSerialization.data(withJSONObject: request)
        let deadline = Clock.now() + timeout
        try io(command) { try socket.send(Array(data) + [0x0A], deadline: deadline) }
        let answer = try readObject(command, deadline: deadline)
        if answer["error"] != nil { throw agentError(command, answer) }
        guard let value = answer["return"] else {
            throw ShadowCopyError.agentError(socket: socketPath, command: command, reason: "answer has neither return nor error")
        }
        return value
    }

    /// `guest-fsfreeze-status`: "thawed" or "frozen".
    public func freezeStatus() throws -> String {
        guard let s = try execute("guest-fsfreeze-status") as? String else {
            throw ShadowCopyError.agentError(socket: socketPath, command: "guest-fsfreeze-status", reason: "answer is not a string")
        }
        return s
    }

    /// Freezes the listed mountpoints (all the guest's filesystems when empty); returns how many.
    @discardableResult
    public func freeze(mountpoints: [String]) throws -> Int {
        let value = mountpoints.isEmpty
            ? try execute("guest-fsfreeze-freeze")
            : try execute("guest-fsfreeze-freeze-list", arguments: ["mountpoints": mountpoints])
        return value as? Int ?? 0
    }

    /// The mountpoints of the filesystems the agent sees (`guest-get-fsinfo`): what a
    /// `guest-fsfreeze-freeze-list` can freeze. The agent refuses this call while frozen.
    public func mountpoints() throws -> [String] {
        guard let list = try execute("guest-get-fsinfo") as? [[String: Any]] else {
            throw ShadowCopyError.agentError(socket: socketPath, command: "guest-get-fsinfo", reason: "answer is not a list")
        }
        return list.compactMap { $0["mountpoint"] as? String }
    }

    /// Thaws every frozen filesystem; returns how many.
    @discardableResult
    public func thaw() throws -> Int { try execute("guest-fsfreeze-thaw") as? Int ?? 0 }

    private func readObject(_ command: String, deadline: Double) throws -> [String: Any] {
        while true {
            while let nl = pending.firstIndex(of: 0x0A) {
                let line = Array(pending[..<nl])
                pending.removeSubrange(...nl)
                let trimmed = line.filter { $0 != 0xFF && $0 != 0x0D && $0 != 0x20 }
                if trimmed.isEmpty { continue }
                guard let object = try? JSONSerialization.jsonObject(with: Data(line.filter { $0 != 0xFF })) as? [String: Any] else {
                    throw ShadowCopyError.agentError(socket: socketPath, command: command, reason: "not JSON: \(String(decoding: line.prefix(200), as: UTF8.self))")
                }
                return object
            }
            pending += try io(command) { try socket.receive(deadline: deadline) }
        }
    }

    private func io<T>(_ command: String, _ body: () throws -> T) throws -> T {
        do { return try body() } catch let f as UnixSocket.Failure {
            switch f {
            case .timedOut: throw ShadowCopyError.agentTimedOut(socket: socketPath, command: command, seconds: timeout)
            case .closed: throw ShadowCopyError.agentUnavailable(socket: socketPath, reason: "the agent closed the connection during \(command)")
            case .unavailable(let r): throw ShadowCopyError.agentUnavailable(socket: socketPath, reason: r)
            case let .io(op, e): throw ShadowCopyError.agentError(socket: socketPath, command: command, reason: "\(op): \(e)")
            }
        }
    }

    private func agentError(_ command: String, _ answer: [String: Any]) -> ShadowCopyError {
        let error = answer["error"] as? [String: Any]
        let cls = error?["class"] as? String ?? "Error"
        let desc = error?["desc"] as? String ?? "\(answer)"
        return .agentError(socket: socketPath, command: command, reason: "\(cls): \(desc)")
    }
}
