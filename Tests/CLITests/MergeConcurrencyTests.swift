import Foundation
import SystemPackage
import Testing
import TestSupport
import VirtualDisk
import Storage

/// A merge next to writers, readers and kills: every level is locked against writers for the whole
/// merge (a writer is refused, naming the merge, and nothing is lost); readers of the chain get the
/// merged view or a clear refusal, never mixed bytes, while it runs, after a kill, and after it ends.
@Suite(.serialized) struct MergeConcurrencyTests {
    static let slowIO = 30_000

    @Test(arguments: [DiskFormat.vhd, .vhdx])
    func writesDuringAMergeAreRefusedNotLost(format: DiskFormat) throws {
        let dir = try TempDir("merge-race")
        let (base, leaf, merged, _) = try MergeRace.chain(format, in: dir, seed: 501)
        let input = dir.file("x")
        try Data(repeating: 0x5A, count: 4096).write(to: URL(fileURLWithPath: input))
        // Each refused writer waits 1 s for the lock first: the merge must outlast both.
        let merge = try MergeRace.Background(["disk", "merge", leaf.string, "--into", base.string], slowIO: 100_000)
        #expect(MergeRace.waitFor { FileOps.exists(MergeIntent.recordPath(for: leaf)) }, "the merge starts")
        for (target, extra) in [(leaf, [String]()), (base, ["--force"])] {
            let r = try run(TestEnv.bulwark, ["disk", "write", target.string, "--offset", "1M", "--input", input] + extra)
            #expect(r.status == Exit.busy, "a write into \(target.string) during the merge is refused")
            #expect(r.err.contains("a merge is in progress (PID \(merge.pid))"), "\(r.err)")
            #expect(r.err.contains("bulwark disk merge \(leaf.string)"), "\(r.err)")
        }
        let outcome = merge.wait()
        #expect(outcome.status == 0, "\(outcome.err)")
        #expect(OpsCLI.same(try OpsCLI.readAll(base), merged), "the merged base holds the leaf's data and nothing else")
        let r = try run(TestEnv.bulwark, ["disk", "check", base.string])
        #expect(r.status == 0, "\(r.out)")
    }

    /// A writer that holds the leaf when a merge starts makes the merge wait, then fail, naming it;
    /// nothing is merged, and a merge after the write folds the write in.
    @Test func aMergeWaitsForAWriterAndFailsWithoutChanges() throws {
        let dir = try TempDir("merge-race")
        let (base, leaf, merged, _) = try MergeRace.chain(.vhd, in: dir, seed: 503)
        var rng = SeededRandom(seed: 505)
        let payload = rng.bytes(8 << 20)
        let input = dir.file("x")
        try Data(payload).write(to: URL(fileURLWithPath: input))
        let writer = try MergeRace.Background(["disk", "write", leaf.string, "--offset", "40M", "--input", input], slowIO: 100_000)
        usleep(300_000)
        let r = try run(TestEnv.bulwark, ["disk", "merge", leaf.string])
        #expect(r.status == Exit.busy)
        #expect(r.err.contains("in use by process \(writer.pid)"), "\(r.err)")
        #expect(!FileOps.exists(MergeIntent.recordPath(for: leaf)))
        #expect(writer.wait().status == 0)
        try runChecked(TestEnv.bulwark, ["disk", "merge", leaf.string])
        var expected = merged
        expected.replaceSubrange((40 << 20)..<(48 << 20), with: payload)
        #expect(OpsCLI.same(try OpsCLI.readAll(base), expected))
    }

