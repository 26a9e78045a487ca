import Foundation
import Glibc
import ShadowCopy
import Testing
import TestSupport

extension ShadowCopyTests {
    /// The defaults of `snapshot create`: the provider is chosen for the filesystem and named, the
    /// output folder is made and checked before anything is frozen, and a copy without writers is
    /// announced as crash-consistent.
    @Suite struct ProviderChoice {
        @Test(arguments: ["ext4", "xfs"])
        func autoProviderFitsTheFilesystemAndSaysWhichItUsed(fs: String) async throws {
            guard try realPrerequisites(fs == "xfs" ? "mkfs.xfs" : "mkfs.ext4") else { return }
            let volume = try LoopVolume(fs, size: "64M")
            defer { volume.cleanup() }
            let state = try TempDir("bulwark-state")
            let disk = volume.file("guest.raw")
            let data = try makeDisk(disk, size: 1 << 20)
            let output = volume.file("snaps/new")  // missing: made by the snapshot
            let r = try run(TestEnv.bulwark, ["snapshot", "create", "--disk", disk, "--output", output,
                                              "--state-dir", state.path, "--json"])
            #expect(r.status == 0, "\(r.err)")
            let result = try JSONDecoder().decode(SnapshotResult.self, from: r.stdout)
            #expect(result.provider == (fs == "xfs" ? "reflink" : "copy"))
            #expect(result.providerChoice?.isEmpty == false)
            #expect(result.output?.filesystem == fs && result.output?.created == true)
            #expect(try Data(contentsOf: URL(fileURLWithPath: result.copies[0])) == data)
            #expect(result.consistency == .crashConsistent)
            #expect(result.warnings.contains { $0.contains("no writer") && $0.contains("crash-consistent") })
            #expect(r.err.contains("warning: no writer given"), "\(r.err)")

            let text = try run(TestEnv.bulwark, ["snapshot", "create", "--disk", disk, "--output", output, "--state-dir", state.path])
            #expect(text.status == 0, "\(text.err)")
            #expect(text.out.contains("provider: \(fs == "xfs" ? "reflink" : "copy") (auto: "), "\(text.out)")
            #expect(text.out.contains("output: ") && text.out.contains("(\(fs))"), "\(text.out)")
            #expect(text.err.contains("warning: no writer given") && text.err.contains("crash-consistent"), "\(text.err)")
        }

        /// An output folder on a read-only filesystem fails the snapshot before any writer is
        /// frozen (even before the hook is asked to freeze), naming the folder and the cause.
        @Test func unusableOutputFolderFailsBeforeAnyFreeze() async throws {
            guard try realPrerequisites("fsfreeze") else { return }
            let frozen = try LoopVolume("ext4", size: "32M")
            defer { frozen.cleanup() }
            let readOnly = try LoopVolume("ext4", size: "32M")
            defer { readOnly.cleanup() }
            try FileManager.default.createDirectory(atPath: readOnly.file("snaps"), withIntermediateDirectories: true)
            try runChecked(sys("mount"), ["-o", "remount,ro", readOnly.mountpoint])
            let state = try TempDir("bulwark-state"), work = try TempDir("bulwark-work")
            let disk = work.file("disk.raw")
            _ = try makeDisk(disk, size: 64 << 10)
            let hook = work.file("hook.sh")
            try makeScript(hook, "echo \"$1\" >> '\(work.file("hook.log"))'")
            for output in [readOnly.file("snaps"), readOnly.file("snaps/missing")] {
                do {
                    _ = try await coordinator(state).snapshot(SnapshotRequest(
                        writers: [FilesystemFreezeWriter(mountpoint: frozen.mountpoint), HookWriter(path: hook)],
                        provider: AutoProvider(), disks: [disk], outputDirectory: output))
                    Issue.record("a snapshot into a read-only folder succeeded")
                } catch let failure as SnapshotFailure {
                    guard case let .outputUnusable(path, reason) = failure.cause else { Issue.record("wrong cause \(failure.cause)"); continue }
                    #expect(path == output)
                    #expect(reason.contains("Read-only file system") || reason.contains("read-only"), "\(reason)")
                    #expect(failure.result.writers.allSatisfy { !$0.froze && $0.state == .stable })
                }
            }
            #expect(!FileManager.default.fileExists(atPath: work.file("hook.log")), "a writer was called before the output folder was checked")
            #expect(frozen.writeCompletes(within: 2))
        }
    }
}
