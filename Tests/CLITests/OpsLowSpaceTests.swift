import Foundation
import SystemPackage
import Testing
import TestSupport
import VirtualDisk

/// Merge and convert into a nearly full filesystem (a loop-mounted 32 MiB ext4) are refused before
/// anything is written, with the figures in the message.
@Suite(.serialized) struct OpsLowSpaceTests {
    /// A mounted 32 MiB ext4 filesystem, unmounted when done.
    final class SmallFilesystem {
        let dir: TempDir
        let mountPoint: String
        init() throws {
            dir = try TempDir("ops-lowspace")
            let image = dir.file("fs.img")
            mountPoint = dir.file("mnt")
            try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
            try runChecked(OpsLowSpaceTests.tool("truncate"), ["-s", "32M", image])
            try runChecked(OpsLowSpaceTests.tool("mkfs.ext4"), ["-q", "-F", image])
            try runChecked(OpsLowSpaceTests.tool("mount"), ["-o", "loop", image, mountPoint])
        }
        deinit { _ = try? run(OpsLowSpaceTests.tool("umount"), [mountPoint]) }
        var files: [String] { ((try? FileManager.default.contentsOfDirectory(atPath: mountPoint)) ?? []).filter { $0 != "lost+found" }.sorted() }
    }

    /// A system program by absolute path (the test runner's PATH may lack the system folders).
    static func tool(_ name: String) -> String {
        for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] where FileManager.default.isExecutableFile(atPath: "\(dir)/\(name)") {
            return "\(dir)/\(name)"
        }
        return name
    }

    func prerequisites() throws -> Bool {
        try TestEnv.prerequisite(TestEnv.isRoot, "root (loop mounts)")
            && TestEnv.tools(Self.tool("mkfs.ext4"), Self.tool("mount"), Self.tool("umount"), Self.tool("truncate"))
    }

    @Test func convertIsRefusedUpFront() throws {
        guard try prerequisites() else { return }
        let fs = try SmallFilesystem()
        let dir = try TempDir("ops-lowspace-src")
        let src = dir.file("big.img")
        let image = try DiskImages.create(at: FilePath(src), options: CreateOptions(format: .raw, type: .dynamic, virtualSize: 64 << 20))
        var rng = SeededRandom(seed: 131)
        try image.write(rng.bytes(40 << 20), at: 8 << 20)
        try image.close()
        let available = try FileSystemSpace.available(at: FilePath(fs.mountPoint))
        for (format, type) in [(DiskFormat.raw, DiskType.dynamic), (.raw, .fixed), (.vhd, .dynamic), (.vhdx, .dynamic), (.vhdx, .fixed)] {
            let dst = fs.mountPoint + "/" + OpsCLI.name("out", format)
            let r = try run(TestEnv.bulwark, ["disk", "convert", src, dst, "--type", type.rawValue])
            #expect(r.status == 1, "\(format) \(type): \(r.out)")
            #expect(r.err.contains("not enough free space"), "\(r.err)")
            #expect(r.err.contains("\(available) bytes") || r.err.contains("bytes) are free"), "\(r.err)")
            #expect(fs.files.isEmpty, "nothing written: \(fs.files)")
        }
        #expect(throws: DiskError.self) {
            try ConvertOperation.convert(source: FilePath(src), destination: FilePath(fs.mountPoint + "/x.img"))
        }
        // A conversion that fits still works there.
        let small = dir.file("small.img")
        try DiskImages.create(at: FilePath(small), options: CreateOptions(format: .raw, type: .dynamic, virtualSize: 4 << 20)).close()
        try runChecked(TestEnv.bulwark, ["disk", "convert", small, fs.mountPoint + "/small.img"])
    }

    @Test(arguments: [DiskFormat.vhd, .vhdx])
    func mergeIsRefusedUpFront(format: DiskFormat) throws {
        guard try prerequisites() else { return }
        let fs = try SmallFilesystem()
        let base = fs.mountPoint + "/" + OpsCLI.name("base", format)
        let child = fs.mountPoint + "/" + OpsCLI.name("child", format)
        try DiskImages.create(at: FilePath(base), options: CreateOptions(format: format, type: .dynamic, virtualSize: 64 << 20,
                                                                          blockSize: OpsCLI.blockSize(format))).close()
        let image = try DiskImages.create(at: FilePath(child), options: CreateOptions(format: format, type: .differencing,
                                                                                     blockSize: OpsCLI.blockSize(format), parentPath: FilePath(base)))
        var rng = SeededRandom(seed: 137)
        try image.write(rng.bytes(16 << 20), at: 0)
        for l in image.chain { try l.close() }
        let before = try [base, child].map { try Data(contentsOf: URL(fileURLWithPath: $0)) }
        let r = try run(TestEnv.bulwark, ["disk", "merge", child])
        #expect(r.status == 1)
        #expect(r.err.contains("not enough free space"), "\(r.err)")
        #expect(r.err.contains(base), "the message names the ancestor: \(r.err)")
        #expect(try [base, child].map { try Data(contentsOf: URL(fileURLWithPath: $0)) } == before, "nothing written")
        #expect(fs.files == [OpsCLI.name("base", format), OpsCLI.name("child", format)].sorted(), "no merge record: \(fs.files)")
    }
}
