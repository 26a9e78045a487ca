import Foundation
import SystemPackage
import Testing
import TestSupport
@testable import VirtualDisk

/// Helpers shared by the VHDX test files.
enum VHDXTest {
    static func create(_ path: String, size: UInt64, type: DiskType = .dynamic, blockSize: Int? = 1 << 20,
                       logical: Int? = nil, parent: String? = nil) throws -> any DiskImage {
        try DiskImages.create(at: FilePath(path), options: CreateOptions(
            format: .vhdx, type: parent == nil ? type : .differencing, virtualSize: size, blockSize: blockSize,
            logicalSectorSize: logical, parentPath: parent.map { FilePath($0) }))
    }

    /// Whether `a` and `b` hold the same bytes over `range` (memcmp: fast even in debug builds).
    static func equal(_ a: [UInt8], _ b: [UInt8], _ range: Range<Int>) -> Bool {
        guard !range.isEmpty else { return true }
        return a.withUnsafeBytes { pa in b.withUnsafeBytes { pb in
            memcmp(pa.baseAddress! + range.lowerBound, pb.baseAddress! + range.lowerBound, range.count) == 0
        } }
    }

    static func bytes(_ path: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path)) }

    /// Patches `bytes` into the file at `offset`.
    static func poke(_ path: String, at offset: UInt64, _ bytes: [UInt8]) throws {
        let h = try FileHandle(forUpdating: URL(fileURLWithPath: path))
        defer { try? h.close() }
        try h.seek(toOffset: offset)
        try h.write(contentsOf: Data(bytes))
    }

    static func peek(_ path: String, at offset: UInt64, count: Int) throws -> [UInt8] {
        let h = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
        defer { try? h.close() }
        try h.seek(toOffset: offset)
        return [UInt8](try h.read(upToCount: count) ?? Data())
    }

    /// Reads a whole chain leaf through DiskChain.
    static func readAll(_ path: String) throws -> [UInt8] {
        let chain = try DiskChain.open(FilePath(path))
        defer { try? chain.close() }
        return try chain.leaf.read(count: Int(chain.leaf.virtualSize), at: 0)
    }
}

@Suite struct VHDXStructureTests {
    @Test func crc32cMatchesTheKnownVector() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
    }

    @Test func guidsUseTheWindowsByteOrder() {
        let id = UUID(uuidString: "2DC27766-F623-4200-9D64-115E9BFD4A08")!
        let bytes = VHDXGUID.encode(id)
        #expect(bytes[0..<8] == [0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42])
        #expect(Array(bytes[8..<16]) == [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08])
        #expect(VHDXGUID.decode(bytes) == id)
        #expect(VHDXGUID.parse("{2dc27766-f623-4200-9d64-115e9bfd4a08}") == id)
    }

    @Test func batGeometryFollowsTheChunkRatio() {
        let g = VHDXGeometry(virtualSize: 50 << 20 + 4096, blockSize: 1 << 20, logicalSectorSize: 512)
        #expect(g.chunkRatio == 4096)
        #expect(g.payloadBlocks == 51)
        #expect(g.entryCount(differencing: false) == 51)
        #expect(g.entryCount(differencing: true) == 4097)
        let g4 = VHDXGeometry(virtualSize: 1 << 40, blockSize: 256 << 20, logicalSectorSize: 512)
        #expect(g4.chunkRatio == 16)
        #expect(g4.payloadIndex(16) == 17)
        #expect(g4.bitmapIndex(chunk: 0) == 16)
    }

    @Test func aNewLogEntryNeverOverwritesThePreviousOne() {
        for logLength in [1 << 20, 2 << 20] {
            var writer = VHDXLogWriter(logOffset: 0, logLength: logLength, guid: UUID())
            var previous: Range<UInt64>?
            var rng = SeededRandom(seed: UInt64(logLength))
            for _ in 0..<200 {
                let n = Int(rng.next() % UInt64(writer.maxDataSectors)) + 1
                let sector = [UInt8](repeating: 1, count: 4096)
                let (at, bytes) = writer.next(Array(repeating: .data(fileOffset: 1 << 20, sector: sector), count: n),
                                              flushedFileOffset: 4 << 20, lastFileOffset: 4 << 20)
                let range = at..<at + UInt64(bytes.count)
                #expect(range.upperBound <= UInt64(logLength))
                if let previous { #expect(!range.overlaps(previous)) }
                previous = range
            }
        }
    }

    @Test func logEntriesRoundTripAndTheSearchPicksTheNewestSequence() throws {
        let guid = UUID()
        var writer = VHDXLogWriter(logOffset: 0, logLength: 64 << 10, guid: guid)
        var log = [UInt8](repeating: 0, count: 64 << 10)
        var last: [UInt8] = []
        for i in 0..<20 {  // wraps around the 64 KiB log several times
            let sector = [UInt8](repeating: UInt8(i), count: 4096)
            let (at, bytes) = writer.next([.data(fileOffset: 3 << 20, sector: sector), .zero(fileOffset: 2 << 20, length: 4096)],
                                          flushedFileOffset: 4 << 20, lastFileOffset: 4 << 20)
            log.replaceSubrange(Int(at)..<Int(at) + bytes.count, with: bytes)
            last = sector
        }
        let seq = try #require(VHDXLogSequence.findActive(log: log, guid: guid))
        #expect(seq.head.sequenceNumber == 20)
        #expect(seq.entries.count == 1)
        #expect(seq.head.descriptors.first == .data(fileOffset: 3 << 20, sector: last))
        #expect(VHDXLogSequence.findActive(log: log, guid: UUID()) == nil)
    }
}

