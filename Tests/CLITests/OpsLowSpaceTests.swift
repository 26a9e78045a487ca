import Foundation
import SystemPackage
import Testing
import TestSupport
import VirtualDisk
import Storage

/// Merge and convert into a nearly full filesystem (a loop-mounted 32 MiB ext4) are refused before
/// anything is written, with the figures in the message.
@Suite(.serialized) struct OpsLowSpaceTests {
    func prerequisites() throws -> Bool {
        try TestEnv.prerequisite(TestEnv.isRoot, "root (loop mounts)")
            && TestEnv.tools(sys("mkfs.ext4"), sys("mount"), sys("umount"), sys("truncate"))
    }

    @Test func convertIsRefusedUpFront() throws {
        guard try prerequisites() else { return }
        let fs = try LoopVolume("ext4", size: "32M")
        let dir = try TempDir("ops-lowspace-src")
        let src = dir.file("big.img")
        let image = try DiskImages.create(at: FilePath(src), options: CreateOptions(format: .raw, type: .dynamic, virtualSize: 64 << 20))
        var rng = SeededRandom(seed: 131)
        try image.write(rng.bytes(40 << 20), at: 8 << 20)
        try image.close()
        let available = try LocalFileSystem.available(at: FilePath(fs.mountpoint))
        for (format, type) in [(DiskFormat.raw, DiskType.dynamic), (.raw, .fixed), (.vhd, .dynamic), (.vhdx, .dynamic), (.vhdx, .fixed)] {
            let dst = fs.mountpoint + "/" + OpsCLI.name("out", format)
            let r = try run(TestEnv.bulwark, ["disk", "convert", src, dst, "--type", type.rawValue])
            #expect(r.status == Exit.noSpace, "\(format) \(type): \(r.out)")
            #expect(r.err.contains("not enough free space"), "\(r.err)")
            #expect(r.err.contains("\(available) bytes") || r.err.contains("bytes) are free"), "\(r.err)")
            #expect(fs.files.isEmpty, "nothing written: \(fs.files)")
        }
        #expect(throws: StorageError.self) {
            try ConvertOperation.convert(source: FilePath(src), destination: FilePath(fs.mountpoint + "/x.img"))
        }
        // A conversion that fits still works there.
        let small = dir.file("small.img")
        try DiskImages.create(at: FilePath(small), options: CreateOptions(format: .raw, type: .dynamic, virtualSize: 4 << 20)).close()
        try runChecked(TestEnv.bulwark, ["disk", "convert", small, fs.mountpoint + "/small.img"])
    }

    @Test(arguments: [DiskFormat.vhd, .vhdx])
    func mergeIsRefusedUpFront(format: DiskFormat) throws {
        guard try prerequisites() else { return }
        let fs = try LoopVolume("ext4", size: "32M")
        let base = fs.mountpoint + "/" + OpsCLI.name("base", format)
        let child = fs.mountpoint + "/" + OpsCLI.name("child", format)
        try DiskImages.create(at: FilePath(base), options: CreateOptions(format: format, type: .dynamic, virtualSize: 64 << 20,
                                                                          blockSize: OpsCLI.blockSize(format))).close()
        let image = try DiskImages.create(at: FilePath(child), options: CreateOptions(format: format, type: .differencing,
                                                                                     blockSize: OpsCLI.blockSize(format), parentPath: FilePath(base)))
        var rng = SeededRandom(seed: 137)
        try image.write(rng.bytes(16 << 20), at: 0)
        for l in image.chain { try l.close() }
        let before = try [base, child].map { try Data(contentsOf: URL(fileURLWithPath: $0)) }
        let r = try run(TestEnv.bulwark, ["disk", "merge", child])
        #expect(r.status == Exit.noSpace)
        #expect(r.err.contains("not enough free space"), "\(r.err)")
        #expect(r.err.contains(base), "the message names the ancestor: \(r.err)")
        #expect(try [base, child].map { try Data(contentsOf: URL(fileURLWithPath: $0)) } == before, "nothing written")
        #expect(fs.files == [OpsCLI.name("base", format), OpsCLI.name("child", format)].sorted(), "no merge record: \(fs.files)")
    }
}
