import Foundation
import Storage
import SystemPackage
import Targets

/// What to replicate and how.
public struct ReplicationOptions: Sendable {
    /// Only this machine (default: every machine on the source).
    public var machine: String?
    /// Only this version (and the parents it needs).
    public var version: String?
    /// Wraps the destination's stores (a throttle); nil: as they are.
    public var wrapDestination: (@Sendable (any ByteStore) -> any ByteStore)?
    public var progress: ProgressReporter?
    public var log: (@Sendable (String) -> Void)?
    /// The size of a transfer piece, and of the tail re-checked when a transfer resumes.
    public var pieceSize: Int
    /// Ship only points newer than the destination's newest: for a destination with retention of its
    /// own, which must not get back the points it removed.
    public var onlyNewer: Bool

    public init(machine: String? = nil, version: String? = nil, wrapDestination: (@Sendable (any ByteStore) -> any ByteStore)? = nil,
                progress: ProgressReporter? = nil, log: (@Sendable (String) -> Void)? = nil, pieceSize: Int = 4 << 20, onlyNewer: Bool = false) {
        self.machine = machine
        self.version = version
        self.wrapDestination = wrapDestination
        self.progress = progress
        self.log = log
        self.pieceSize = pieceSize
        self.onlyNewer = onlyNewer
    }
}

/// What one replication did, per machine.
public struct ReplicationResult: Codable, Sendable, Equatable {
    public var machine: String
    /// The points shipped, oldest first.
    public var shipped: [String]
    /// The points the destination already had.
    public var present: Int
    /// Bytes written to the destination.
    public var bytesSent: UInt64
    /// Bytes of interrupted transfers that were kept (verified) and not sent again.
    public var bytesResumed: UInt64
    public var seconds: Double
    /// Of `seconds`, the time spent sending images (reading the source and writing the destination,
    /// paced by the throttle): `bytesSent / sendSeconds` is the rate on the wire that `--limit` bounds.
    public var sendSeconds: Double = 0
    /// Of `seconds`, the time spent reading the sent images back from the destination to check their
    /// SHA-256.
    public var verifySeconds: Double = 0
    /// Seconds between the newest point on the source and now, once this run ended: how far the
    /// destination is behind (0 when it has the newest point).
    public var lagSeconds: Double?
}

/// Copies recovery points from one target to another (Hyper-V Replica's and DPM's backup
/// replication), so that the destination is a valid target on its own at every moment:
/// - points go parents first; within a point, every image is sent under `.NAME.partial`, checked
///   against the manifest's SHA-256 and only then renamed to its name (never over an existing file);
///   the manifest is published last, then a new catalog generation: `versions` on the destination lists
///   only complete points, even mid-replication;
/// - an interrupted transfer (connection lost, server restarted, process killed) resumes from the
///   `.partial` file: its last whole piece is compared with the source and the transfer continues
///   after it (at most one piece per file is sent again); a file that does not verify is sent again
///   from the start and never published;
/// - the hidden temporary files a killed run left while publishing a manifest or a catalog
///   (`.NAME.partial-PID` of a process that is gone) are removed on the destination when it is leased;
/// - both machines' folders are leased for the run (no retention folds a point on the source while it
///   is read, no other replication writes the destination).
/// Points the destination has are never changed: retention on the source does not reach it.
public enum ReplicationOperation {
    public static func run(from source: any BackupTarget, to destination: any BackupTarget, options: ReplicationOptions) throws -> [ReplicationResult] {
        let machines: [String]
        if let machine = options.machine {
            guard try RecoveryPoints.machines(on: source).contains(machine) else {
                throw TargetError.machineNotFound(target: source.location, machine: machine, known: try RecoveryPoints.machines(on: source))
            }
            machines = [machine]
        } else {
            machines = try RecoveryPoints.machines(on: source)
        }
        return try machines.map { try replicate(machine: $0, from: source, to: destination, options: options) }
    }

