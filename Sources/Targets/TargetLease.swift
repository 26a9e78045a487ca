import Foundation
import Storage
import Synchronization
import SystemPackage

/// Who holds a machine's folder on a target: one writer at a time (a backup, a prune, a verify that
/// records results, a replication into it). A lease, not a lock, because a target may be a share that
/// several hosts write and that keeps no locks across a crash.
///
/// The holder refreshes it while it works. It is stale only when its holder is provably gone (same
/// host and boot, and its PID is dead or now names another process; or the host rebooted since) or,
/// for a holder on another host, when it has expired. A lease whose holder lives is never broken,
/// however late its refresh.
public struct LeaseRecord: Codable, Sendable, Equatable {
    public var host: String
    public var pid: Int32
    /// The holder's start time in clock ticks since boot: tells a reused PID from the holder.
    public var startTicks: UInt64?
    public var bootID: String
    public var purpose: String
    public var acquired: String
    public var expires: Date

    public static func current(purpose: String, duration: Double, now: Date = Date()) -> LeaseRecord {
        let pid = ProcessState.currentPID
        return LeaseRecord(host: ProcessState.hostName, pid: pid, startTicks: ProcessState.startTicks(pid), bootID: ProcessState.bootID,
                           purpose: purpose, acquired: Timestamp.iso8601(now), expires: now.addingTimeInterval(duration))
    }

    /// Whether the record names this very process.
    public var isCurrentProcess: Bool {
        host == ProcessState.hostName && bootID == ProcessState.bootID && pid == ProcessState.currentPID
            && (startTicks == nil || startTicks == ProcessState.startTicks(pid))
    }

    /// Why the holder is provably gone (or its lease expired), or nil when it may still be working.
    public func staleness(now: Date = Date()) -> String? {
        if host == ProcessState.hostName {
            guard bootID == ProcessState.bootID else { return "its holder ran before this host rebooted" }
            guard ProcessState.isRunning(pid) else { return "its holder (PID \(pid)) is gone" }
            if let startTicks, let current = ProcessState.startTicks(pid), current != startTicks {
                return "its holder (PID \(pid)) is gone; the PID now names another process"
            }
            return nil
        }
        return now > expires ? "it expired at \(Timestamp.iso8601(expires)) and its host \(host) did not refresh it" : nil
    }

    /// Whether `other` names the same holder and acquisition (the expiry changes with each refresh).
    public func sameHolder(as other: LeaseRecord) -> Bool {
        host == other.host && pid == other.pid && startTicks == other.startTicks && bootID == other.bootID && acquired == other.acquired
    }

    public var holderDescription: String { "\(purpose) (PID \(pid) on \(host), since \(acquired))" }
}

/// A lease held by this process on one machine's folder; refreshed in the background until
/// `release()`. Sendable: the refresh runs on its own thread and records a loss for `check()`.
public final class TargetLease: Sendable {
    public let target: any BackupTarget
    public let machine: String
    public let path: FilePath
    public let duration: Double
    private let state: Mutex<(record: LeaseRecord, lost: String?, released: Bool)>
    private let stop = DispatchSemaphore(value: 0)

    /// The lease file's fixed size: every refresh rewrites it whole in one write of this size, so a
    /// reader never sees a torn record.
    static let recordSize = 1024

    /// Takes the lease on `machine`'s folder, breaking a stale one (and saying so in `brokeStale`).
    public static func acquire(_ target: any BackupTarget, machine: String, purpose: String,
                               duration: Double = 600, now: Date = Date()) throws -> TargetLease {
        let folder = target.machineFolder(machine)
        try target.space.makeFolder(folder)
        let path = folder.appending("lease.json")
        for _ in 0..<3 {
            let record = LeaseRecord.current(purpose: purpose, duration: duration, now: now)
            do {
                let store = try target.space.create(path)
                defer { try? store.close() }
                try store.write(try encode(record), at: 0)
                try store.flush()
                try target.space.syncFolder(of: path)
                return TargetLease(target: target, machine: machine, path: path, duration: duration, record: record)
            } catch StorageError.exists {
                try breakIfStale(target, machine: machine, path: path, now: now)
            }
        }
        throw TargetError.leased(target: target.location, machine: machine, holder: "another process", expires: "unknown")
    }

    /// The current holder of `machine`'s lease, if any (for messages and `versions`).
    public static func holder(_ target: any BackupTarget, machine: String) -> LeaseRecord? {
        let path = target.machineFolder(machine).appending("lease.json")
        return (try? target.read(path, limit: 64 << 10)).flatMap { try? decode($0) }
    }

