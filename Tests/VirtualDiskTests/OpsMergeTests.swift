import Foundation
import SystemPackage
import Testing
import TestSupport
@testable import VirtualDisk
import Storage

@Suite struct OpsMergeTests {
    static let cases: [(DiskFormat, DiskType)] = [(.vhd, .dynamic), (.vhd, .fixed), (.vhdx, .dynamic), (.vhdx, .fixed)]

    /// Random writes at every level of chains 2–4 deep, then a merge of the leaf into a random
    /// ancestor: the ancestor then reads what the leaf read, lower levels are unchanged, and the
    /// external readers agree. The chains are read before and after through each kind of store.
    @Test(arguments: cases, StoreKind.allCases)
    func randomizedMergeMatchesModel(kind: (DiskFormat, DiskType), store: StoreKind) throws {
        let (format, baseType) = kind
        for seed in UInt64(1)...4 {
            let dir = try TempDir("ops-merge")
            var rng = SeededRandom(seed: seed &* 7919 &+ UInt64(format.rawValue.count * 2 + (baseType == .fixed ? 1 : 0)))
            var model = ChainModel(size: Ops.size)
            let depth = Int.random(in: 1...3, using: &rng)
            let paths = try Ops.buildChain(in: dir, format: format, baseType: baseType, depth: depth, rng: &rng, model: &model)
            let leafBefore = try Ops.readAll(paths.last!, store: store)
            #expect(Ops.firstDifference(leafBefore, model.view(depth)) == nil, "the chain reads the model before the merge (seed \(seed))")
            let ancestor = Int.random(in: 0..<depth, using: &rng)  // base-first index
            let result = try MergeOperation.merge(child: paths.last!, options: MergeOptions(into: paths[ancestor]))
            model.merge(from: depth, into: ancestor)
            #expect(result.removed.count == depth - ancestor)
            for p in paths[(ancestor + 1)...] { #expect(!FileOps.exists(p), "\(p) removed") }
            #expect(!FileOps.exists(MergeIntent.recordPath(for: paths.last!)))
            let after = try Ops.readAll(paths[ancestor], store: store)
            #expect(Ops.firstDifference(after, leafBefore) == nil, "merged ancestor reads the old leaf (seed \(seed), depth \(depth), into \(ancestor))")
            for l in 0..<ancestor {
                #expect(Ops.firstDifference(try Ops.readAll(paths[l], store: store), model.view(l)) == nil, "level \(l) unchanged")
            }
            let report = try ChainCheck.check(path: paths[ancestor])
            #expect(report.isClean, "\(report.allProblems)")
            if ancestor == 0 {
                try Ops.qemuCompare(paths[0], format, expected: leafBefore, in: dir)
            } else if let bytes = try Ops.pyvhdiRead(Array(paths[...ancestor])) {
                #expect(try Ops.libvhdiDifference(bytes, leafBefore, leaf: paths[ancestor]) == nil, "libvhdi reads the merged chain")
            }
        }
    }

    /// Merging a middle level re-points the image above it to the ancestor, which keeps reading the same.
    @Test(arguments: [DiskFormat.vhd, .vhdx])
    func mergeRepointsTheChildsChildren(format: DiskFormat) throws {
        let dir = try TempDir("ops-merge")
        var rng = SeededRandom(seed: 99)
        var model = ChainModel(size: Ops.size)
        let paths = try Ops.buildChain(in: dir, format: format, baseType: .dynamic, depth: 2, rng: &rng, model: &model)
        let leafBefore = try Ops.readAll(paths[2])
        let result = try MergeOperation.merge(child: paths[1])
        #expect(result.repointed == [paths[2].string])
        #expect(!FileOps.exists(paths[1]))
        let chain = try DiskChain.open(paths[2])
        #expect(chain.levels.count == 2)
        #expect(OperationIO.key(chain.levels[1].path) == OperationIO.key(paths[0]))
        try chain.close()
        #expect(Ops.firstDifference(try Ops.readAll(paths[2]), leafBefore) == nil)
        #expect(try ChainCheck.check(path: paths[2]).isClean)
        if let bytes = try Ops.pyvhdiRead([paths[0], paths[2]]) {
            #expect(try Ops.libvhdiDifference(bytes, leafBefore, leaf: paths[2]) == nil, "libvhdi reads the re-pointed chain")
        }
    }

    /// A sibling of the merged child would be broken by writing the ancestor: refused, naming it,
    /// nothing written; --force merges anyway.
    @Test(arguments: [DiskFormat.vhd, .vhdx])
    func refusesToBreakOtherChildrenOfTheAncestor(format: DiskFormat) throws {
        let dir = try TempDir("ops-merge")
        var rng = SeededRandom(seed: 5)
        var model = ChainModel(size: Ops.size)
        let paths = try Ops.buildChain(in: dir, format: format, baseType: .dynamic, depth: 1, rng: &rng, model: &model)
        let sibling = FilePath(dir.file(Ops.name("sibling", format)))
        try DiskImages.create(at: sibling, options: CreateOptions(format: format, type: .differencing, parentPath: paths[0])).chain.forEach { try $0.close() }
        let baseBytes = try Data(contentsOf: URL(fileURLWithPath: paths[0].string))
        #expect(throws: DiskError.hasChildren(path: FileOps.absolute(paths[0]).string, children: [sibling.string])) {
            try MergeOperation.merge(child: paths[1])
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: paths[0].string)) == baseBytes)
        #expect(FileOps.exists(paths[1]))
        #expect(!FileOps.exists(MergeIntent.recordPath(for: paths[1])))
        _ = try MergeOperation.merge(child: paths[1], options: MergeOptions(force: true))
        #expect(Ops.firstDifference(try Ops.readAll(paths[0]), model.view(1)) == nil)
    }

    /// A record left by an interrupted merge is finished by the next run, and `check` names it meanwhile.
    @Test(arguments: [DiskFormat.vhd, .vhdx])
    func pendingRecordIsReportedAndResumed(format: DiskFormat) throws {
        let dir = try TempDir("ops-merge")
        var rng = SeededRandom(seed: 11)
        var model = ChainModel(size: Ops.size)
        let paths = try Ops.buildChain(in: dir, format: format, baseType: .dynamic, depth: 2, rng: &rng, model: &model)
        let (intent, locks) = try MergeOperation.plan(child: FileOps.absolute(paths[2]), options: MergeOptions(into: paths[0]))
        locks.release()
        try intent.write(for: paths[2])
        let report = try ChainCheck.check(path: paths[2])
        #expect(!report.isClean)
        #expect(report.pendingMerges == [intent])
        #expect(report.chainProblems.contains { $0.message.contains("pending") && $0.message.contains(paths[2].string) })
        let result = try MergeOperation.merge(child: paths[2])
        #expect(result.resumed)
        #expect(Ops.firstDifference(try Ops.readAll(paths[0]), model.view(2)) == nil)
        #expect(try ChainCheck.check(path: paths[0]).isClean)
    }

    @Test func refusesAStandaloneImage() throws {
        let dir = try TempDir("ops-merge")
        let path = FilePath(dir.file("disk.img"))
        try DiskImages.create(at: path, options: CreateOptions(format: .raw, type: .dynamic, virtualSize: 1 << 20)).close()
        #expect(throws: DiskError.self) { try MergeOperation.merge(child: path) }
        #expect(!FileOps.exists(MergeIntent.recordPath(for: path)))
    }
}