@Suite struct VHDXInteropTests {
    /// qemu-made images of sizes that are not block multiples read byte-identically to their raw source.
    @Test(arguments: ["dynamic", "fixed"], ["1M", "8M", "32M"])
    func qemuImagesReadIdentically(subformat: String, blockSize: String) throws {
        guard try TestEnv.tools("qemu-img") else { return }
        let dir = try TempDir()
        let raw = dir.file("src.raw"), image = dir.file("q.vhdx")
        var rng = SeededRandom(seed: 42)
        var content = [UInt8](repeating: 0, count: 50 << 20 + 4096)
        for start in stride(from: 0, to: content.count, by: 3 << 20) where start % (6 << 20) == 0 {
            let n = min(1 << 20 + 777, content.count - start)
            content.replaceSubrange(start..<start + n, with: rng.bytes(n))
        }
        content.replaceSubrange(content.count - 4096..<content.count, with: rng.bytes(4096))
        try Data(content).write(to: URL(fileURLWithPath: raw))
        try runChecked("qemu-img", ["convert", "-f", "raw", "-O", "vhdx", "-o", "subformat=\(subformat),block_size=\(blockSize)", raw, image])
        let chain = try DiskChain.open(FilePath(image))
        #expect(chain.leaf.virtualSize == UInt64(content.count))
        #expect(chain.leaf.type == (subformat == "fixed" ? .fixed : .dynamic))
        #expect(try Bytes(chain.leaf.read(count: content.count, at: 0)) == Bytes(content))
        #expect(chain.leaf.properties["creator"]?.hasPrefix("QEMU") == true)
        try chain.close()

        // Bulwark writes into the qemu-made image; qemu-img still finds it clean and equal to the model.
        let writer = try DiskImages.openLevel(FilePath(image), writable: true)
        for _ in 0..<12 {
            let offset = Int(rng.next() % UInt64(content.count - 300_000))
            let data = rng.bytes(Int(rng.next() % 300_000) + 1)
            try writer.write(data, at: UInt64(offset))
            content.replaceSubrange(offset..<offset + data.count, with: data)
        }
        try writer.close()
        try Data(content).write(to: URL(fileURLWithPath: raw))
        let check = try run("qemu-img", ["check", "-f", "vhdx", image])
        #expect(check.status == 0, "\(check.out) \(check.err)")
        let compare = try run("qemu-img", ["compare", "-f", "vhdx", "-F", "raw", image, raw])
        #expect(compare.status == 0, "\(compare.out) \(compare.err)")
    }

