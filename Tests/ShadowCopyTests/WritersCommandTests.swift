import Foundation
import Glibc
import ShadowCopy
import Testing
import TestSupport

extension ShadowCopyTests {
    /// `bulwark writers` and the options of `bulwark snapshot create`, through the built binary.
    @Suite struct WritersCommand {
        @Test func timeoutShowsItsDefaultAndRefusesBadValuesClearly() throws {
            let help = try runChecked(TestEnv.bulwark, ["snapshot", "create", "--help"])
            #expect(help.out.contains("(default: 10s)"), "\(help.out)")
            #expect(!help.out.contains("Seconds("))
            let base = ["snapshot", "create", "--disk", "/nonexistent/disk.raw", "--output", "/nonexistent"]
            for (args, says) in [(["--timeout", "-1"], "-1 is not a valid duration"), (["--timeout=-1"], "-1 is not a valid duration"),
                                 (["--timeout", "ten"], "ten is not a valid duration"),
                                 (["--timeout", "0"], "--timeout 0: a freeze hold of 0 s is too short"),
                                 (["--timeout", "1ms"], "--timeout 1ms: a freeze hold of 0.001 s is too short"),
                                 (["--timeout", "2h"], "too long")] {
                let r = try run(TestEnv.bulwark, base + args)
                #expect(r.status != 0 && r.status != 1, "\(args): exit \(r.status)")  // a usage error, before anything runs
                #expect(r.err.contains(says), "\(args): \(r.err)")
                #expect(!r.err.contains("Missing value") && !r.err.contains("deadline"), "\(args): \(r.err)")
            }
        }

        @Test func forgetRemovesWritersByIdAndStaleOnes() throws {
            let state = try TempDir("bulwark-state"), dir = try TempDir("bulwark-hooks")
            let kept = dir.file("kept.sh"), gone = dir.file("gone.sh")
            try makeScript(kept, "exit 0")
            let keptHook = HookWriter(path: kept), goneHook = HookWriter(path: gone)
            let goneAgent = GuestAgentWriter(socket: dir.file("gone.sock"))
            let busy = HookWriter(path: dir.file("other.sh"))
            try makeScript(dir.file("other.sh"), "exit 0")
            let store = WriterStateStore(directory: state.path)
            try store.update { map in
                map[keptHook.identity.id] = WriterRecord(identity: keptHook.identity, state: .stable, snapshotID: "a")
                map[goneHook.identity.id] = WriterRecord(identity: goneHook.identity, state: .failed, lastError: .nonRetryable, snapshotID: "a")
                map[goneAgent.identity.id] = WriterRecord(identity: goneAgent.identity, state: .waitingForThaw, snapshotID: "b")
                map[busy.identity.id] = WriterRecord(identity: busy.identity, state: .waitingForThaw, snapshotID: "c")
            }
            func ids() throws -> Set<String> { Set(try store.load().map(\.identity.id)) }

            // Mid-snapshot: kept unless --force, and the message says why.
            let refused = try run(TestEnv.bulwark, ["writers", "forget", busy.identity.id, "--state-dir", state.path])
            #expect(refused.status == 1)
            #expect(refused.err.contains("may still be frozen") && refused.err.contains("--force"), "\(refused.err)")
            #expect(try ids().contains(busy.identity.id))
            let unknown = try run(TestEnv.bulwark, ["writers", "forget", "ffffffff-0000", "--state-dir", state.path])
            #expect(unknown.status == 1 && unknown.err.contains("no writer with id ffffffff-0000"), "\(unknown.err)")

            // Stale: what they cover is gone (the mid-snapshot agent too: nothing is left to thaw).
            let stale = try runChecked(TestEnv.bulwark, ["writers", "forget", "--stale", "--state-dir", state.path])
            #expect(stale.out.contains("gone.sh") && stale.out.contains("is gone"), "\(stale.out)")
            #expect(try ids() == [keptHook.identity.id, busy.identity.id])

            // By a unique leading part of the id; --force for the mid-snapshot one.
            try runChecked(TestEnv.bulwark, ["writers", "forget", String(keptHook.identity.id.prefix(8)), "--state-dir", state.path])
            try runChecked(TestEnv.bulwark, ["writers", "forget", busy.identity.id, "--force", "--state-dir", state.path])
            #expect(try ids().isEmpty)
            let list = try runChecked(TestEnv.bulwark, ["writers", "list", "--state-dir", state.path])
            #expect(list.out.contains("no writers recorded"))
        }

        /// Listing needs only read access: another user lists a root-owned state folder without
        /// writing to it, and a folder it cannot read gives a clear message.
        @Test func writersListIsReadOnlyForOtherUsers() throws {
            guard try TestEnv.prerequisite(TestEnv.isRoot, "root (to run the command as another user)"),
                  try TestEnv.tools("runuser") else { return }
            let state = try TempDir("bulwark-state"), dir = try TempDir("bulwark-hooks")
            let hook = HookWriter(path: dir.file("h.sh"))
            try WriterStateStore(directory: state.path).update { map in
                map[hook.identity.id] = WriterRecord(identity: hook.identity, state: .failed, lastError: .timedOut, snapshotID: "x")
            }
            chmod(state.path, 0o755)
            let before = try FileManager.default.contentsOfDirectory(atPath: state.path).sorted()
            let asNobody = ["-u", "nobody", "--", TestEnv.bulwark, "writers", "list", "--state-dir", state.path]
            let listed = try run(sys("runuser"), asNobody)
            #expect(listed.status == 0, "\(listed.err)")
            #expect(listed.out.contains("hook:h.sh") && listed.out.contains("timedOut"))
            #expect(try FileManager.default.contentsOfDirectory(atPath: state.path).sorted() == before, "listing wrote to the state folder")

            chmod(state.file("writers.json"), 0o600)
            let denied = try run(sys("runuser"), asNobody)
            #expect(denied.status == 1)
            #expect(denied.err.contains("cannot read the writer states") && denied.err.contains("Permission denied")
                    && denied.err.contains("--state-dir"), "\(denied.err)")
        }
    }
}
