import Foundation
import SystemPackage
import Testing
import TestSupport
@testable import VirtualDisk
import Storage

@Suite struct OpsReparentTests {
    /// A chain whose base moved: reparent to the copy, the chain reads as before (here and in libvhdi).
    @Test(arguments: [DiskFormat.vhd, .vhdx])
    func randomizedReparentToMovedParent(format: DiskFormat) throws {
        let dir = try TempDir("ops-reparent"), moved = try TempDir("ops-reparent-moved")
        var rng = SeededRandom(seed: 41)
        var model = ChainModel(size: Ops.size)
        let paths = try Ops.buildChain(in: dir, format: format, baseType: .dynamic, depth: 2, rng: &rng, model: &model)
        let expected = model.view(2)
        let newBase = FilePath(moved.file(Ops.name("base-moved", format)))
        try FileManager.default.moveItem(atPath: paths[0].string, toPath: newBase.string)
        #expect(throws: DiskError.self) { try DiskChain.open(paths[2]) }
        let result = try ReparentOperation.reparent(child: paths[1], parent: newBase)
        #expect(result.oldParentID == result.newParentID)
        let chain = try DiskChain.open(paths[2])
        #expect(OperationIO.key(chain.levels[2].path) == OperationIO.key(newBase))
        try chain.close()
        #expect(Ops.firstDifference(try Ops.readAll(paths[2]), expected) == nil)
        #expect(try ChainCheck.check(path: paths[2]).isClean)
        if let bytes = try Ops.pyvhdiRead([newBase, paths[1], paths[2]]) {
            #expect(try Ops.libvhdiDifference(bytes, expected, leaf: paths[2]) == nil, "libvhdi reads the reparented chain")
        }
    }

    /// A different parent is refused (identity), unless accepted explicitly; then the new id is recorded.
    @Test(arguments: [DiskFormat.vhd, .vhdx])
    func identityMismatchNeedsConsent(format: DiskFormat) throws {
        let dir = try TempDir("ops-reparent")
        var rng = SeededRandom(seed: 43)
        var model = ChainModel(size: Ops.size)
        let paths = try Ops.buildChain(in: dir, format: format, baseType: .dynamic, depth: 1, rng: &rng, model: &model)
        let other = FilePath(dir.file(Ops.name("other", format)))
        try DiskImages.create(at: other, options: CreateOptions(format: format, type: .dynamic, virtualSize: UInt64(Ops.size))).close()
        let childBytes = try Data(contentsOf: URL(fileURLWithPath: paths[1].string))
        #expect(throws: DiskError.self) { try ReparentOperation.reparent(child: paths[1], parent: other) }
        #expect(try Data(contentsOf: URL(fileURLWithPath: paths[1].string)) == childBytes, "a refused reparent changes nothing")
        let r = try ReparentOperation.reparent(child: paths[1], parent: other, ignoreIDMismatch: true)
        #expect(r.oldParentID != r.newParentID)
        let chain = try DiskChain.open(paths[1])
        #expect(OperationIO.key(chain.levels[1].path) == OperationIO.key(other))
        #expect(chain.levels[0].parentLink?.expectedID.uuidString.lowercased() == r.newParentID)
        try chain.close()
        // A parent of another size is refused even with consent.
        let small = FilePath(dir.file(Ops.name("small", format)))
        try DiskImages.create(at: small, options: CreateOptions(format: format, type: .dynamic, virtualSize: 1 << 20)).close()
        #expect(throws: DiskError.self) { try ReparentOperation.reparent(child: paths[1], parent: small, ignoreIDMismatch: true) }
        #expect(throws: DiskError.self) { try ReparentOperation.reparent(child: paths[0], parent: other) }
    }
}

