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
    /// The policy whose points were pruned; empty when all the machine's points were.
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

/// Retention: applies keep rules to a machine's points on a target (a local folder or an SMB share).
/// A removed point that nothing depends on is deleted (manifest first, so it stops being listed at
/// once). A removed point that a later point depends on is folded away: the later point's images are
/// merged into it, the merged images take the later point's names (two renames, never over an
/// existing file, never a hard link: an SMB share has none), and the later point gets a new manifest
/// revision (same virtual disks, same chunk checksums, new files). Protected points are never removed
/// or changed; later points stay valid at every step.
///
/// Crash safety: a fold is announced in `prune.json` in the machine's folder before it starts, and
/// every step can be repeated; a prune, backup or verify that holds the lease and finds the file
/// finishes the fold first (see `FoldJournal`).
public enum PruneOperation {
    /// Applies a policy's keep rules to the points it made on its target.
    public static func run(policy: Policy, options: PruneOptions) throws -> PruneResult {
        let target = try policy.openTarget()
        return try run(target: target, machine: policy.machine, keep: policy.keep, policy: policy.name,
                       purpose: "prune of policy \(policy.name)", options: options)
    }

    /// Applies `keep` to one machine's points on any target (a local folder, an SMB share): what
    /// replication calls to keep its destination within its own rules. `policy`, when given, limits
    /// the prune to the points that policy made (the others are neither counted nor touched), and
    /// is the name the result carries; `purpose` is what the lease shows to whoever finds the machine
    /// busy meanwhile.
    public static func run(target: any BackupTarget, machine: String, keep: KeepRules, policy: String? = nil,
                           purpose: String? = nil, options: PruneOptions) throws -> PruneResult {
        let started = Date()
        let points = RecoveryPoints(target: target, machine: machine)
        let lease = options.dryRun ? nil : try TargetLease.acquire(target, machine: machine, purpose: purpose ?? "prune of machine \(machine)")
        defer { lease?.release() }
        if let lease {
            try FoldJournal.resume(points: points, lease: lease, log: options.log)
            points.removeStalePartials()
        }
        let decisions = try plan(keep: keep, policy: policy, points: points, timeZone: options.timeZone)
        var result = PruneResult(policy: policy ?? "", machine: machine, dryRun: options.dryRun, decisions: decisions, removed: [],
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

    /// The keep/remove decision for each point (of `policy` only, when given), newest first.
    public static func plan(keep: KeepRules, policy: String?, points: RecoveryPoints, timeZone: TimeZone) throws -> [PruneDecision] {
        let mine = try points.listing().filter { policy == nil || $0.policy == policy }
        let candidates = mine.map { entry in
            RetentionCandidate(id: entry.version, time: ISO8601DateFormatter().date(from: entry.time) ?? Date.distantPast, protected: entry.protected)
        }
        let verdicts = Dictionary(keep.evaluate(candidates, in: timeZone).map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        let childOf = Dictionary(mine.compactMap { e in e.parent.map { ($0, e.version) } }, uniquingKeysWith: { a, _ in a })
        let protected = Set(mine.filter(\.protected).map(\.version))
        let decisions = mine.reversed().map { entry in
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
        return try keepingFileSetReferences(decisions, points: points)
    }

    /// File-set points are never folded (their archives are not merged): a point whose archive holds
    /// files that a kept point's file set lists stays, with the rule naming that point, until no kept
    /// point needs it; the others go outright.
    static func keepingFileSetReferences(_ decisions: [PruneDecision], points: RecoveryPoints) throws -> [PruneDecision] {
        var manifests: [String: PointManifest] = [:]
        func manifest(_ version: String) throws -> PointManifest {
            if let m = manifests[version] { return m }
            let m = try points.manifest(version)
            manifests[version] = m
            return m
        }
        var out = decisions
        let position = Dictionary(out.enumerated().map { ($1.version, $0) }, uniquingKeysWith: { a, _ in a })
        var queue = out.filter(\.keep).map(\.version)
        while let version = queue.popLast() {
            for needed in try manifest(version).fileSetReferences.sorted() {
                guard let i = position[needed], !out[i].keep else { continue }
                out[i].keep = true
                out[i].rule = "the file set of \(version) needs its archive"
                out[i].foldedInto = nil
                queue.append(needed)
            }
        }
        for i in out.indices where !out[i].keep {
            if try !(manifest(out[i].version).fileSets ?? []).isEmpty { out[i].foldedInto = nil }
        }
        return out
    }
}
