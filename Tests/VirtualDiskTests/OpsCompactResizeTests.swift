import Foundation
import SystemPackage
import Testing
import TestSupport
@testable import VirtualDisk
import Storage

@Suite struct OpsCompactTests {
    static let cases: [(DiskFormat, DiskType, Int)] = [(.raw, .fixed, 0), (.vhd, .dynamic, 0), (.vhd, .dynamic, 1), (.vhdx, .dynamic, 0), (.vhdx, .dynamic, 1)]

    /// Random data plus whole zero-filled blocks: compaction reclaims space, never changes a byte.
    /// Compacting a differencing VHDX releases blocks that read as zeros here and in the parent; their
    /// sector bits are cleared with them, so libvhdi (which looks at the bitmap first) still reads the
    /// chain right.
    @Test func compactedDifferencingVHDXReadsTheSameInLibvhdi() throws {
        let dir = try TempDir("ops-compact")
        let base = FilePath(dir.file("base.vhdx"))
        let child = FilePath(dir.file("child.avhdx"))
        let parent = try DiskImages.create(at: base, options: CreateOptions(format: .vhdx, type: .dynamic, virtualSize: 16 << 20, blockSize: 1 << 20))
        var rng = SeededRandom(seed: 77)
        var model = [UInt8](repeating: 0, count: 16 << 20)
        let data = rng.bytes(1 << 20)
        try parent.write(data, at: 8 << 20)
        model.replaceSubrange(8 << 20..<9 << 20, with: data)
        try parent.close()
        let image = try DiskImages.create(at: child, options: CreateOptions(format: .vhdx, type: .differencing, parentPath: base))
        // Partial writes of zeros over an empty parent block (a partially present block that reads as
        // zeros), and real data elsewhere.
        try image.write([UInt8](repeating: 0, count: 300_000), at: (2 << 20) + 4096)
        let more = rng.bytes(200_000)
        try image.write(more, at: 5 << 20)
        model.replaceSubrange(5 << 20..<(5 << 20) + 200_000, with: more)
        for level in image.chain { try level.close() }
        let result = try CompactOperation.compact(path: child)
        #expect(result.bytesReclaimed > 0 || result.allocatedAfter <= result.allocatedBefore)
        #expect(Ops.firstDifference(try Ops.readAll(child), model) == nil)
        if let bytes = try Ops.pyvhdiRead([base, child]) {
            #expect(Ops.firstDifference(bytes, model) == nil, "libvhdi reads the compacted chain")
        }
        #expect(try ChainCheck.check(path: child).isClean)
    }

    @Test(arguments: cases)
    func randomizedCompactKeepsContents(format: DiskFormat, type: DiskType, depth: Int) throws {
        let dir = try TempDir("ops-compact")
        var rng = SeededRandom(seed: UInt64(17 + depth + format.rawValue.count))
        var model = ChainModel(size: Ops.size)
        let paths = try Ops.buildChain(in: dir, format: format, baseType: type, depth: depth, rng: &rng, model: &model)
        // Zero-filled data over whole blocks of the top level.
        let leaf = try DiskChain.open(paths.last!, writable: true)
        // Data first, so the blocks are allocated (formats skip writing zeros into unallocated blocks).
        try leaf.leaf.write(rng.bytes(2 << 20), at: 4 << 20)
        try leaf.leaf.flush()
        let zeros = [UInt8](repeating: 0, count: 2 << 20)
        try leaf.leaf.write(zeros, at: 4 << 20)
        model.write(level: depth, offset: 4 << 20, bytes: zeros)
        try leaf.close()
        let expected = model.view(depth)
        let before = try BlockFile.open(paths.last!, writable: false).allocatedBytes()
        let result = try CompactOperation.compact(path: paths.last!)
        #expect(Ops.firstDifference(try Ops.readAll(paths.last!), expected) == nil)
        #expect(result.allocatedBefore == before)
        if depth == 0 {
            #expect(result.bytesReclaimed >= 1 << 20, "a base releases the zero blocks (\(format))")
            try Ops.qemuCompare(paths[0], format, expected: expected, in: dir)
        } else if let bytes = try Ops.pyvhdiRead(paths) {
            #expect(try Ops.libvhdiDifference(bytes, expected, leaf: paths.last!) == nil)
        }
        #expect(try ChainCheck.check(path: paths.last!).isClean)
    }

