import Foundation
import SystemPackage
import Testing
import TestSupport
@testable import VirtualDisk

/// Shared helpers for the operation tests: small chains with random contents and a model of them,
/// and the external oracles (qemu-img compare, pyvhdi).
enum Ops {
    /// Virtual size of test disks.
    static let size = 8 << 20



    static func blockSize(_ format: DiskFormat) -> Int? {
        switch format { case .vhd: 512 << 10; case .vhdx: 1 << 20; case .raw: nil }
    }

    static func name(_ stem: String, _ format: DiskFormat) -> String {
        format == .raw ? "\(stem).img" : "\(stem).\(format.rawValue)"
    }

    /// Creates a base of `baseType` and `depth` differencing levels above it, writing random data into
    /// each level before its child exists. Returns the paths base first; `model` mirrors the contents.
    static func buildChain(in dir: TempDir, format: DiskFormat, baseType: DiskType, depth: Int, stem: String = "disk",
                           writesPerLevel: ClosedRange<Int> = 2...6, rng: inout SeededRandom, model: inout ChainModel) throws -> [FilePath] {
        var paths: [FilePath] = []
        let base = FilePath(dir.file(name("\(stem)0", format)))
        let image = try DiskImages.create(at: base, options: CreateOptions(format: format, type: baseType, virtualSize: UInt64(size),
                                                                            blockSize: blockSize(format)))
        try apply(model.randomWrites(level: 0, count: Int.random(in: writesPerLevel, using: &rng), rng: &rng), to: image)
        try image.close()
        paths.append(base)
        for level in 1...max(depth, 1) where depth > 0 {
            model.addLevel()
            let path = FilePath(dir.file(name("\(stem)\(level)", format)))
            let child = try DiskImages.create(at: path, options: CreateOptions(format: format, type: .differencing,
                                                                               blockSize: blockSize(format), parentPath: paths.last!))
            try apply(model.randomWrites(level: level, count: Int.random(in: writesPerLevel, using: &rng), rng: &rng), to: child)
            for l in child.chain { try l.close() }
            paths.append(path)
        }
        return paths
    }

    static func apply(_ writes: [ChainModel.Write], to image: any DiskImage) throws {
        for w in writes { try image.write(w.bytes, at: UInt64(w.offset)) }
        try image.flush()
    }

    /// Every virtual byte of `path` read through its chain, in the given kind of store.
    static func readAll(_ path: FilePath, store: StoreKind = .local) throws -> [UInt8] {
        let chain = try DiskChain.open(path, in: try store.space())
        defer { try? chain.close() }
        return try chain.leaf.read(count: Int(chain.leaf.virtualSize), at: 0)
    }

    /// Index of the first differing byte, for readable failures.
    static func firstDifference(_ a: [UInt8], _ b: [UInt8]) -> Int? {
        if a.count != b.count { return min(a.count, b.count) }
        return a.withUnsafeBytes { pa in b.withUnsafeBytes { pb in
            memcmp(pa.baseAddress!, pb.baseAddress!, a.count) == 0 ? nil : a.indices.first { a[$0] != b[$0] }
        } }
    }

    /// The first offset where libvhdi's bytes differ from `expected` inside the runs some level of
    /// `leaf`'s chain stores. Runs no level holds are left out: libvhdi (20240509) sometimes returns
    /// stale buffer bytes there for VHDX differencing chains (seen with empty 1 MiB-block chains).
    static func libvhdiDifference(_ bytes: [UInt8], _ expected: [UInt8], leaf: FilePath) throws -> Int? {
        guard bytes.count == expected.count else { return min(bytes.count, expected.count) }
        let chain = try DiskChain.open(leaf)
        defer { try? chain.close() }
        for m in try chain.map() where !m.isZero {
            let r = Int(m.range.lowerBound)..<Int(m.range.upperBound)
            if let d = firstDifference(Array(bytes[r]), Array(expected[r])) { return r.lowerBound + d }
        }
        return nil
    }

    static func qemuName(_ format: DiskFormat) -> String {
        switch format { case .vhd: "vpc"; case .vhdx: "vhdx"; case .raw: "raw" }
    }

    /// qemu-img compare of a standalone image against the expected bytes (fixed/dynamic VHD, VHDX, raw).
    static func qemuCompare(_ path: FilePath, _ format: DiskFormat, expected: [UInt8], in dir: TempDir) throws {
        guard try TestEnv.tools("qemu-img") else { return }
        let reference = dir.file("expected-\(UUID().uuidString.prefix(6)).raw")
        try Data(expected).write(to: URL(fileURLWithPath: reference))
        defer { try? FileManager.default.removeItem(atPath: reference) }
        let r = try run("qemu-img", ["compare", "-f", "raw", "-F", qemuName(format), reference, path.string])
        #expect(r.status == 0, "qemu-img compare \(path.string): \(r.out) \(r.err)")
    }

    /// Reads a (differencing) chain with libvhdi: `paths` base first; returns the leaf's bytes.
    /// What libvhdi reads through `paths` (base first); nil without pyvhdi; its failure is thrown.
    static func pyvhdiRead(_ paths: [FilePath]) throws -> [UInt8]? { try PyVHDI.read(paths)?.get() }
}
