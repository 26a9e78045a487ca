import Foundation
import ShadowCopy
import Storage
import SystemPackage
import Targets
import VirtualDisk

/// How one backup job runs.
public struct BackupOptions: Sendable {
    /// Make a full whatever the schedule says (`backup start --full`).
    public var forceFull: Bool
    /// Why, for the point's notes (default: asked for with --full).
    public var fullReason: String?
    /// Where the job keeps its own state (writer states, point-in-time copies by default).
    public var stateDirectory: FilePath
    /// The point's time (injected by tests; the clock otherwise).
    public var now: Date?
    /// The time zone calendar events are read in.
    public var timeZone: TimeZone
    /// Bytes progress of the whole job (every disk), and its cancellation.
    public var progress: ProgressReporter?
    /// The job log: one plain line per step.
    public var log: (@Sendable (String) -> Void)?
    /// The freeze watchdog (nil: none, as in library tests).
    public var watchdog: WatchdogConfiguration?

    public init(forceFull: Bool = false, fullReason: String? = nil, stateDirectory: FilePath, now: Date? = nil, timeZone: TimeZone = .current,
                progress: ProgressReporter? = nil, log: (@Sendable (String) -> Void)? = nil, watchdog: WatchdogConfiguration? = nil) {
        self.forceFull = forceFull
        self.fullReason = fullReason
        self.stateDirectory = stateDirectory
        self.now = now
        self.timeZone = timeZone
        self.progress = progress
        self.log = log
        self.watchdog = watchdog
    }
}

/// What a backup job made.
public struct BackupResult: Codable, Sendable, Equatable {
    public struct Disk: Codable, Sendable, Equatable {
        public var index: Int
        public var source: String
        public var image: String
        public var virtualSize: UInt64
        public var changedBytes: UInt64
        public var bytesRead: UInt64
        public var bytesWritten: UInt64
        public var imageSize: UInt64
        public var changeDetection: String
    }
    public var policy: String
    public var machine: String
    public var target: String
    public var version: String
    public var kind: PointKind
    public var parent: String?
    /// Why the point is a full (nil for an incremental).
    public var fullReason: String?
    public var consistency: String
    public var provider: String
    public var disks: [Disk]
    /// The file sets captured (`files:` sources), empty for a policy of disks.
    public var fileSets: [ManifestFileSet] = []
    public var bytesRead: UInt64
    public var bytesWritten: UInt64
    public var bytesChanged: UInt64
    public var seconds: Double
    /// What the administrator should look at (a writer left out, a fall-back to crash-consistent);
    /// a job with warnings ends `ok-with-warnings`. A crash-consistent point the policy asked for
    /// (provider none) is not one.
    public var warnings: [String]
}

