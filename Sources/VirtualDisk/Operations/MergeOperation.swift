import Foundation
import SystemPackage
import Storage

/// What `merge` is asked to do beyond the child's path.
public struct MergeOptions: Sendable {
    /// The ancestor receiving the data; nil means the child's parent.
    public var into: FilePath?
    /// Extra images (or folders) that may be children of the merged levels or of the ancestor.
    public var children: [FilePath]
    /// Merge even though the ancestor (or an intermediate level) has other children it would break.
    public var force: Bool
    public init(into: FilePath? = nil, children: [FilePath] = [], force: Bool = false) {
        self.into = into
        self.children = children
        self.force = force
    }
}

/// What a merge did.
public struct MergeResult: Codable, Sendable, Equatable {
    public var child: String
    public var ancestor: String
    /// Levels deleted after their data was folded in, child first.
    public var removed: [String]
    /// Images that had the child as parent and now have the ancestor.
    public var repointed: [String]
    /// Virtual bytes written into the ancestor.
    public var bytesCopied: UInt64
    /// Of `bytesCopied`, those shared by reflink (xfs, btrfs) rather than read and written.
    public var bytesCloned: UInt64
    /// Whether this run finished a merge an earlier (interrupted) run started.
    public var resumed: Bool
}

/// Merge-VHD: folds a differencing child (and the levels between it and an ancestor) into the ancestor.
///
/// Crash-safe and resumable: a record naming the child, levels and ancestor is fsync'd beside the child
/// before the ancestor is touched; the child levels stay intact until the ancestor holds all their data;
/// only then are other children of the child re-pointed, the merged levels deleted (child first) and the
/// record removed. Re-running after a kill at any point copies the child levels' data again (the copy is
/// idempotent) and finishes.
public enum MergeOperation {
    public static func merge(child: FilePath, options: MergeOptions = MergeOptions(), progress: ProgressReporter? = nil) throws -> MergeResult {
        let child = FileOps.absolute(child)
        MergeIntent.removeStaleTemporaries(in: child.removingLastComponent())
        if var intent = try MergeIntent.load(for: child) {
            if let into = options.into, OperationIO.key(into) != OperationIO.key(FilePath(intent.ancestor)) {
                throw DiskError.invalidArgument("\(child.string): a merge into \(intent.ancestor) is pending (\(MergeIntent.recordPath(for: child).string)); finish it first by merging \(child.string) again without naming an ancestor")
            }
            let locks = try MergeLocks(levels: intent.levels.map { FilePath($0) }, ancestor: FilePath(intent.ancestor))
            defer { locks.release() }
            // The record names the process now running the merge.
            intent.pid = getpid()
            try intent.write(for: child)
            return try execute(intent, locks: locks, options: options, resumed: true, progress: progress)
        }
        guard FileOps.exists(child) else {
            throw DiskError.invalidArgument("\(child.string): nothing left to merge: the file does not exist and no merge of it is pending (there is no \(MergeIntent.recordPath(for: child).lastComponent?.string ?? "merge record")); a merge that finished removes the child, so an earlier run may have completed it")
        }
        let (intent, locks) = try plan(child: child, options: options)
        defer { locks.release() }
        try intent.write(for: child)
        return try execute(intent, locks: locks, options: options, resumed: false, progress: progress)
    }

    /// Checks the merge can go ahead (chain, children, free space) and describes it. Every level of
    /// the merge is locked against writers first (and stays locked until the merge ends), so nothing
    /// written after the check can be lost or change an identity the record holds.
    static func plan(child: FilePath, options: MergeOptions) throws -> (MergeIntent, MergeLocks) {
        var chain = try DiskChain.open(child)
        defer { try? chain.close() }
        guard chain.levels.count >= 2 else {
            throw DiskError.invalidArgument("\(child.string): is not a differencing image (it has no parent); there is nothing to merge")
        }
        var k = 1
        if let into = options.into {
            let key = OperationIO.key(into)
            guard let index = chain.levels.indices.dropFirst().first(where: { OperationIO.key(chain.levels[$0].path) == key }) else {
                throw DiskError.invalidArgument("\(child.string): \(into.string) is not an ancestor of this image; its chain is \(chain.levels.map(\.path.string).joined(separator: " -> "))")
            }
            k = index
        }
        let planned = chain.levels[0...k].map { OperationIO.key($0.path) }
        let locks = try MergeLocks(levels: chain.levels[0..<k].map(\.path), ancestor: chain.levels[k].path)
        do {
            // Read again under the locks: a writer may have changed a level (and its identity) before.
            try chain.close()
            chain = try DiskChain.open(child)
            guard chain.levels.count > k, chain.levels[0...k].map({ OperationIO.key($0.path) }) == planned else {
                throw DiskError.invalidArgument("\(child.string): its chain changed while the merge was starting; run the merge again")
            }
            return (try describe(chain: chain, k: k, options: options), locks)
        } catch {
            locks.release()
            throw error
        }
    }