    /// Readers in a loop while a slowed merge runs: the leaf reads the merged view every time (until
    /// it is removed); the base reads its old or its merged content, or is refused naming the merge.
    @Test(arguments: [DiskFormat.vhd, .vhdx])
    func readersDuringAMergeNeverSeeMixedBytes(format: DiskFormat) throws {
        let dir = try TempDir("merge-race")
        let (base, leaf, merged, base0) = try MergeRace.chain(format, in: dir, seed: 507)
        let merge = try MergeRace.Background(["disk", "merge", leaf.string], slowIO: Self.slowIO)
        var leafReads = 0, baseRefused = 0, rounds = 0
        while merge.process.isRunning {
            rounds += 1
            let l = try MergeRace.cliRead(leaf, in: dir)
            if l.status == 0 {
                leafReads += 1
                #expect(OpsCLI.same(l.bytes, merged), "the leaf reads the merged view (\(format), round \(rounds))")
            } else {
                #expect(l.err.contains("no such file"), "the leaf is only ever missing (merged): \(l.err)")
            }
            let b = try MergeRace.cliRead(base, in: dir)
            if b.status == 0 {
                #expect(OpsCLI.same(b.bytes, base0) || OpsCLI.same(b.bytes, merged), "the base reads old or merged bytes, never a mix (\(format), round \(rounds))")
            } else {
                baseRefused += 1
                #expect(b.err.contains("a merge is in progress") && b.err.contains("bulwark disk merge"), "\(b.err)")
            }
        }
        #expect(merge.wait().status == 0)
        #expect(leafReads >= 2 && baseRefused >= 2, "reads overlapped the merge (\(leafReads) leaf, \(baseRefused) base refusals in \(rounds) rounds)")
        #expect(OpsCLI.same(try MergeRace.cliRead(base, in: dir).bytes, merged))
    }

    /// Kills at random points, then reads: the leaf reads the merged view through the pending record,
    /// the base is refused with the command that finishes the merge (or reads whole once the merge
    /// got past the copy), and a re-run finishes.
    @Test(arguments: [DiskFormat.vhd, .vhdx])
    func readsAfterKillsAtRandomPoints(format: DiskFormat) throws {
        var rng = SeededRandom(seed: format == .vhd ? 509 : 511)
        let probe = try TempDir("merge-kill-probe")
        let p = try MergeRace.chain(format, in: probe, seed: 513)
        // libvhdi (20240509) misreads some sectors of untouched VHDX differencing chains (stale buffer
        // bytes); the sectors it reads right before any merge must stay right after every kill.
        let trusted: [Range<Int>]? = try MergeRace.pyvhdiRead([p.base, p.leaf]).map { result in
            guard case .success(let bytes) = result else { return [] }
            return stride(from: 0, to: p.merged.count, by: 512).map { $0..<$0 + 512 }
                .filter { bytes[$0] == p.merged[$0] }
        }
        let span = try OpsCLI.duration(["disk", "merge", p.leaf.string], slowIO: 10_000)
        var kills = 0, unlinked = 0
        for round in 0..<8 {
            let dir = try TempDir("merge-kill")
            let (base, leaf, merged, base0) = try MergeRace.chain(format, in: dir, seed: 513)
            let delay = UInt32.random(in: 0...span, using: &rng)
            let outcome = try OpsCLI.runKilled(["disk", "merge", leaf.string], after: delay, slowIO: 10_000)
            if outcome.killed { kills += 1 }
            let record = FileOps.exists(MergeIntent.recordPath(for: leaf))
            if FileOps.exists(leaf) {
                let l = try MergeRace.cliRead(leaf, in: dir)
                #expect(l.status == 0, "the leaf reads after a kill (\(format), round \(round), \(delay)µs): \(l.err)")
                #expect(OpsCLI.same(l.bytes, merged), "the merged view (\(format), round \(round))")
                // Other tools, which know nothing of merge records, read the chain too.
                switch try MergeRace.pyvhdiRead([base, leaf]) {
                case .success(let bytes):
                    let wrong = (trusted ?? []).first { bytes.count != merged.count || bytes[$0] != merged[$0] }
                    #expect(wrong == nil, "libvhdi reads the merged view (\(format), round \(round)): sector at \(wrong?.lowerBound ?? 0) differs")
                case .failure(let error):
                    // Only a kill in the moment between the ancestor's new identity and the link to it
                    // (one log entry) may leave the link to the merge record.
                    let linked = try identityLink(leaf: leaf, base: base)
                    #expect(!linked, "libvhdi cannot read a linked chain after a kill (\(format), round \(round)): \(error)")
                    unlinked += 1
                case nil: break
                }
            }
            let b = try MergeRace.cliRead(base, in: dir)
            if record && FileOps.exists(leaf) {
                #expect(b.status == Exit.busy, "the base mid-merge is refused (\(format), round \(round))")
                #expect(b.err.contains("a merge is pending") && b.err.contains("run `bulwark disk merge \(leaf.string)`"), "\(b.err)")
            } else {
                #expect(b.status == 0, "\(b.err)")
                #expect(OpsCLI.same(b.bytes, base0) || OpsCLI.same(b.bytes, merged), "the base is whole (\(format), round \(round))")
            }
            if FileOps.exists(leaf) || record { try runChecked(TestEnv.bulwark, ["disk", "merge", leaf.string]) }
            #expect(OpsCLI.same(try MergeRace.cliRead(base, in: dir).bytes, merged))
            let check = try run(TestEnv.bulwark, ["disk", "check", base.string])
            #expect(check.status == 0, "\(check.out)")
        }
        #expect(kills >= 3, "most kills land during the merge (\(kills) of 8)")
        #expect(unlinked <= 2, "kills rarely land between the ancestor's new identity and the link (\(unlinked) of 8)")
    }

