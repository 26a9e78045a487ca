import Foundation
import SystemPackage
import Testing
import TestSupport
@testable import VirtualDisk
import Storage

/// Resize, reparent, compact and check/repair of VHD images, with qemu-img and pyvhdi as oracles.
@Suite struct VHDMaintenanceTests {
    static func create(_ path: String, _ type: DiskType, size: Int, blockSize: Int? = nil) throws -> VHDImage {
        try #require(try DiskImages.create(at: FilePath(path), options: CreateOptions(format: .vhd, type: type, virtualSize: UInt64(size), blockSize: blockSize)) as? VHDImage)
    }

    static func openWritable(_ path: String) throws -> VHDImage {
        try VHDFormat.openImage(try BlockFile.open(FilePath(path), writable: true))
    }

    static func qemuAgrees(_ vhd: String, _ model: [UInt8], _ dir: TempDir) throws {
        guard try TestEnv.tools("qemu-img") else { return }
        let raw = dir.file("model-\(UUID().uuidString.prefix(6)).raw")
        try VHDTest.writeRaw(model, to: raw)
        #expect(try VHDTest.qemuVirtualSize(vhd) == UInt64(model.count))
        let r = try run("qemu-img", ["compare", "-f", "vpc", "-F", "raw", vhd, raw])
        #expect(r.status == 0, "\(r.out) \(r.err)")
    }

