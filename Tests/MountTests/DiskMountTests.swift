import Foundation
import Glibc
import Mount
import Layout
import Storage
import SystemPackage
import Testing
import TestSupport
import VirtualDisk

// MARK: fixtures

/// A 3-level differencing VHDX chain whose base holds a GPT with one ext4 partition (`data`, 30 MiB at
/// 1 MiB) made with sfdisk and mkfs.ext4 -d. The middle level rewrites the partition with a second
/// filesystem (other files), the leaf writes random bytes past the partition: reading the leaf needs
/// every level.
final class MountChain: @unchecked Sendable {
    let dir: TempDir
    let leaf: String
    let expected: String
    /// The files of the filesystem the leaf shows in part1, name to content.
    let files: [String: Data]

    /// An ext4 image of 30 MiB holding `contents` (mkfs.ext4 -d).
    static func filesystem(_ name: String, _ contents: [String: Data], in dir: TempDir) throws -> String {
        let tree = dir.file("\(name)-tree")
        try FileManager.default.createDirectory(atPath: tree, withIntermediateDirectories: true)
        for (file, data) in contents { try data.write(to: URL(fileURLWithPath: tree + "/" + file)) }
        let image = dir.file("\(name).ext4")
        try runChecked(sys("truncate"), ["-s", "30M", image])
        try runChecked(sys("mkfs.ext4"), ["-q", "-d", tree, image])
        return image
    }

    init() throws {
        let dir = try TempDir("bulwark-mount")
        self.dir = dir
        let raw = dir.file("raw.img")
        try runChecked(sys("truncate"), ["-s", "64M", raw])
        try runChecked(sys("sfdisk"), ["-q", raw], input: Data("label: gpt\nstart=2048, size=61440, type=L, name=\"data\"\n".utf8))
        var rng = SeededRandom(seed: 7)
        let v1 = try Self.filesystem("v1", ["old.txt": Data("first version\n".utf8), "big.bin": Data(rng.bytes(700_000))], in: dir)
        try runChecked(sys("dd"), ["if=\(v1)", "of=\(raw)", "bs=1M", "seek=1", "conv=notrunc", "status=none"])
        let base = dir.file("base.vhdx"), middle = dir.file("middle.avhdx")
        let leaf = dir.file("leaf.avhdx")
        self.leaf = leaf
        try runChecked(TestEnv.bulwark, ["disk", "convert", raw, base])
        try runChecked(TestEnv.bulwark, ["disk", "create", middle, "--parent", base])
        let files: [String: Data] = ["new.txt": Data("second version\n".utf8), "data.bin": Data(rng.bytes(1_500_000)),
                 "notes.md": Data(String(repeating: "line\n", count: 5000).utf8)]
        self.files = files
        let v2 = try Self.filesystem("v2", files, in: dir)
        try runChecked(TestEnv.bulwark, ["disk", "write", middle, "--offset", "1M", "--input", v2])
        try runChecked(TestEnv.bulwark, ["disk", "create", leaf, "--parent", middle])
        let tail = dir.file("tail.bin")
        try Data(rng.bytes(1 << 20)).write(to: URL(fileURLWithPath: tail))
        try runChecked(TestEnv.bulwark, ["disk", "write", leaf, "--offset", "40M", "--input", tail])
        let expected = dir.file("expected.img")
        try runChecked(TestEnv.bulwark, ["disk", "read", leaf, "--output", expected])
        self.expected = expected
    }
}

/// Whether anything is mounted at `path` (/proc/mounts, escapes decoded).
func mounted(_ path: String) -> Bool {
    let canonical = LocalFileSystem().canonical(FilePath(path)).string
    return DiskMount.mountTable().contains { $0.mountpoint == path || $0.mountpoint == canonical }
}

func sameBytes(_ a: String, _ b: String) throws -> Bool {
    try run(sys("cmp"), [a, b]).status == 0
}

/// Opening `path` for writing fails, with EROFS or EACCES.
func writeRefused(_ path: String) -> Bool {
    let fd = open(path, O_WRONLY)
    if fd >= 0 {
        close(fd)
        return false
    }
    return errno == EROFS || errno == EACCES
}

