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

    /// The hold deadlines accepted. Every freeze, the provider's copy and every thaw run inside the
    /// hold, so a hold of milliseconds would fail every snapshot (with deadlines already past); one
    /// of hours would leave guests frozen that long.
    public static let holdTimeoutRange: ClosedRange<Double> = 1...3600

    /// Why `seconds` cannot be a hold deadline, or nil when it can.
    public static func holdTimeoutProblem(_ seconds: Double) -> String? {
        guard seconds.isFinite, !holdTimeoutRange.contains(seconds) else { return seconds.isFinite ? nil : "not a finite duration" }
        let limit = seconds < holdTimeoutRange.lowerBound
            ? "too short: the freezes, the copy and the thaws all run inside it; give at least \(Int(holdTimeoutRange.lowerBound)) s"
            : "too long: writers would stay frozen that long; give at most \(Int(holdTimeoutRange.upperBound)) s"
        return "a freeze hold of \(String(format: "%g", seconds)) s is \(limit)"
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