    /// The record for merging `chain.levels[0..<k]` into `chain.levels[k]`, after the checks.
    static func describe(chain: DiskChain, k: Int, options: MergeOptions) throws -> MergeIntent {
        let child = chain.levels[0].path
        let ancestor = chain.levels[k]
        let levelPaths = chain.levels[0..<k].map { FileOps.absolute($0.path) }
        let merged = Set(levelPaths.map(OperationIO.key))
        // One scan of every level's folder (and the paths given) answers for each level.
        let finder = try ChildFinder(near: chain.levels[0...k].map(\.path), extra: options.children)

        // Children that the merge would break: others of the ancestor and of intermediate levels.
        var breaking: [String] = []
        for level in chain.levels[1...k] {
            for c in finder.children(of: level.path) where !merged.contains(OperationIO.key(c)) {
                breaking.append(c.string)
            }
        }
        if !breaking.isEmpty, !options.force {
            throw DiskError.hasChildren(path: ancestor.path.string, children: breaking)
        }

        let needed = try spaceNeeded(levels: Array(chain.levels[0..<k]), ancestor: ancestor)
        let available = try LocalFileSystem.available(at: ancestor.path)
        if needed > available {
            throw StorageError.insufficientSpace(path: ancestor.path.string, needed: needed, available: available)
        }
        let repoint = finder.children(of: child).filter { !merged.contains(OperationIO.key($0)) }
        return MergeIntent(child: FileOps.absolute(child).string, levels: levelPaths.map(\.string),
                           ancestor: FileOps.absolute(ancestor.path).string,
                           levelIdentities: chain.levels[0..<k].map(\.identityString),
                           ancestorIdentity: ancestor.identityString,
                           childrenToRepoint: repoint.map(\.string),
                           started: Timestamp.iso8601())
    }

    /// A conservative figure for the file space the ancestor must grow by: every ancestor block that
    /// the child levels touch and the ancestor has not fully allocated, plus room for metadata.
    static func spaceNeeded(levels: [any DiskImage], ancestor: any DiskImage) throws -> UInt64 {
        let block = UInt64(max(ancestor.blockSize, 4096))
        var needed: UInt64 = 0
        var lastCounted: UInt64?
        for m in try DiskChain(levels: levels).map(0..<min(levels[0].virtualSize, ancestor.virtualSize)) where m.level != nil {
            var b = m.range.lowerBound / block
            let end = (m.range.upperBound + block - 1) / block
            while b < end {
                defer { b += 1 }
                if let last = lastCounted, b <= last { continue }
                lastCounted = b
                let blockRange = b * block..<min((b + 1) * block, ancestor.virtualSize)
                let allocated = try ancestor.extents(in: blockRange).allSatisfy {
                    if case .data = $0.kind { return true } else { return false }
                }
                if !allocated { needed += UInt64(blockRange.count) }
            }
        }
        return needed == 0 ? 0 : needed + 4 << 20 + needed / 64
    }