/// Loop-mounts `image` read-only on a new folder, runs `body`, unmounts (and detaches the loop device).
func withLoopMount<T>(_ image: String, in dir: TempDir, _ body: (String) throws -> T) throws -> T {
    let mnt = dir.file("loop-\(UUID().uuidString.prefix(6))")
    try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
    try runChecked(sys("mount"), ["-o", "ro,loop", image, mnt])
    defer { _ = try? run(sys("umount"), [mnt]) }
    return try body(mnt)
}

func fusePrerequisites() throws -> Bool {
    guard try TestEnv.prerequisite(TestEnv.isRoot, "root (FUSE mounts and loop devices)") else { return false }
    guard try TestEnv.prerequisite(access("/dev/fuse", R_OK | W_OK) == 0, "/dev/fuse") else { return false }
    return try TestEnv.tools("sfdisk", "mkfs.ext4", "losetup")
}

// MARK: the library

@Suite(.serialized) struct DiskMountTests {
    /// Served from the local files, and from a store whose every byte comes from a helper process
    /// through a pipe (as a chain on a target's share will be).
    @Test(arguments: StoreKind.allCases) func chainAndPartitionThroughFUSE(store: StoreKind) throws {
        guard try fusePrerequisites() else { return }
        let chain = try MountChain()
        let mnt = chain.dir.file("mnt")
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        let mount = try DiskMount.mount(image: FilePath(chain.leaf), in: try store.space(), at: FilePath(mnt))
        defer { try? mount.unmount(lazy: true) }
        #expect(mounted(mnt))
        #expect(mount.table.scheme == .gpt)
        #expect(mount.files.map(\.name) == ["disk", "part1"])
        #expect(mount.files[1].offset == UInt64(1 << 20))
        #expect(mount.files[1].size == UInt64(30 << 20))
        #expect(mount.files[1].partition?.name == "data")
        #expect(try FileManager.default.contentsOfDirectory(atPath: mnt).sorted() == ["disk", "part1"])

        // disk: byte for byte what `bulwark disk read` reads through the chain.
        let attributes = try FileManager.default.attributesOfItem(atPath: mnt + "/disk")
        #expect((attributes[.size] as? NSNumber)?.uint64Value == UInt64(64 << 20))
        #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o444)
        #expect(try sameBytes(mnt + "/disk", chain.expected))

        // part1: the partition's bytes, an ext4 filesystem with the middle level's files.
        try withLoopMount(mnt + "/part1", in: chain.dir) { fs in
            for (name, data) in chain.files {
                #expect(FileManager.default.contents(atPath: fs + "/" + name) == data, "\(name)")
            }
            #expect(!FileManager.default.fileExists(atPath: fs + "/old.txt"))
        }

        // Read-only: no write, truncate, create or remove.
        #expect(writeRefused(mnt + "/disk"))
        #expect(writeRefused(mnt + "/part1"))
        #expect(open(mnt + "/new", O_WRONLY | O_CREAT, 0o644) < 0 && (errno == EROFS || errno == EACCES))
        #expect(unlink(mnt + "/part1") != 0 && errno == EROFS)

        // A second mount on the same folder is refused (it names what is there).
        #expect(throws: MountError.alreadyMounted(path: mnt, fstype: DiskMount.fsType)) {
            try DiskMount.mount(image: FilePath(chain.leaf), in: try store.space(), at: FilePath(mnt))
        }

        // No writer changes the chain under the view (local files): busy, status 5, naming the level.
        let patch = chain.dir.file("patch.bin")
        try Data(repeating: 0xA5, count: 4096).write(to: URL(fileURLWithPath: patch))
        if store == .local {
            let write = try run(TestEnv.bulwark, ["disk", "write", chain.leaf, "--offset", "0", "--input", patch])
            #expect(write.status == 5, "\(write.err)")
            #expect(write.err.contains(chain.leaf))
            #expect(try sameBytes(mnt + "/disk", chain.expected))
        }