/// One backup job: snapshot the policy's sources, capture each disk into the target as a full or an
/// incremental VHDX, publish the manifest (the point becomes visible), then a new catalog generation.
///
/// A failure at any step leaves the target as it was: the point's folder has no manifest and is
/// removed (by this job, or by the next one after a crash), and every earlier point is untouched.
public enum BackupOperation {
    public static func run(policy: Policy, options: BackupOptions) async throws -> BackupResult {
        let started = Date()
        let now = options.now ?? started
        let log = options.log ?? { _ in }
        let target = try policy.openTarget()
        if let problem = target.writableProblem() { throw ProtectionError.targetUnusable(target: target.location, reason: problem) }
        let sources = try DiskLayouts.expand(policy.sources, target: target, policy: policy.name)
        for s in sources where !FileOps.exists(FilePath(s)) { throw ProtectionError.sourceMissing(policy: policy.name, source: s) }
        let crashOnly = policy.consistency.provider == .none || policy.consistency.writers.isEmpty
        if crashOnly && !policy.consistency.allowCrashConsistent {
            let why = policy.consistency.provider == .none ? "provider none reads the sources as they are" : "no writer freezes the sources"
            throw ProtectionError.crashConsistentRefused(policy: policy.name, reason: "\(why), so points would be crash-consistent")
        }

        let lease = try await BlockingPool.disk.run {
            // The lease runs on the wall clock, whatever time the point is given.
            try TargetLease.acquire(target, machine: policy.machine, purpose: "backup of policy \(policy.name)")
        }
        defer { lease.release() }
        let points = RecoveryPoints(target: target, machine: policy.machine)
        try await BlockingPool.jobs.run { try FoldJournal.resume(points: points, lease: lease, log: log) }
        points.removeStalePartials()
        for stale in try points.incompleteVersions() {
            log("removing \(stale): an incomplete point left by a job that did not finish")
            try points.removeIncomplete(stale)
        }
        let plan = try await BlockingPool.disk.run { try BackupPlan.make(policy: policy, points: points, sources: sources, options: options, now: now) }
        log(plan.kind == .full ? "full: \(plan.fullReason ?? "")" : "incremental on \(plan.parent?.version ?? "")")

        // The point-in-time copies.
        let snapshot = try await PointInTimeCopy.take(policy: policy, sources: sources, plan: plan, options: options, log: log)
        defer { snapshot.cleanUp() }

        let version = points.newVersion(at: now)
        let folder = points.pointFolder(version)
        var disks: [ManifestDisk] = []
        var summaries: [BackupResult.Disk] = []
        var fileSets: [ManifestFileSet] = []
        var jobWarnings = snapshot.jobWarnings
        let progress = options.progress
        do {
            try target.space.makeFolder(folder)
            for (i, source) in sources.enumerated() {
                try progress?.checkCancelled()
                let copy = snapshot.copies[i]
                let parentDisk = plan.parent?.disks[i]
                let image = "disk\(i).vhdx"
                let captured = try await BlockingPool.jobs.run { () throws -> (ManifestDisk, BackupResult.Disk) in
                    let chain = try DiskChain.open(FilePath(copy))
                    defer { try? chain.close() }
                    var parent: DiskCapture.Parent? = nil
                    var detection = "full"
                    var known: [Range<UInt64>]? = nil
                    if let parentDisk, let parentVersion = plan.parent?.version {
                        parent = DiskCapture.Parent(image: points.imagePath(parentVersion, disk: parentDisk), chunks: parentDisk.chunks)
                        detection = "hashes"
                        if snapshot.provider == "differencing", parentDisk.providerLeaf == copy,
                           let frozen = parentDisk.providerFrozenIdentity, chain.leaf.parentLink?.expectedID.uuidString.lowercased() == frozen {
                            known = try chain.changedRanges(levels: 0..<1)
                            detection = "provider"
                        }
                    }
                    let result = try DiskCapture(source: chain, destination: folder.appending(image), space: target.space, parent: parent,
                                                 knownChanges: known, progress: progress).run()
                    let disk = ManifestDisk(index: i, source: source, virtualSize: result.virtualSize, logicalSectorSize: result.logicalSectorSize,
                                            physicalSectorSize: result.physicalSectorSize, image: image, blockSize: DiskCapture.chunkSize,
                                            imageSize: result.imageSize, imageSHA256: result.imageSHA256,
                                            parentImage: plan.parent.map { "../\($0.version)/\(image)" }, chunkSize: DiskCapture.chunkSize,
                                            chunks: result.chunks, changedBytes: result.changedBytes, changeDetection: detection,
                                            providerLeaf: snapshot.newLeaves[i], providerFrozenIdentity: snapshot.newLeaves[i] == nil ? nil : chain.leaf.identityString,
                                            layout: DiskLayouts.capture(source: source, copy: chain))
                    let summary = BackupResult.Disk(index: i, source: source, image: image, virtualSize: result.virtualSize, changedBytes: result.changedBytes,
                                                    bytesRead: result.bytesRead, bytesWritten: result.bytesWritten, imageSize: result.imageSize, changeDetection: detection)
                    return (disk, summary)
                }
                disks.append(captured.0)
                summaries.append(captured.1)
                log("disk \(i) (\(source)): \(ByteCount.format(captured.1.changedBytes)) changed, \(ByteCount.format(captured.1.imageSize)) stored (\(captured.1.changeDetection))")
            }
            let sets = try await BlockingPool.jobs.run {
                try FileSetBackup.capture(policy: policy, target: target, points: points, version: version, parent: plan.parent,
                                          progress: progress, log: log)
            }
            fileSets = sets.sets
            jobWarnings += sets.warnings
            try lease.check()
            let manifest = PointManifest(machine: policy.machine, version: version, time: Timestamp.iso8601(now), kind: plan.kind,
                                         parent: plan.parent?.version, consistency: snapshot.consistency,
                                         policy: ManifestPolicy(name: policy.name, file: policy.file, text: policy.file.flatMap { try? String(contentsOfFile: $0, encoding: .utf8) }),
                                         disks: disks, fileSets: fileSets.isEmpty ? nil : fileSets, host: ProcessState.hostName, creator: "bulwark \(BulwarkVersion.current)",
                                         notes: plan.notes + snapshot.consistency.warnings + jobWarnings.filter { !snapshot.jobWarnings.contains($0) })
            try await BlockingPool.disk.run {
                try points.publish(manifest)
                try points.rebuildCatalog(now: now)
            }
        } catch {
            // Nothing of this point is visible (no manifest): remove what was written.
            try? await BlockingPool.disk.run { try points.removeIncomplete(version) }
            throw error
        }
        var result = BackupResult(policy: policy.name, machine: policy.machine, target: target.location, version: version, kind: plan.kind,
                                  parent: plan.parent?.version, fullReason: plan.fullReason, consistency: snapshot.consistency.level,
                                  provider: snapshot.provider, disks: summaries,
                                  bytesRead: summaries.reduce(0) { $0 + $1.bytesRead }, bytesWritten: summaries.reduce(0) { $0 + $1.imageSize },
                                  bytesChanged: summaries.reduce(0) { $0 + $1.changedBytes }, seconds: Date().timeIntervalSince(started), warnings: jobWarnings)
        result.fileSets = fileSets
        result.bytesRead += fileSets.reduce(0) { $0 + $1.storedBytes }
        result.bytesWritten += fileSets.reduce(0) { $0 + $1.archiveSize + $1.indexSize }
        result.bytesChanged += fileSets.reduce(0) { $0 + $1.storedBytes }
        return result
    }
}

