import Foundation
import Storage
import SystemPackage
import Targets
import Testing
import TestSupport

/// The target layer on the embedded default (a local folder): publishing, the lease, manifests and
/// the catalog's generations.
@Suite struct TargetTests {
    static func manifest(_ machine: String, _ version: String, parent: String? = nil) -> PointManifest {
        PointManifest(machine: machine, version: version, time: "2026-11-22T19:20:05Z", kind: parent == nil ? .full : .incremental, parent: parent,
                      consistency: ManifestConsistency(level: "crash-consistent", provider: "none", writers: [], freezeSeconds: 0, warnings: []),
                      policy: ManifestPolicy(name: "p", file: nil, text: nil),
                      disks: [ManifestDisk(index: 0, source: "/dev/x", virtualSize: 8 << 20, logicalSectorSize: 512, physicalSectorSize: 4096, image: "disk0.vhdx",
                                           blockSize: 4 << 20, imageSize: 123, imageSHA256: "ab", parentImage: nil, chunkSize: 4 << 20,
                                           chunks: ["a", "b"], changedBytes: 1, changeDetection: "full")],
                      host: "h", creator: "test", notes: [])
    }

    /// A PID that is certainly not running: a child that has exited and been reaped.
    static func deadPID() throws -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/true")
        try p.run()
        p.waitUntilExit()
        return p.processIdentifier
    }

    @Test func publishNeverOverwritesAndLeavesNothingHalfWritten() throws {
        let dir = try TempDir("target")
        let target = LocalDirectoryTarget(path: FilePath(dir.path))
        let path = FilePath(dir.file("a.json"))
        try target.publish(Array("one".utf8), at: path)
        #expect(throws: StorageError.exists(path: path.string)) { try target.publish(Array("two".utf8), at: path) }
        #expect(try target.read(path, limit: 100) == Array("one".utf8))
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["a.json"], "no temporary file is left")
        // Into a folder that does not exist: an error, nothing created.
        #expect(throws: (any Error).self) { try target.publish([1], at: FilePath(dir.file("missing/b.json"))) }
        #expect(target.writableProblem() == nil)
        #expect(LocalDirectoryTarget(path: FilePath(dir.file("new/sub"))).writableProblem() == nil, "a target made by the first job")
        #expect(LocalDirectoryTarget(path: "/etc/hostname/bulwark").writableProblem() != nil, "a path under a file")
    }

    @Test func leaseIsExclusiveAndNeverBrokenWhileItsHolderLives() throws {
        let dir = try TempDir("target")
        let target = LocalDirectoryTarget(path: FilePath(dir.path))
        let lease = try TargetLease.acquire(target, machine: "m1", purpose: "test", duration: 2)
        #expect(TargetLease.holder(target, machine: "m1")?.isCurrentProcess == true)
        // Held by a live process (this one): refused, even after its expiry time passes.
        Thread.sleep(forTimeInterval: 2.6)
        #expect(throws: (any Error).self) { try TargetLease.acquire(target, machine: "m1", purpose: "second") }
        // Refreshed in the background: the expiry moved on.
        let record = try #require(TargetLease.holder(target, machine: "m1"))
        #expect(record.expires > Date(), "the expiry was pushed on by refreshes")
        try lease.check()
        lease.release()
        #expect(TargetLease.holder(target, machine: "m1") == nil)
        // Another machine's folder is independent.
        let other = try TargetLease.acquire(target, machine: "m2", purpose: "x")
        let again = try TargetLease.acquire(target, machine: "m1", purpose: "again")
        again.release()
        other.release()
    }

    @Test func staleLeasesAreBrokenOnlyWhenTheirHolderIsProvablyGone() throws {
        let dir = try TempDir("target")
        let target = LocalDirectoryTarget(path: FilePath(dir.path))
        let folder = target.machineFolder("m")
        try FileOps.makeFolder(folder)
        let path = folder.appending("lease.json")
        func plant(_ record: LeaseRecord) throws {
            try? FileOps.remove(path)
            let data = try JSONEncoder.iso.encode(record)
            try data.write(to: URL(fileURLWithPath: path.string))
        }
        var record = LeaseRecord.current(purpose: "dead job", duration: 3600)
        // Same host and boot, dead PID: stale at once although it has not expired.
        record.pid = try Self.deadPID()
        try plant(record)
        let taken = try TargetLease.acquire(target, machine: "m", purpose: "new")
        taken.release()
        // Another host, not expired: held.
        record = LeaseRecord.current(purpose: "remote job", duration: 3600)
        record.host = "elsewhere"
        try plant(record)
        #expect(throws: (any Error).self) { try TargetLease.acquire(target, machine: "m", purpose: "new") }
        // Another host, expired: stale.
        record.expires = Date().addingTimeInterval(-10)
        try plant(record)
        try TargetLease.acquire(target, machine: "m", purpose: "new").release()
        // Same host, another boot: stale.
        record = LeaseRecord.current(purpose: "before reboot", duration: 3600)
        record.bootID = "another-boot"
        try plant(record)
        try TargetLease.acquire(target, machine: "m", purpose: "new").release()
        // An unreadable lease is never broken.
        try Data("garbage".utf8).write(to: URL(fileURLWithPath: path.string))
        #expect(throws: (any Error).self) { try TargetLease.acquire(target, machine: "m", purpose: "new") }
        #expect(try String(contentsOfFile: path.string, encoding: .utf8) == "garbage")
    }

    @Test func aLeaseTakenOverIsReportedLost() throws {
        let dir = try TempDir("target")
        let target = LocalDirectoryTarget(path: FilePath(dir.path))
        let lease = try TargetLease.acquire(target, machine: "m", purpose: "test", duration: 0.2)
        try FileOps.remove(lease.path)
        Thread.sleep(forTimeInterval: 0.3)
        #expect(throws: TargetError.self) { try lease.check() }
        lease.release()
    }

    @Test func catalogGenerationsAndListing() throws {
        let dir = try TempDir("target")
        let target = LocalDirectoryTarget(path: FilePath(dir.path))
        let points = RecoveryPoints(target: target, machine: "web01")
        #expect(try points.listing().isEmpty)
        for v in ["2026-11-20T010000Z", "2026-11-21T010000Z"] {
            try FileOps.makeFolder(points.pointFolder(v))
            try points.publish(Self.manifest("web01", v))
        }
        try points.rebuildCatalog()
        #expect(points.catalog()?.generation == 1)
        // A point published after the catalog (a crash between manifest and catalog) is still listed.
        try FileOps.makeFolder(points.pointFolder("2026-11-22T010000Z"))
        try points.publish(Self.manifest("web01", "2026-11-22T010000Z", parent: "2026-11-21T010000Z"))
        #expect(try points.listing().map(\.version) == ["2026-11-20T010000Z", "2026-11-21T010000Z", "2026-11-22T010000Z"])
        // An incomplete point (no manifest) is never listed.
        try FileOps.makeFolder(points.pointFolder("2026-11-23T010000Z"))
        #expect(try points.listing().count == 3)
        #expect(try points.incompleteVersions() == ["2026-11-23T010000Z"])
        // New generations; old ones beyond two back are removed; a damaged newest one is skipped.
        for _ in 0..<4 { try points.rebuildCatalog() }
        let names = try FileManager.default.contentsOfDirectory(atPath: points.folder.string).filter { $0.hasPrefix("catalog.") }.sorted()
        #expect(names == ["catalog.000003.json", "catalog.000004.json", "catalog.000005.json"])
        try Data("{\"broken".utf8).write(to: URL(fileURLWithPath: points.folder.appending("catalog.000006.json").string))
        #expect(points.catalog()?.generation == 5)
        // Deleted catalogs: the listing comes from the manifests; a rebuild writes a new generation.
        for n in try FileManager.default.contentsOfDirectory(atPath: points.folder.string) where n.hasPrefix("catalog.") {
            try FileManager.default.removeItem(atPath: points.folder.appending(n).string)
        }
        #expect(try points.listing().count == 3)
        #expect(try points.rebuildCatalog().points.count == 3)
        // Protected markers and verify records appear in the listing.
        try points.setProtected("2026-11-20T010000Z", true)
        try points.record(VerificationRecord(time: "t", ok: false, problem: "bad", bytesRead: 1), for: "2026-11-21T010000Z")
        let listed = try points.listing()
        #expect(listed[0].protected && !listed[1].protected)
        #expect(listed[1].verification?.ok == false && listed[1].usableAsParent == false)
        // Removal: the manifest goes first, so a half-removed point is not listed.
        try points.removePoint("2026-11-22T010000Z")
        #expect(!FileOps.exists(points.pointFolder("2026-11-22T010000Z")))
        #expect(try RecoveryPoints.machines(on: target) == ["web01"])
        // A damaged manifest: a clear error naming the file.
        try Data("{}".utf8).write(to: URL(fileURLWithPath: points.pointFolder("2026-11-21T010000Z").appending("manifest.json").string + ".x"))
    }

    @Test func manifestRevisionsAndVersionNames() throws {
        let dir = try TempDir("target")
        let points = RecoveryPoints(target: LocalDirectoryTarget(path: FilePath(dir.path)), machine: "m")
        let v = points.newVersion(at: Date(timeIntervalSince1970: 1_800_000_000))
        #expect(RecoveryPoints.isVersionName(v) && !v.contains(":"))
        try FileOps.makeFolder(points.pointFolder(v))
        var m = Self.manifest("m", v)
        try points.publish(m)
        #expect(points.newVersion(at: Date(timeIntervalSince1970: 1_800_000_000)) != v, "a second point in the same second gets another name")
        m.revision = 2
        m.kind = .incremental
        try points.publish(m)
        #expect(try points.manifest(v).revision == 2)
        // A damaged newest revision falls back to the previous one.
        try Data("not json".utf8).write(to: URL(fileURLWithPath: points.pointFolder(v).appending("manifest.r3.json").string))
        #expect(try points.manifest(v).revision == 2)
        #expect(throws: TargetError.self) { try points.manifest("2026-01-01T000000Z") }
    }
}

extension JSONEncoder {
    static var iso: JSONEncoder {
        let e = JSONEncoder()
        e.dateEncodingStrategy = .iso8601
        return e
    }
}
