import Foundation
import SystemPackage
import Testing
import TestSupport
import VirtualDisk
import Storage

/// What merges and conversions leave behind after kills, signals and failed system calls.
@Suite(.serialized) struct MergeLeftoverTests {
    @Test func staleTemporaryRecordsAreRemovedByCheckAndMerge() throws {
        let dir = try TempDir("merge-leftover")
        let (_, leaf, _, _) = try MergeRace.chain(.vhd, in: dir, seed: 601)
        let dead = try MergeRace.deadPID()
        let stale = dir.file(".leaf.vhd.merge.json.tmp-\(dead)")
        let live = dir.file(".leaf.vhd.merge.json.tmp-\(getpid())")
        for f in [stale, live] { FileManager.default.createFile(atPath: f, contents: Data("{".utf8)) }
        let r = try run(TestEnv.bulwark, ["disk", "check", leaf.string])
        #expect(r.status == 0, "\(r.out)")
        #expect(!FileManager.default.fileExists(atPath: stale), "check removes a dead writer's temporary record")
        #expect(FileManager.default.fileExists(atPath: live), "and keeps a live one's")
        FileManager.default.createFile(atPath: stale, contents: Data("{".utf8))
        try runChecked(TestEnv.bulwark, ["disk", "merge", leaf.string])
        #expect(!FileManager.default.fileExists(atPath: stale), "merge removes it too")
        try FileManager.default.removeItem(atPath: live)
    }

    @Test func rerunningAFinishedMergeSaysNothingIsLeft() throws {
        let dir = try TempDir("merge-leftover")
        let (_, leaf, _, _) = try MergeRace.chain(.vhdx, in: dir, seed: 603)
        try runChecked(TestEnv.bulwark, ["disk", "merge", leaf.string])
        let r = try run(TestEnv.bulwark, ["disk", "merge", leaf.string])
        #expect(r.status == Exit.usage, "nothing to merge for that path: a usage error")
        #expect(r.err.contains("nothing left to merge"), "\(r.err)")
    }

    /// EIO from the fsync of the folder after the record's rename (the second fsync of a merge) stops
    /// the merge before any data moves, and leaves no record.
    @Test func aFailedRecordSyncStopsTheMerge() throws {
        guard try TestEnv.tools("strace") else { return }
        let dir = try TempDir("merge-leftover")
        let (base, leaf, _, _) = try MergeRace.chain(.vhd, in: dir, seed: 605)
        let before = try [base, leaf].map(OpsCLI.bytes)
        let r = try run("strace", ["-f", "-qq", "-o", "/dev/null", "-e", "trace=fsync", "-e", "inject=fsync:error=EIO:when=2",
                                    TestEnv.bulwark, "disk", "merge", leaf.string])
        #expect(r.status == 7, "the merge fails with an I/O error: \(r.out)")
        #expect(r.err.contains("fsync of the folder") && r.err.contains("errno 5"), "\(r.err)")
        #expect(try [base, leaf].map(OpsCLI.bytes) == before, "no data moved")
        #expect(!FileOps.exists(MergeIntent.recordPath(for: leaf)), "no record is left")
        #expect(try FileOps.contents(of: FilePath(dir.path)).filter { $0.contains("merge.json") }.isEmpty)
    }

    @Test(arguments: [SIGINT, SIGTERM])
    func anInterruptedConvertLeavesNothing(signal: Int32) throws {
        let dir = try TempDir("convert-signal")
        let (_, leaf, _, _) = try MergeRace.chain(.vhdx, in: dir, seed: 607)
        let dst = dir.file("out.vhdx")
        let convert = try MergeRace.Background(["disk", "convert", leaf.string, dst], slowIO: 30_000)
        #expect(MergeRace.waitFor { !OpsCLI.partials(in: dir.path).isEmpty }, "the staged file appears")
        usleep(200_000)
        kill(convert.pid, signal)
        let outcome = convert.wait()
        #expect(outcome.status == 128 + signal, "exit \(outcome.status): \(outcome.err)")
        #expect(outcome.err.contains("\(dst) was not created"), "\(outcome.err)")
        #expect(OpsCLI.partials(in: dir.path).isEmpty, "the staged file is removed")
        #expect(!FileManager.default.fileExists(atPath: dst))
    }

    @Test func stalePartialsAreRemovedByTheNextConvert() throws {
        let dir = try TempDir("convert-stale")
        let (_, leaf, merged, _) = try MergeRace.chain(.vhd, in: dir, seed: 609)
        let stale = dir.file(".out.vhdx.partial-\(try MergeRace.deadPID())")
        let live = dir.file(".out.vhdx.partial-\(getpid())")
        for f in [stale, live] { FileManager.default.createFile(atPath: f, contents: Data(count: 4096)) }
        try runChecked(TestEnv.bulwark, ["disk", "convert", leaf.string, dir.file("out.vhdx")])
        #expect(!FileManager.default.fileExists(atPath: stale))
        #expect(FileManager.default.fileExists(atPath: live), "a running conversion's file is left alone")
        #expect(OpsCLI.same(try OpsCLI.readAll(FilePath(dir.file("out.vhdx"))), merged))
    }

    /// ENOSPC on a write into the staged file: the error names the destination and says it was not
    /// created (the temporary name is gone and means nothing to the user).
    @Test func noSpaceDuringConvertNamesTheDestination() throws {
        guard try TestEnv.tools("strace") else { return }
        let dir = try TempDir("convert-enospc")
        let (_, leaf, _, _) = try MergeRace.chain(.vhd, in: dir, seed: 611)
        let dst = dir.file("out.vhdx")
        let r = try run("strace", ["-f", "-qq", "-o", "/dev/null", "-e", "trace=pwrite64", "-e", "inject=pwrite64:error=ENOSPC:when=6",
                                    TestEnv.bulwark, "disk", "convert", leaf.string, dst])
        #expect(r.status == Exit.noSpace)
        #expect(r.err.contains("\(dst): not enough free space"), "\(r.err)")
        #expect(!r.err.contains(".partial-"), "\(r.err)")
        #expect(OpsCLI.partials(in: dir.path).isEmpty && !FileManager.default.fileExists(atPath: dst))
    }
}