    private static func breakIfStale(_ target: any BackupTarget, machine: String, path: FilePath, now: Date) throws {
        let bytes: [UInt8]
        do { bytes = try target.read(path, limit: 64 << 10) } catch StorageError.notFound { return }
        guard let record = try? decode(bytes) else {
            // A record this process cannot read is never broken: it may belong to a newer version.
            throw TargetError.damaged(path: path.string, reason: "the lease file cannot be read; if no Bulwark process uses this machine's folder, remove it")
        }
        guard let reason = record.staleness(now: now) else {
            throw TargetError.leased(target: target.location, machine: machine, holder: record.holderDescription, expires: Timestamp.iso8601(record.expires))
        }
        // Move the stale lease aside (a rename never replaces), then make sure what was moved is the
        // record judged stale: a racing process may have broken it and taken a fresh lease meanwhile.
        let aside = path.removingLastComponent().appending(".lease.broken-\(ProcessState.currentPID)")
        try? target.space.remove(aside)
        do { try target.space.rename(path, to: aside) } catch StorageError.notFound { return }
        let moved = (try? target.read(aside, limit: 64 << 10)).flatMap { try? decode($0) }
        if moved != record {
            try? target.space.rename(aside, to: path)
            throw TargetError.leased(target: target.location, machine: machine, holder: moved?.holderDescription ?? "another process",
                                     expires: moved.map { Timestamp.iso8601($0.expires) } ?? "unknown")
        }
        try target.space.remove(aside)
        _ = reason
    }

    static func encode(_ record: LeaseRecord) throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.sortedKeys]
        var bytes = [UInt8](try encoder.encode(record))
        guard bytes.count < recordSize else { throw TargetError.damaged(path: "lease.json", reason: "lease record too long") }
        bytes.append(UInt8(ascii: "\n"))
        bytes += [UInt8](repeating: UInt8(ascii: " "), count: recordSize - bytes.count)
        return bytes
    }

    static func decode(_ bytes: [UInt8]) throws -> LeaseRecord {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try decoder.decode(LeaseRecord.self, from: Data(bytes))
    }

    private init(target: any BackupTarget, machine: String, path: FilePath, duration: Double, record: LeaseRecord) {
        self.target = target
        self.machine = machine
        self.path = path
        self.duration = duration
        self.state = Mutex((record, nil, false))
        let interval = max(0.05, duration / 4)
        let stop = self.stop
        Thread.detachNewThread { [weak self] in
            while stop.wait(timeout: .now() + interval) == .timedOut {
                guard let lease = self else { return }
                lease.refresh()
            }
        }
    }

    /// Rewrites the lease with a new expiry, after checking it is still this process's.
    public func refresh(now: Date = Date()) {
        let current = state.withLock { $0 }
        guard !current.released, current.lost == nil else { return }
        do {
            let onDisk = try Self.decode(try target.read(path, limit: 64 << 10))
            guard onDisk.sameHolder(as: current.record) else {
                state.withLock { $0.lost = "the lease now names \(onDisk.holderDescription)" }
                return
            }
            var next = current.record
            next.expires = now.addingTimeInterval(duration)
            let store = try target.space.open(path, writable: true)
            defer { try? store.close() }
            try store.write(try Self.encode(next), at: 0)
            try store.flushData()
            state.withLock { $0.record = next }
        } catch StorageError.notFound {
            state.withLock { $0.lost = "the lease file was removed" }
        } catch {
            // A failed refresh (a share that dropped) is retried at the next interval; only a lease
            // that names someone else, or is gone, is lost.
        }
    }

    /// Throws `TargetError.leaseLost` when a refresh found the lease taken over or removed. Called
    /// before anything is published.
    public func check() throws {
        if let lost = state.withLock({ $0.lost }) {
            throw TargetError.leaseLost(target: target.location, machine: machine, reason: lost)
        }
    }

    /// Gives the lease up (removes the file if it is still this process's). Safe to call twice.
    public func release() {
        let current = state.withLock { s -> LeaseRecord? in
            guard !s.released else { return nil }
            s.released = true
            return s.lost == nil ? s.record : nil
        }
        stop.signal()
        guard let current else { return }
        if let onDisk = try? Self.decode(try target.read(path, limit: 64 << 10)), onDisk.sameHolder(as: current) {
            try? target.space.remove(path)
            try? target.space.syncFolder(of: path)
        }
    }

    deinit { release() }
}
