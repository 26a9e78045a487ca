#if canImport(Glibc)
import Glibc
import Synchronization
#endif
import Foundation
import SystemPackage
import Storage

/// Serializes snapshots that touch the same resource (agent socket, filesystem, disk, hook): an
/// in-process lock per key (waiters queue without blocking threads), then an exclusive `flock` on
/// `<state dir>/locks/<key hash>.lock` so other processes wait too. Snapshots of different
/// resources run at once.
actor ResourceLocks {
    static let shared = ResourceLocks()

    private var held: Set<String> = []
    private var waiters: [String: [CheckedContinuation<Void, Never>]] = [:]

    /// Takes every key (sorted, so two sets never deadlock), in-process then cross-process.
    func acquire(_ keys: [String], stateDirectory: String, timeout: Double) async throws -> ResourceLease {
        let sorted = Array(Set(keys)).sorted()
        var taken: [String] = []
        for key in sorted {
            while held.contains(key) {
                await withCheckedContinuation { waiters[key, default: []].append($0) }
            }
            held.insert(key)
            taken.append(key)
        }
        do {
            let fds = try await BlockingPool.disk.run { try FileLocks.lock(sorted, directory: stateDirectory, timeout: timeout) }
            return ResourceLease(keys: taken, fds: fds)
        } catch {
            release(taken)
            throw error
        }
    }

    func release(_ keys: [String]) {
        for key in keys {
            held.remove(key)
            if var queue = waiters[key], !queue.isEmpty {
                let next = queue.removeFirst()
                waiters[key] = queue.isEmpty ? nil : queue
                next.resume()
            }
        }
    }
}

/// Held resource locks; `release` gives them back. The descriptors can be handed to the watchdog so
/// the lock outlives a killed coordinator until the watchdog has thawed.
final class ResourceLease: @unchecked Sendable {
    let keys: [String]
    let fds: [Int32]
    private let lock = Mutex(())
    private var released = false

    init(keys: [String], fds: [Int32]) {
        self.keys = keys
        self.fds = fds
    }

    func release() async {
        let first = lock.withLock { _ -> Bool in defer { released = true }; return !released }
        guard first else { return }
        for fd in fds { close(fd) }
        await ResourceLocks.shared.release(keys)
    }
}

enum FileLocks {
    /// A file name for `key` (a hash, plus a readable tail).
    static func fileName(_ key: String) -> String {
        let safe = String(key.map { $0.isLetter || $0.isNumber || $0 == "-" ? $0 : "_" }.suffix(40))
        return "\(StableID.make(from: key).prefix(18))-\(safe).lock"
    }

    static func lock(_ keys: [String], directory: String, timeout: Double) throws -> [Int32] {
        let dir = FilePath(directory).appending("locks").string
        do { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) } catch {
            throw ShadowCopyError.stateFile(path: dir, reason: "cannot create the lock folder: \(error.localizedDescription)")
        }
        var fds: [Int32] = []
        let deadline = Clock.now() + timeout
        do {
            for key in keys {
                let path = FilePath(dir).appending(fileName(key)).string
                let fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0o644)
                guard fd >= 0 else { throw ShadowCopyError.stateFile(path: path, reason: "open: \(Errno(rawValue: errno))") }
                fds.append(fd)
                while flock(fd, LOCK_EX | LOCK_NB) != 0 {
                    guard errno == EWOULDBLOCK || errno == EINTR else {
                        throw ShadowCopyError.stateFile(path: path, reason: "flock: \(Errno(rawValue: errno))")
                    }
                    if Clock.now() >= deadline { throw ShadowCopyError.resourceBusy(resource: key, seconds: timeout) }
                    usleep(20_000)
                }
            }
        } catch {
            for fd in fds { close(fd) }
            throw error
        }
        return fds
    }
}
