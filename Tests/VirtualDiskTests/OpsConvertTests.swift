import Foundation
import SystemPackage
import Testing
import TestSupport
@testable import VirtualDisk
import Storage

@Suite struct OpsConvertTests {
    static let sources: [(DiskFormat, DiskType, Int)] = [
        (.raw, .dynamic, 0), (.raw, .fixed, 0),
        (.vhd, .dynamic, 0), (.vhd, .fixed, 0), (.vhd, .dynamic, 2),
        (.vhdx, .dynamic, 0), (.vhdx, .fixed, 0), (.vhdx, .fixed, 2),
    ]

    /// Every source (chains flattened, read from the local filesystem or through the helper-process
    /// store) into every target format and type: the target reads like the source's leaf, the source is
    /// untouched, qemu-img agrees, and dynamic targets skip zeros.
    @Test(arguments: sources, StoreKind.allCases)
    func randomizedConvertMatchesModel(source: (DiskFormat, DiskType, Int), store: StoreKind) throws {
        let (sourceFormat, sourceType, depth) = source
        let dir = try TempDir("ops-convert")
        var rng = SeededRandom(seed: UInt64(depth * 31 + sourceFormat.rawValue.count * 7 + (sourceType == .fixed ? 1 : 0)))
        var model = ChainModel(size: Ops.size)
        let paths = try Ops.buildChain(in: dir, format: sourceFormat, baseType: sourceType, depth: depth, rng: &rng, model: &model)
        let expected = model.view(depth)
        let sourceFiles = try paths.map { try Data(contentsOf: URL(fileURLWithPath: $0.string)) }
        for target in DiskFormat.allCases {
            for type in [DiskType.dynamic, .fixed] {
                let dst = FilePath(dir.file(Ops.name("out-\(type.rawValue)", target)))
                let result = try ConvertOperation.convert(source: paths.last!, destination: dst,
                                                          options: ConvertOptions(format: target, type: type, blockSize: Ops.blockSize(target),
                                                                                  sourceSpace: try store.space()))
                #expect(result.virtualSize == UInt64(Ops.size))
                let level = try DiskImages.openLevel(dst)
                #expect(level.format == target)
                if target != .raw { #expect(level.type == type) }
                #expect(level.parentLink == nil)
                try level.close()
                #expect(Ops.firstDifference(try Ops.readAll(dst), expected) == nil, "\(sourceFormat) \(sourceType) depth \(depth) -> \(target) \(type)")
                try Ops.qemuCompare(dst, target, expected: expected, in: dir)
                #expect(result.bytesWritten <= UInt64(Ops.size))
                try FileOps.remove(dst)
            }
        }
        #expect(try paths.map { try Data(contentsOf: URL(fileURLWithPath: $0.string)) } == sourceFiles, "the source is never modified")
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.contains(".partial-") }
        #expect(leftovers.isEmpty)
    }

    /// A mostly empty raw disk stays sparse in a raw copy and small in a dynamic image.
    @Test func keepsHolesSparse() throws {
        let dir = try TempDir("ops-convert")
        let src = FilePath(dir.file("sparse.img"))
        let image = try DiskImages.create(at: src, options: CreateOptions(format: .raw, type: .dynamic, virtualSize: 256 << 20))
        var rng = SeededRandom(seed: 3)
        try image.write(rng.bytes(1 << 20), at: 100 << 20)
        try image.write([UInt8](repeating: 0, count: 4 << 20), at: 200 << 20)  // zeros stored as data
        try image.close()
        for target in DiskFormat.allCases {
            let dst = FilePath(dir.file(Ops.name("copy", target)))
            let result = try ConvertOperation.convert(source: src, destination: dst, options: ConvertOptions(type: .dynamic))
            #expect(result.bytesWritten == 1 << 20, "only the non-zero MiB is written (\(target))")
            #expect(result.allocatedBytes < 48 << 20, "\(target) result occupies \(result.allocatedBytes) bytes")
            #expect(Ops.firstDifference(try Ops.readAll(dst), try Ops.readAll(src)) == nil)
        }
    }

    @Test func refusesAnExistingDestination() throws {
        let dir = try TempDir("ops-convert")
        let src = FilePath(dir.file("a.img")), dst = FilePath(dir.file("b.img"))
        try DiskImages.create(at: src, options: CreateOptions(format: .raw, type: .dynamic, virtualSize: 1 << 20)).close()
        try Data("keep".utf8).write(to: URL(fileURLWithPath: dst.string))
        #expect(throws: StorageError.exists(path: dst.string)) { try ConvertOperation.convert(source: src, destination: dst) }
        #expect(try Data(contentsOf: URL(fileURLWithPath: dst.string)) == Data("keep".utf8))
    }

    @Test func removesStalePartialsOfDeadProcesses() throws {
        let dir = try TempDir("ops-convert")
        let src = FilePath(dir.file("a.img")), dst = FilePath(dir.file("b.img"))
        try DiskImages.create(at: src, options: CreateOptions(format: .raw, type: .dynamic, virtualSize: 1 << 20)).close()
        let stale = dir.file(".b.img.partial-999999")
        let live = dir.file(".b.img.partial-1")  // pid 1 is running
        try Data("x".utf8).write(to: URL(fileURLWithPath: stale))
        try Data("x".utf8).write(to: URL(fileURLWithPath: live))
        _ = try ConvertOperation.convert(source: src, destination: dst)
        #expect(!FileManager.default.fileExists(atPath: stale))
        #expect(FileManager.default.fileExists(atPath: live))
    }
}