@Suite struct OpsAdoptIdentityTests {
    /// A merged parent that takes its child's identity is accepted by the child's children as their
    /// parent (what a retention fold relies on); its data and its check stay as they were; the next data
    /// write gives a VHDX a new identity again (a VHD's unique id is fixed).
    @Test(arguments: [DiskFormat.vhd, .vhdx])
    func aParentTakesItsChildsIdentity(format: DiskFormat) throws {
        let dir = try TempDir("ops-adopt")
        var rng = SeededRandom(seed: 47)
        var model = ChainModel(size: Ops.size)
        let paths = try Ops.buildChain(in: dir, format: format, baseType: .dynamic, depth: 2, rng: &rng, model: &model)
        let middle = try DiskImages.openLevel(paths[1]).use { $0.identity }
        let before = try Ops.readAll(paths[0])
        try DiskImages.openLevel(paths[0], writable: true).use { image in
            try #require(image as? any MaintainableImage).adoptIdentity(middle)
        }
        #expect(try DiskImages.openLevel(paths[0]).use { $0.identity } == middle)
        #expect(Ops.firstDifference(try Ops.readAll(paths[0]), before) == nil, "only the identity changed")
        #expect(try ChainCheck.check(path: paths[0]).isClean)
        // The leaf's recorded parent identity is the middle one: the base now passes for it.
        let leafLink = try DiskImages.openLevel(paths[2]).use { $0.parentLink }
        try DiskImages.openLevel(paths[2], writable: true).use { image in
            try #require(image as? any MaintainableImage).setParent(ParentLink(expectedID: middle, locators: [ParentLocator(kind: .relative, path: paths[0].lastComponent!.string)]))
        }
        #expect(leafLink?.expectedID == middle)
        let chain = try DiskChain.open(paths[2])
        #expect(chain.levels.count == 2, "leaf on the base directly")
        try chain.close()
        try DiskImages.openLevel(paths[0], writable: true).use { image in
            let bytes = [UInt8](repeating: 7, count: 512)
            try bytes.withUnsafeBytes { try image.write($0, at: 0) }
            try image.flush()
        }
        if format == .vhdx {
            #expect(try DiskImages.openLevel(paths[0]).use { $0.identity } != middle, "a data write renews the DataWriteGuid")
        }
    }
}

@Suite struct OpsCheckTests {
    @Test func rawImageIsClean() throws {
        let dir = try TempDir("ops-check")
        let path = FilePath(dir.file("disk.img"))
        try DiskImages.create(at: path, options: CreateOptions(format: .raw, type: .dynamic, virtualSize: 1 << 20)).close()
        let report = try ChainCheck.check(path: path)
        #expect(report.isClean)
        #expect(report.levels.count == 1)
        #expect(throws: StorageError.notFound(path: dir.file("nope.img"))) { try ChainCheck.check(path: FilePath(dir.file("nope.img"))) }
    }

    /// Missing parent, replaced parent: reported, and the files are left as they were.
    @Test(arguments: [DiskFormat.vhd, .vhdx])
    func chainProblemsAreFoundWithoutChangingAnything(format: DiskFormat) throws {
        let dir = try TempDir("ops-check")
        var rng = SeededRandom(seed: 47)
        var model = ChainModel(size: Ops.size)
        let paths = try Ops.buildChain(in: dir, format: format, baseType: .dynamic, depth: 2, rng: &rng, model: &model)
        #expect(try ChainCheck.check(path: paths[2]).isClean)
        let snapshot = try paths.map { try Data(contentsOf: URL(fileURLWithPath: $0.string)) }
        // Replaced parent: same name, another identity.
        try FileManager.default.moveItem(atPath: paths[0].string, toPath: dir.file("saved"))
        try DiskImages.create(at: paths[0], options: CreateOptions(format: format, type: .dynamic, virtualSize: UInt64(Ops.size))).close()
        var report = try ChainCheck.check(path: paths[2])
        #expect(!report.isClean)
        #expect(report.chainProblems.contains { $0.message.contains("expects parent id") })
        // Missing parent.
        try FileOps.remove(paths[0])
        report = try ChainCheck.check(path: paths[2])
        #expect(report.chainProblems.contains { $0.message.contains("parent disk not found") })
        #expect(report.levels.count == 2)
        try FileManager.default.moveItem(atPath: dir.file("saved"), toPath: paths[0].string)
        #expect(try ChainCheck.check(path: paths[2], repair: false).isClean)
        #expect(try paths.map { try Data(contentsOf: URL(fileURLWithPath: $0.string)) } == snapshot, "check never writes")
    }

    /// Format-level damage: a VHD whose footer is destroyed is reported, and repaired from its copy.
    @Test func damagedVHDFooterIsRepairedOnlyWithRepair() throws {
        let dir = try TempDir("ops-check")
        var rng = SeededRandom(seed: 53)
        var model = ChainModel(size: Ops.size)
        let paths = try Ops.buildChain(in: dir, format: .vhd, baseType: .dynamic, depth: 0, rng: &rng, model: &model)
        let file = try BlockFile.open(paths[0], writable: true)
        let size = try file.size()
        try file.write([UInt8](repeating: 0xEE, count: 512), at: size - 512)
        try file.close()
        let damaged = try Data(contentsOf: URL(fileURLWithPath: paths[0].string))
        let report = try ChainCheck.check(path: paths[0])
        #expect(!report.isClean)
        #expect(try Data(contentsOf: URL(fileURLWithPath: paths[0].string)) == damaged)
        let repaired = try ChainCheck.check(path: paths[0], repair: true)
        #expect(!repaired.levels[0].repairs.isEmpty)
        #expect(try ChainCheck.check(path: paths[0]).isClean)
        #expect(Ops.firstDifference(try Ops.readAll(paths[0]), model.view(0)) == nil)
    }
}