        try mount.unmount()
        #expect(mount.isFinished)
        #expect(!mounted(mnt))
        // Unmounted: the chain is free again.
        try runChecked(TestEnv.bulwark, ["disk", "write", chain.leaf, "--offset", "0", "--input", patch])
        #expect(DiskMount.mountTable().allSatisfy { $0.fstype != DiskMount.fsType || !$0.source.contains(chain.leaf) })
    }

    /// Anything readable can be served: here bytes in memory holding an MBR with a primary and two
    /// logical partitions (how a chain on a target's store will be served).
    @Test func servesAnyMountableDisk() throws {
        guard try fusePrerequisites() else { return }
        let dir = try TempDir("bulwark-mount-mem")
        let raw = dir.file("mbr.img")
        try runChecked(sys("truncate"), ["-s", "16M", raw])
        try runChecked(sys("sfdisk"), ["-q", raw], input: Data("label: dos\nstart=2048, size=4096, type=83\nstart=8192, type=5\nstart=10240, size=2048, type=83\nstart=14336, size=4096, type=7\n".utf8))
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: raw)))
        var rng = SeededRandom(seed: 11)
        let marks = [(2048, "p1"), (10240, "p5"), (14336, "p6")]
        for (sector, _) in marks { bytes.replaceSubrange(sector * 512..<sector * 512 + 4096, with: rng.bytes(4096)) }
        let disk = MemoryDisk(bytes)
        let mnt = dir.file("mnt")
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        let mount = try DiskMount.mount(disk: disk, at: FilePath(mnt))
        defer { try? mount.unmount(lazy: true) }
        #expect(mount.table.scheme == .mbr)
        #expect(mount.files.map(\.name) == ["disk", "part1", "part5", "part6"])
        for (sector, name) in marks {
            let file = "part" + name.dropFirst()
            let data = FileManager.default.contents(atPath: mnt + "/" + file)
            #expect(data.map { Array($0.prefix(4096)) } == Array(bytes[sector * 512..<sector * 512 + 4096]), "\(file)")
        }
        #expect(FileManager.default.contents(atPath: mnt + "/disk").map { [UInt8]($0) } == bytes)
        try mount.unmount()
        #expect(disk.closed)
        #expect(!mounted(mnt))
    }

    @Test func missingFolderIsRefusedBeforeMounting() throws {
        guard try fusePrerequisites() else { return }
        let dir = try TempDir("bulwark-mount-missing")
        let missing = dir.file("no/such/folder")
        #expect(throws: MountError.mountpointMissing(path: missing)) {
            try DiskMount.mount(disk: MemoryDisk([UInt8](repeating: 0, count: 1 << 20)), at: FilePath(missing))
        }
        #expect(!DiskMount.mountTable().contains { $0.mountpoint.hasPrefix(dir.path) })
        #expect(throws: MountError.notMounted(path: dir.path)) { try DiskMount.unmount(at: FilePath(dir.path)) }
        #expect(throws: MountError.notBulwarkMount(path: "/proc", fstype: "proc")) { try DiskMount.unmount(at: FilePath("/proc")) }
    }
}

/// A disk in memory.
final class MemoryDisk: MountableDisk, @unchecked Sendable {
    let bytes: [UInt8]
    var closed = false
    init(_ bytes: [UInt8]) { self.bytes = bytes }
    var size: UInt64 { UInt64(bytes.count) }
    var sectorSize: Int { 512 }
    var name: String { "memory" }
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        bytes.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[Int(offset)..<Int(offset) + buffer.count])) }
    }
    func close() throws { closed = true }
}

// MARK: partition tables (no root)

@Suite struct PartitionTableTests {
    func table(_ path: String, sectorSize: Int = 512) throws -> PartitionTable {
        let data = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        return try PartitionTable.read(size: UInt64(data.count), sectorSize: sectorSize) { Array(data[Int($0)..<Int($0) + $1]) }
    }

