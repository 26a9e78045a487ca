import Foundation
import Storage
import SystemPackage
import Testing
import TestSupport
@testable import VirtualDisk

@Suite struct VHDXChainTests {
    /// Reads the chain with pyvhdi (libvhdi), parents attached base first, and compares with `expected`.
    static func pyvhdiMatches(_ levels: [String], expected: String) throws -> String {
        let script = """
        import sys, pyvhdi
        paths = sys.argv[2:]
        files = []
        for p in reversed(paths):
            f = pyvhdi.file(); f.open(p)
            if files: f.set_parent(files[-1])
            files.append(f)
        leaf = files[-1]
        want = open(sys.argv[1], 'rb').read()
        size = leaf.get_media_size()
        if size != len(want):
            print('size', size, len(want)); sys.exit(0)
        step = 1 << 20
        for off in range(0, size, step):
            got = leaf.read_buffer_at_offset(min(step, size - off), off)
            if got != want[off:off + len(got)]:
                i = next(k for k in range(len(got)) if got[k] != want[off + k])
                print('mismatch at', off + i); sys.exit(0)
        print('OK')
        """
        return try runChecked("/usr/bin/python3", ["-c", script, expected] + levels).out.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test(arguments: [512, 4096], StoreKind.allCases)
    func threeDeepChainsReadTheSameThroughBulwarkAndLibvhdi(logical: Int, store: StoreKind) throws {
        let dir = try TempDir()
        let size: UInt64 = 16 << 20
        var model = [UInt8](repeating: 0, count: Int(size))
        var rng = SeededRandom(seed: UInt64(logical))
        var paths: [String] = []
        for level in 0..<4 {
            let path = dir.file(level == 0 ? "base.vhdx" : "child\(level).avhdx")
            let image = try VHDXTest.create(path, size: size, blockSize: 1 << 20, logical: logical, parent: paths.last)
            #expect(image.type == (level == 0 ? .dynamic : .differencing))
            for _ in 0..<25 {
                let offset = Int(rng.next() % (size - (300 << 10)))
                let count = Int(rng.next() % (300 << 10)) + 1
                // Zeros over parent data must hide it; odd offsets and lengths exercise partial sectors.
                let data = rng.next() % 4 == 0 ? [UInt8](repeating: 0, count: count) : rng.bytes(count)
                try image.write(data, at: UInt64(offset))
                model.replaceSubrange(offset..<offset + count, with: data)
            }
            // A whole block written in one go becomes FULLY_PRESENT without a bitmap.
            let whole = rng.bytes(1 << 20)
            try image.write(whole, at: UInt64(level + 4) << 20)
            model.replaceSubrange((level + 4) << 20..<(level + 5) << 20, with: whole)
            try image.chain.forEach { try $0.close() }
            paths.append(path)
        }
        let chain = try store.openChain(paths.last!)
        #expect(chain.levels.count == 4)
        #expect(try Bytes(chain.leaf.read(count: Int(size), at: 0)) == Bytes(model))
        let mapped = try chain.map()
        #expect(Set(mapped.compactMap(\.level)).count == 4)
        #expect(store.readThroughSeam(chain))
        try chain.close()

        guard try TestEnv.prerequisite(TestEnv.pyvhdiAvailable(), "pyvhdi in /usr/bin/python3") else { return }
        let expected = dir.file("model.raw")
        try Data(model).write(to: URL(fileURLWithPath: expected))
        #expect(try Self.pyvhdiMatches(Array(paths.reversed()), expected: expected) == "OK")
    }

    /// A child takes Hyper-V's 2 MiB differencing block size under a 32 MiB parent; the mixed chain reads
    /// the same in Bulwark and libvhdi, and merges back into the parent with every byte in place.
    @Test func differencingChildrenDefaultTo2MiBBlocksUnderA32MiBParent() throws {
        let dir = try TempDir()
        let size: UInt64 = 96 << 20
        let base = dir.file("base.vhdx"), child = dir.file("child.avhdx")
        var model = [UInt8](repeating: 0, count: Int(size))
        var rng = SeededRandom(seed: 32)
        let b = try VHDXTest.create(base, size: size, blockSize: nil)
        #expect(b.blockSize == 32 << 20)
        for _ in 0..<6 {
            let offset = Int(rng.next() % (size - (3 << 20))), data = rng.bytes(Int(rng.next() % (3 << 20)) + 1)
            try b.write(data, at: UInt64(offset))
            model.replaceSubrange(offset..<offset + data.count, with: data)
        }
        try b.close()
        let c = try VHDXTest.create(child, size: 0, blockSize: nil, parent: base)
        #expect(c.blockSize == 2 << 20)
        // Writes straddling 2 MiB child blocks and 32 MiB parent blocks, partial sectors included.
        for offset in [(2 << 20) - 700, (32 << 20) - 4096, (64 << 20) + 511, Int(size) - (1 << 20)] {
            let data = rng.bytes(1 << 20)
            try c.write(data, at: UInt64(offset))
            model.replaceSubrange(offset..<offset + data.count, with: data)
        }
        try c.chain.forEach { try $0.close() }
        let chain = try DiskChain.open(FilePath(child))
        #expect(try Bytes(chain.leaf.read(count: Int(size), at: 0)) == Bytes(model))
        try chain.close()

        if try TestEnv.prerequisite(TestEnv.pyvhdiAvailable(), "pyvhdi in /usr/bin/python3") {
            let expected = dir.file("model.raw")
            try Data(model).write(to: URL(fileURLWithPath: expected))
            #expect(try Self.pyvhdiMatches([child, base], expected: expected) == "OK")
        }
        _ = try MergeOperation.merge(child: FilePath(child))
        #expect(!FileManager.default.fileExists(atPath: child))
        let merged = try DiskChain.open(FilePath(base))
        #expect(try Bytes(merged.leaf.read(count: Int(size), at: 0)) == Bytes(model))
        try merged.close()
    }

    @Test func childRecordsTheParentsDataWriteGuidAndDetectsAChangedParent() throws {
        let dir = try TempDir()
        let base = dir.file("base.vhdx"), child = dir.file("child.avhdx")
        try VHDXTest.create(base, size: 4 << 20).close()
        let c = try VHDXTest.create(child, size: 0, parent: base)
        let baseLevel = try DiskImages.openLevel(FilePath(base))
        #expect(c.parentLink?.expectedID == baseLevel.identity)
        #expect(c.parentLink?.locators.first == ParentLocator(kind: .relative, path: ".\\base.vhdx"))
        try baseLevel.close()
        try c.chain.forEach { try $0.close() }
        // Writing the parent changes its DataWriteGuid: the child no longer opens against it.
        let w = try DiskImages.openLevel(FilePath(base), writable: true)
        try w.write([1], at: 0)
        try w.close()
        #expect(throws: DiskError.self) { try DiskChain.open(FilePath(child)) }
    }

    @Test func mixedFormatChainsAreRefused() throws {
        let dir = try TempDir()
        let base = dir.file("base.vhdx")
        try VHDXTest.create(base, size: 4 << 20).close()
        // A VHD child of a VHDX parent (and so the converse): parent and child must share a format.
        #expect(throws: DiskError.self) {
            try DiskImages.create(at: FilePath(dir.file("child.vhd")), options: CreateOptions(format: .vhd, type: .differencing, parentPath: FilePath(base)))
        }
        let raw = dir.file("base.img")
        try DiskImages.create(at: FilePath(raw), options: CreateOptions(format: .raw, type: .dynamic, virtualSize: 4 << 20)).close()
        #expect(throws: DiskError.self) {
            try DiskImages.create(at: FilePath(dir.file("child.vhdx")), options: CreateOptions(format: .vhdx, type: .differencing, parentPath: FilePath(raw)))
        }
        #expect(!FileManager.default.fileExists(atPath: dir.file("child.vhd")))
        #expect(!FileManager.default.fileExists(atPath: dir.file("child.vhdx")))
    }
}