    /// Bulwark's fixed and dynamic images, after random writes, pass qemu-img check and compare (512-byte
    /// sectors; qemu supports no other) or read identically through libvhdi (4096).
    @Test(arguments: [DiskType.fixed, .dynamic], [512, 4096])
    func bulwarkImagesPassQemuCheckAndCompare(type: DiskType, logical: Int) throws {
        guard try TestEnv.tools("qemu-img") else { return }
        let dir = try TempDir()
        let path = dir.file("b.vhdx"), raw = dir.file("model.raw")
        let size: UInt64 = 24 << 20
        var model = [UInt8](repeating: 0, count: Int(size))
        var rng = SeededRandom(seed: UInt64(logical) + (type == .fixed ? 1 : 2))
        let image = try VHDXTest.create(path, size: size, type: type, blockSize: 1 << 20, logical: logical)
        for _ in 0..<40 {
            let offset = Int(rng.next() % (size - (600 << 10)))
            let count = Int(rng.next() % (600 << 10)) + 1
            let data = rng.next() % 5 == 0 ? [UInt8](repeating: 0, count: count) : rng.bytes(count)
            try image.write(data, at: UInt64(offset))
            model.replaceSubrange(offset..<offset + count, with: data)
        }
        try image.close()
        try Data(model).write(to: URL(fileURLWithPath: raw))
        if logical == 512 {
            let check = try run("qemu-img", ["check", "-f", "vhdx", path])
            #expect(check.status == 0, "qemu-img check: \(check.out) \(check.err)")
            let compare = try run("qemu-img", ["compare", "-f", "vhdx", "-F", "raw", path, raw])
            #expect(compare.status == 0, "qemu-img compare: \(compare.out) \(compare.err)")
        } else if try TestEnv.prerequisite(TestEnv.pyvhdiAvailable(), "pyvhdi in /usr/bin/python3") {
            // qemu-img refuses 4096-byte logical sectors (ENOTSUP); libvhdi reads them.
            #expect(try VHDXChainTests.pyvhdiMatches([path], expected: raw) == "OK")
        }
        #expect(try Bytes(VHDXTest.readAll(path)) == Bytes(model))
        let reopened = try DiskImages.openLevel(FilePath(path))
        defer { try? reopened.close() }
        #expect(reopened.type == type)
        #expect(reopened.logicalSectorSize == logical)
        #expect(reopened.properties["log"] == "clean")
    }
}

@Suite struct VHDXImageTests {
    @Test func identityChangesOnlyWithDataWrites() throws {
        let dir = try TempDir()
        let path = dir.file("d.vhdx")
        let image = try VHDXTest.create(path, size: 8 << 20)
        let created = image.identity
        let fileGuid = image.properties["file write guid"]
        try image.close()
        // An open and close without writes changes nothing.
        let before = try VHDXTest.bytes(path)
        try DiskImages.openLevel(FilePath(path), writable: true).close()
        #expect(try Bytes(VHDXTest.bytes(path)) == Bytes(before))
        let again = try DiskImages.openLevel(FilePath(path), writable: true)
        try again.write([1, 2, 3], at: 512)
        #expect(again.identity != created)
        #expect(again.properties["file write guid"] != fileGuid)
        try again.close()
        let reopened = try DiskImages.openLevel(FilePath(path))
        defer { try? reopened.close() }
        #expect(reopened.identity == again.identity)
        #expect(try reopened.read(count: 4, at: 511) == [0, 1, 2, 3])
    }

    @Test func extentsReportDataZeroAndUnallocatedRuns() throws {
        let dir = try TempDir()
        let path = dir.file("e.vhdx")
        let image = try VHDXTest.create(path, size: 8 << 20)
        try image.write([UInt8](repeating: 7, count: 3 << 20), at: 1 << 20)
        let extents = try image.extents(in: 0..<(8 << 20))
        try image.close()
        #expect(extents.count == 3)
        #expect(extents[0] == DiskExtent(range: 0..<(1 << 20), kind: .unallocated))
        guard case .data = extents[1].kind else { Issue.record("expected data, got \(extents[1])"); return }
        #expect(extents[1].range == (1 << 20)..<(4 << 20))  // three blocks allocated in file order, coalesced
        #expect(extents[2].kind == .unallocated)
    }

