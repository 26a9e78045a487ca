import Foundation
import Storage
import SystemPackage
import Targets
import VirtualDisk

/// One point as a prune sees it: kept or removed, and the rule that decided.
public struct PruneDecision: Codable, Sendable, Equatable {
    public var version: String
    public var time: String
    public var kind: PointKind
    public var keep: Bool
    public var rule: String
    /// For a removed point that a later one depends on: the point its data is folded into.
    public var foldedInto: String?
}

public struct PruneResult: Codable, Sendable, Equatable {
    public var policy: String
    public var machine: String
    public var dryRun: Bool
    /// Newest first, as `prune --dry-run` lists them.
    public var decisions: [PruneDecision]
    public var removed: [String]
    public var bytesFreed: UInt64
    public var seconds: Double
}

public struct PruneOptions: Sendable {
    public var dryRun: Bool
    public var now: Date?
    public var timeZone: TimeZone
    public var log: (@Sendable (String) -> Void)?
    public init(dryRun: Bool = false, now: Date? = nil, timeZone: TimeZone = .current, log: (@Sendable (String) -> Void)? = nil) {
        self.dryRun = dryRun
        self.now = now
        self.timeZone = timeZone
        self.log = log
    }
}

/// Retention: applies a policy's keep rules to its points on the target. A removed point that
/// nothing depends on is deleted (manifest first, so it stops being listed at once). A removed point
/// that a later point depends on is folded away: the later point's images are merged into it with the
/// engine's crash-safe merge, the merged images take the later point's place, and the later point gets
/// a new manifest revision (same virtual disks, same chunk checksums, new files). Protected points are
/// never removed or changed; later points stay valid at every step.
///
/// Crash safety: a fold is announced in `prune.json` in the machine's folder before it starts, and
/// every step can be repeated; a prune or backup that finds the file finishes the fold first.
public enum PruneOperation {
    public static func run(policy: Policy, options: PruneOptions) throws -> PruneResult {
        try run(target: try policy.openTarget(), machine: policy.machine, keep: policy.keep, policy: policy.name, options: options)
    }

    /// Retention on any target: `policy` nil applies `keep` to all of the machine's points (a
    /// replication destination's `keep`), else only to that policy's.
    public static func run(target: any BackupTarget, machine: String, keep: KeepRules, policy name: String? = nil,
                           options: PruneOptions) throws -> PruneResult {
        let started = Date()
        let policy = (name: name ?? "replication", machine: machine, keep: keep)
        let points = RecoveryPoints(target: target, machine: policy.machine)
        let lease = options.dryRun ? nil : try TargetLease.acquire(target, machine: policy.machine, purpose: "prune of policy \(policy.name)")
        defer { lease?.release() }
        if let lease {
            try FoldJournal.resume(points: points, lease: lease, log: options.log)
            points.removeStalePartials()
        }
        let decisions = try plan(keep: keep, policy: name, points: points, timeZone: options.timeZone)
        var result = PruneResult(policy: policy.name, machine: policy.machine, dryRun: options.dryRun, decisions: decisions, removed: [],
                                 bytesFreed: 0, seconds: 0)
        if let lease {
            let listing = try points.listing()
            let before = listing.reduce(0) { $0 + $1.storedBytes }
            for decision in decisions.reversed() where !decision.keep {
                try lease.check()
                if let child = decision.foldedInto {
                    options.log?("folding \(child) into \(decision.version) (\(decision.rule)), then \(child) takes its place")
                    try FoldJournal.fold(points: points, remove: decision.version, into: child, lease: lease, log: options.log)
                } else {
                    options.log?("removing \(decision.version) (\(decision.rule))")
                    try points.removePoint(decision.version)
                }
                result.removed.append(decision.version)
            }
            if !result.removed.isEmpty { try points.rebuildCatalog(now: options.now ?? Date()) }
            let after = try points.listing().reduce(0) { $0 + $1.storedBytes }
            result.bytesFreed = before > after ? before - after : 0
        }
        result.seconds = Date().timeIntervalSince(started)
        return result
    }

    /// The keep/remove decision for each of the policy's points, newest first.
    public static func plan(policy: Policy, points: RecoveryPoints, timeZone: TimeZone) throws -> [PruneDecision] {
        try plan(keep: policy.keep, policy: policy.name, points: points, timeZone: timeZone)
    }

    /// The decisions for `policy`'s points (all the machine's when nil).
    public static func plan(keep: KeepRules, policy: String?, points: RecoveryPoints, timeZone: TimeZone) throws -> [PruneDecision] {
        let mine = try points.listing().filter { policy == nil || $0.policy == policy }
        let candidates = mine.map { entry in
            RetentionCandidate(id: entry.version, time: ISO8601DateFormatter().date(from: entry.time) ?? Date.distantPast, protected: entry.protected)
        }
        let verdicts = Dictionary(keep.evaluate(candidates, in: timeZone).map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        let childOf = Dictionary(mine.compactMap { e in e.parent.map { ($0, e.version) } }, uniquingKeysWith: { a, _ in a })
        let protected = Set(mine.filter(\.protected).map(\.version))
        return mine.reversed().map { entry in
            let verdict = verdicts[entry.version]
            let child = childOf[entry.version]
            // Folding changes the child's files: a protected child is never changed, so the point it
            // depends on stays.
            if verdict?.keep == false, let child, protected.contains(child) {
                return PruneDecision(version: entry.version, time: entry.time, kind: entry.kind, keep: true,
                                     rule: "protected point \(child) depends on it", foldedInto: nil)
            }
            let keep = verdict?.keep ?? true
            return PruneDecision(version: entry.version, time: entry.time, kind: entry.kind, keep: keep,
                                 rule: verdict?.rule ?? "not evaluated", foldedInto: keep ? nil : child)
        }
    }
}
