import Foundation
import Glibc
import ShadowCopy
import SystemPackage
import Testing
import TestSupport
import VirtualDisk
import Storage

extension ShadowCopyTests {
    /// A snapshot of a differencing disk is the whole chain, re-pointed at its own copies: it stands
    /// alone when the live chain changes or goes away.
    @Suite struct ChainCopy {
        /// base ← mid ← leaf in `dir`: 0xA1 at 1 MiB in the base, 0xB2 at 2 MiB in mid, 0xC3 at
        /// 3 MiB in the leaf.
        static func makeChain(_ dir: String, _ format: DiskFormat) throws -> (base: String, mid: String, leaf: String) {
            let ext = format.rawValue
            let base = dir + "/base.\(ext)", mid = dir + "/mid.\(ext)", leaf = dir + "/leaf.\(ext)"
            let image = try DiskImages.create(at: FilePath(base), options: CreateOptions(format: format, type: .dynamic, virtualSize: 16 << 20))
            try image.write([UInt8](repeating: 0xA1, count: 4096), at: 1 << 20)
            try image.close()
            for (path, parent, byte, at) in [(mid, base, UInt8(0xB2), UInt64(2 << 20)), (leaf, mid, 0xC3, 3 << 20)] {
                let child = try DiskImages.create(at: FilePath(path), options: CreateOptions(format: format, type: .differencing, parentPath: FilePath(parent)))
                try child.flush()
                for level in child.chain { try level.close() }
                let chain = try DiskChain.open(FilePath(path), writable: true)
                try chain.leaf.write([UInt8](repeating: byte, count: 4096), at: at)
                try chain.close()
            }
            return (base, mid, leaf)
        }

        static func expectSnapshotTimeBytes(_ path: String) throws {
            let chain = try DiskChain.open(FilePath(path))
            defer { try? chain.close() }
            #expect(try chain.leaf.read(count: 4096, at: 1 << 20) == [UInt8](repeating: 0xA1, count: 4096))
            #expect(try chain.leaf.read(count: 4096, at: 2 << 20) == [UInt8](repeating: 0xB2, count: 4096))
            #expect(try chain.leaf.read(count: 4096, at: 3 << 20) == [UInt8](repeating: 0xC3, count: 4096))
            let folder = FilePath(path).removingLastComponent().string
            for level in chain.levels {
                #expect(level.path.string.hasPrefix(folder + "/"), "\(level.path) is outside the snapshot")
            }
            #expect(chain.levels.count == 3)
        }

        func copyStandsAlone(_ format: DiskFormat, provider: String, in base: String? = nil) throws {
            let dir = try TempDir("bulwark-chain", under: base), state = try TempDir("bulwark-state")
            let (baseFile, mid, leaf) = try Self.makeChain(dir.path, format)
            try FileManager.default.createDirectory(atPath: dir.file("snaps"), withIntermediateDirectories: true)
            let r = try run(TestEnv.bulwark, ["snapshot", "create", "--disk", leaf, "--provider", provider,
                                              "--output", dir.file("snaps"), "--state-dir", state.path, "--json"])
            #expect(r.status == 0, "\(r.err)")
            let result = try JSONDecoder().decode(SnapshotResult.self, from: r.stdout)
            let copy = try #require(result.copies.first)
            #expect(Paths_baseName(copy) == "leaf.\(format.rawValue)")

            // The live chain changes, then goes away: the copy keeps the snapshot-time bytes.
            let live = try DiskChain.open(FilePath(leaf), writable: true)
            try live.leaf.write([UInt8](repeating: 0xEE, count: 4096), at: 3 << 20)
            try live.close()
            let parent = try DiskImages.openLevel(FilePath(baseFile), writable: true)
            try parent.write([UInt8](repeating: 0xEE, count: 4096), at: 1 << 20)
            try parent.close()
            try Self.expectSnapshotTimeBytes(copy)
            try FileManager.default.removeItem(atPath: mid)
            try FileManager.default.removeItem(atPath: baseFile)
            try Self.expectSnapshotTimeBytes(copy)
            let check = try run(TestEnv.bulwark, ["disk", "check", copy])
            #expect(check.status == 0, "disk check: \(check.out) \(check.err)")
            // An independent reader (libvhdi) reads the copied chain through its own locators.
            if try TestEnv.prerequisite(TestEnv.pyvhdiAvailable(), "pyvhdi in /usr/bin/python3") {
                let folder = FilePath(copy).removingLastComponent().string
                let script = """
                import pyvhdi,sys
                d=sys.argv[1]; e=sys.argv[2]
                f=[pyvhdi.file() for _ in range(3)]
                for x,n in zip(f,["base","mid","leaf"]): x.open("%s/%s.%s" % (d,n,e))
                f[1].set_parent(f[0]); f[2].set_parent(f[1])
                out=[]
                for at in (1<<20, 2<<20, 3<<20):
                    f[2].seek(at); out.append(f[2].read(1).hex())
                print(" ".join(out))
                """
                let v = try runChecked("/usr/bin/python3", ["-c", script, folder, format.rawValue])
                #expect(v.out.trimmingCharacters(in: .whitespacesAndNewlines) == "a1 b2 c3")
            }
        }

        @Test(arguments: [DiskFormat.vhd, .vhdx])
        func copyOfADifferencingDiskStandsAlone(format: DiskFormat) throws {
            try copyStandsAlone(format, provider: "copy")
        }

        @Test(arguments: [DiskFormat.vhd, .vhdx])
        func reflinkOfADifferencingDiskStandsAlone(format: DiskFormat) throws {
            guard try realPrerequisites("mkfs.xfs") else { return }
            let volume = try LoopVolume("xfs", size: "320M")
            defer { volume.cleanup() }
            let under = try TempDir("bulwark-xfs", under: volume.mountpoint)
            try copyStandsAlone(format, provider: "reflink", in: under.path)
        }

        /// The differencing provider puts the new live child in --output (a relative locator finds
        /// the parent), and the chain stays clean.
        @Test func differencingProviderHonoursOutput() throws {
            let dir = try TempDir("bulwark-chain"), state = try TempDir("bulwark-state")
            let (_, _, leaf) = try Self.makeChain(dir.path, .vhdx)
            let children = dir.file("children")
            let r = try run(TestEnv.bulwark, ["snapshot", "create", "--disk", leaf, "--provider", "differencing",
                                              "--output", children, "--state-dir", state.path, "--json"])
            #expect(r.status == 0, "\(r.err)")
            let result = try JSONDecoder().decode(SnapshotResult.self, from: r.stdout)
            let child = try #require(result.newLeaves.first)
            #expect(FilePath(child).removingLastComponent() == FileOps.canonical(FilePath(children)))
            let chain = try DiskChain.open(FilePath(child))
            #expect(chain.levels.count == 4)
            #expect(try chain.leaf.read(count: 4096, at: 3 << 20) == [UInt8](repeating: 0xC3, count: 4096))
            try chain.close()
            let check = try run(TestEnv.bulwark, ["disk", "check", child])
            #expect(check.status == 0, "disk check: \(check.out) \(check.err)")
        }
    }
}

func Paths_baseName(_ path: String) -> String { FilePath(path).lastComponent?.string ?? path }
