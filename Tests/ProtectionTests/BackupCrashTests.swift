import Foundation
import Protection
import Storage
import SystemPackage
import Targets
import Testing
import TestSupport
import VirtualDisk

/// `bulwark backup start` (a backup, then retention folding old points away) and `bulwark prune`,
/// killed with SIGKILL at ≥ 30 random moments: every point listed afterwards is whole, reads back as
/// the disk was when it was made and verifies; no half point is ever listed; the next run succeeds.
@Suite(.serialized) struct BackupCrashTests {
    static let slowIO = 15_000

    @Test func killedBackupsAndPrunesLeaveEveryPointWhole() async throws {
        try await offPool { try Self.killedBackupsAndPrunes() }
    }

    static func killedBackupsAndPrunes() throws {
        let bench = try BackupBench(size: 24 << 20, seed: 31, keep: "{last: 3}")
        var rng = SeededRandom(seed: 32)
        let env = ["BULWARK_TEST_SLOW_IO": "\(Self.slowIO)", "BULWARK_STATE_DIR": bench.state]
        // The disk's content at each round: a point made in round k reads as content[k].
        var digestOfVersion: [String: String] = [:]
        var kills = 0, round = 0, completed = 0, foldsInterrupted = 0
        try bench.write(bench.rng.bytes(8 << 20), at: 0)
        // Four points first, so every later backup ends with a fold; the last run's time (a backup
        // and a fold) spreads the kills.
        var span: UInt32 = 0
        for _ in 0..<4 {
            try bench.scribble(writes: 3, maxLength: 1 << 20)
            let (time, r) = try KilledRun.duration(["backup", "start", "--policy", bench.policyFile], environment: env)
            #expect(r.status == 0, "\(r.err)")
            span = time
            for v in try bench.points.listing() where digestOfVersion[v.version] == nil { digestOfVersion[v.version] = Digest.sha256(bench.model) }
        }
        while kills < 30 || round < 36 {
            round += 1
            try bench.scribble(writes: 3, maxLength: 1 << 20)
            let digest = Digest.sha256(bench.model)
            let before = Set(try bench.points.listing().map(\.version))
            let args = round % 4 == 0 ? ["prune", "--policy", bench.policyFile] : ["backup", "start", "--policy", bench.policyFile]
            let delay = UInt32.random(in: 0...max(1, span), using: &rng)
            let outcome = try KilledRun.run(args, after: delay, environment: env)
            if outcome.killed {
                kills += 1
                if FileManager.default.fileExists(atPath: bench.points.folder.appending("prune.json").string) { foldsInterrupted += 1 }
            } else {
                #expect(outcome.status == 0, "round \(round) \(args[0]) ran to the end: \(outcome.err)")
                completed += 1
            }
            // What is listed is whole: new points read as the disk of this round, older ones as before.
            let listed = try bench.points.listing()
            for entry in listed where !before.contains(entry.version) { digestOfVersion[entry.version] = digest }
            let versions = try run(TestEnv.bulwark, ["versions", "--target", bench.targetPath, "--json"])
            #expect(versions.status == 0, "versions works after every kill: \(versions.err)")
            for entry in listed {
                let read = try bench.read(entry.version)
                #expect(Digest.sha256(read) == digestOfVersion[entry.version], "round \(round) (\(args[0]) killed after \(delay) µs): \(entry.version) reads as made")
            }
        }
        #expect(kills >= 30)
        #expect(foldsInterrupted >= 3, "kills landed inside retention folds (\(foldsInterrupted))")
        // The next runs succeed, finish what was interrupted, and leave a clean target.
        let final = try run(TestEnv.bulwark, ["backup", "start", "--policy", bench.policyFile, "--json"], environment: ["BULWARK_STATE_DIR": bench.state])
        #expect(final.status == 0, "\(final.err)")
        let listed = try bench.points.listing()
        #expect(listed.count == 3, "keep last 3: \(listed.map(\.version))")
        #expect(listed.first?.kind == .full)
        #expect(try bench.read(listed.last!.version) == bench.model)
        let verified = try VerifyOperation.run(target: bench.target, machine: "guest", options: VerifyOptions(record: false))
        #expect(verified.count == 3 && verified.allSatisfy { $0.ok }, "\(verified.compactMap(\.problem))")
        let leftovers = try FileManager.default.subpathsOfDirectory(atPath: bench.points.folder.string)
            .filter { $0.contains(".partial") || $0.contains("prune.json") || $0.contains("lease.json") || $0.contains(".merge") }
        #expect(leftovers.isEmpty, "\(leftovers)")
        #expect(try bench.points.incompleteVersions().isEmpty)
        // Jobs killed by SIGKILL are recorded as interrupted once anything recovers the history.
        let history = try JobHistory(stateDirectory: bench.state)
        _ = try history.recoverInterrupted()
        #expect(try history.list().allSatisfy { $0.status != .running })
        print("backup crash: \(kills) kills over \(round) rounds (\(foldsInterrupted) inside a fold), \(completed) runs completed")
    }
}
