import VirtualDisk
import Storage

/// Freezes a guest's filesystems through its QEMU guest agent (`guest-fsfreeze-freeze`, or
/// `guest-fsfreeze-freeze-list` for chosen mountpoints).
///
/// An agent found already frozen at prepare (a freeze left by a crashed earlier run) is thawed
/// first, and the result says so in its notes: a Bulwark freeze is always our own, with a deadline.
public struct GuestAgentWriter: SnapshotWriter {
    public let socket: String
    public let mountpoints: [String]
    /// Per-call timeout in seconds (connect, handshake, each command).
    public let callTimeout: Double

    public init(socket: String, mountpoints: [String] = [], callTimeout: Double = 5) {
        self.socket = Paths.canonical(socket)
        self.mountpoints = mountpoints
        self.callTimeout = callTimeout
    }

    public var identity: WriterIdentity {
        WriterIdentity(kind: "qga", name: "qemu-guest-agent", covers: [socket] + mountpoints,
                       key: ([socket] + mountpoints).joined(separator: "|"))
    }

    public var resources: [String] { ["qga:" + socket] }

    public func recovery(for context: SnapshotContext) -> WatchdogAction? { .guestAgent(socket: socket, timeout: callTimeout) }

    private func session<T: Sendable>(_ body: @escaping @Sendable (GuestAgentClient) throws -> T) async throws -> T {
        let (socket, timeout) = (self.socket, callTimeout)
        return try await BlockingPool.control.run {
            let client = try GuestAgentClient(socket: socket, timeout: timeout)
            defer { client.close() }
            return try body(client)
        }
    }

    public func prepare(_ context: SnapshotContext) async throws -> [String] {
        try await session { client in
            try client.execute("guest-ping")
            if try client.freezeStatus() == "frozen" {
                try client.thaw()
                return ["the agent reported its filesystems already frozen; thawed them before the snapshot"]
            }
            return []
        }
    }

    public func freeze(_ context: SnapshotContext) async throws -> [String] {
        let mountpoints = self.mountpoints
        let count = try await session { try $0.freeze(mountpoints: mountpoints) }
        return ["froze \(count) filesystem(s) through the agent"]
    }

    public func thaw(_ context: SnapshotContext) async throws {
        _ = try await session { try $0.thaw() }
    }
}
