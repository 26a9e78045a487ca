import Foundation
import Glibc
import ShadowCopy
import SystemPackage
import Testing
import TestSupport
import VirtualDisk
import Storage

extension ShadowCopyTests {
    @Suite struct FreezeAndProviders {
        @Test func fifreezeBlocksWritesUntilTheThaw() async throws {
            guard try realPrerequisites("fsfreeze") else { return }
            let volume = try LoopVolume("ext4", size: "32M")
            defer { volume.cleanup() }
            let state = try TempDir("bulwark-state"), out = try TempDir("bulwark-out")
            let disk = out.file("disk.raw")
            let data = try makeDisk(disk, size: 2 << 20)
            let observed = Observed()
            let result = try await coordinator(state).snapshot(SnapshotRequest(
                writers: [FilesystemFreezeWriter(mountpoint: volume.mountpoint)],
                provider: FrozenProbeProvider(volume: volume, observed: observed), disks: [disk], outputDirectory: out.path))
            #expect(observed.get == false, "a write into the frozen volume completed")
            // The write blocked during the hold goes through after the thaw.
            var landed = false
            for _ in 0..<200 where !landed { landed = FileManager.default.fileExists(atPath: volume.file("while-frozen")); usleep(10_000) }
            #expect(landed)
            #expect(result.consistency == .applicationConsistent)
            #expect(result.writers[0].froze && result.writers[0].state == .stable)
            #expect(try Data(contentsOf: URL(fileURLWithPath: result.copies[0])) == data)
        }

        @Test func refusesToFreezeTheRootFilesystem() async throws {
            #expect(FilesystemFreezer.refusal("/") != nil)
            #expect(FilesystemFreezer.refusal("/usr") != nil || Paths_device("/usr") != Paths_device("/"))
            #expect(throws: ShadowCopyError.self) { try FilesystemFreezer.freeze("/") }
            let state = try TempDir("bulwark-state"), out = try TempDir("bulwark-out")
            let disk = out.file("disk.raw")
            _ = try makeDisk(disk, size: 4096)
            do {
                _ = try await coordinator(state).snapshot(SnapshotRequest(
                    writers: [FilesystemFreezeWriter(mountpoint: "/")], provider: CopyProvider(), disks: [disk], outputDirectory: out.path))
                Issue.record("freezing / was not refused")
            } catch let failure as SnapshotFailure {
                guard case .refusedToFreeze = failure.cause else { Issue.record("wrong cause \(failure.cause)"); return }
                #expect(failure.result.writers[0].froze == false)
                #expect(failure.result.writers[0].lastError == .nonRetryable)
            }
        }

        @Test(arguments: ["xfs", "btrfs"])
        func reflinkCopiesInstantlyOnReflinkFilesystems(fs: String) async throws {
            guard try realPrerequisites(fs == "xfs" ? "mkfs.xfs" : "mkfs.btrfs") else { return }
            let volume = try LoopVolume(fs, size: "160M")
            defer { volume.cleanup() }
            let state = try TempDir("bulwark-state")
            let disk = volume.file("guest.raw")
            let data = try makeDisk(disk, size: 48 << 20, seed: 7)
            try FileManager.default.createDirectory(atPath: volume.file("snaps"), withIntermediateDirectories: true)
            _ = try runChecked(sys("sync"), [])
            let freeBefore = try LocalFileSystem.available(at: FilePath(volume.mountpoint))
            let result = try await coordinator(state).snapshot(SnapshotRequest(
                writers: [], provider: ReflinkProvider(), disks: [disk], outputDirectory: volume.file("snaps")))
            _ = try runChecked(sys("sync"), [])
            let freeAfter = try LocalFileSystem.available(at: FilePath(volume.mountpoint))
            #expect(result.consistency == .crashConsistent)  // no writers
            #expect(try Data(contentsOf: URL(fileURLWithPath: result.copies[0])) == data)
            // Shared extents: the 48 MiB copy took (almost) no space.
            #expect(freeBefore &- freeAfter < 8 << 20 || freeAfter >= freeBefore, "copy used \(Int64(freeBefore) - Int64(freeAfter)) bytes")
            // The copy is independent: changing the disk leaves it alone.
            let f = try BlockFile.open(FilePath(disk), writable: true)
            try f.write([UInt8](repeating: 0xEE, count: 4096), at: 0)
            try f.close()
            #expect(try Data(contentsOf: URL(fileURLWithPath: result.copies[0])) == data)
        }