/// The version of Bulwark that writes manifests.
public enum BulwarkVersion {
    public static let current = "0.2.0"
}

/// Full or incremental, and on which parent: decided before the snapshot from the target alone.
struct BackupPlan: Sendable {
    var kind: PointKind
    var parent: PointManifest?
    var fullReason: String?
    var notes: [String]
    /// The policy's newest point, parent or not: the differencing provider continues from the live
    /// leaves it recorded even when this point is a full (a second child of the base would fork the
    /// guest's chain).
    var newest: PointManifest?

    static func make(policy: Policy, points: RecoveryPoints, sources: [String], options: BackupOptions, now: Date) throws -> BackupPlan {
        let mine = try points.listing().filter { $0.policy == policy.name }
        let latest = try mine.last.map { try points.manifest($0.version) }
        var plan = try decide(policy: policy, points: points, mine: mine, sources: sources, options: options, now: now)
        plan.newest = latest
        return plan
    }

    static func decide(policy: Policy, points: RecoveryPoints, mine: [CatalogEntry], sources: [String], options: BackupOptions, now: Date) throws -> BackupPlan {
        func full(_ reason: String) -> BackupPlan { BackupPlan(kind: .full, parent: nil, fullReason: reason, notes: ["full: \(reason)"]) }
        if options.forceFull { return full(options.fullReason ?? "asked for (--full)") }
        guard let newest = mine.last else { return full("the first point of policy \(policy.name) on this target") }
        if let v = newest.verification, !v.ok {
            return full("the newest point \(newest.version) failed verification on \(v.time) (\(v.problem ?? "checksum mismatch")); no new point may depend on it")
        }
        if let event = policy.full, let last = ISO8601DateFormatter().date(from: newest.time),
           let fired = event.fired(between: last, and: now, in: options.timeZone) {
            return full("the full schedule (\(event.text)) fired at \(Timestamp.iso8601(fired)) since the newest point")
        }
        let parent = try points.manifest(newest.version)
        guard (parent.fileSets ?? []).map(\.paths) == policy.fileSetPaths else {
            return full("the policy's file sets changed since \(newest.version)")
        }
        guard parent.disks.map(\.source) == sources else {
            return full("the policy's sources changed since \(newest.version) (\(parent.disks.map(\.source).joined(separator: ", ")) then)")
        }
        // Each source must still have the parent's size, and the parent's chain must open.
        for (i, source) in sources.enumerated() {
            let disk = parent.disks[i]
            do {
                let chain = try points.openDisk(parent.version, disk: disk)
                try chain.close()
            } catch {
                return full("the parent point \(parent.version)'s disk \(i) cannot be opened (\(error))")
            }
            let size = try sourceSize(source)
            guard size == disk.virtualSize else {
                return full("disk \(i) (\(source)) is \(size) bytes now, \(disk.virtualSize) in \(parent.version)")
            }
        }
        return BackupPlan(kind: .incremental, parent: parent, fullReason: nil, notes: [])
    }

    /// The virtual size of a source (an image's virtual disk, a raw file's or a device's size).
    static func sourceSize(_ path: String) throws -> UInt64 {
        let chain = try DiskChain.open(FilePath(path))
        defer { try? chain.close() }
        return chain.leaf.virtualSize
    }
}