    @Test func resizeGrowsAndShrinksOnlyAnEmptyTail() throws {
        let dir = try TempDir()
        let path = dir.file("r.vhdx")
        let image = try #require(try VHDXTest.create(path, size: 8 << 20) as? VHDXImage)
        try image.write([UInt8](repeating: 9, count: 4096), at: 3 << 20)
        try image.resize(to: 20 << 20)
        #expect(image.virtualSize == 20 << 20)
        try image.write([UInt8](repeating: 5, count: 4096), at: 10 << 20)
        #expect(throws: DiskError.self) { try image.resize(to: 2 << 20) }  // data at 3 MiB
        try image.resize(to: 12 << 20)  // blocks 12..19 hold nothing
        #expect(throws: DiskError.self) { try image.resize(to: 10 << 20) }  // block 10 holds data
        try image.close()
        let reopened = try DiskImages.openLevel(FilePath(path))
        defer { try? reopened.close() }
        #expect(reopened.virtualSize == 12 << 20)
        #expect(try Bytes(reopened.read(count: 4096, at: 3 << 20)) == Bytes([UInt8](repeating: 9, count: 4096)))
        #expect(try Bytes(reopened.read(count: 4096, at: 10 << 20)) == Bytes([UInt8](repeating: 5, count: 4096)))
    }

    @Test func growingPastTheBATRegionMovesTheBATThroughTheLog() throws {
        let dir = try TempDir()
        let path = dir.file("g.vhdx")
        let image = try #require(try VHDXTest.create(path, size: 8 << 20) as? VHDXImage)
        let early = [UInt8](repeating: 0x11, count: 8192)
        try image.write(early, at: 4096)
        let oldBAT = image.batRegion
        try image.resize(to: 200 << 30)  // 1 MiB blocks: the 1 MiB BAT region holds about 128 GiB
        #expect(image.batRegion.fileOffset != oldBAT.fileOffset)
        #expect(image.batRegion.length > oldBAT.length)
        let late = [UInt8](repeating: 0x22, count: 4096)
        try image.write(late, at: (200 << 30) - 4096)
        try image.close()
        let reopened = try DiskImages.openLevel(FilePath(path))
        #expect(reopened.virtualSize == 200 << 30)
        #expect(try Bytes(reopened.read(count: early.count, at: 4096)) == Bytes(early))
        #expect(try Bytes(reopened.read(count: late.count, at: (200 << 30) - 4096)) == Bytes(late))
        try reopened.close()
        if try TestEnv.tools("qemu-img") {
            let check = try run("qemu-img", ["check", "-f", "vhdx", path])
            #expect(check.status == 0, "\(check.out) \(check.err)")
        }
    }

    @Test func sequentialWritesAreLoggedInBatches() throws {
        let dir = try TempDir()
        let path = dir.file("s.vhdx")
        let image = try #require(try VHDXTest.create(path, size: 64 << 20) as? VHDXImage)
        let chunk = [UInt8](repeating: 0x5A, count: 4 << 20)
        for i in 0..<16 { try image.write(chunk, at: UInt64(i) << 22) }  // 64 new 1 MiB blocks
        try image.flush()
        #expect(image.logEntriesWritten <= 2)
        try image.close()
        #expect(try VHDXTest.readAll(path).allSatisfy { $0 == 0x5A })
    }

    @Test func compactOfADifferencingImageKeepsZerosThatHideParentData() throws {
        let dir = try TempDir()
        let base = dir.file("base.vhdx"), child = dir.file("child.avhdx")
        let b = try VHDXTest.create(base, size: 8 << 20)
        try b.write([UInt8](repeating: 0xCC, count: 1 << 20), at: 0)
        try b.close()
        let c = try #require(try VHDXTest.create(child, size: 0, parent: base) as? VHDXImage)
        try c.write([UInt8](repeating: 0, count: 1 << 20), at: 0)  // hides parent data: must stay
        try c.write([UInt8](repeating: 0, count: 1 << 20), at: 2 << 20)  // over parent zeros: reclaimable
        try c.write([UInt8](repeating: 0, count: 4096), at: 5 << 20)  // partial block over zeros: reclaimable
        #expect(try c.compact(progress: nil) > 0)
        let states = (0..<8).map { c.entry(block: UInt64($0)).state }
        #expect(states == [6, 0, 0, 0, 0, 0, 0, 0])
        try c.chain.forEach { try $0.close() }
        let all = try VHDXTest.readAll(child)
        #expect(Bytes(all) == Bytes([UInt8](repeating: 0, count: 8 << 20)))
    }