        @Test func reflinkOnExt4FailsClearlyBeforeFreezing() async throws {
            guard try realPrerequisites("fsfreeze") else { return }
            let volume = try LoopVolume("ext4", size: "32M")
            defer { volume.cleanup() }
            let frozenVolume = try LoopVolume("ext4", size: "32M")
            defer { frozenVolume.cleanup() }
            let state = try TempDir("bulwark-state")
            let disk = volume.file("guest.raw")
            _ = try makeDisk(disk, size: 1 << 20)
            do {
                _ = try await coordinator(state).snapshot(SnapshotRequest(
                    writers: [FilesystemFreezeWriter(mountpoint: frozenVolume.mountpoint)],
                    provider: ReflinkProvider(), disks: [disk], outputDirectory: volume.mountpoint))
                Issue.record("reflink on ext4 succeeded")
            } catch let failure as SnapshotFailure {
                guard case let .reflinkUnsupported(_, _, reason) = failure.cause else { Issue.record("wrong cause \(failure.cause)"); return }
                #expect(reason.contains("ext4") && reason.contains("FICLONE") && reason.contains("EOPNOTSUPP"))
                #expect(failure.result.writers[0].froze == false)
                #expect(failure.result.writers[0].state == .stable)
            }
            #expect(frozenVolume.writeCompletes(within: 2))
            #expect(try WriterStateStore(directory: state.path).load().first?.state == .stable)
        }

        @Test func differencingOnVHDMakesANewLeafAndKeepsThePointInTime() async throws {
            try await differencing(.vhd)
        }

        @Test func differencingOnVHDXMakesANewLeafAndKeepsThePointInTime() async throws {
            try await differencing(.vhdx)
        }

        func differencing(_ format: DiskFormat) async throws {
            let dir = try TempDir("bulwark-diff"), state = try TempDir("bulwark-state")
            let base = dir.file("guest.\(format.rawValue)")
            let image = try DiskImages.create(at: FilePath(base), options: CreateOptions(format: format, type: .dynamic, virtualSize: 16 << 20))
            let before = [UInt8](repeating: 0xA1, count: 1 << 20)
            try image.write(before, at: 1 << 20)
            try image.close()
            let result = try await coordinator(state).snapshot(SnapshotRequest(
                writers: [], provider: DifferencingProvider(), disks: [base], outputDirectory: dir.path))
            #expect(result.copies == [FileOps.canonical(FilePath(base)).string])
            let leaf = try #require(result.newLeaves.first)
            #expect(leaf.hasSuffix(format == .vhdx ? ".avhdx" : ".avhd"))
            #expect(try DiskImages.detectFormat(FilePath(leaf)) == format)
            // An independent reader (libvhdi) opens the new child through its parent.
            if try TestEnv.prerequisite(TestEnv.pyvhdiAvailable(), "pyvhdi in /usr/bin/python3") {
                let script = "import pyvhdi,sys\np=pyvhdi.file(); p.open(sys.argv[1]); f=pyvhdi.file(); f.open(sys.argv[2]); f.set_parent(p)\nf.seek(1<<20); sys.stdout.write(f.read(8).hex())"
                let r = try runChecked("/usr/bin/python3", ["-c", script, base, leaf])
                #expect(r.out == "a1a1a1a1a1a1a1a1")
            }
            // The guest now writes to the child; the point-in-time image keeps the old bytes.
            let child = try DiskChain.open(FilePath(leaf), writable: true)
            #expect(child.leaf.type == .differencing)
            #expect(try child.leaf.read(count: before.count, at: 1 << 20) == before)
            try child.leaf.write([UInt8](repeating: 0xB2, count: 4096), at: 1 << 20)
            try child.leaf.flush()
            #expect(try child.leaf.read(count: 4096, at: 1 << 20) == [UInt8](repeating: 0xB2, count: 4096))
            try child.leaf.chain.forEach { try $0.close() }
            let point = try DiskImages.openLevel(FilePath(base))
            #expect(try point.read(count: before.count, at: 1 << 20) == before)
            try point.close()
            // A raw disk is refused before anything happens.
            let raw = dir.file("guest.raw")
            _ = try makeDisk(raw, size: 4096)
            await #expect(throws: SnapshotFailure.self) {
                _ = try await coordinator(state).snapshot(SnapshotRequest(
                    writers: [], provider: DifferencingProvider(), disks: [raw], outputDirectory: dir.path))
            }
        }
    }
}

func Paths_device(_ path: String) -> UInt64? {
    var st = stat()
    return stat(path, &st) == 0 ? UInt64(st.st_dev) : nil
}