    @Test func gptFromSfdisk() throws {
        guard try TestEnv.tools("sfdisk") else { return }
        let dir = try TempDir("bulwark-gpt")
        let raw = dir.file("gpt.img")
        try runChecked(sys("truncate"), ["-s", "32M", raw])
        try runChecked(sys("sfdisk"), ["-q", raw], input: Data("label: gpt\nstart=2048, size=8192, type=L, name=\"root fs\"\nstart=16384, size=4096, type=S\nstart=24576, size=2048, type=U, name=\"ESP\"\n".utf8))
        let t = try table(raw)
        #expect(t.scheme == .gpt)
        #expect(t.warnings.isEmpty)
        #expect(t.partitions.map(\.number) == [1, 2, 3])
        let offsets: [UInt64] = [2048, 16384, 24576].map { $0 * 512 }
        #expect(t.partitions.map(\.offset) == offsets)
        let lengths: [UInt64] = [8192, 4096, 2048].map { $0 * 512 }
        #expect(t.partitions.map(\.length) == lengths)
        #expect(t.partitions.map(\.name) == ["root fs", "", "ESP"])
        #expect(t.partitions[0].type == "0FC63DAF-8483-4772-8E79-3D69D8477DE4")
        #expect(t.partitions[2].type == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B")

        // A damaged primary header: the backup at the last sector serves, with a warning.
        let fd = open(raw, O_WRONLY)
        #expect(pwrite(fd, "garbage!", 8, 512 + 20) == 8)
        close(fd)
        let damaged = try table(raw)
        #expect(damaged.partitions == t.partitions)
        #expect(damaged.warnings.count == 1 && damaged.warnings[0].contains("primary GPT header"))
    }

    @Test func mbrWithLogicalPartitions() throws {
        guard try TestEnv.tools("sfdisk") else { return }
        let dir = try TempDir("bulwark-mbr")
        let raw = dir.file("mbr.img")
        try runChecked(sys("truncate"), ["-s", "32M", raw])
        try runChecked(sys("sfdisk"), ["-q", raw], input: Data("label: dos\nstart=2048, size=4096, type=83\nstart=8192, size=4096, type=82\nstart=16384, type=5\nstart=18432, size=2048, type=83\nstart=22528, size=4096, type=7\n".utf8))
        let t = try table(raw)
        #expect(t.scheme == .mbr)
        #expect(t.partitions.map(\.number) == [1, 2, 5, 6])
        let offsets: [UInt64] = [2048, 8192, 18432, 22528].map { $0 * 512 }
        #expect(t.partitions.map(\.offset) == offsets)
        let lengths: [UInt64] = [4096, 4096, 2048, 4096].map { $0 * 512 }
        #expect(t.partitions.map(\.length) == lengths)
        #expect(t.partitions.map(\.type) == ["83", "82", "83", "07"])
        #expect(t.warnings.isEmpty)
    }

    @Test func noTableAndBrokenEntries() throws {
        var blank = [UInt8](repeating: 0, count: 1 << 20)
        let read: ([UInt8]) -> (UInt64, Int) throws -> [UInt8] = { d in { Array(d[Int($0)..<Int($0) + $1]) } }
        #expect(try PartitionTable.read(size: UInt64(blank.count), read(blank)).scheme == .none)
        // An MBR entry past the end of the disk is left out with a warning; an empty one is skipped.
        blank[510] = 0x55; blank[511] = 0xAA
        let entry = 446
        blank[entry + 4] = 0x83
        blank[entry + 8] = 0x00; blank[entry + 9] = 0x08            // start 2048
        blank[entry + 12] = 0x00; blank[entry + 13] = 0x00; blank[entry + 14] = 0x01 // 65536 sectors: 32 MiB
        let t = try PartitionTable.read(size: UInt64(blank.count), read(blank))
        #expect(t.scheme == .mbr && t.partitions.isEmpty && t.warnings.count == 1)
        // A protective MBR without a valid GPT header anywhere: no partitions, two warnings.
        blank[entry + 4] = 0xEE
        let g = try PartitionTable.read(size: UInt64(blank.count), read(blank))
        #expect(g.scheme == .gpt && g.partitions.isEmpty && g.warnings.count == 2)
    }
}
