import Foundation
import PropertyBased
import SystemPackage
import Testing
import TestSupport
@testable import VirtualDisk
import Storage

/// Differencing chains made by Bulwark read the same through Bulwark, through libvhdi (pyvhdi) and
/// in an in-memory model of the expected bytes.
@Suite struct VHDChainTests {
    /// Makes base → child1 → child2 with random writes at every level; returns the paths (base first)
    /// and the model of every level.
    static func makeChain(_ dir: TempDir, size: Int, blockSize: Int?, seed: UInt64) throws -> (paths: [String], models: [[UInt8]]) {
        var rng = SeededRandom(seed: seed)
        var paths: [String] = []
        var models: [[UInt8]] = []
        var model = [UInt8](repeating: 0, count: size)
        for level in 0..<3 {
            let path = dir.file("level\(level).vhd")
            let options = level == 0
                ? CreateOptions(format: .vhd, type: .dynamic, virtualSize: UInt64(size), blockSize: blockSize)
                : CreateOptions(format: .vhd, type: .differencing, blockSize: blockSize, parentPath: FilePath(paths[level - 1]))
            let image = try DiskImages.create(at: FilePath(path), options: options)
            #expect(image.virtualSize == UInt64(size))
            try VHDTest.randomWrites(image, &model, count: 25, maxLength: 200_000, rng: &rng)
            if level > 0 {
                // Zeros over data the parent holds, unaligned at both ends.
                let zeros = [UInt8](repeating: 0, count: 5000)
                let at = model.firstIndex { $0 != 0 } ?? 0
                try VHDTest.write(image, &model, zeros, at: min(at + 3, size - zeros.count))
                // A one-byte write in the middle of a parent's sector.
                try VHDTest.write(image, &model, [0x5A], at: min(at + 10_001, size - 1))
            }
            #expect(VHDTest.mismatch(try VHDTest.readAll(image), model) == nil)
            for l in image.chain { try l.close() }
            paths.append(path)
            models.append(model)
        }
        return (paths, models)
    }

    @Test(arguments: [nil as Int?, 512 << 10, 32 << 10], StoreKind.allCases)
    func threeLevelChainReadsTheSameEverywhere(blockSize: Int?, store: StoreKind) throws {
        let dir = try TempDir()
        let size = (12 << 20) + 3 * 512
        let (paths, models) = try Self.makeChain(dir, size: size, blockSize: blockSize, seed: UInt64(blockSize ?? 7))
        let chain = try store.openChain(paths[2])
        defer { try? chain.close() }
        #expect(chain.levels.count == 3)
        #expect(chain.levels.map(\.type) == [.differencing, .differencing, .dynamic])
        #expect(VHDTest.mismatch(try VHDTest.readAll(chain.leaf), models[2]) == nil)
        #expect(store.readThroughSeam(chain))
        // Intermediate levels too.
        let middle = try store.openChain(paths[1])
        defer { try? middle.close() }
        #expect(VHDTest.mismatch(try VHDTest.readAll(middle.leaf), models[1]) == nil)

        guard try TestEnv.prerequisite(TestEnv.pyvhdiAvailable(), "pyvhdi in /usr/bin/python3") else { return }
        #expect(VHDTest.mismatch(try VHDTest.pyvhdiRead(paths, dir: dir), models[2]) == nil)
        #expect(VHDTest.mismatch(try VHDTest.pyvhdiRead(Array(paths[0...1]), dir: dir), models[1]) == nil)
    }

    @Test func childRecordsParentIdentityAndLocators() throws {
        let dir = try TempDir()
        let (paths, _) = try Self.makeChain(dir, size: 4 << 20, blockSize: nil, seed: 3)
        let leaf = try DiskImages.openLevel(FilePath(paths[2]))
        defer { try? leaf.close() }
        let parent = try DiskImages.openLevel(FilePath(paths[1]))
        defer { try? parent.close() }
        let link = try #require(leaf.parentLink)
        #expect(link.expectedID == parent.identity)
        #expect(link.locators.map(\.kind) == [.relative, .absolute])
        #expect(link.locators[0].path == ".\\level1.vhd")
        #expect(link.locators[1].path == FileOps.absolute(FilePath(paths[1])).string)
        #expect(leaf.properties["parent name"] == FileOps.absolute(FilePath(paths[1])).string)
        #expect(leaf.properties["parent unique id"] == parent.identity.uuidString.lowercased())
    }

