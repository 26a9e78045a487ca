import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A real qemu-ga serving a unix socket in a temporary folder.
public final class QemuAgent: @unchecked Sendable {
    public let dir: TempDir
    public let socket: String
    private let process = Process()

    public init() throws {
        dir = try TempDir("bulwark-qga")
        socket = dir.file("qga.sock")
        let state = dir.file("state")
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        process.executableURL = URL(fileURLWithPath: TestEnv.which("qemu-ga") ?? "/usr/sbin/qemu-ga")
        process.arguments = ["-m", "unix-listen", "-p", socket, "-t", state]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        for _ in 0..<200 where !FileManager.default.fileExists(atPath: socket) { usleep(10_000) }
        guard FileManager.default.fileExists(atPath: socket) else { throw TestFailure("qemu-ga did not create \(socket)") }
    }

    public func stop() { stopProcess(process) }

    deinit { stop() }
}

/// Whether the real components a test needs are here (root, and each tool); outside CI a missing one
/// skips the test, under BULWARK_REQUIRE_REAL=1 it fails it.
public func realPrerequisites(_ tools: String...) throws -> Bool {
    guard try TestEnv.prerequisite(TestEnv.isRoot, "root (loop devices, mounts, freezing)") else { return false }
    for t in tools { guard try TestEnv.tools(t) else { return false } }
    return true
}

/// Stops a child started with Foundation's Process: SIGKILL, because Process children inherit the
/// spawning thread's blocked signal mask (SIGTERM stays pending), then waits for it.
public func stopProcess(_ p: Process) {
    guard p.isRunning else { return }
    kill(p.processIdentifier, SIGKILL)
    p.waitUntilExit()
}