    @Test func resizeOfAFixedImageAllocatesTheNewBlocks() throws {
        guard try TestEnv.tools("qemu-img") else { return }
        let dir = try TempDir()
        let path = dir.file("f.vhdx")
        let image = try #require(try VHDXTest.create(path, size: 4 << 20, type: .fixed) as? VHDXImage)
        try image.resize(to: 6 << 20)
        try image.write([UInt8](repeating: 1, count: 4096), at: (6 << 20) - 4096)
        try image.close()
        #expect(try run("qemu-img", ["check", "-f", "vhdx", path]).status == 0)
        let reopened = try DiskImages.openLevel(FilePath(path))
        defer { try? reopened.close() }
        #expect(reopened.type == .fixed)
        #expect(try reopened.extents(in: 0..<(6 << 20)).allSatisfy { if case .data = $0.kind { true } else { false } })
    }

    @Test func compactReleasesZeroBlocksAndKeepsData() throws {
        let dir = try TempDir()
        let path = dir.file("c.vhdx")
        let image = try #require(try VHDXTest.create(path, size: 16 << 20) as? VHDXImage)
        var rng = SeededRandom(seed: 3)
        let keep = rng.bytes(100_000)
        try image.write(keep, at: 2 << 20)
        try image.write([UInt8](repeating: 0, count: 8 << 20), at: 6 << 20)  // eight zero blocks, allocated
        try image.write([UInt8](repeating: 1, count: 512), at: 15 << 20)
        try image.write([UInt8](repeating: 0, count: 512), at: 15 << 20)  // last block: zero again
        let sizeBefore = try image.store.size()
        let reclaimed = try image.compact(progress: nil)
        #expect(reclaimed >= 7 << 20)  // eight 1 MiB blocks, less the log sectors newly written
        #expect(try image.store.size() < sizeBefore)
        try image.close()
        let reopened = try DiskImages.openLevel(FilePath(path))
        defer { try? reopened.close() }
        #expect(try Bytes(reopened.read(count: keep.count, at: 2 << 20)) == Bytes(keep))
        let mapped = try reopened.extents(in: 0..<(16 << 20)).filter { if case .data = $0.kind { true } else { false } }
        #expect(mapped.count == 1)
    }

    @Test func setParentRewritesTheLocator() throws {
        let dir = try TempDir()
        let base = dir.file("base.vhdx"), child = dir.file("child.vhdx")
        try VHDXTest.create(base, size: 4 << 20).close()
        let c = try #require(try VHDXTest.create(child, size: 0, parent: base) as? VHDXImage)
        let newID = UUID()
        try c.setParent(ParentLink(expectedID: newID, locators: [ParentLocator(kind: .relative, path: ".\\moved\\base.vhdx")]))
        try c.chain.forEach { try $0.close() }
        let reopened = try DiskImages.openLevel(FilePath(child))
        defer { try? reopened.close() }
        #expect(reopened.parentLink == ParentLink(expectedID: newID, locators: [ParentLocator(kind: .relative, path: ".\\moved\\base.vhdx")]))
    }

    @Test func createRefusesBadGeometry() throws {
        let dir = try TempDir()
        #expect(throws: DiskError.self) { try VHDXTest.create(dir.file("a.vhdx"), size: 8 << 20, blockSize: 3 << 20) }
        #expect(throws: DiskError.self) { try VHDXTest.create(dir.file("b.vhdx"), size: 8 << 20, blockSize: 512 << 20) }
        #expect(throws: DiskError.self) { try VHDXTest.create(dir.file("c.vhdx"), size: 8 << 20, logical: 1024) }
        #expect(throws: DiskError.self) { try VHDXTest.create(dir.file("d.vhdx"), size: 8 << 20 + 100) }
        #expect(throws: DiskError.self) { try VHDXTest.create(dir.file("e.vhdx"), size: (64 << 40) + 4096) }
        #expect(!FileManager.default.fileExists(atPath: dir.file("a.vhdx")))
    }
}

/// Bytes compared in expectations without swift-testing diffing large collections element by element.
struct Bytes: Equatable, CustomStringConvertible {
    let bytes: [UInt8]
    init<C: Collection>(_ c: C) where C.Element == UInt8 { bytes = Array(c) }
    var description: String {
        let prefix = bytes.prefix(16).map { String($0, radix: 16) }.joined(separator: " ")
        return "\(bytes.count) bytes [\(prefix)\(bytes.count > 16 ? " ..." : "")]"
    }
}