    /// Runs (or resumes) the merge a record describes.
    static func execute(_ intent: MergeIntent, locks: MergeLocks, options: MergeOptions, resumed: Bool, progress: ProgressReporter?) throws -> MergeResult {
        let child = FilePath(intent.child)
        let ancestorPath = FilePath(intent.ancestor)
        var copied: (bytes: UInt64, cloned: UInt64) = (0, 0)
        if FileOps.exists(child) {
            copied = try copy(intent, locks: locks, progress: progress)
            // The ancestor's identity once written (a VHDX gets a new DataWriteGuid).
            let newID = locks.ancestor.leaf.identity
            try locks.closeAncestor()
            let merged = Set(intent.levels.map { OperationIO.key(FilePath($0)) })
            // The record's list, and any child made since the merge was planned.
            var repoint = intent.childrenToRepoint.map { FilePath($0) }.filter(FileOps.exists)
            for c in try ChildFinder(near: [child], extra: options.children).children(of: child)
            where !merged.contains(OperationIO.key(c)) && !repoint.contains(where: { OperationIO.key($0) == OperationIO.key(c) }) {
                repoint.append(c)
            }
            for c in repoint {
                try DiskImages.openLevel(c, writable: true).use { image in
                    guard let maintainable = image as? any MaintainableImage else {
                        throw DiskError.unsupported(path: c.string, reason: "cannot re-point this \(image.format.rawValue) image to \(ancestorPath.string)")
                    }
                    try maintainable.setParent(ParentLink(expectedID: newID, locators: ParentLocator.locators(child: c, parent: ancestorPath)))
                }
            }
            var result = try finish(intent)
            result.repointed = repoint.map(\.string)
            result.bytesCopied = copied.bytes
            result.bytesCloned = copied.cloned
            result.resumed = resumed
            return result
        }
        var result = try finish(intent)
        result.resumed = resumed
        return result
    }

    /// Deletes the merged levels (child first, so a kill leaves either the whole chain or the ancestor
    /// readable) and then the record.
    static func finish(_ intent: MergeIntent) throws -> MergeResult {
        var removed: [String] = []
        for level in intent.levels where FileOps.exists(FilePath(level)) {
            try FileOps.remove(FilePath(level))
            try FileOps.syncDirectory(of: FilePath(level))
            removed.append(level)
        }
        try MergeIntent.remove(for: FilePath(intent.child))
        return MergeResult(child: intent.child, ancestor: intent.ancestor, removed: removed, repointed: [], bytesCopied: 0,
                           bytesCloned: 0, resumed: false)
    }

    /// Links the top merged level to the ancestor's identity as it will be once written, before any
    /// data moves. A VHDX ancestor takes a new DataWriteGuid with its first change, which would break
    /// the link for every reader that does not know merge records (other tools such as libvhdi) while
    /// the merge runs and after a kill; reading through the level gives the same bytes whatever the
    /// ancestor holds of the merged data, so the new link is true from the start. A VHD's identity
    /// does not change with writes: nothing to do.
    /// The level's own header update comes first, so that between the ancestor's new identity and
    /// the link to it only one log entry is written (a kill there leaves the link to the record).
    /// Returns whether the level was changed.
    static func relink(_ level: any DiskImage, to ancestor: any DiskImage) throws -> Bool {
        guard let vhdx = ancestor as? VHDXImage, let top = level as? VHDXImage, let link = top.parentLink else { return false }
        try top.beginSession(dataWrite: false)
        try vhdx.beginSession(dataWrite: true)
        guard link.expectedID != vhdx.identity else { return false }
        try top.setParent(ParentLink(expectedID: vhdx.identity, locators: link.locators))
        try top.flush()
        return true
    }

