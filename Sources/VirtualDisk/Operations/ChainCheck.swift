import SystemPackage
import Storage

/// The result of checking a whole chain.
public struct ChainCheckReport: Codable, Sendable, Equatable {
    /// The image checked (the chain leaf).
    public var path: String
    /// Each level's own structures, leaf first.
    public var levels: [CheckReport]
    /// Problems between levels: parent missing or replaced, sizes that disagree, pending merges.
    public var chainProblems: [CheckProblem]
    /// Merges that were started and not finished on this chain.
    public var pendingMerges: [MergeIntent]
    public var isClean: Bool { levels.allSatisfy(\.isClean) && chainProblems.allSatisfy { $0.severity == .warning } }
    /// Every problem, each prefixed with the file it concerns.
    public var allProblems: [String] {
        levels.flatMap { l in l.problems.map { "\(l.path): \($0.severity.rawValue): \($0.message)" } }
            + chainProblems.map { "\(path): \($0.severity.rawValue): \($0.message)" }
    }
}

/// `check`: each level's structures (through `CheckableFormat.check`) and the links between them
/// (parent found, parent identity, sizes, format), plus merges left pending. Without `repair` nothing
/// is changed; with it each format fixes what it safely can and says what it did.
public enum ChainCheck {
    public static func check(path: FilePath, repair: Bool = false) throws -> ChainCheckReport {
        var report = ChainCheckReport(path: FileOps.absolute(path).string, levels: [], chainProblems: [], pendingMerges: [])
        // A merge killed while writing its record leaves a temporary file nothing else would remove.
        MergeIntent.removeStaleTemporaries(in: FileOps.absolute(path).removingLastComponent())
        guard FileOps.exists(path) else {
            let intents = PendingMergeChain.pendingIntents(near: [path]).filter { OperationIO.key(FilePath($0.child)) == OperationIO.key(path) }
            if intents.isEmpty { throw StorageError.notFound(path: path.string) }
            report.pendingMerges = intents
            report.chainProblems = intents.map { CheckProblem(.error, $0.summary, repairable: false) }
            return report
        }
        var current = FileOps.absolute(path)
        var seen: [String] = []
        var folders: [FilePath] = []
        while true {
            let key = OperationIO.key(current)
            if seen.contains(key) {
                report.chainProblems.append(CheckProblem(.error, "the chain loops back to \(current.string): \((seen + [key]).joined(separator: " -> "))", repairable: false))
                break
            }
            seen.append(key)
            folders.append(current)
            // A level a writer has open is mid-update: its structures may look broken (a VHDX log not
            // yet applied) when nothing is wrong, and repairing it would race the writer.
            if LockHolders.isLocked(current) {
                throw StorageError.busy(path: current.string, holder: LockHolders.otherHolder(of: current))
            }
            report.levels.append(try checkLevel(current, repair: repair))
            let level: any DiskImage
            do { level = try DiskImages.openLevel(current) } catch {
                if report.levels[report.levels.count - 1].problems.isEmpty {
                    report.levels[report.levels.count - 1].problems.append(CheckProblem(.error, "cannot be opened: \(error)", repairable: false))
                }
                break
            }
            defer { try? level.close() }
            guard let link = level.parentLink else { break }
            let candidates = DiskChain.candidatePaths(of: current, link: link)
            guard let parentPath = candidates.first(where: FileOps.exists) else {
                report.chainProblems.append(CheckProblem(.error, "level \(current.string): parent disk not found (expected id \(link.expectedID.uuidString.lowercased())); tried \(candidates.map(\.string).joined(separator: ", "))", repairable: false))
                break
            }
            if let parent = try? DiskImages.openLevel(parentPath) {
                defer { try? parent.close() }
                if parent.format != level.format {
                    report.chainProblems.append(CheckProblem(.error, "level \(current.string) is \(level.format.rawValue.uppercased()) but its parent \(parentPath.string) is \(parent.format.rawValue.uppercased())", repairable: false))
                }
                if parent.identity != link.expectedID {
                    let intents = PendingMergeChain.pendingIntents(near: [current, parentPath])
                    if !PendingMergeChain.allows(child: current, parent: parentPath, intents: intents) {
                        report.chainProblems.append(CheckProblem(.error, "level \(current.string) expects parent id \(link.expectedID.uuidString.lowercased()) but \(parentPath.string) has \(parent.identityString) (the parent was replaced or modified; reparenting the child with the identity check waived accepts it)", repairable: false))
                    }
                }
                if parent.virtualSize != level.virtualSize {
                    report.chainProblems.append(CheckProblem(.error, "level \(current.string) has virtual size \(level.virtualSize) but its parent \(parentPath.string) has \(parent.virtualSize)", repairable: false))
                }
                if parent.logicalSectorSize != level.logicalSectorSize {
                    report.chainProblems.append(CheckProblem(.error, "level \(current.string) has logical sector size \(level.logicalSectorSize) but its parent \(parentPath.string) has \(parent.logicalSectorSize)", repairable: false))
                }
            }
            current = parentPath
        }
        // Merges started on this chain and not finished.
        let keys = Set(seen)
        var pending: [MergeIntent] = []
        for intent in PendingMergeChain.pendingIntents(near: folders) where !pending.contains(intent) {
            let named = ([intent.child] + intent.levels + [intent.ancestor]).map { OperationIO.key(FilePath($0)) }
            if named.contains(where: keys.contains) { pending.append(intent) }
        }
        report.pendingMerges = pending
        report.chainProblems += pending.map { CheckProblem(.error, $0.summary, repairable: false) }
        return report
    }

    /// One level's structures: the format's own check, or nothing to check for raw images.
    static func checkLevel(_ path: FilePath, repair: Bool) throws -> CheckReport {
        let format: any DiskImageFormat.Type
        do {
            let store = try BlockFile.open(path, writable: false)
            defer { try? store.close() }
            format = try DiskImages.detect(store)
        } catch {
            return CheckReport(path: path.string, format: DiskFormat.fromExtension(of: path),
                               problems: [CheckProblem(.error, "cannot be read: \(error)", repairable: false)])
        }
        guard let checkable = format as? any CheckableFormat.Type else {
            return CheckReport(path: path.string, format: format.format)
        }
        do {
            return try checkable.check(path, repair: repair)
        } catch {
            return CheckReport(path: path.string, format: format.format,
                               problems: [CheckProblem(.error, "check failed: \(error)", repairable: false)])
        }
    }
}
