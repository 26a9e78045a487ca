import Foundation
@testable import Protection
import Replication
import Storage
import SystemPackage
import Targets
import Testing
import TestSupport
import VirtualDisk

/// Retention on an SMB share (a real smbd, `SambaServer`): points replicated to the share are
/// pruned there, folds included, without hard links and without a rename over an existing file; a
/// fold stopped at each of its steps leaves every listed point readable as it was made, and the next
/// prune finishes it. The same crash walk runs on a local folder, which folds the same way.
@Suite(.serialized) struct SMBRetentionTests {
    static let utc = TimeZone(identifier: "UTC")!

    /// A bench with `count` points (a full, then incrementals), and each point's disk as it was made.
    static func bench(count: Int, size: Int, seed: UInt64) async throws -> (BackupBench, [String], [String: [UInt8]]) {
        let bench = try BackupBench(size: size, seed: seed)
        var versions: [String] = []
        var models: [String: [UInt8]] = [:]
        for day in 0..<count {
            try bench.scribble(writes: 6, maxLength: 400 << 10)
            let r = try await bench.backup(at: .day(day))
            versions.append(r.version)
            models[r.version] = bench.model
        }
        return (bench, versions, models)
    }

    /// Every listed point reads back (through Bulwark, the way verify and restore read) as it was made.
    static func expectPointsReadBack(_ points: RecoveryPoints, _ models: [String: [UInt8]], _ context: String) throws {
        for entry in try points.listing() {
            let chain = try points.openDisk(entry.version, disk: try points.manifest(entry.version).disks[0])
            defer { try? chain.close() }
            let bytes = try chain.leaf.read(count: Int(chain.leaf.virtualSize), at: 0)
            #expect(bytes == models[entry.version], "\(context): \(entry.version) reads back as it was made")
        }
    }

    /// Files a finished prune must not leave in the machine's folder.
    static func leftovers(_ points: RecoveryPoints) throws -> [String] {
        let space = points.target.space
        var out: [String] = []
        for name in try space.contents(of: points.folder) {
            if name == FoldJournal.name || name.contains(".partial") || name == "lease.json" { out.append(name) }
            if RecoveryPoints.isVersionName(name) {
                for inner in try space.contents(of: points.pointFolder(name))
                where inner.hasSuffix(".folded") || inner.contains(".partial") || inner.hasSuffix(".merge.json") {
                    out.append("\(name)/\(inner)")
                }
            }
        }
        return out
    }

