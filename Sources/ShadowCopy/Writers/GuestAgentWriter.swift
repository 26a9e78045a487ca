import Storage

/// Freezes a guest's filesystems through its QEMU guest agent (`guest-fsfreeze-freeze`, or
/// `guest-fsfreeze-freeze-list` for chosen mountpoints).
///
/// An agent found already frozen at prepare (a freeze left by a crashed earlier run) is thawed
/// first, and the result says so in its notes: a Bulwark freeze is always our own, with a deadline.
///
/// The agent silently skips a listed mountpoint it has no filesystem for (a typo, a path of the host
/// instead of the guest) and answers with how many it froze, so that count is checked: a freeze of
/// fewer filesystems than asked (none, with no mountpoints given) fails the writer (`notFrozen`,
/// non-retryable) instead of passing off an unfrozen disk as application-consistent. `prepare`
/// already compares the mountpoints with the agent's `guest-get-fsinfo`, so a typo fails before
/// anything is frozen.
public struct GuestAgentWriter: SnapshotWriter {
    public let socket: String
    public let mountpoints: [String]
    /// Per-call timeout in seconds (connect, handshake, each command).
    public let callTimeout: Double

    public init(socket: String, mountpoints: [String] = [], callTimeout: Double = 5) {
        self.socket = Paths.canonical(socket)
        var unique: [String] = []
        for m in mountpoints where !unique.contains(m) { unique.append(m) }
        self.mountpoints = unique
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
        let (mountpoints, name) = (self.mountpoints, writerName)
        return try await session { client in
            try client.execute("guest-ping")
            var notes: [String] = []
            if try client.freezeStatus() == "frozen" {
                try client.thaw()
                notes.append("the agent reported its filesystems already frozen; thawed them before the snapshot")
            }
            guard !mountpoints.isEmpty else { return notes }
            let seen: [String]
            do { seen = try client.mountpoints() } catch let error as ShadowCopyError {
                // An agent with guest-get-fsinfo disabled: the freeze's count still catches a typo.
                if case .agentError = error { return notes + ["could not list the guest's filesystems (\(error)); the freeze count is checked instead"] }
                throw error
            }
            let missing = mountpoints.filter { !seen.contains($0) }
            if !missing.isEmpty { throw Self.notSeen(name, missing, seen) }
            return notes
        }
    }

    public func freeze(_ context: SnapshotContext) async throws -> [String] {
        let (mountpoints, name) = (self.mountpoints, writerName)
        let count = try await session { client -> Int in
            let count = try client.freeze(mountpoints: mountpoints)
            guard count < max(mountpoints.count, 1) else { return count }
            // Short: thaw what froze (the agent refuses guest-get-fsinfo while frozen), then learn
            // which mountpoints it skipped to name them.
            try client.thaw()
            let seen = (try? client.mountpoints()) ?? []
            let missing = seen.isEmpty ? mountpoints : mountpoints.filter { !seen.contains($0) }
            if mountpoints.isEmpty {
                throw ShadowCopyError.notFrozen(writer: name, mountpoints: ["every filesystem of the guest"],
                                                reason: "the agent froze none (it has no freezable filesystem); give mountpoints, or allow a crash-consistent snapshot")
            }
            if !seen.isEmpty, !missing.isEmpty { throw Self.notSeen(name, missing, seen) }
            throw ShadowCopyError.notFrozen(writer: name, mountpoints: missing.isEmpty ? mountpoints : missing,
                                            reason: "the agent froze \(count) of \(mountpoints.count) filesystem(s); every listed mountpoint must be a distinct filesystem of the guest")
        }
        return ["froze \(count) filesystem(s) through the agent"]
    }

    private var writerName: String { "qemu-guest-agent \(socket)" }

    private static func notSeen(_ name: String, _ missing: [String], _ seen: [String]) -> ShadowCopyError {
        .notFrozen(writer: name, mountpoints: missing,
                   reason: "the agent has no filesystem mounted there (it sees \(seen.isEmpty ? "none" : seen.joined(separator: ", "))); give mountpoints as the guest sees them")
    }

    public func thaw(_ context: SnapshotContext) async throws {
        _ = try await session { try $0.thaw() }
    }
}
