import Foundation
import SystemPackage
import Testing
import TestSupport
import VirtualDisk
import Storage

/// On a filesystem with reflinks (xfs), convert into fixed images and merge share the levels' blocks
/// instead of reading and writing them; on ext4 they copy. Either way every byte lands in place and the
/// results check clean with Bulwark and qemu-img.
@Suite(.serialized) struct OpsReflinkTests {
    @Test(arguments: ["xfs", "ext4"])
    func mergeSharesBlocksWhereTheFilesystemCan(fs: String) throws {
        guard try TestEnv.prerequisite(TestEnv.isRoot, "root (loop mounts)"),
              try TestEnv.tools(sys("mkfs.\(fs)"), sys("mount"), sys("umount"), sys("truncate")) else { return }
        let volume = try LoopVolume(fs, size: "320M")
        defer { volume.cleanup() }
        let size: UInt64 = 96 << 20
        var rng = SeededRandom(seed: fs == "xfs" ? 5 : 6)
        var model = [UInt8](repeating: 0, count: Int(size))
        func write(_ image: any DiskImage, _ offset: Int, _ count: Int) throws {
            let data = rng.bytes(count)
            try image.write(data, at: UInt64(offset))
            model.replaceSubrange(offset..<offset + count, with: data)
        }
        // The base: 32 MiB blocks, the first two allocated (the merge lands there in place), the third not.
        let paths = ["base.vhdx", "child1.avhdx", "child2.avhdx"].map(volume.file)
        let base = try DiskImages.create(at: FilePath(paths[0]), options: CreateOptions(format: .vhdx, type: .dynamic, virtualSize: size))
        try write(base, 1 << 20, 1 << 20)
        try write(base, (40 << 20) + 512, 3 << 20)
        try base.close()
        // Two children (2 MiB blocks): whole blocks (shared on xfs) and odd runs (copied).
        for level in 1...2 {
            let child = try DiskImages.create(at: FilePath(paths[level]), options: CreateOptions(
                format: .vhdx, type: .differencing, parentPath: FilePath(paths[level - 1])))
            for block in stride(from: level, to: 48, by: 3) { try write(child, block * (2 << 20), 2 << 20) }
            try write(child, (70 << 20) + 4096 * level, 5000)
            try write(child, (20 << 20) - 700, 1400)
            for l in child.chain { try l.close() }
        }

        // Convert the chain into fixed images: the blocks the levels store are shared, the rest written.
        for (name, format) in [("flat.vhdx", "vhdx"), ("flat.img", "raw")] {
            let out = volume.file(name)
            let c = try run(TestEnv.bulwark, ["disk", "convert", paths[2], out, "--type", "fixed", "--json"])
            #expect(c.status == 0, "\(c.err)")
            let converted = try JSONDecoder().decode(ConvertResult.self, from: Data(c.out.utf8))
            if fs == "xfs" {
                #expect(converted.bytesCloned >= 20 << 20, "\(name): \(converted.bytesCloned) bytes shared")
            } else {
                #expect(converted.bytesCloned == 0)
            }
            let flat = try DiskImages.openLevel(FilePath(out))
            #expect(try flat.read(count: Int(size), at: 0) == model, "\(name)")
            try flat.close()
            if format == "vhdx", try TestEnv.tools("qemu-img") {
                #expect(try run("qemu-img", ["check", "-f", "vhdx", out]).status == 0)
            }
            try FileOps.remove(FilePath(out))
        }

        let r = try run(TestEnv.bulwark, ["disk", "merge", paths[2], "--into", paths[0], "--json"])
        #expect(r.status == 0, "\(r.err)")
        let result = try JSONDecoder().decode(MergeResult.self, from: Data(r.out.utf8))
        if fs == "xfs" {
            #expect(result.bytesCloned >= 20 << 20, "whole child blocks are shared: \(result.bytesCloned) bytes")
            #expect(result.bytesCloned < result.bytesCopied, "odd runs and unallocated base blocks are copied")
        } else {
            #expect(result.bytesCloned == 0)
        }
        #expect(volume.files == ["base.vhdx"])
        let merged = try DiskChain.open(FilePath(paths[0]))
        #expect(try merged.leaf.read(count: Int(size), at: 0) == model)
        try merged.close()
        #expect(try run(TestEnv.bulwark, ["disk", "check", paths[0]]).status == 0)
        if try TestEnv.tools("qemu-img") {
            #expect(try run("qemu-img", ["check", "-f", "vhdx", paths[0]]).status == 0)
        }
    }
}