    @Test func pruneOnTheShareFoldsAwayOldPointsAndKeepsEveryOtherWhole() async throws {
        guard try SambaServer.available() else { return }
        let (bench, versions, models) = try await Self.bench(count: 6, size: 16 << 20, seed: 41)
        try await offPool {
            let server = try SambaServer()
            defer { server.stop() }
            let share = try server.target(path: "/site")
            _ = try ReplicationOperation.run(from: bench.target, to: share, options: ReplicationOptions())
            let points = RecoveryPoints(target: share, machine: "guest")
            #expect(try points.listing().map(\.version) == versions)

            // Keep the last two: the four oldest are folded, each into the next, each with a grandchild.
            let first = try PruneOperation.run(target: share, machine: "guest", keep: KeepRules(last: 2), options: PruneOptions(timeZone: Self.utc))
            #expect(first.removed == Array(versions[0..<4]))
            #expect(try points.listing().map(\.version) == Array(versions[4...]))
            #expect(try points.manifest(versions[4]).kind == .full)
            #expect(try points.manifest(versions[4]).parent == nil)
            #expect(try points.manifest(versions[5]).parent == versions[4])
            try Self.expectPointsReadBack(points, models, "after folding four points")
            // Then the last one only: a fold without a grandchild.
            let second = try PruneOperation.run(target: share, machine: "guest", keep: KeepRules(last: 1), options: PruneOptions(timeZone: Self.utc))
            #expect(second.removed == [versions[4]])
            #expect(try points.listing().map(\.version) == [versions[5]])
            #expect(try points.manifest(versions[5]).kind == .full)
            try Self.expectPointsReadBack(points, models, "after the last fold")

            let verified = try VerifyOperation.run(target: share, machine: "guest", options: VerifyOptions(record: false))
            #expect(verified.count == 1 && verified.allSatisfy { $0.ok }, "\(verified.map { $0.problem ?? "ok" })")
            for v in versions[0..<5] { #expect(!share.space.exists(points.pointFolder(v)), "\(v) is gone from the share") }
            let left = try Self.leftovers(points)
            #expect(left.isEmpty, "\(left)")
            #expect(try server.serverFiles().filter { $0.hasSuffix(".folded") || $0.contains(".partial") || $0.hasSuffix(".merge.json") }.isEmpty)
            // The newest point reads off the share the same as it was made, file by file too: the
            // chain is a single full image now.
            #expect(try points.openDisk(versions[5], disk: try points.manifest(versions[5]).disks[0]).use { $0.levels.count } == 1)
        }
    }

    /// A fold of the oldest of three points (so with a grandchild), stopped at `step` as a crash
    /// would stop it: every listed point still reads as it was made and verifies, and the next prune
    /// finishes the fold and leaves nothing behind.
    static func crashWalk(_ step: FoldStep, target: any BackupTarget, models: [String: [UInt8]], versions: [String],
                          finished: (RecoveryPoints) throws -> Void = { _ in }) throws {
        let points = RecoveryPoints(target: target, machine: "guest")
        let folder = points.folder
        struct Crash: Error {}
        FoldJournal.interruption.withLock { hook in
            hook = { f, s in if f == folder && s == step { throw Crash() } }
        }
        defer { FoldJournal.interruption.withLock { $0 = nil } }
        #expect(throws: Crash.self, "\(step.rawValue): the fold stops there") {
            try PruneOperation.run(target: target, machine: "guest", keep: KeepRules(last: 2), options: PruneOptions(timeZone: utc))
        }
        FoldJournal.interruption.withLock { $0 = nil }
        let listed = try points.listing().map(\.version)
        #expect(listed == versions || listed == Array(versions[1...]), "\(step.rawValue): listed \(listed)")
        try expectPointsReadBack(points, models, "stopped at \(step.rawValue)")
        let verified = try VerifyOperation.run(target: target, machine: "guest", options: VerifyOptions(record: false))
        #expect(verified.allSatisfy { $0.ok }, "\(step.rawValue): \(verified.map { $0.problem ?? "ok" })")

        let again = try PruneOperation.run(target: target, machine: "guest", keep: KeepRules(last: 2), options: PruneOptions(timeZone: utc))
        #expect(again.removed.isEmpty, "\(step.rawValue): the resumed fold removed \(versions[0]); nothing else to remove")
        #expect(try points.listing().map(\.version) == Array(versions[1...]), "\(step.rawValue)")
        #expect(try points.manifest(versions[1]).revision == 2 && points.manifest(versions[1]).kind == .full)
        #expect(try points.manifest(versions[2]).revision == 2)
        try expectPointsReadBack(points, models, "finished after \(step.rawValue)")
        let after = try VerifyOperation.run(target: target, machine: "guest", options: VerifyOptions(record: false))
        #expect(after.count == 2 && after.allSatisfy { $0.ok }, "\(step.rawValue): \(after.map { $0.problem ?? "ok" })")
        #expect(!target.space.exists(points.pointFolder(versions[0])))
        let left = try leftovers(points)
        #expect(left.isEmpty, "\(step.rawValue): \(left)")
        try finished(points)
    }

    @Test func aFoldStoppedAtEachStepOnTheShareIsFinishedByTheNextPrune() async throws {
        guard try SambaServer.available() else { return }
        let (bench, versions, models) = try await Self.bench(count: 3, size: 8 << 20, seed: 43)
        try await offPool {
            let server = try SambaServer()
            defer { server.stop() }
            for step in FoldStep.allCases {
                let share = try server.target(path: "/crash-\(step.rawValue)")
                _ = try ReplicationOperation.run(from: bench.target, to: share, options: ReplicationOptions())
                try Self.crashWalk(step, target: share, models: models, versions: versions)
            }
            #expect(try server.serverFiles().filter { $0.hasSuffix(".folded") || $0.hasSuffix(".merge.json") }.isEmpty)
        }
    }