    static func replicate(machine: String, from source: any BackupTarget, to destination: any BackupTarget, options: ReplicationOptions) throws -> ReplicationResult {
        let started = Date()
        let sourceLease = try TargetLease.acquire(source, machine: machine, purpose: "replication to \(destination.location)")
        defer { sourceLease.release() }
        let destinationLease = try TargetLease.acquire(destination, machine: machine, purpose: "replication from \(source.location)")
        defer { destinationLease.release() }
        let from = RecoveryPoints(target: source, machine: machine)
        let to = RecoveryPoints(target: destination, machine: machine)
        // A run killed while publishing a manifest or a catalog left its hidden temporary file.
        to.removeStalePartials()
        let listed = try from.listing()
        // Points on the destination that failed their last verify are sent again: hidden first (their
        // manifests removed), their bad files removed, then shipped like a missing point.
        var have = Set(try to.completeVersions())
        var repaired: Set<String> = []
        for entry in try to.listing() where entry.verification?.ok == false && listed.contains(where: { $0.version == entry.version }) {
            options.log?("\(machine)/\(entry.version): failed verification on the destination; sending it again")
            try repair(entry.version, in: to, from: from)
            have.remove(entry.version)
            repaired.insert(entry.version)
        }
        // The points to ship: all the destination lacks, or the one asked for with the parents it lacks.
        var wanted: [String]
        if let version = options.version {
            guard listed.contains(where: { $0.version == version }) else {
                throw TargetError.pointNotFound(target: source.location, machine: machine, version: version)
            }
            wanted = []
            var next: String? = version
            while let v = next, !have.contains(v) {
                wanted.insert(v, at: 0)
                next = listed.first { $0.version == v }?.parent
            }
        } else {
            wanted = listed.map(\.version).filter { !have.contains($0) }
            if options.onlyNewer, let newest = listed.map(\.version).lastIndex(where: { have.contains($0) || repaired.contains($0) }) {
                let older = Set(listed[...newest].map(\.version))
                wanted.removeAll { older.contains($0) && !repaired.contains($0) }
                // A point sent again needs its parents there: those the destination's retention
                // removed go again too (its next prune folds them away again).
                var needed = Set(wanted)
                for version in wanted {
                    var parent = listed.first { $0.version == version }?.parent
                    while let p = parent, !have.contains(p), !needed.contains(p) {
                        needed.insert(p)
                        parent = listed.first { $0.version == p }?.parent
                    }
                }
                wanted = listed.map(\.version).filter { needed.contains($0) }
            }
        }
        var result = ReplicationResult(machine: machine, shipped: [], present: have.count, bytesSent: 0, bytesResumed: 0, seconds: 0, lagSeconds: nil)
        let total = try wanted.reduce(UInt64(0)) { $0 + (try from.manifest($1).storedBytes) }
        var done: UInt64 = 0
        for version in wanted {
            let manifest = try from.manifest(version)
            if let parent = manifest.parent, !have.contains(parent), !result.shipped.contains(parent) {
                throw TargetError.damaged(path: from.pointFolder(version).string, reason: "its parent \(parent) is neither on the destination nor on the source; verify the source")
            }
            for needed in manifest.fileSetReferences.sorted() where !have.contains(needed) && !result.shipped.contains(needed) {
                throw TargetError.damaged(path: from.pointFolder(version).string, reason: "its file sets need point \(needed), which is neither on the destination nor sent before it; verify the source")
            }
            options.log?("\(machine)/\(version): sending \(manifest.files.count) file(s), \(ByteCount.format(manifest.storedBytes))")
            try checkRoom(for: manifest, version: version, in: to)
            try destination.space.makeFolder(to.pointFolder(version))
            for file in manifest.files {
                let base = done
                try destinationLease.check()
                try sourceLease.check()
                let sent = try FileTransfer(source: source.space, from: from.pointFolder(version).appending(file.name),
                                            destination: destination.space, to: to.pointFolder(version).appending(file.name),
                                            size: file.size, sha256: file.sha256, pieceSize: options.pieceSize,
                                            wrap: options.wrapDestination, progress: options.progress.map { p in
                                                ProgressReporter { d, _ in p.report(base + d, of: total) }
                                            }, cancel: options.progress,
                                            log: options.log.map { log in { @Sendable line in log("\(machine)/\(version): \(line)") } }).run()
                result.bytesSent += sent.bytesSent
                result.bytesResumed += sent.bytesResumed
                result.sendSeconds += sent.sendSeconds
                result.verifySeconds += sent.verifySeconds
                done += file.size
                try options.progress?.checkCancelled()
            }
            try destinationLease.check()
            try to.publish(manifest)
            try to.rebuildCatalog()
            result.shipped.append(version)
        }
        if let newest = listed.last, let time = ISO8601DateFormatter().date(from: newest.time) {
            let destinationHasNewest = have.contains(newest.version) || result.shipped.contains(newest.version)
            result.lagSeconds = destinationHasNewest ? 0 : Date().timeIntervalSince(time)
        }
        result.seconds = Date().timeIntervalSince(started)
        return result
    }
}

extension ReplicationOperation {
    /// Refuses a point that cannot fit before a byte of it is sent, where the destination says how
    /// much room it has: a full share is reported with the sizes and leaves no partial file behind
    /// (what interrupted copies hold already counts as sent).
    static func checkRoom(for manifest: PointManifest, version: String, in to: RecoveryPoints) throws {
        let space = to.target.space
        let folder = to.pointFolder(version)
        var needed: UInt64 = 0
        for file in manifest.files {
            let image = folder.appending(file.name)
            let partial = FileTransfer.partial(of: image)
            if space.exists(image) { continue }
            var held: UInt64 = 0
            if space.exists(partial), let file = try? space.open(partial, writable: false) {
                held = (try? file.size()) ?? 0
                try? file.close()
            }
            needed += file.size - min(held, file.size)
        }
        // Room for the manifest and a catalog generation.
        needed += 1 << 20
        let probe = space.exists(folder) ? folder : to.folder
        guard let free = try? space.availableSpace(at: space.exists(probe) ? probe : to.target.root), free < needed else { return }
        throw TargetError.noRoom(target: to.target.location, point: "\(to.machine)/\(version)", needed: needed, available: free)
    }

    /// Hides a damaged point on the destination and removes the files that differ from the source's
    /// manifest, so the next shipping sends exactly those again.
    static func repair(_ version: String, in to: RecoveryPoints, from: RecoveryPoints) throws {
        let manifest = try from.manifest(version)
        let folder = to.pointFolder(version)
        let space = to.target.space
        for name in (try? space.contents(of: folder)) ?? [] where name.hasPrefix("manifest") || name.hasPrefix("verify.") {
            try space.remove(folder.appending(name))
        }
        for file in manifest.files {
            let path = folder.appending(file.name)
            guard space.exists(path) else { continue }
            let check = FileTransfer(source: from.target.space, from: path, destination: space, to: path, size: file.size,
                                     sha256: file.sha256, pieceSize: 4 << 20, wrap: nil, progress: nil, cancel: nil)
            if try check.digest(of: path, in: space) != file.sha256 { try space.remove(path) }
        }
        try space.syncFolder(of: folder.appending("manifest.json"))
    }
}
