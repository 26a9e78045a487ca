import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Protection
import Storage
import SystemPackage
import Targets
import TestSupport
import VirtualDisk

/// A raw source disk, a target and a policy over them, with a byte model of the disk as it is now.
final class BackupBench: @unchecked Sendable {
    let dir: TempDir
    let source: String
    let targetPath: String
    let state: String
    let size: Int
    var model: [UInt8]
    var rng: SeededRandom
    var policyText: String
    var policyFile: String { dir.file("policy.yaml") }

    init(size: Int = 48 << 20, seed: UInt64 = 1, keep: String = "{last: 100}", extra: String = "") throws {
        dir = try TempDir("backup")
        source = dir.file("guest.img")
        targetPath = dir.file("target")
        state = dir.file("state")
        self.size = size
        model = [UInt8](repeating: 0, count: size)
        rng = SeededRandom(seed: seed)
        FileManager.default.createFile(atPath: source, contents: nil)
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: source))
        try h.truncate(atOffset: UInt64(size))
        try h.close()
        policyText = """
        name: bench
        machine: guest
        sources:
          - disk: \(source)
        consistency:
          provider: none
          allow-crash-consistent: true
        target: \(targetPath)
        keep: \(keep)
        \(extra)
        """
        try policyText.write(toFile: policyFile, atomically: true, encoding: .utf8)
    }

    var policy: Policy { get throws { try PolicyLoader.load(file: policyFile) } }
    var target: LocalDirectoryTarget { LocalDirectoryTarget(path: FilePath(targetPath)) }
    var points: RecoveryPoints { RecoveryPoints(target: target, machine: "guest") }

    /// Writes `bytes` into the source at `offset` (and the model).
    func write(_ bytes: [UInt8], at offset: Int) throws {
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: source))
        try h.seek(toOffset: UInt64(offset))
        try h.write(contentsOf: Data(bytes))
        try h.close()
        model.replaceSubrange(offset..<offset + bytes.count, with: bytes)
    }

    /// Random writes of assorted sizes at random places; returns the 4 MiB chunks whose content changed.
    @discardableResult
    func scribble(writes: Int, maxLength: Int = 300 << 10) throws -> Set<Int> {
        let before = model
        for _ in 0..<writes {
            let n = Int(rng.next() % UInt64(maxLength)) + 1
            let at = Int(rng.next() % UInt64(size - n))
            try write(rng.bytes(n), at: at)
        }
        return Self.changedChunks(before, model)
    }

    static func changedChunks(_ a: [UInt8], _ b: [UInt8]) -> Set<Int> {
        var out = Set<Int>()
        let c = 4 << 20
        // memcmp: element-wise slice comparison is slow in debug builds.
        a.withUnsafeBytes { pa in
            b.withUnsafeBytes { pb in
                for i in 0..<(a.count + c - 1) / c {
                    let start = i * c, n = min(a.count, (i + 1) * c) - start
                    if memcmp(pa.baseAddress! + start, pb.baseAddress! + start, n) != 0 { out.insert(i) }
                }
            }
        }
        return out
    }

    func backup(at date: Date, full: Bool = false) async throws -> BackupResult {
        try await BackupOperation.run(policy: policy, options: BackupOptions(forceFull: full, stateDirectory: FilePath(state), now: date,
                                                                            timeZone: TimeZone(identifier: "UTC")!))
    }

    /// The virtual disk a point reads, through Bulwark (the way verify and restore read it).
    func read(_ version: String) throws -> [UInt8] {
        let chain = try points.openDisk(version, disk: try points.manifest(version).disks[0])
        defer { try? chain.close() }
        return try chain.leaf.read(count: Int(chain.leaf.virtualSize), at: 0)
    }

    /// The chain files of a point, base first (for pyvhdi).
    func chainFiles(_ version: String) throws -> [FilePath] {
        var files: [FilePath] = []
        var v: String? = version
        while let current = v {
            files.insert(points.pointFolder(current).appending("disk0.vhdx"), at: 0)
            v = try points.manifest(current).parent
        }
        return files
    }
}

extension Date {
    static func day(_ n: Int, hour: Int = 23, minute: Int = 5) -> Date {
        // 2026-09-01T00:00:00Z plus n days.
        Date(timeIntervalSince1970: 1_788_220_800 + Double(n) * 86_400 + Double(hour) * 3600 + Double(minute) * 60)
    }
}
