import Foundation

/// Where a writer is in the snapshot sequence (the states `vssadmin list writers` shows).
public enum WriterState: String, Codable, Sendable, CaseIterable {
    /// Idle, ready for a snapshot.
    case stable
    /// Prepared; the freeze has not happened yet.
    case waitingForFreeze
    /// Frozen; waiting for the provider to finish and the thaw.
    case waitingForThaw
    /// Thawed; waiting for the completion step.
    case waitingForCompletion
    /// The last snapshot failed in this writer (see its last error). Reset at the next snapshot.
    case failed
}

/// The class of a writer's last error.
public enum WriterErrorClass: String, Codable, Sendable, CaseIterable {
    case none
    /// Transient (agent absent, resource busy, cancelled): a later snapshot may succeed.
    case retryable
    /// The writer itself failed (hook exit status, freeze refused, agent error).
    case nonRetryable
    /// A phase ran past its deadline.
    case timedOut
}

/// What a writer is and what it covers.
public struct WriterIdentity: Codable, Sendable, Equatable, Hashable {
    /// Human name, e.g. `qemu-guest-agent`.
    public var name: String
    /// A stable identifier derived from the kind and what the writer covers (same writer, same id).
    public var id: String
    /// What the writer covers: mountpoints, agent socket, hook path.
    public var covers: [String]
    /// The writer kind: `qga`, `fsfreeze`, `hook` or a custom one.
    public var kind: String

    public init(kind: String, name: String, covers: [String], key: String) {
        self.kind = kind
        self.name = name
        self.covers = covers
        self.id = StableID.make(from: "\(kind)|\(key)")
    }
}

/// The persisted record of one writer (one entry of `writers.json`).
public struct WriterRecord: Codable, Sendable, Equatable {
    public var identity: WriterIdentity
    public var state: WriterState
    public var lastError: WriterErrorClass
    /// The last error's message ("" when none).
    public var lastErrorMessage: String
    /// The snapshot that last touched this writer.
    public var snapshotID: String
    public var updated: Date

    public init(identity: WriterIdentity, state: WriterState, lastError: WriterErrorClass = .none,
                lastErrorMessage: String = "", snapshotID: String, updated: Date = Date()) {
        self.identity = identity
        self.state = state
        self.lastError = lastError
        self.lastErrorMessage = lastErrorMessage
        self.snapshotID = snapshotID
        self.updated = updated
    }
}

/// Deterministic UUID-shaped identifiers (two FNV-1a hashes), so a writer keeps its id across runs.
enum StableID {
    static func make(from text: String) -> String {
        func fnv(_ seed: UInt64) -> UInt64 {
            var h = seed
            for b in text.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
            return h
        }
        let a = fnv(0xcbf2_9ce4_8422_2325), b = fnv(0x84222325_cbf29ce4)
        let hex = String(format: "%016llx%016llx", a, b)
        let c = Array(hex)
        return "\(String(c[0..<8]))-\(String(c[8..<12]))-\(String(c[12..<16]))-\(String(c[16..<20]))-\(String(c[20..<32]))"
    }
}