    /// Copies everything the child levels hold into the ancestor, newest level winning, then flushes.
    static func copy(_ intent: MergeIntent, locks: MergeLocks, progress: ProgressReporter?) throws -> (bytes: UInt64, cloned: UInt64) {
        var levels = locks.levels
        let ancestor = locks.ancestor.leaf
        // The merged levels, checked against the record (their data is never written during a merge).
        guard levels.count == intent.levels.count else {
            throw DiskError.corrupt(path: intent.child, reason: "some levels the pending merge record names are missing (\(intent.levels.joined(separator: ", "))); the record is inconsistent with the files")
        }
        for (i, level) in levels.enumerated() {
            let path = intent.levels[i]
            guard OperationIO.key(level.path) == OperationIO.key(FilePath(path)) else {
                throw DiskError.corrupt(path: path, reason: "is not the level the pending merge record names at this place")
            }
            guard level.identityString == intent.levelIdentities[i] else {
                throw DiskError.corrupt(path: path, reason: "its identity changed from \(intent.levelIdentities[i]) to \(level.identityString) during a pending merge (\(MergeIntent.recordPath(for: FilePath(intent.child)).string)); refusing to continue")
            }
            if i + 1 < intent.levels.count {
                guard let link = level.parentLink,
                      let parent = DiskChain.candidatePaths(of: level.path, link: link).first(where: FileOps.exists),
                      OperationIO.key(parent) == OperationIO.key(FilePath(intent.levels[i + 1])),
                      link.expectedID.uuidString.lowercased() == intent.levelIdentities[i + 1] else {
                    throw DiskError.corrupt(path: path, reason: "its parent is no longer \(intent.levels[i + 1]) as the pending merge record says")
                }
            }
        }
        if levels.contains(where: { $0.virtualSize != ancestor.virtualSize }) {
            throw DiskError.unsupported(path: intent.child, reason: "its virtual size differs from the ancestor \(intent.ancestor)'s; resize one of them first")
        }
        if try relink(levels[levels.count - 1], to: ancestor) {
            // Closed and opened again, so that the level's log is clean (tools that cannot replay a
            // VHDX log then see the new link too).
            try locks.reopenTopLevel()
            levels = locks.levels
        }
        let map = try DiskChain(levels: levels).map(0..<ancestor.virtualSize).filter { $0.level != nil }
        let total = map.reduce(UInt64(0)) { $0 + UInt64($1.range.count) }
        // What to write: every run a merged level holds (newest level wins, as the map says), except
        // explicit zero runs where the ancestor already reads zeros.
        var pieces: [(range: Range<UInt64>, level: Int?)] = []
        var skipped: UInt64 = 0
        for m in map {
            if m.isZero {
                let alreadyZero = try ancestor.extents(in: m.range).allSatisfy {
                    switch $0.kind {
                    case .zero: return true
                    case .unallocated: return ancestor.parent == nil
                    case .data: return false
                    }
                }
                if alreadyZero { skipped += UInt64(m.range.count); continue }
                pieces += OperationIO.chunks(of: m.range).map { ($0, nil) }
            } else {
                pieces += OperationIO.chunks(of: m.range).map { ($0, m.level) }
            }
        }
        var done = skipped
        progress?.report(done, of: total)
        // Where the filesystem shares blocks (xfs, btrfs), runs that land in place are reflinked.
        let clonedBytes = try Reflink.clone(&pieces, range: { $0.range }, level: { $0.level }, from: levels, into: ancestor) { bytes in
            done += bytes
            progress?.report(done, of: total)
            try OperationIO.pace(progress)
        }
        for level in levels { OperationIO.adviseSequential(level.store) }
        let lookahead = OperationIO.lookahead(pieceBytes: pieces.map(\.range.count))
        let pipeline = CopyPipeline(pieces: pieces, lookahead: lookahead, prefetch: { piece in
            if let level = piece.level { OperationIO.prefetch(levels[level], piece.range) }
        }) { piece, buffer in
            let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[..<piece.range.count])
            if let level = piece.level {
                try levels[level].read(into: slice, at: piece.range.lowerBound)
                // The merged levels are deleted once the ancestor holds their data: dropping their
                // pages now, on this thread, spares the unlink from doing it at the end.
                OperationIO.evict(levels[level], piece.range)
            } else {
                slice.initializeMemory(as: UInt8.self, repeating: 0)
            }
        }
        var unsynced: UInt64 = 0
        try pipeline.run { piece, buffer in
            try ancestor.write(UnsafeRawBufferPointer(rebasing: buffer[..<piece.range.count]), at: piece.range.lowerBound)
            unsynced += UInt64(piece.range.count)
            OperationIO.startWriteback(ancestor.store, written: &unsynced)
            done += UInt64(piece.range.count)
            progress?.report(done, of: total)
            try OperationIO.pace(progress)
        }
        try ancestor.flush()
        return (done, clonedBytes)
    }
}
