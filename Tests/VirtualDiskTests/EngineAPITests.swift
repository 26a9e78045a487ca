import Foundation
import Storage
import SystemPackage
import Testing
import TestSupport
@testable import VirtualDisk

/// The library API the backup layers build on, used the way they will use it: a full recovery point
/// streamed into a staged image, an incremental written as a staged differencing image from the
/// changed extents of a frozen differencing child, and both read back through the streaming reader.
@Suite struct EngineAPITests {
    static let size = 16 << 20

    /// Reads `chain` through `ChainReader` into a flat array, checking that chunks come in order, cover
    /// the disk exactly, and that holes read as zeros.
    static func stream(_ chain: DiskChain, ranges: [Range<UInt64>]? = nil) throws -> (bytes: [UInt8], holes: UInt64, data: UInt64) {
        var out = [UInt8](repeating: 0xEE, count: Int(chain.leaf.virtualSize))
        var next = ranges?.first?.lowerBound ?? 0
        var holes: UInt64 = 0, data: UInt64 = 0
        try ChainReader(chain, ranges: ranges).forEach { chunk in
            switch chunk {
            case let .data(offset, bytes):
                if ranges == nil { #expect(offset == next, "chunks in order, no gaps") }
                out.replaceSubrange(Int(offset)..<Int(offset) + bytes.count, with: bytes)
                next = offset + UInt64(bytes.count)
                data += UInt64(bytes.count)
            case let .hole(range):
                if ranges == nil { #expect(range.lowerBound == next, "chunks in order, no gaps") }
                out.replaceSubrange(Int(range.lowerBound)..<Int(range.upperBound), with: repeatElement(0, count: range.count))
                next = range.upperBound
                holes += UInt64(range.count)
            }
        }
        if ranges == nil { #expect(next == chain.leaf.virtualSize, "the stream covers the whole disk") }
        return (out, holes, data)
    }

    /// Writes what `reader` streams into `target`: data as data; holes as zeros only where `target`
    /// must hide what its parent holds (a differencing target), never for a standalone one.
    static func copy(_ reader: ChainReader, into target: any DiskImage) throws {
        try reader.forEach { chunk in
            switch chunk {
            case let .data(offset, bytes):
                try target.write(bytes, at: offset)
            case let .hole(range):
                guard target.type == .differencing else { return }
                try target.write([UInt8](repeating: 0, count: range.count), at: range.lowerBound)
            }
        }
    }

    @Test(arguments: [DiskFormat.vhdx, .vhd], StoreKind.allCases)
    func incrementalFromTheChangedExtentsOfAFrozenChild(format: DiskFormat, store: StoreKind) throws {
        let dir = try TempDir("engine-api")
        let live = try TempDir("engine-live")
        var rng = SeededRandom(seed: format == .vhd ? 3 : 4)
        var model = [UInt8](repeating: 0, count: Self.size)
        func write(_ image: any DiskImage, _ bytes: [UInt8], at offset: Int) throws {
            try image.write(bytes, at: UInt64(offset))
            model.replaceSubrange(offset..<offset + bytes.count, with: bytes)
        }
        // The live disk, with data.
        let ext = format.rawValue
        let basePath = FilePath(live.file("disk.\(ext)"))
        let base = try DiskImages.create(at: basePath, options: CreateOptions(format: format, type: .dynamic, virtualSize: UInt64(Self.size)))
        for _ in 0..<12 {
            let n = Int(rng.next() % (400 << 10)) + 1
            try write(base, rng.bytes(n), at: Int(rng.next() % UInt64(Self.size - n)))
        }
        try base.close()

        // Point 1, a full: the whole disk streamed into a staged dynamic image, published by rename.
        let v1 = FilePath(dir.file("v1"))
        try FileManager.default.createDirectory(atPath: v1.string, withIntermediateDirectories: true)
        let fullPath = v1.appending("disk0.\(ext)")
        do {
            let source = try store.openChain(basePath.string)
            defer { try? source.close() }
            let staged = try StagedImage(at: fullPath, options: CreateOptions(format: format, type: .dynamic, virtualSize: UInt64(Self.size)))
            #expect(!FileOps.exists(fullPath), "nothing visible before publishing")
            try Self.copy(ChainReader(source), into: staged.image)
            try staged.publish()
            #expect(store.readThroughSeam(source))
        }
        let fullModel = model

        // The snapshot: the live disk gets a differencing child (as the differencing provider makes it);
        // the guest writes into the child from now on, and the frozen child holds exactly the changes.
        let childPath = FilePath(live.file("disk-1.a\(ext)"))
        let child = try DiskImages.create(at: childPath, options: CreateOptions(format: format, type: .differencing, parentPath: basePath))
        for _ in 0..<8 {
            let n = Int(rng.next() % (300 << 10)) + 1
            try write(child, rng.bytes(n), at: Int(rng.next() % UInt64(Self.size - n)))
        }
        // Zeros over data the parent holds: an incremental must store them, or the parent's bytes show.
        let hidden = model.firstIndex { $0 != 0 }!
        try write(child, [UInt8](repeating: 0, count: 70_000), at: hidden)
        for level in child.chain { try level.close() }

        // Point 2, an incremental: the changed extents of the frozen child, written into a staged
        // differencing image whose parent is point 1 (relative locator ..\v1\disk0.EXT).
        let v2 = FilePath(dir.file("v2"))
        try FileManager.default.createDirectory(atPath: v2.string, withIntermediateDirectories: true)
        let incrementalPath = v2.appending("disk0.\(ext)")
        var changedBytes: UInt64 = 0
        do {
            let frozen = try store.openChain(childPath.string)
            defer { try? frozen.close() }
            let changed = try frozen.changedRanges(levels: 0..<1)
            #expect(!changed.isEmpty)
            #expect(try frozen.changedExtents(level: 0).map(\.range) == changed)
            #expect(try frozen.changedRanges(levels: 0..<2).count >= 1)
            changedBytes = changed.reduce(0) { $0 + UInt64($1.count) }
            #expect(changedBytes < UInt64(Self.size) / 2, "a level holds its changes only")
            let staged = try StagedImage(at: incrementalPath, options: CreateOptions(format: format, type: .differencing, parentPath: fullPath))
            try Self.copy(ChainReader(frozen, ranges: changed), into: staged.image)
            try staged.publish()
        }
        #expect(!(try FileManager.default.contentsOfDirectory(atPath: v2.string)).contains { $0.contains(".partial-") })

        // Read back through the streaming reader, over the store under test.
        let point2 = try store.openChain(incrementalPath.string)
        defer { try? point2.close() }
        #expect(point2.levels.count == 2)
        #expect(point2.leaf.parentLink?.locators.contains { $0.kind == .relative && $0.path == "..\\v1\\disk0.\(ext)" } == true)
        let streamed = try Self.stream(point2)
        #expect(streamed.bytes == model, "point 2 reads the disk as it was at the second snapshot")
        #expect(streamed.holes > 0, "holes come as holes")
        let point1 = try store.openChain(fullPath.string)
        defer { try? point1.close() }
        #expect(try Self.stream(point1).bytes == fullModel, "point 1 is unchanged")
        // The incremental stores the blocks that changed, not the disk: at most one block per block
        // the changes touch, plus the format's own structures.
        let blockSize = UInt64(point2.leaf.blockSize)
        let touched = Set(try point2.changedRanges(levels: 0..<1).flatMap { r in (r.lowerBound / blockSize)...((r.upperBound - 1) / blockSize) })
        let incrementalFile = try BlockFile.open(incrementalPath, writable: false)
        defer { try? incrementalFile.close() }
        #expect(try incrementalFile.allocatedBytes() <= UInt64(touched.count) * blockSize + (5 << 20))
        #expect(UInt64(touched.count) * blockSize < UInt64(Self.size), "the changes touch part of the disk only")
        #expect(try ChainCheck.check(path: incrementalPath).isClean)
    }

    @Test func streamingRangesAndZeroDetection() throws {
        let dir = try TempDir("engine-api")
        let path = FilePath(dir.file("d.vhdx"))
        let image = try DiskImages.create(at: path, options: CreateOptions(format: .vhdx, type: .dynamic, virtualSize: UInt64(Self.size)))
        var rng = SeededRandom(seed: 11)
        var model = [UInt8](repeating: 0, count: Self.size)
        let data = rng.bytes(300_000)
        try image.write(data, at: 5_000_000)
        model.replaceSubrange(5_000_000..<5_300_000, with: data)
        // Stored zeros (an allocated block of zeros) are reported as a hole with zero detection on.
        try image.write([UInt8](repeating: 0, count: 1 << 20), at: 10 << 20)
        try image.close()
        let chain = try DiskChain.open(path)
        defer { try? chain.close() }
        let all = try Self.stream(chain)
        #expect(all.bytes == model)
        #expect(all.data < 1 << 20, "only the non-zero granules come as data (\(all.data) bytes)")
        // A sub-range streams exactly that range.
        var covered: UInt64 = 0
        try ChainReader(chain, ranges: [4_999_000..<5_001_000]).forEach { chunk in
            switch chunk {
            case let .data(offset, bytes):
                #expect(Array(bytes) == Array(model[Int(offset)..<Int(offset) + bytes.count]))
                covered += UInt64(bytes.count)
            case let .hole(r): covered += UInt64(r.count)
            }
        }
        #expect(covered == 2_000)
        // Without zero detection, stored bytes come as data.
        var data2: UInt64 = 0
        try ChainReader(chain, detectZeros: false).forEach { if case let .data(_, b) = $0 { data2 += UInt64(b.count) } }
        #expect(data2 >= 1 << 20)
    }

    @Test func stagedImagesPublishWholeOrNotAtAll() throws {
        let dir = try TempDir("engine-api")
        let dest = FilePath(dir.file("new.vhdx"))
        // Discarded: nothing is left.
        do {
            let staged = try StagedImage(at: dest, options: CreateOptions(format: .vhdx, type: .dynamic, virtualSize: 8 << 20))
            try staged.image.write([1, 2, 3], at: 0)
            staged.discard()
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).isEmpty)
        // Dropped without publishing (an error path): nothing is left either.
        do {
            let staged = try StagedImage(at: dest, options: CreateOptions(format: .vhdx, type: .dynamic, virtualSize: 8 << 20))
            try staged.image.write([1, 2, 3], at: 0)
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).isEmpty)
        // A file that appears at the destination meanwhile is never replaced.
        let staged = try StagedImage(at: dest, options: CreateOptions(format: .vhdx, type: .dynamic, virtualSize: 8 << 20))
        try Data("mine".utf8).write(to: URL(fileURLWithPath: dest.string))
        #expect(throws: StorageError.exists(path: dest.string)) { try staged.publish() }
        #expect(try String(contentsOfFile: dest.string, encoding: .utf8) == "mine")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["new.vhdx"])
        // A leftover of a dead process is removed by the next staging to the same name.
        try FileOps.remove(dest)
        let stale = dir.file(".new.vhdx.partial-999999")
        try Data("x".utf8).write(to: URL(fileURLWithPath: stale))
        let again = try StagedImage(at: dest, options: CreateOptions(format: .vhdx, type: .dynamic, virtualSize: 8 << 20))
        #expect(!FileOps.exists(FilePath(stale)))
        try again.publish()
        #expect(try DiskImages.openLevel(dest).virtualSize == 8 << 20)
    }

    @Test func cancellingAConvertLeavesNoFileVisible() throws {
        let dir = try TempDir("engine-api")
        let src = FilePath(dir.file("src.vhdx"))
        let image = try DiskImages.create(at: src, options: CreateOptions(format: .vhdx, type: .dynamic, virtualSize: 64 << 20))
        var rng = SeededRandom(seed: 5)
        try image.write(rng.bytes(32 << 20), at: 0)
        try image.close()
        // Cancel on the first report of progress (as a SIGINT handler or a daemon's stop would).
        let box = ReporterBox()
        let own = ProgressReporter { done, _ in if done > 0 { box.reporter?.cancel() } }
        box.reporter = own
        #expect(throws: OperationCancelled.self) {
            try ConvertOperation.convert(source: src, destination: FilePath(dir.file("dst.vhd")), progress: own)
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["src.vhdx"])
    }