    /// Whether the leaf's parent link names the base's current identity.
    func identityLink(leaf: FilePath, base: FilePath) throws -> Bool {
        let l = try DiskImages.openLevel(leaf), b = try DiskImages.openLevel(base)
        defer { try? l.close(); try? b.close() }
        return l.parentLink?.expectedID == b.identity
    }

    /// A pending merge (its process gone): the leaf reads through it, the ancestor and writers are
    /// refused with the command that finishes it; a missing parent suggests `reparent`.
    @Test(arguments: [DiskFormat.vhd, .vhdx])
    func pendingMergeAndMissingParentErrors(format: DiskFormat) throws {
        let dir = try TempDir("merge-pending")
        let (base, leaf, merged, _) = try MergeRace.chain(format, in: dir, seed: 515)
        // The state a kill leaves mid-copy: the record (of a dead process), part of the data moved.
        let identity = { (p: FilePath) throws -> String in
            let level = try DiskImages.openLevel(p)
            defer { try? level.close() }
            return level.identityString
        }
        var intent = MergeIntent(child: leaf.string, levels: [leaf.string], ancestor: base.string, levelIdentities: [try identity(leaf)],
                                 ancestorIdentity: try identity(base), childrenToRepoint: [], started: Timestamp.iso8601())
        intent.pid = try MergeRace.deadPID()
        try intent.write(for: leaf)
        let ancestor = try DiskImages.openLevel(base, writable: true)
        try ancestor.write(Array(merged[(8 << 20)..<(9 << 20)]), at: 8 << 20)
        try ancestor.close()
        let l = try MergeRace.cliRead(leaf, in: dir)
        #expect(l.status == 0 && OpsCLI.same(l.bytes, merged), "the leaf reads through a pending merge: \(l.err)")
        let b = try MergeRace.cliRead(base, in: dir)
        #expect(b.status == Exit.busy)
        #expect(b.err.contains("a merge is pending") && b.err.contains("run `bulwark disk merge \(leaf.string)` to finish it"), "\(b.err)")
        #expect(!b.err.contains("replaced"), "\(b.err)")
        // From a file, not a pipe: a refused writer never reads its input (a pipe would raise SIGPIPE here).
        let input = dir.file("x")
        try Data(count: 512).write(to: URL(fileURLWithPath: input))
        let w = try run(TestEnv.bulwark, ["disk", "write", leaf.string, "--offset", "0", "--input", input])
        #expect(w.status == Exit.busy && w.err.contains("a merge is pending"), "\(w.err)")
        try runChecked(TestEnv.bulwark, ["disk", "merge", leaf.string])
        #expect(OpsCLI.same(try OpsCLI.readAll(base), merged))

        // A child whose parent moved away.
        let child = FilePath(dir.file("c2.\(format.rawValue)"))
        try runChecked(TestEnv.bulwark, ["disk", "create", child.string, "--parent", base.string])
        try FileOps.rename(base, to: FilePath(dir.file("moved.\(format.rawValue)")))
        let r = try run(TestEnv.bulwark, ["disk", "read", child.string, "--length", "512"])
        #expect(r.status == Exit.notFound)
        #expect(r.err.contains("parent disk not found") && r.err.contains("bulwark disk reparent \(child.string) --parent"), "\(r.err)")
    }
}
