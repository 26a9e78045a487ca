#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// What `WriterForgetOperation` removes from the writer states.
public struct WriterForgetOptions: Sendable {
    /// Writer ids, or unique leading parts of them (as `bulwark writers list` shows them).
    public var ids: [String]
    /// Also every writer whose agent socket, mountpoint or hook no longer exists.
    public var stale: Bool
    /// Forget a writer recorded mid-snapshot too (it may still be frozen: forgetting it loses the
    /// thaw the next snapshot would give it).
    public var force: Bool

    public init(ids: [String] = [], stale: Bool = false, force: Bool = false) {
        self.ids = ids
        self.stale = stale
        self.force = force
    }
}

/// What was forgotten.
public struct WriterForgetResult: Codable, Sendable {
    public var forgotten: [WriterRecord]
    /// Why each writer was forgotten, by id ("asked", or what of it is gone).
    public var reasons: [String: String]
}

/// `bulwark writers forget`: removes writer records the user no longer wants listed (a renamed hook,
/// a guest that is gone). A writer's record is what lets the next snapshot thaw and reset it after a
/// crash, so one recorded mid-snapshot (waiting for freeze or thaw) is kept unless `force` or stale.
public enum WriterForgetOperation {
    public static func run(_ store: WriterStateStore, _ options: WriterForgetOptions) throws -> WriterForgetResult {
        guard !options.ids.isEmpty || options.stale else {
            throw ShadowCopyError.invalidArgument("nothing to forget: give writer ids (the writer list shows them) or ask for the stale ones")
        }
        var result = WriterForgetResult(forgotten: [], reasons: [:])
        try store.update { map in
            var chosen: [String: String] = [:]
            for id in options.ids {
                let matches = map.keys.filter { $0 == id.lowercased() || (id.count >= 4 && $0.hasPrefix(id.lowercased())) }
                guard !matches.isEmpty else {
                    throw ShadowCopyError.invalidArgument("no writer with id \(id) in \(store.path); the writer list shows the ids")
                }
                guard matches.count == 1 || matches.contains(id.lowercased()) else {
                    throw ShadowCopyError.invalidArgument("the id \(id) matches \(matches.count) writers (\(matches.sorted().joined(separator: ", "))); give more of it")
                }
                chosen[matches.count == 1 ? matches[0] : id.lowercased()] = "asked"
            }
            if options.stale {
                for (id, record) in map { if let gone = staleReason(record) { chosen[id] = gone } }
            }
            for (id, reason) in chosen {
                guard let record = map[id] else { continue }
                let midSnapshot = record.state == .waitingForFreeze || record.state == .waitingForThaw
                if midSnapshot, !options.force, reason == "asked" {
                    throw ShadowCopyError.invalidArgument("writer \(record.identity.name) (\(id)) is recorded \(record.state.rawValue) by snapshot \(record.snapshotID) and may still be frozen; the next snapshot with it thaws and resets it, so it is kept (forgetting it anyway must be forced)")
                }
            }
            for (id, reason) in chosen.sorted(by: { $0.key < $1.key }) {
                guard let record = map.removeValue(forKey: id) else { continue }
                result.forgotten.append(record)
                result.reasons[id] = reason
            }
        }
        return result
    }

    /// What of the writer no longer exists (nil: it is not stale, or its kind is unknown here).
    public static func staleReason(_ record: WriterRecord) -> String? {
        let covered: String?
        switch record.identity.kind {
        case "qga", "fsfreeze", "hook": covered = record.identity.covers.first
        default: covered = nil
        }
        guard let path = covered else { return nil }
        var st = stat()
        if lstat(path, &st) == 0 { return nil }
        let what = ["qga": "agent socket", "fsfreeze": "mountpoint", "hook": "hook"][record.identity.kind] ?? "path"
        return "its \(what) \(path) is gone"
    }
}
