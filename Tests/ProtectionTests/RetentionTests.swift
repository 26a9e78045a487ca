import Foundation
import Protection
import Storage
import SystemPackage
import Targets
import Testing
import TestSupport
import VirtualDisk

/// Retention over simulated time (injected into the library): the kept set is the rules' set, every
/// kept point still reads back as it was made, and the catalog can be rebuilt from the manifests.
@Suite struct RetentionTests {
    @Test func sixtyDaysOfDailyBackupsKeepExactlyWhatTheRulesSay() async throws {
        let bench = try BackupBench(size: 12 << 20, seed: 9, keep: "{last: 3, daily: 7, weekly: 4, monthly: 6}")
        let utc = TimeZone(identifier: "UTC")!
        var digests: [String: String] = [:]
        var times: [(String, Date)] = []
        var removedSoFar = 0
        for day in 0..<60 {
            try bench.scribble(writes: 2, maxLength: 100 << 10)
            let r = try await bench.backup(at: .day(day))
            digests[r.version] = Digest.sha256(bench.model)
            times.append((r.version, .day(day)))
            let policy = try bench.policy
            let pruned = try await offPool { try PruneOperation.run(policy: policy, options: PruneOptions(now: .day(day), timeZone: utc)) }
            removedSoFar += pruned.removed.count
        }
        #expect(removedSoFar > 30)
        // The kept set equals the rules applied to all sixty points at the end.
        let expected = try bench.policy.keep.evaluate(times.map { RetentionCandidate(id: $0.0, time: $0.1, protected: false) }, in: utc)
            .filter(\.keep).map(\.id).sorted()
        let listing = try bench.points.listing()
        #expect(listing.map(\.version) == expected)
        #expect(listing.first?.kind == .full, "the oldest kept point is a full")
        #expect(listing.contains { $0.revision > 1 }, "removed points were folded into later ones")
        // Every kept point reads back as it was made (Bulwark and libvhdi), and verifies.
        let reads = try await offPool { try listing.map { Digest.sha256(try bench.read($0.version)) } }
        for (entry, digest) in zip(listing, reads) {
            #expect(digest == digests[entry.version], "\(entry.version) reads back")
        }
        if let oracle = try PyVHDI.read(try bench.chainFiles(listing.last!.version)) {
            #expect(Digest.sha256(try oracle.get()) == digests[listing.last!.version], "libvhdi reads the newest point's chain")
        }
        let verified = try VerifyOperation.run(target: bench.target, machine: "guest", options: VerifyOptions(record: false))
        #expect(verified.count == expected.count && verified.allSatisfy { $0.ok })
        // The catalog rebuilds from the manifests after being deleted.
        for n in try FileManager.default.contentsOfDirectory(atPath: bench.points.folder.string) where n.hasPrefix("catalog.") {
            try FileManager.default.removeItem(atPath: bench.points.folder.appending(n).string)
        }
        #expect(try bench.points.listing().map(\.version) == expected)
        #expect(try bench.points.rebuildCatalog().points.map(\.version) == expected)
        #expect(try bench.points.incompleteVersions().isEmpty)
    }

    @Test func dryRunListsDecisionsAndProtectedPointsAreNeverTouched() async throws {
        let bench = try BackupBench(size: 8 << 20, seed: 4, keep: "{last: 2}")
        var versions: [String] = []
        for day in 0..<5 {
            try bench.scribble(writes: 1)
            versions.append(try await bench.backup(at: .day(day)).version)
        }
        try bench.points.setProtected(versions[1], true)
        let dry = try PruneOperation.run(policy: try bench.policy, options: PruneOptions(dryRun: true, timeZone: TimeZone(identifier: "UTC")!))
        #expect(dry.decisions.map(\.version) == versions.reversed(), "newest first")
        #expect(dry.decisions.map(\.keep) == [true, true, false, true, true])
        #expect(dry.decisions.first { $0.version == versions[1] }?.rule == "protected")
        #expect(dry.decisions.last?.rule.contains("protected point \(versions[1]) depends on it") == true, "\(dry.decisions.last?.rule ?? "")")
        #expect(try bench.points.listing().count == 5, "a dry run changes nothing")
        let models = try versions.map { try bench.read($0) }
        let real = try PruneOperation.run(policy: try bench.policy, options: PruneOptions(timeZone: TimeZone(identifier: "UTC")!))
        #expect(real.removed == [versions[2]])
        let kept = try bench.points.listing()
        #expect(kept.map(\.version) == [versions[0], versions[1], versions[3], versions[4]])
        #expect(try bench.points.manifest(versions[1]).revision == 1, "the protected point is untouched")
        #expect(try bench.points.manifest(versions[3]).revision == 2, "the removed point was folded into the next one")
        #expect(try bench.points.manifest(versions[3]).parent == versions[1])
        for (i, v) in versions.enumerated() where kept.contains(where: { $0.version == v }) {
            #expect(try bench.read(v) == models[i])
        }
    }
}