    @Test func rawCompactPunchesHolesOverZeroRuns() throws {
        let dir = try TempDir("ops-compact")
        let path = FilePath(dir.file("disk.img"))
        let image = try DiskImages.create(at: path, options: CreateOptions(format: .raw, type: .fixed, virtualSize: 16 << 20))
        var rng = SeededRandom(seed: 8)
        let data = rng.bytes(5000)
        try image.write(data, at: 3 << 20 + 123)
        try image.close()
        let result = try CompactOperation.compact(path: path)
        #expect(result.bytesReclaimed >= 15 << 20)
        #expect(result.allocatedAfter <= 64 << 10)
        let back = try Ops.readAll(path)
        #expect(Array(back[(3 << 20 + 123)..<(3 << 20 + 123 + 5000)]) == data)
        #expect(back.count == 16 << 20)
    }
}

@Suite struct OpsResizeTests {
    static let cases: [(DiskFormat, DiskType)] = [(.raw, .fixed), (.raw, .dynamic), (.vhd, .dynamic), (.vhd, .fixed), (.vhdx, .dynamic), (.vhdx, .fixed)]

    /// Expanding keeps every byte and the new space reads as zeros.
    @Test(arguments: cases)
    func randomizedExpandKeepsContents(format: DiskFormat, type: DiskType) throws {
        let dir = try TempDir("ops-resize")
        var rng = SeededRandom(seed: 23)
        var model = ChainModel(size: Ops.size)
        let paths = try Ops.buildChain(in: dir, format: format, baseType: type, depth: 0, rng: &rng, model: &model)
        let newSize = UInt64(Ops.size) * 2
        let result = try ResizeOperation.resize(path: paths[0], to: newSize)
        #expect(result.oldSize == UInt64(Ops.size))
        #expect(result.newSize == newSize)
        let after = try Ops.readAll(paths[0])
        #expect(after.count == Int(newSize))
        #expect(Ops.firstDifference(Array(after[..<Ops.size]), model.view(0)) == nil)
        #expect(after[Ops.size...].allSatisfy { $0 == 0 })
        try Ops.qemuCompare(paths[0], format, expected: after, in: dir)
        #expect(try ChainCheck.check(path: paths[0]).isClean)
        // And data written into the new space stays.
        let image = try DiskImages.openLevel(paths[0], writable: true)
        try image.write([1, 2, 3], at: newSize - 3)
        try image.close()
        #expect(try Ops.readAll(paths[0]).suffix(3) == [1, 2, 3])
    }

    @Test(arguments: [DiskFormat.vhd, .vhdx])
    func refusesAParentWithChildrenUnlessForced(format: DiskFormat) throws {
        let dir = try TempDir("ops-resize")
        var rng = SeededRandom(seed: 29)
        var model = ChainModel(size: Ops.size)
        let paths = try Ops.buildChain(in: dir, format: format, baseType: .dynamic, depth: 1, rng: &rng, model: &model)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: paths[0].string))
        #expect(throws: DiskError.hasChildren(path: paths[0].string, children: [paths[1].string])) {
            try ResizeOperation.resize(path: paths[0], to: UInt64(Ops.size) * 2)
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: paths[0].string)) == bytes)
        // The leaf itself can grow? Only together with its parent; a leaf's own size must match, so
        // expanding the leaf of a chain is the format's call. The standalone case is covered above.
    }

    @Test func rawShrinkOnlyOverAnEmptyTail() throws {
        let dir = try TempDir("ops-resize")
        let path = FilePath(dir.file("disk.img"))
        let image = try DiskImages.create(at: path, options: CreateOptions(format: .raw, type: .dynamic, virtualSize: 8 << 20))
        try image.write([9], at: 6 << 20)
        try image.close()
        #expect(throws: DiskError.self) { try ResizeOperation.resize(path: path, to: 4 << 20) }
        #expect(try DiskImages.openLevel(path).virtualSize == 8 << 20)
        let r = try ResizeOperation.resize(path: path, to: 7 << 20)
        #expect(r.newSize == 7 << 20)
        #expect(try Ops.readAll(path)[6 << 20] == 9)
    }

    /// A VHD resize killed between its end footer and the copy at offset 0 leaves the copy stale;
    /// running the same resize again completes it.
    @Test func vhdResizeRerunCompletesAStaleFooterCopy() throws {
        let dir = try TempDir("ops-resize")
        let path = FilePath(dir.file("disk.vhd"))
        let image = try DiskImages.create(at: path, options: CreateOptions(format: .vhd, type: .dynamic, virtualSize: 8 << 20))
        try image.write([7], at: 1 << 20)
        try image.close()
        let oldCopy = try BlockFile.open(path, writable: false).read(count: 512, at: 0)
        _ = try ResizeOperation.resize(path: path, to: 16 << 20)
        // The state a kill between the two footer writes leaves: new end footer, old copy at 0.
        let file = try BlockFile.open(path, writable: true)
        try file.write(oldCopy, at: 0)
        try file.close()
        #expect(try !ChainCheck.check(path: path).isClean)
        let r = try ResizeOperation.resize(path: path, to: 16 << 20)
        #expect(r.newSize == 16 << 20)
        #expect(try ChainCheck.check(path: path).isClean)
        #expect(try Ops.readAll(path)[1 << 20] == 7)
    }

    @Test func hiddenChildrenFromTheChildrenOption() throws {
        // ChildFinder looks beside the parent and in the folders it is given.
        let format: DiskFormat = .vhdx
        let dir = try TempDir("ops-resize"), other = try TempDir("ops-resize-other")
        let base = FilePath(dir.file(Ops.name("base", format)))
        try DiskImages.create(at: base, options: CreateOptions(format: format, type: .dynamic, virtualSize: 4 << 20)).close()
        let child = FilePath(other.file(Ops.name("child", format)))
        try DiskImages.create(at: child, options: CreateOptions(format: format, type: .differencing, parentPath: base)).chain.forEach { try $0.close() }
        #expect(try ChildFinder.children(of: base).isEmpty)
        #expect(try ChildFinder.children(of: base, folders: [FilePath(other.path)]) == [child])
        #expect(try ChildFinder.children(of: base, candidates: [child]) == [child])
        #expect(throws: DiskError.self) { try ResizeOperation.resize(path: base, to: 8 << 20, children: [FilePath(other.path)]) }
    }
}

