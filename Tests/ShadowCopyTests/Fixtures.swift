import Foundation
import Glibc
import ShadowCopy
import TestSupport
import VirtualDisk
import Storage

extension QemuAgent {
    /// guest-fsfreeze-status through a fresh connection.
    func status() throws -> String {
        let c = try GuestAgentClient(socket: socket, timeout: 3)
        defer { c.close() }
        return try c.freezeStatus()
    }
}

/// A unix socket server that accepts connections and never answers (a hung guest agent).
final class SilentAgent: @unchecked Sendable {
    let dir: TempDir
    let socket: String
    private let fd: Int32
    private var clients: [Int32] = []
    private let lock = NSLock()

    init() throws {
        dir = try TempDir("bulwark-silent")
        socket = dir.file("silent.sock")
        fd = try listeningUnixSocket(at: socket, for: "silent agent")
        let listener = fd
        Thread.detachNewThread { [weak self] in
            while true {
                let c = accept(listener, nil, nil)
                if c < 0 { return }
                guard let self else { close(c); return }
                self.lock.withLock { self.clients.append(c) }
            }
        }
    }

    deinit {
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
        lock.withLock { clients.forEach { close($0) } }
    }
}

/// Writes a small executable shell script.
func makeScript(_ path: String, _ body: String) throws {
    try ("#!/bin/sh\n" + body + "\n").write(toFile: path, atomically: true, encoding: .utf8)
    chmod(path, 0o755)
}

/// A provider that fails after the freeze (while writers are frozen).
struct FailingProvider: SnapshotProvider {
    var name: String { "failing" }
    func prepare(disks: [String], context: SnapshotContext) async throws {}
    func snapshot(disks: [String], context: SnapshotContext, deadline: Date) async throws -> ProviderSnapshot {
        throw ShadowCopyError.providerFailed(provider: "failing", reason: "injected failure after freeze")
    }
}

/// A provider that, while frozen, checks that a write into `volume` does not complete, then lets
/// the copy provider do its work.
struct FrozenProbeProvider: SnapshotProvider {
    let volume: LoopVolume
    let observed: Observed
    var name: String { "probe" }
    func prepare(disks: [String], context: SnapshotContext) async throws {
        try await CopyProvider().prepare(disks: disks, context: context)
    }
    func snapshot(disks: [String], context: SnapshotContext, deadline: Date) async throws -> ProviderSnapshot {
        let volume = self.volume
        let completed = try await BlockingPool.disk.run { volume.writeCompletes(within: 0.4, name: "while-frozen") }
        observed.set(completed)
        return try await CopyProvider().snapshot(disks: disks, context: context, deadline: deadline)
    }
}

final class Observed: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Bool?
    func set(_ v: Bool) { lock.withLock { value = v } }
    var get: Bool? { lock.withLock { value } }
}

/// A coordinator for tests: state in `dir`, the watchdog is the built `bulwark`.
func coordinator(_ state: TempDir) -> SnapshotCoordinator {
    SnapshotCoordinator(stateDirectory: state.path, watchdog: WatchdogConfiguration(executable: TestEnv.bulwark))
}

/// A disk file of `size` bytes with a recognizable pattern.
func makeDisk(_ path: String, size: Int, seed: UInt64 = 1) throws -> Data {
    var rng = SeededRandom(seed: seed)
    let data = Data(rng.bytes(size))
    try data.write(to: URL(fileURLWithPath: path))
    return data
}

/// Whether we can run the tests that mount and freeze (root, tools).
/// Whether `pid` is gone (or a zombie nobody reaped).
func isGone(_ pid: Int32) -> Bool {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return true }
    guard let close = stat.lastIndex(of: ")") else { return true }
    return stat[stat.index(close, offsetBy: 2)] == "Z"
}

/// A guest agent that speaks the protocol but never answers the commands in `hangOn` (an agent
/// stuck in its freeze). It records every command it received.
final class HangingAgent: @unchecked Sendable {
    let dir: TempDir
    let socket: String
    private let fd: Int32
    private let lock = NSLock()
    private var received: [String] = []
    private var clients: [Int32] = []

    var commands: [String] { lock.withLock { received } }

    init(hangOn: Set<String>) throws {
        dir = try TempDir("bulwark-hang")
        socket = dir.file("agent.sock")
        fd = try listeningUnixSocket(at: socket, for: "hanging agent")
        let listener = fd
        Thread.detachNewThread { [weak self] in
            while true {
                let c = accept(listener, nil, nil)
                if c < 0 { return }
                guard let self else { close(c); return }
                self.lock.withLock { self.clients.append(c) }
                Thread.detachNewThread { [weak self] in self?.serve(c, hangOn: hangOn) }
            }
        }
    }

    private func serve(_ c: Int32, hangOn: Set<String>) {
        var pending: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(c, &buffer, buffer.count)
            if n <= 0 { return }
            pending += buffer[..<n].filter { $0 != 0xFF }
            while let nl = pending.firstIndex(of: 0x0A) {
                let line = Data(pending[..<nl])
                pending.removeSubrange(...nl)
                guard let obj = try? JSONSerialization.jsonObject(with: line) as? [String: Any],
                      let command = obj["execute"] as? String else { continue }
                lock.withLock { received.append(command) }
                if hangOn.contains(command) { continue }
                var reply: String
                var prefix: [UInt8] = []
                switch command {
                case "guest-sync-delimited":
                    let id = (obj["arguments"] as? [String: Any])?["id"] as? Int ?? 0
                    prefix = [0xFF]  // the delimiter is a raw byte, not a character
                    reply = "{\"return\": \(id)}\n"
                case "guest-fsfreeze-status": reply = "{\"return\": \"thawed\"}\n"
                case "guest-fsfreeze-thaw", "guest-fsfreeze-freeze", "guest-fsfreeze-freeze-list": reply = "{\"return\": 1}\n"
                default: reply = "{\"return\": {}}\n"
                }
                let bytes = prefix + Array(reply.utf8)
                _ = bytes.withUnsafeBytes { write(c, $0.baseAddress, $0.count) }
            }
        }
    }

    deinit {
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
        lock.withLock { clients.forEach { shutdown($0, Int32(SHUT_RDWR)); close($0) } }
    }
}

/// A unix stream socket bound to `path` and listening (the fake agents' server side).
func listeningUnixSocket(at path: String, for what: String) throws -> Int32 {
    let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: bytes + [0]) }
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard rc == 0, listen(fd, 8) == 0 else {
        let e = errno
        close(fd)
        throw TestFailure("\(what): bind/listen on \(path) failed: errno \(e)")
    }
    return fd
}
