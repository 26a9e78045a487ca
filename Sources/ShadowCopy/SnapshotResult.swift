import Foundation

/// How consistent the point-in-time copy is.
public enum Consistency: String, Codable, Sendable {
    /// Every writer froze its data for the copy.
    case applicationConsistent
    /// No writer froze (none given, or one failed and the policy allowed falling back): the copy is
    /// what a power cut would leave.
    case crashConsistent
}

/// What happened to one writer in one snapshot.
public struct WriterResult: Codable, Sendable, Equatable {
    public var identity: WriterIdentity
    /// The state the writer ended in.
    public var state: WriterState
    public var lastError: WriterErrorClass
    public var errorMessage: String
    /// Whether the writer froze (and so was thawed).
    public var froze: Bool
    /// Whether it was found failed (a stuck writer from an earlier run) and reset at the start.
    public var wasReset: Bool
    /// The state and error it was reset from.
    public var resetFrom: String?
    /// Notes, e.g. "agent was already frozen; thawed it first".
    public var notes: [String]
}

/// The outcome of a snapshot set.
public struct SnapshotResult: Codable, Sendable {
    public var snapshotID: String
    public var consistency: Consistency
    /// The point-in-time copies (one per disk).
    public var copies: [String]
    /// For the differencing provider: the new live leaf of each disk.
    public var newLeaves: [String]
    /// First freeze to last thaw, in seconds (0 when nothing froze).
    public var freezeHoldSeconds: Double
    /// When the first freeze started (nil when nothing froze).
    public var freezeStarted: Date?
    /// Seconds the whole snapshot took.
    public var totalSeconds: Double
    /// The provider that took the copy (for `auto`, the one it chose).
    public var provider: String
    /// Why that provider was chosen, when it was chosen (`auto`); nil when asked for by name.
    public var providerChoice: String?
    /// The output folder (its filesystem; whether the snapshot created it). Nil when the snapshot
    /// failed before it was checked.
    public var output: OutputFolder?
    /// What the user should know about this copy (no writer, so only crash-consistent; a writer
    /// that failed and was left out).
    public var warnings: [String]
    public var writers: [WriterResult]
    /// The job log: hook output and coordinator notes, in order.
    public var log: [String]
}
