import Foundation
import SystemPackage
import Testing
import TestSupport
@testable import VirtualDisk
import Storage
import Synchronization

/// The engine's guards around writes and merges, in-process: `WriteOperation` refuses parents and
/// skips zeros, `DiskChain.open` honours merge records, a merge's locks keep writers out, and the
/// leftovers of interrupted merges and conversions are handled.
@Suite struct OpsGuardTests {
    /// A pipe-free input: a regular file holding `bytes`, opened for reading.
    func input(_ bytes: [UInt8], in dir: TempDir) throws -> FileDescriptor {
        let path = dir.file("input-\(UUID().uuidString.prefix(6))")
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return try FileDescriptor.open(FilePath(path), .readOnly)
    }

    func deadPID() throws -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/true")
        try p.run()
        p.waitUntilExit()
        return p.processIdentifier
    }

    @Test(arguments: [DiskFormat.vhd, .vhdx])
    func writeRefusesAParentWithChildren(format: DiskFormat) throws {
        let dir = try TempDir("ops-guard")
        var rng = SeededRandom(seed: 701)
        var model = ChainModel(size: Ops.size)
        let paths = try Ops.buildChain(in: dir, format: format, baseType: .dynamic, depth: 1, rng: &rng, model: &model)
        let before = try Ops.readAll(paths[1])
        let fd = try input(rng.bytes(4096), in: dir)
        defer { try? fd.close() }
        #expect(throws: DiskError.hasChildren(path: FileOps.absolute(paths[0]).string, children: [FileOps.absolute(paths[1]).string])) {
            try WriteOperation.write(into: paths[0], at: 0, from: fd, inputName: "input")
        }
        #expect(try Ops.readAll(paths[1]) == before, "the child is untouched")
        #expect(throws: DiskError.self) {
            try WriteOperation.write(into: paths[1], at: 0, from: fd, inputName: "input", options: WriteOptions(children: [FilePath(dir.file("missing"))]))
        }
        let result = try WriteOperation.write(into: paths[0], at: 0, from: fd, inputName: "input", options: WriteOptions(force: true))
        #expect(result.bytesRead == 4096)
    }

    @Test(arguments: [DiskFormat.vhd, .vhdx, .raw])
    func writeSkipsZerosWhereTheDiskReadsZeros(format: DiskFormat) throws {
        let dir = try TempDir("ops-guard")
        let path = FilePath(dir.file(Ops.name("d", format)))
        try DiskImages.create(at: path, options: CreateOptions(format: format, type: .dynamic, virtualSize: 64 << 20)).close()
        let size = { () throws -> UInt64 in
            let s = try BlockFile.open(path, writable: false)
            defer { try? s.close() }
            return try s.allocatedBytes()
        }
        let before = try size()
        let zeros = try input([UInt8](repeating: 0, count: 24 << 20), in: dir)
        defer { try? zeros.close() }
        let reports = Mutex<[UInt64]>([])
        let result = try WriteOperation.write(into: path, at: 0, from: zeros, inputName: "zeros",
                                              progress: ProgressReporter { done, total in
                                                  #expect(total == 24 << 20)
                                                  reports.withLock { $0.append(done) }
                                              })
        #expect(result.zeroBytesSkipped == 24 << 20 && result.bytesRead == 24 << 20)
        #expect(try size() <= before + (64 << 10))
        #expect(reports.withLock { $0.last } == 24 << 20, "progress reaches the total")
        // Over data, zeros are written.
        var rng = SeededRandom(seed: 703)
        let data = try input(rng.bytes(2 << 20), in: dir)
        defer { try? data.close() }
        _ = try WriteOperation.write(into: path, at: 4 << 20, from: data, inputName: "data")
        let more = try input([UInt8](repeating: 0, count: 1 << 20), in: dir)
        defer { try? more.close() }
        let r = try WriteOperation.write(into: path, at: 4 << 20, from: more, inputName: "zeros")
        #expect(r.zeroBytesSkipped == 0)
        #expect(try Ops.readAll(path)[(4 << 20)..<(5 << 20)].allSatisfy { $0 == 0 })
    }

    @Test func cancelledWriteStops() throws {
        let dir = try TempDir("ops-guard")
        let path = FilePath(dir.file("d.vhdx"))
        try DiskImages.create(at: path, options: CreateOptions(format: .vhdx, type: .dynamic, virtualSize: 64 << 20)).close()
        let fd = try input([UInt8](repeating: 1, count: 1 << 20), in: dir)
        defer { try? fd.close() }
        let reporter = ProgressReporter()
        reporter.cancel()
        #expect(throws: OperationCancelled.self) { try WriteOperation.write(into: path, at: 0, from: fd, inputName: "x", progress: reporter) }
    }

    /// A pending merge (record of a dead process, part of the data moved): the leaf reads through it,
    /// the ancestor and writers are refused with `mergePending`, and the merge itself ignores records.
    @Test(arguments: [DiskFormat.vhd, .vhdx])
    func chainOpenHonoursAPendingMerge(format: DiskFormat) throws {
        let dir = try TempDir("ops-guard")
        var rng = SeededRandom(seed: 705)
        var model = ChainModel(size: Ops.size)
        let paths = try Ops.buildChain(in: dir, format: format, baseType: .dynamic, depth: 1, rng: &rng, model: &model).map(FileOps.absolute)
        let expected = model.view(1)
        let (planned, locks) = try MergeOperation.plan(child: paths[1], options: MergeOptions())
        locks.release()
        var intent = planned
        intent.pid = try deadPID()
        try intent.write(for: paths[1])
        let ancestor = try DiskImages.openLevel(paths[0], writable: true)
        try ancestor.write(Array(expected[0..<65536]), at: 0)
        try ancestor.close()

        #expect(try Ops.readAll(paths[1]) == expected, "the leaf reads through the pending merge")
        let record = MergeIntent.recordPath(for: paths[1]).string
        let pending = DiskError.mergePending(path: paths[0].string, child: paths[1].string, ancestor: paths[0].string, record: record, runningPID: nil)
        #expect(throws: pending) { try DiskChain.open(paths[0]) }
        #expect(throws: DiskError.mergePending(path: paths[1].string, child: paths[1].string, ancestor: paths[0].string, record: record, runningPID: nil)) {
            try DiskChain.open(paths[1], writable: true)
        }
        #expect("\(pending)".contains("a merge is pending"))
        try DiskChain.open(paths[0], pendingMerges: .ignored).close()
        let result = try MergeOperation.merge(child: paths[1])
        #expect(result.resumed)
        #expect(try Ops.readAll(paths[0]) == expected)
    }

    /// A reader of the ancestor that opened it before a merge started learns of it afterwards.
    @Test func verifyCatchesAMergeThatStartedAfterTheOpen() throws {
        let dir = try TempDir("ops-guard")
        var rng = SeededRandom(seed: 707)
        var model = ChainModel(size: Ops.size)
        let paths = try Ops.buildChain(in: dir, format: .vhdx, baseType: .dynamic, depth: 1, rng: &rng, model: &model).map(FileOps.absolute)
        let reader = try DiskChain.open(paths[0])
        defer { try? reader.close() }
        try PendingMergeChain.verify(reader)
        let (intent, locks) = try MergeOperation.plan(child: paths[1], options: MergeOptions())
        defer { locks.release() }
        try intent.write(for: paths[1])
        #expect(throws: DiskError.self) { try PendingMergeChain.verify(reader) }
        try MergeIntent.remove(for: paths[1])
    }

    @Test func mergeLocksKeepWritersOut() throws {
        let dir = try TempDir("ops-guard")
        var rng = SeededRandom(seed: 709)
        var model = ChainModel(size: Ops.size)
        let paths = try Ops.buildChain(in: dir, format: .vhd, baseType: .dynamic, depth: 2, rng: &rng, model: &model)
        let locks = try MergeLocks(levels: [paths[2], paths[1]], ancestor: paths[0])
        for p in paths {
            #expect(throws: StorageError.self, "\(p.string) is locked") { try DiskImages.openLevel(p, writable: true).close() }
        }
        locks.release()
        for p in paths { try DiskImages.openLevel(p, writable: true).close() }
    }

    @Test func missingChildrenPathsAreErrors() throws {
        let dir = try TempDir("ops-guard")
        let missing = FilePath(dir.file("nope"))
        #expect(throws: DiskError.self) { try ChildFinder(near: [FilePath(dir.file("x.vhd"))], extra: [missing]) }
        #expect(throws: DiskError.self) { try ChildFinder.children(of: FilePath(dir.file("x.vhd")), folders: [missing]) }
    }

    @Test func staleTemporaryRecordsGo() throws {
        let dir = try TempDir("ops-guard")
        let stale = dir.file(".a.vhd.merge.json.tmp-\(try deadPID())"), live = dir.file(".a.vhd.merge.json.tmp-\(getpid())")
        for f in [stale, live] { FileManager.default.createFile(atPath: f, contents: Data("{".utf8)) }
        MergeIntent.removeStaleTemporaries(in: FilePath(dir.path))
        #expect(!FileManager.default.fileExists(atPath: stale))
        #expect(FileManager.default.fileExists(atPath: live))
    }

    @Test func cancelledConvertLeavesNoFile() throws {
        let dir = try TempDir("ops-guard")
        var rng = SeededRandom(seed: 711)
        var model = ChainModel(size: Ops.size)
        let src = try Ops.buildChain(in: dir, format: .vhdx, baseType: .dynamic, depth: 1, rng: &rng, model: &model)
        let dst = FilePath(dir.file("out.vhd"))
        let reporter = ProgressReporter()
        reporter.cancel()
        #expect(throws: OperationCancelled.self) { try ConvertOperation.convert(source: src[1], destination: dst, progress: reporter) }
        #expect(!FileOps.exists(dst))
        #expect(try FileOps.contents(of: FilePath(dir.path)).filter { $0.contains(".partial-") }.isEmpty)
    }

    @Test func convertFailuresNameTheDestination() throws {
        let temp = FilePath("/x/.out.vhdx.partial-12"), dst = FilePath("/x/out.vhdx")
        let e = ConvertOperation.naming(StorageError.insufficientSpace(path: temp.string, needed: 10, available: 0), destination: dst, temp: temp)
        #expect("\(e)".hasPrefix("/x/out.vhdx: not enough free space"), "\(e)")
        #expect(!"\(e)".contains(".partial-"))
    }
}