    @Test func mapShowsWhichLevelHoldsEachByte() throws {
        let dir = try TempDir()
        let base = dir.file("base.vhd"), child = dir.file("child.vhd")
        let b = try DiskImages.create(at: FilePath(base), options: CreateOptions(format: .vhd, type: .dynamic, virtualSize: 8 << 20))
        try b.write([UInt8](repeating: 1, count: 4096), at: 0)
        try b.close()
        let c = try DiskImages.create(at: FilePath(child), options: CreateOptions(format: .vhd, type: .differencing, parentPath: FilePath(base)))
        try c.write([UInt8](repeating: 2, count: 4096), at: 2 << 20)
        for l in c.chain { try l.close() }
        let chain = try DiskChain.open(FilePath(child))
        defer { try? chain.close() }
        let data = try chain.map().filter { !$0.isZero }
        // A dynamic VHD block is defined whole once allocated (all bitmap bits set, as qemu does).
        #expect(data == [MappedExtent(range: 0..<(2 << 20), level: 1, isZero: false),
                         MappedExtent(range: (2 << 20)..<(2 << 20) + 4096, level: 0, isZero: false)])
    }

    @Test func randomWriteSequencesMatchTheModel() async throws {
        let size = 3 << 20
        let write = zip(Gen.int(in: 0...(size - 1)), Gen.int(in: 1...150_000), Gen.int(in: 0...3))
        await propertyCheck(count: 25, input: write.array(of: 1...12), Gen.int(in: 0...3)) { writes, layout in
            let dir = try TempDir()
            let blockSize = [nil, 64 << 10, 4096, 1 << 20][layout]
            let base = dir.file("base.vhd"), child = dir.file("child.vhd")
            var model = [UInt8](repeating: 0, count: size)
            var rng = SeededRandom(seed: UInt64(writes.count * 31 + layout))
            let b = try DiskImages.create(at: FilePath(base), options: CreateOptions(format: .vhd, type: .dynamic, virtualSize: UInt64(size), blockSize: blockSize))
            try VHDTest.write(b, &model, rng.bytes(size / 3), at: size / 4)
            try b.close()
            let c = try DiskImages.create(at: FilePath(child), options: CreateOptions(format: .vhd, type: .differencing, parentPath: FilePath(base)))
            for (offset, length, kind) in writes {
                let n = min(length, size - offset)
                let data = kind == 0 ? [UInt8](repeating: 0, count: n) : rng.bytes(n)
                try VHDTest.write(c, &model, data, at: offset)
            }
            #expect(VHDTest.mismatch(try VHDTest.readAll(c), model) == nil)
            for l in c.chain { try l.close() }
            let chain = try DiskChain.open(FilePath(child))
            defer { try? chain.close() }
            #expect(VHDTest.mismatch(try VHDTest.readAll(chain.leaf), model) == nil)
        }
    }

    @Test func locatorDataSpaceInBytesOrSectors() throws {
        #expect(VHDLocatorEntry(platformCode: 1, dataSpace: 1, dataLength: 40, dataOffset: 0).spaceBytes == 512)
        #expect(VHDLocatorEntry(platformCode: 1, dataSpace: 512, dataLength: 40, dataOffset: 0).spaceBytes == 512)
        #expect(VHDLocatorEntry(platformCode: 1, dataSpace: 2, dataLength: 600, dataOffset: 0).spaceBytes == 1024)
        #expect(VHDLocatorEntry(platformCode: 1, dataSpace: 1024, dataLength: 600, dataOffset: 0).spaceBytes == 1024)

        // A child written with the data space in sectors (as the specification says) opens the same.
        let dir = try TempDir()
        let (_, child) = try VHDErrorTests.makePair(dir)
        try VHDErrorTests.editHeader(child) { header in
            for i in 0..<8 {
                let at = 576 + 24 * i + 4
                let space = VHDBytes.u32(header, at)
                if space >= 512 { VHDBytes.put32(&header, at, space / 512) }
            }
        }
        #expect(try VHDFormat.check(FilePath(child), repair: false).problems == [])
        let chain = try DiskChain.open(FilePath(child))
        defer { try? chain.close() }
        #expect(chain.levels.count == 2)
        #expect(try chain.leaf.read(count: 1000, at: 3000) == [UInt8](repeating: 4, count: 1000))
    }

    @Test func partialBitmapBytesAreReadMostSignificantBitFirst() throws {
        let dir = try TempDir()
        let base = dir.file("base.vhd"), child = dir.file("child.vhd")
        let b = try DiskImages.create(at: FilePath(base), options: CreateOptions(format: .vhd, type: .dynamic, virtualSize: 4 << 20))
        try b.write([UInt8](repeating: 0xAA, count: 8192), at: 0)
        try b.close()
        let c = try #require(try DiskImages.create(at: FilePath(child), options: CreateOptions(format: .vhd, type: .differencing, parentPath: FilePath(base))) as? VHDImage)
        try c.write([UInt8](repeating: 0xBB, count: 8192), at: 0)
        let bitmapOffset = UInt64(c.bat[0]) * 512
        for l in c.chain { try l.close() }
        // Sector 0 and sector 10 present in the child, the rest from the parent.
        try VHDErrorTests.patch(child, at: bitmapOffset, [0x80, 0x20])
        let chain = try DiskChain.open(FilePath(child))
        defer { try? chain.close() }
        var expected = [UInt8](repeating: 0xAA, count: 8192)
        expected.replaceSubrange(0..<512, with: [UInt8](repeating: 0xBB, count: 512))
        expected.replaceSubrange(5120..<5632, with: [UInt8](repeating: 0xBB, count: 512))
        #expect(try chain.leaf.read(count: 8192, at: 0) == expected)
        #expect(try chain.map(0..<8192).map(\.level) == [0, 1, 0, 1])
    }
}
