import Foundation
import Storage
import SystemPackage
import Testing
import TestSupport
import VirtualDisk

/// Helpers for the disk-operation CLI tests: small chains with random contents, reading them back,
/// and running the CLI with a kill at a chosen moment.
enum OpsCLI {
    static let size = 8 << 20


    static func blockSize(_ format: DiskFormat) -> Int? {
        switch format { case .vhd: 512 << 10; case .vhdx: 1 << 20; case .raw: nil }
    }

    static func name(_ stem: String, _ format: DiskFormat) -> String {
        format == .raw ? "\(stem).img" : "\(stem).\(format.rawValue)"
    }

    /// A base and `depth` differencing levels with random writes; paths base first.
    static func buildChain(in dir: String, format: DiskFormat, baseType: DiskType = .dynamic, depth: Int, size: Int = size,
                           stem: String = "disk", rng: inout SeededRandom, model: inout ChainModel) throws -> [FilePath] {
        var paths: [FilePath] = []
        let base = FilePath(dir + "/" + name("\(stem)0", format))
        let image = try DiskImages.create(at: base, options: CreateOptions(format: format, type: baseType, virtualSize: UInt64(size),
                                                                            blockSize: blockSize(format)))
        for w in model.randomWrites(level: 0, count: 4, rng: &rng) { try image.write(w.bytes, at: UInt64(w.offset)) }
        try image.close()
        paths.append(base)
        var level = 1
        while level <= depth {
            model.addLevel()
            let path = FilePath(dir + "/" + name("\(stem)\(level)", format))
            let child = try DiskImages.create(at: path, options: CreateOptions(format: format, type: .differencing,
                                                                               blockSize: blockSize(format), parentPath: paths.last!))
            for w in model.randomWrites(level: level, count: 4, rng: &rng) { try child.write(w.bytes, at: UInt64(w.offset)) }
            for l in child.chain { try l.close() }
            paths.append(path)
            level += 1
        }
        return paths
    }

    /// Every virtual byte of `path`, read through both stores (the local filesystem and the
    /// helper-process store), which must agree: after every kill and every operation, the chain reads
    /// the same through either implementation of the storage seam.
    static func readAll(_ path: FilePath) throws -> [UInt8] {
        let local = try read(path, in: LocalFileSystem())
        let remote = try read(path, in: try helper.get())
        guard local == remote else {
            throw TestFailure("\(path.string) reads differently through the helper-process store (\(local.count) and \(remote.count) bytes, first difference at \(zip(local, remote).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(local.count, remote.count)))")
        }
        return local
    }

    /// One helper process serves every read of the test run.
    static let helper = Result { try StoreKind.helperProcess.space() }

    static func read(_ path: FilePath, in space: any StoreSpace) throws -> [UInt8] {
        let chain = try DiskChain.open(path, in: space)
        defer { try? chain.close() }
        return try chain.leaf.read(count: Int(chain.leaf.virtualSize), at: 0)
    }

    /// Runs the CLI, sends SIGKILL after `delay` microseconds; whether the kill hit a running process.
    static func runKilled(_ arguments: [String], after delay: UInt32, slowIO: Int) throws -> (killed: Bool, status: Int32, err: String) {
        try KilledRun.run(arguments, after: delay, environment: ["BULWARK_TEST_SLOW_IO": "\(slowIO)"])
    }

    /// How long one uninterrupted run takes (microseconds), to spread kills over it.
    static func duration(_ arguments: [String], slowIO: Int) throws -> UInt32 {
        let (span, r) = try KilledRun.duration(arguments, environment: ["BULWARK_TEST_SLOW_IO": "\(slowIO)"])
        #expect(r.status == 0, "\(arguments): \(r.err)")
        return span
    }

    /// Byte-wise equality through memcmp (fast in debug builds).
    static func same(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        a.count == b.count && a.withUnsafeBytes { pa in b.withUnsafeBytes { pb in
            a.isEmpty || memcmp(pa.baseAddress!, pb.baseAddress!, a.count) == 0
        } }
    }

    /// Whether `a[from...]` is all zeros.
    static func zeros(_ a: [UInt8], from: Int) -> Bool {
        guard from < a.count else { return true }
        return a.withUnsafeBytes { p in
            p[from] == 0 && (from + 1 == a.count || memcmp(p.baseAddress! + from, p.baseAddress! + from + 1, a.count - from - 1) == 0)
        }
    }

    static func bytes(_ path: FilePath) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path.string)) }

    static func partials(in dir: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.contains(".partial-") }
    }
}
