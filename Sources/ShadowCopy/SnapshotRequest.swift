import Foundation

/// Deadlines and the failure policy of a snapshot.
public struct SnapshotPolicy: Sendable {
    /// Longest time writers stay frozen, first freeze to last thaw (VSS: 10 s). Freezes and the
    /// provider's copy run inside it; past it everything is thawed and the snapshot fails.
    public var holdTimeout: Double
    /// Per writer, for prepare (and the provider's prepare).
    public var prepareTimeout: Double
    /// Per writer, for thaw.
    public var thawTimeout: Double
    /// Per writer, for complete (and the provider's post-thaw finish).
    public var completeTimeout: Double
    /// The provider's time when nothing is frozen (crash-consistent snapshots).
    public var unfrozenProviderTimeout: Double
    /// How long to wait for another snapshot of the same resource.
    public var lockTimeout: Double
    /// When a writer fails, continue without it and mark the snapshot crash-consistent instead of
    /// failing (default: a writer failure fails the snapshot).
    public var fallBackToCrashConsistent: Bool

    public init(holdTimeout: Double = 10, prepareTimeout: Double = 30, thawTimeout: Double = 10,
                completeTimeout: Double = 60, unfrozenProviderTimeout: Double = 3600, lockTimeout: Double = 120,
                fallBackToCrashConsistent: Bool = false) {
        self.holdTimeout = holdTimeout
        self.prepareTimeout = prepareTimeout
        self.thawTimeout = thawTimeout
        self.completeTimeout = completeTimeout
        self.unfrozenProviderTimeout = unfrozenProviderTimeout
        self.lockTimeout = lockTimeout
        self.fallBackToCrashConsistent = fallBackToCrashConsistent
    }
}

/// One snapshot set: the writers to freeze, the disks to copy and how.
public struct SnapshotRequest: Sendable {
    public var writers: [any SnapshotWriter]
    public var provider: any SnapshotProvider
    public var disks: [String]
    public var outputDirectory: String
    public var policy: SnapshotPolicy
    /// Testing aid: stay frozen this many seconds after the provider's copy (counts against the
    /// hold deadline). Lets a test kill the coordinator while frozen.
    public var pauseWhileFrozen: Double

    public init(writers: [any SnapshotWriter], provider: any SnapshotProvider, disks: [String], outputDirectory: String,
                policy: SnapshotPolicy = SnapshotPolicy(), pauseWhileFrozen: Double = 0) {
        self.writers = writers
        self.provider = provider
        self.disks = disks
        self.outputDirectory = outputDirectory
        self.policy = policy
        self.pauseWhileFrozen = pauseWhileFrozen
    }
}
