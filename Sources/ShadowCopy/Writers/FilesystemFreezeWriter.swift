#if canImport(Glibc)
import Glibc
import Synchronization
#endif
import CLinux
import Foundation
import SystemPackage
import Storage

/// FIFREEZE / FITHAW on a mounted filesystem (what `fsfreeze` does), with a `syncfs` first so the
/// freeze itself has little to flush.
public enum FilesystemFreezer {
    /// Why freezing the filesystem holding `mountpoint` is refused, or nil when it is allowed: never
    /// the root filesystem, the current directory's, or one holding a protected path.
    public static func refusal(_ mountpoint: String, protecting: [String] = []) -> String? {
        guard let dev = Paths.device(of: mountpoint) else { return "cannot stat it" }
        if dev == Paths.device(of: "/") { return "it is on the root filesystem (/); freezing it would hang the host" }
        if dev == Paths.device(of: ".") { return "it holds this process's current directory" }
        for p in protecting where Paths.device(of: p) == dev {
            return "it holds \(p), which the snapshot writes to while frozen"
        }
        return nil
    }

    /// syncfs + FIFREEZE. Blocking.
    public static func freeze(_ mountpoint: String, protecting: [String] = []) throws {
        if let reason = refusal(mountpoint, protecting: protecting) {
            throw ShadowCopyError.refusedToFreeze(mountpoint: mountpoint, reason: reason)
        }
        let fd = try openDirectory(mountpoint)
        defer { close(fd) }
        _ = bulwark_syncfs(fd)
        guard bulwark_fifreeze(fd) == 0 else {
            throw ShadowCopyError.freezeFailed(mountpoint: mountpoint, operation: "FIFREEZE", errno: Errno(rawValue: errno))
        }
    }

    /// FITHAW; a filesystem that is not frozen (EINVAL) counts as thawed. Blocking.
    public static func thaw(_ mountpoint: String) throws {
        let fd = try openDirectory(mountpoint)
        defer { close(fd) }
        if bulwark_fithaw(fd) != 0, errno != EINVAL {
            throw ShadowCopyError.freezeFailed(mountpoint: mountpoint, operation: "FITHAW", errno: Errno(rawValue: errno))
        }
    }

    private static func openDirectory(_ path: String) throws -> Int32 {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw ShadowCopyError.freezeFailed(mountpoint: path, operation: "open", errno: Errno(rawValue: errno)) }
        return fd
    }
}

/// A writer that freezes a host filesystem with FIFREEZE (a guest whose disk is a mounted image, a
/// database volume, ...). Refuses `/`, the current directory's filesystem and the snapshot's own
/// state and output folders.
public struct FilesystemFreezeWriter: SnapshotWriter {
    public let mountpoint: String

    public init(mountpoint: String) { self.mountpoint = Paths.canonical(mountpoint) }

    public var identity: WriterIdentity {
        WriterIdentity(kind: "fsfreeze", name: "filesystem-freeze", covers: [mountpoint], key: mountpoint)
    }

    public var resources: [String] {
        if let dev = Paths.device(of: mountpoint) { return ["fs:\(dev)"] }
        return ["mount:" + mountpoint]
    }

    public func recovery(for context: SnapshotContext) -> WatchdogAction? { .filesystem(mountpoint: mountpoint) }

    public func prepare(_ context: SnapshotContext) async throws -> [String] {
        if let reason = FilesystemFreezer.refusal(mountpoint, protecting: context.protectedPaths) {
            throw ShadowCopyError.refusedToFreeze(mountpoint: mountpoint, reason: reason)
        }
        return []
    }

    public func freeze(_ context: SnapshotContext) async throws -> [String] {
        let (m, p) = (mountpoint, context.protectedPaths)
        try await BlockingPool.control.run {
            try FreezeRegistry.shared.withGate(m) { frozen in
                try FilesystemFreezer.freeze(m, protecting: p)
                frozen = true
            }
        }
        return []
    }

    /// Thaws only a freeze this process made (a FIFREEZE that failed with EBUSY was someone else's),
    /// after waiting for a freeze still in flight (a slow syncfs past its deadline) to finish.
    public func thaw(_ context: SnapshotContext) async throws {
        let m = mountpoint
        try await BlockingPool.control.run {
            try FreezeRegistry.shared.withGate(m) { frozen in
                guard frozen else { return }
                try FilesystemFreezer.thaw(m)
                frozen = false
            }
        }
    }

    /// After a crash nothing says whose freeze it was: thaw unconditionally.
    public func recover(_ context: SnapshotContext) async throws {
        let m = mountpoint
        try await BlockingPool.control.run { try FilesystemFreezer.thaw(m) }
    }
}

/// Per mountpoint, in this process: a gate serializing freeze and thaw, and whether we froze it.
final class FreezeRegistry: @unchecked Sendable {
    static let shared = FreezeRegistry()
    private let lock = Mutex(())
    /// A gate per mountpoint (a class, so the dictionary holds a reference to one mutex).
    private final class Gate: Sendable { let mutex = Mutex(()) }
    private var gates: [String: Gate] = [:]
    private var frozen: Set<String> = []

    func withGate<T: Sendable>(_ mountpoint: String, _ body: (inout Bool) throws -> T) throws -> T {
        let gate = lock.withLock { _ -> Gate in
            if let g = gates[mountpoint] { return g }
            let g = Gate()
            gates[mountpoint] = g
            return g
        }
        return try gate.mutex.withLock { _ in try withinGate(mountpoint, body) }
    }

    private func withinGate<T: Sendable>(_ mountpoint: String, _ body: (inout Bool) throws -> T) throws -> T {
        var isFrozen = lock.withLock { _ in frozen.contains(mountpoint) }
        defer {
            let value = isFrozen
            lock.withLock { _ in if value { frozen.insert(mountpoint) } else { frozen.remove(mountpoint) } }
        }
        return try body(&isFrozen)
    }
}