    @Test(arguments: [
        (DiskType.fixed, 5 << 20, nil as Int?, (9 << 20) + 512),
        (.dynamic, 4 << 20, nil, 100 << 20),          // BAT grows in place (room behind it)
        (.dynamic, 5 << 20, 64 << 10, (20 << 20) + 1024),  // BAT relocated to the end (blocks follow it)
    ])
    func resizeGrowsAndKeepsData(type: DiskType, size: Int, blockSize: Int?, newSize: Int) throws {
        let dir = try TempDir()
        let path = dir.file("grow.vhd")
        let image = try Self.create(path, type, size: size, blockSize: blockSize)
        var model = [UInt8](repeating: 0, count: size)
        var rng = SeededRandom(seed: 5)
        try VHDTest.randomWrites(image, &model, count: 20, maxLength: 100_000, rng: &rng)
        let tableBefore = image.header?.tableOffset
        try image.resize(to: UInt64(newSize))
        model += [UInt8](repeating: 0, count: newSize - size)
        #expect(image.virtualSize == UInt64(newSize))
        #expect(VHDTest.mismatch(try VHDTest.readAll(image), model) == nil)
        // Writes into the new space.
        try VHDTest.write(image, &model, rng.bytes(70_000), at: newSize - 70_000)
        try image.close()
        let reopened = try DiskImages.openLevel(FilePath(path))
        #expect(reopened.virtualSize == UInt64(newSize))
        #expect(VHDTest.mismatch(try VHDTest.readAll(reopened), model) == nil)
        if blockSize == 64 << 10 { #expect((reopened as? VHDImage)?.header?.tableOffset != tableBefore) }
        try reopened.close()
        #expect(try VHDFormat.check(FilePath(path), repair: false).problems == [])
        try Self.qemuAgrees(path, model, dir)

        let again = try Self.openWritable(path)
        defer { try? again.close() }
        #expect(throws: DiskError.self) { try again.resize(to: UInt64(newSize - 512)) }
    }

    /// A fixed VHD resize that failed after its first step (the old footer copied to the new end) and is
    /// run again, to the same or another size: the new space reads as zeros, not as the old footer.
    @Test(arguments: [12 << 20, 16 << 20, 10 << 20])
    func aFixedResizeRerunAfterAFailedFirstStepReadsZeros(rerunSize: Int) throws {
        let dir = try TempDir()
        let path = dir.file("fixed.vhd")
        let image = try Self.create(path, .fixed, size: 8 << 20)
        try image.write([UInt8](repeating: 0xAB, count: 1 << 20), at: 7 << 20)
        try image.close()
        // The state a resize to 12 MiB leaves when its second step fails (ENOSPC, EIO, a kill).
        let file = try BlockFile.open(FilePath(path), writable: true)
        let footer = try file.read(count: 512, at: 8 << 20)
        try file.write(footer, at: 12 << 20)
        try file.close()
        #expect(try DiskImages.openLevel(FilePath(path)).virtualSize == 8 << 20, "the interrupted image still reads as 8 MiB")
        _ = try ResizeOperation.resize(path: FilePath(path), to: UInt64(rerunSize))
        let resized = try DiskImages.openLevel(FilePath(path))
        defer { try? resized.close() }
        #expect(resized.virtualSize == UInt64(rerunSize))
        #expect(try resized.read(count: 1 << 20, at: 7 << 20) == [UInt8](repeating: 0xAB, count: 1 << 20))
        let grown = try resized.read(count: rerunSize - (8 << 20), at: 8 << 20)
        #expect(grown.allSatisfy { $0 == 0 }, "the new space reads as zeros (first non-zero at \(grown.firstIndex { $0 != 0 }.map { $0 + (8 << 20) } ?? -1))")
        #expect(try ChainCheck.check(path: FilePath(path)).isClean)
    }

    @Test func setParentRepointsTheChild() throws {
        let dir = try TempDir()
        let sub = dir.file("moved")
        try FileManager.default.createDirectory(atPath: sub, withIntermediateDirectories: true)
        let base = dir.file("base.vhd"), child = dir.file("child.vhd")
        var model = [UInt8](repeating: 0, count: 6 << 20)
        let b = try Self.create(base, .dynamic, size: model.count)
        var rng = SeededRandom(seed: 9)
        try VHDTest.randomWrites(b, &model, count: 10, maxLength: 200_000, rng: &rng)
        try b.close()
        let c = try DiskImages.create(at: FilePath(child), options: CreateOptions(format: .vhd, type: .differencing, parentPath: FilePath(base)))
        try VHDTest.randomWrites(c, &model, count: 10, maxLength: 100_000, rng: &rng)
        for l in c.chain { try l.close() }

        // Move the parent; the old locators no longer lead anywhere.
        let moved = sub + "/renamed-base.vhd"
        try FileManager.default.moveItem(atPath: base, toPath: moved)
        #expect(throws: DiskError.self) { _ = try DiskChain.open(FilePath(child)) }
        let parentID = try DiskImages.openLevel(FilePath(moved)).identity
        let image = try Self.openWritable(child)
        try image.setParent(ParentLink(expectedID: parentID, locators: ParentLocator.locators(child: FilePath(child), parent: FilePath(moved))))
        try image.close()

        let chain = try DiskChain.open(FilePath(child))
        defer { try? chain.close() }
        #expect(chain.leaf.parentLink?.locators.first?.path == ".\\moved\\renamed-base.vhd")
        #expect(chain.leaf.properties["parent name"] == moved)
        #expect(VHDTest.mismatch(try VHDTest.readAll(chain.leaf), model) == nil)
        #expect(try VHDFormat.check(FilePath(child), repair: false).problems == [])
        guard try TestEnv.prerequisite(TestEnv.pyvhdiAvailable(), "pyvhdi in /usr/bin/python3") else { return }
        #expect(VHDTest.mismatch(try VHDTest.pyvhdiRead([moved, child], dir: dir), model) == nil)
    }

    @Test func compactReleasesZeroBlocksAndShrinksTheFile() throws {
        let dir = try TempDir()
        let path = dir.file("compact.vhd")
        let size = 16 << 20
        let image = try Self.create(path, .dynamic, size: size, blockSize: 1 << 20)
        var model = [UInt8](repeating: 0, count: size)
        var rng = SeededRandom(seed: 21)
        for mb in 0..<16 { try VHDTest.write(image, &model, rng.bytes(1 << 20), at: mb << 20) }
        // Zero out blocks 2, 5, 6 and 9 (after they were allocated).
        for mb in [2, 5, 6, 9] { try VHDTest.write(image, &model, [UInt8](repeating: 0, count: 1 << 20), at: mb << 20) }
        try image.flush()
        let before = try image.store.size()
        let reclaimed = try image.compact(progress: nil)
        #expect(reclaimed >= 4 << 20)
        #expect(try image.store.size() <= before - (4 << 20))
        #expect(image.bat.filter { $0 != VHDImage.unused }.count == 12)
        #expect(VHDTest.mismatch(try VHDTest.readAll(image), model) == nil)
        try image.close()
        #expect(try VHDFormat.check(FilePath(path), repair: false).problems == [])
        try Self.qemuAgrees(path, model, dir)
    }

    @Test func compactKeepsZerosThatHideParentData() throws {
        let dir = try TempDir()
        let base = dir.file("base.vhd"), child = dir.file("child.vhd")
        let size = 8 << 20
        var model = [UInt8](repeating: 0, count: size)
        let b = try Self.create(base, .dynamic, size: size)
        try VHDTest.write(b, &model, [UInt8](repeating: 0xEE, count: 4096), at: 0)
        try b.close()
        let c = try #require(try DiskImages.create(at: FilePath(child), options: CreateOptions(format: .vhd, type: .differencing, parentPath: FilePath(base))) as? VHDImage)
        try VHDTest.write(c, &model, [UInt8](repeating: 0, count: 4096), at: 0)          // hides parent data: stays
        try VHDTest.write(c, &model, [UInt8](repeating: 0, count: 4096), at: 4 << 20)    // zeros over zeros: released
        #expect(c.bat.filter { $0 != VHDImage.unused }.count == 2)
        _ = try c.compact(progress: nil)
        #expect(c.bat.filter { $0 != VHDImage.unused }.count == 1)
        #expect(VHDTest.mismatch(try VHDTest.readAll(c), model) == nil)
        for l in c.chain { try l.close() }
        guard try TestEnv.prerequisite(TestEnv.pyvhdiAvailable(), "pyvhdi in /usr/bin/python3") else { return }
        #expect(VHDTest.mismatch(try VHDTest.pyvhdiRead([base, child], dir: dir), model) == nil)
    }

    @Test func checkFindsAndRepairsFooterAndBATDamage() throws {
        let dir = try TempDir()
        let path = try VHDErrorTests.makeDynamic(dir)
        let content = try VHDTest.readAll(try DiskImages.openLevel(FilePath(path)))
        #expect(try VHDFormat.check(FilePath(path), repair: false).isClean)

        // 1. A damaged footer copy at offset 0.
        try VHDErrorTests.patch(path, at: 60, [0x09])
        let damaged = try VHDTest.bytes(path)
        let report = try VHDFormat.check(FilePath(path), repair: false)
        #expect(!report.isClean)
        #expect(report.problems.map(\.message).contains { $0.contains("footer copy at offset 0") })
        #expect(report.problems.allSatisfy { $0.repairable })
        #expect(try VHDTest.bytes(path) == damaged, "check without repair wrote to the file")
        let repaired = try VHDFormat.check(FilePath(path), repair: true)
        #expect(repaired.isClean && repaired.problems.isEmpty)
        #expect(repaired.repairs == ["restored the footer copy at offset 0 from the footer at the end"])

        // 2. A missing end footer (file cut mid-append) and a BAT entry past the end.
        let size = UInt64(try VHDTest.bytes(path).count)
        try VHDErrorTests.truncate(path, to: size - 512)
        try VHDErrorTests.patch(path, at: 1536 + 4 * 3, [0x00, 0x20, 0x00, 0x00])
        let second = try VHDFormat.check(FilePath(path), repair: false)
        #expect(second.problems.count == 2)
        #expect(second.problems.contains { $0.message.contains("BAT entry 3") && $0.repairable })
        #expect(second.problems.contains { $0.message.contains("no valid footer at the end") && $0.repairable })
        let fixed = try VHDFormat.check(FilePath(path), repair: true)
        #expect(fixed.problems.isEmpty)
        #expect(fixed.repairs.count == 2)
        #expect(fixed.repairs[0].contains("dropped 1 BAT entry"))
        let image = try DiskImages.openLevel(FilePath(path))
        defer { try? image.close() }
        #expect(image.properties["footer"] == "end")
        #expect(VHDTest.mismatch(try VHDTest.readAll(image), content) == nil)
        try Self.qemuAgrees(path, content, dir)

        // 3. Damage check cannot repair is reported, not touched.
        try VHDErrorTests.patch(path, at: 512 + 100, [0x01])
        let before = try VHDTest.bytes(path)
        let header = try VHDFormat.check(FilePath(path), repair: true)
        #expect(header.problems.contains { $0.message.contains("dynamic disk header checksum mismatch") && !$0.repairable })
        #expect(header.repairs.isEmpty)
        #expect(try VHDTest.bytes(path) == before)
    }

    @Test func overlappingBlocksAreReported() throws {
        let dir = try TempDir()
        let path = try VHDErrorTests.makeDynamic(dir)
        let raw = try VHDTest.bytes(path)
        // Point entry 2 at entry 0's block.
        try VHDErrorTests.patch(path, at: 1536 + 8, [UInt8](raw[1536..<1540]))
        let report = try VHDFormat.check(FilePath(path), repair: false)
        #expect(report.problems.contains { $0.message.contains("BAT entries 0 and 2 point to overlapping blocks") })
        // Point entry 1 into the BAT.
        try VHDErrorTests.patch(path, at: 1536 + 4, [0, 0, 0, 3])
        #expect(try VHDFormat.check(FilePath(path), repair: false).problems.contains { $0.message.contains("overlaps the BAT") || $0.message.contains("overlaps the dynamic header") })
    }
}