@Suite struct OpsResizeShrinkTests {
    /// A VHDX shrinks only over an unallocated tail; a VHD never shrinks; neither loses data.
    @Test func vhdxShrinksOnlyOverAnEmptyTail() throws {
        let dir = try TempDir("ops-resize")
        let path = FilePath(dir.file("disk.vhdx"))
        let image = try DiskImages.create(at: path, options: CreateOptions(format: .vhdx, type: .dynamic, virtualSize: 16 << 20, blockSize: 1 << 20))
        var rng = SeededRandom(seed: 151)
        let data = rng.bytes(1 << 20)
        try image.write(data, at: 1 << 20)
        try image.write([7], at: (12 << 20) + 5)
        try image.close()
        #expect(throws: DiskError.self) { try ResizeOperation.resize(path: path, to: 8 << 20) }
        #expect(try Ops.readAll(path)[(12 << 20) + 5] == 7, "a refused shrink keeps the tail")
        let r = try ResizeOperation.resize(path: path, to: 13 << 20)
        #expect(r.newSize == 13 << 20)
        let back = try Ops.readAll(path)
        #expect(back.count == 13 << 20)
        #expect(Array(back[(1 << 20)..<(2 << 20)]) == data)
        #expect(back[(12 << 20) + 5] == 7)
        #expect(try ChainCheck.check(path: path).isClean)
    }

    @Test func vhdRefusesToShrink() throws {
        let dir = try TempDir("ops-resize")
        let path = FilePath(dir.file("disk.vhd"))
        try DiskImages.create(at: path, options: CreateOptions(format: .vhd, type: .dynamic, virtualSize: 8 << 20)).close()
        #expect(throws: DiskError.self) { try ResizeOperation.resize(path: path, to: 4 << 20) }
        #expect(try DiskImages.openLevel(path).virtualSize == 8 << 20)
    }
}

@Suite struct OpsConvertSectorTests {
    /// A 4 KiB-sector VHDX converts to every format with the same bytes; a VHDX target keeps 4 KiB sectors.
    @Test func fourKSectorVHDXConverts() throws {
        let dir = try TempDir("ops-convert")
        let src = FilePath(dir.file("4k.vhdx"))
        let image = try DiskImages.create(at: src, options: CreateOptions(format: .vhdx, type: .dynamic, virtualSize: 8 << 20,
                                                                          blockSize: 1 << 20, logicalSectorSize: 4096))
        var rng = SeededRandom(seed: 157)
        try image.write(rng.bytes(300_000), at: 3 << 20)
        try image.close()
        let expected = try Ops.readAll(src)
        for target in DiskFormat.allCases {
            let dst = FilePath(dir.file(Ops.name("out", target)))
            _ = try ConvertOperation.convert(source: src, destination: dst)
            #expect(Ops.firstDifference(try Ops.readAll(dst), expected) == nil, "\(target)")
            if target == .vhdx {
                // qemu-img (8.2) refuses 4 KiB-sector VHDX ("Operation not supported"): no oracle here.
                #expect(try DiskImages.openLevel(dst).logicalSectorSize == 4096)
            } else {
                try Ops.qemuCompare(dst, target, expected: expected, in: dir)
            }
        }
    }
}