    @Test func aFoldNeverRenamesOverAFileThatIsInTheWay() async throws {
        guard try SambaServer.available() else { return }
        let (bench, versions, models) = try await Self.bench(count: 3, size: 8 << 20, seed: 45)
        try await offPool {
            let server = try SambaServer()
            defer { server.stop() }
            let share = try server.target(path: "/in-the-way")
            _ = try ReplicationOperation.run(from: bench.target, to: share, options: ReplicationOptions())
            let points = RecoveryPoints(target: share, machine: "guest")
            let folder = points.folder
            struct Crash: Error {}
            FoldJournal.interruption.withLock { hook in
                hook = { f, s in if f == folder && s == .grandchildOnMerged { throw Crash() } }
            }
            defer { FoldJournal.interruption.withLock { $0 = nil } }
            #expect(throws: Crash.self) {
                try PruneOperation.run(target: share, machine: "guest", keep: KeepRules(last: 2), options: PruneOptions(timeZone: Self.utc))
            }
            FoldJournal.interruption.withLock { $0 = nil }
            // Something takes the name the child's image moves aside to: the fold stops, naming it,
            // and replaces nothing.
            let aside = points.pointFolder(versions[1]).appending(".disk0.vhdx.folded")
            try share.publish(Array("not mine".utf8), at: aside)
            do {
                _ = try PruneOperation.run(target: share, machine: "guest", keep: KeepRules(last: 2), options: PruneOptions(timeZone: Self.utc))
                Issue.record("the prune went on over \(aside)")
            } catch let TargetError.damaged(path, reason) {
                #expect(path == aside.string && reason.contains("bulwark verify"), "\(path): \(reason)")
            }
            #expect(try share.read(aside, limit: 100) == Array("not mine".utf8))
            try Self.expectPointsReadBack(points, models, "with a file in the way")
            // Once it is gone, the next prune finishes.
            try share.space.remove(aside)
            _ = try PruneOperation.run(target: share, machine: "guest", keep: KeepRules(last: 2), options: PruneOptions(timeZone: Self.utc))
            #expect(try points.listing().map(\.version) == Array(versions[1...]))
            try Self.expectPointsReadBack(points, models, "finished")
            let left = try Self.leftovers(points)
            #expect(left.isEmpty, "\(left)")
        }
    }

    /// A fold an earlier build left on a local folder (the engine's merge, then a hard link of the
    /// merged image under the child's name) is finished by the new steps.
    @Test func aFoldLeftByTheLinkingBuildIsFinished() async throws {
        let (bench, versions, models) = try await Self.bench(count: 3, size: 8 << 20, seed: 49)
        try await offPool {
            let points = bench.points
            let removed = points.pointFolder(versions[0]).appending("disk0.vhdx")
            let child = points.pointFolder(versions[1]).appending("disk0.vhdx")
            let grandchild = points.pointFolder(versions[2]).appending("disk0.vhdx")
            let journal = FoldJournal(removed: try points.manifest(versions[0]), into: versions[1], grandchild: versions[2],
                                      childRevision: 1, grandchildRevision: 1)
            try bench.target.publish(try RecoveryPoints.encode(journal), at: points.folder.appending(FoldJournal.name))
            try FileManager.default.removeItem(atPath: points.pointFolder(versions[0]).appending("manifest.json").string)
            _ = try MergeOperation.merge(child: child, options: MergeOptions(into: removed, children: [grandchild]))
            try FileOps.link(removed, as: child)
            _ = try ReparentOperation.reparent(child: grandchild, parent: child)
            try Self.expectPointsReadBack(points, models, "as the earlier build left it")

            let pruned = try PruneOperation.run(target: bench.target, machine: "guest", keep: KeepRules(last: 2), options: PruneOptions(timeZone: Self.utc))
            #expect(pruned.removed.isEmpty)
            #expect(try points.listing().map(\.version) == Array(versions[1...]))
            #expect(try points.manifest(versions[1]).revision == 2 && points.manifest(versions[2]).revision == 2)
            try Self.expectPointsReadBack(points, models, "finished")
            let verified = try VerifyOperation.run(target: bench.target, machine: "guest", options: VerifyOptions(record: false))
            #expect(verified.count == 2 && verified.allSatisfy { $0.ok }, "\(verified.map { $0.problem ?? "ok" })")
            #expect(try ChainCheck.check(path: grandchild).isClean)
            let left = try Self.leftovers(points)
            #expect(left.isEmpty, "\(left)")
        }
    }

    @Test func aFoldStoppedAtEachStepOnALocalFolderIsFinishedByTheNextPrune() async throws {
        let (bench, versions, models) = try await Self.bench(count: 3, size: 8 << 20, seed: 47)
        try await offPool {
            for step in FoldStep.allCases {
                let target = LocalDirectoryTarget(path: FilePath(bench.dir.file("copy-\(step.rawValue)")))
                _ = try ReplicationOperation.run(from: bench.target, to: target, options: ReplicationOptions())
                try Self.crashWalk(step, target: target, models: models, versions: versions) { points in
                    // The chains are clean for the engine's check, and libvhdi reads the newest one.
                    let newest = points.pointFolder(versions[2]).appending("disk0.vhdx")
                    #expect(try ChainCheck.check(path: newest).isClean, "\(step.rawValue): the chain checks clean")
                    let files = [points.pointFolder(versions[1]).appending("disk0.vhdx"), newest]
                    if let oracle = try PyVHDI.read(files) {
                        #expect(Digest.sha256(try oracle.get()) == Digest.sha256(models[versions[2]]!), "\(step.rawValue): libvhdi reads the chain")
                    }
                }
            }
        }
    }
}