    @Test func aFIFOIsRefusedAtOnce() throws {
        let dir = try TempDir("engine-api")
        let fifo = dir.file("p.vhd")
        #expect(mkfifo(fifo, 0o600) == 0)
        let started = Date()
        #expect(throws: StorageError.notAFile(path: fifo, kind: "FIFO (named pipe)")) { try DiskImages.openLevel(FilePath(fifo)) }
        #expect(throws: StorageError.self) { try DiskImages.openLevel(FilePath(fifo), writable: true) }
        #expect(Date().timeIntervalSince(started) < 2)
    }

    @Test func blockingPoolsAreBoundedAndSeparate() async throws {
        let pool = BlockingPool(name: "test", limit: 3)
        let gauge = Gauge()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<12 {
                group.addTask { try await pool.run { gauge.enter(); usleep(30_000); gauge.leave() } }
            }
            try await group.waitForAll()
        }
        #expect(gauge.peak <= 3 && gauge.peak >= 2, "at most the limit at once (peak \(gauge.peak))")
        #expect(pool.threadCount <= 3)
        // Work that hangs on one pool does not starve another.
        let hung = BlockingPool(name: "hung", limit: 1)
        let release = DispatchSemaphore(value: 0)
        let hanging = Task { try await hung.run { release.wait() } }
        let answer = try await pool.run { 42 }
        #expect(answer == 42)
        release.signal()
        try await hanging.value
    }
}

/// Lets a reporter's handler reach the reporter itself.
private final class ReporterBox: @unchecked Sendable {
    var reporter: ProgressReporter?
}

/// Counts threads inside a section and remembers the most at once.
private final class Gauge: @unchecked Sendable {
    private let lock = NSLock()
    private var inside = 0
    private(set) var peak = 0
    func enter() { lock.withLock { inside += 1; peak = max(peak, inside) } }
    func leave() { lock.withLock { inside -= 1 } }
}
