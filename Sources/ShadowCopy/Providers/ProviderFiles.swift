#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization
import SystemPackage
import VirtualDisk
import Storage

/// Where providers put copies: `<output>/<snapshot id>/<disk file name>`, and for a disk that is a
/// differencing chain, every level of it, so the copy stands alone.
enum ProviderFiles {
    static func directory(_ context: SnapshotContext) -> String {
        FilePath(context.outputDirectory).appending(context.snapshotID).string
    }

    /// One file to copy: a level of a disk's chain, where its copy goes, and the level below it.
    struct Item: Equatable {
        var source: String
        var target: String
        /// The parent level's copy (nil for a base or a raw disk): the copy is re-pointed at it.
        var parentTarget: String?
        /// A leaf (the file a guest writes to): copied while frozen. Every other level is a parent
        /// with children, which is never written, so it is copied before the freeze.
        var isLeaf: Bool
    }

    /// A snapshot's plan, made at prepare and kept until the end of the snapshot, so the frozen
    /// part does not open (and read the tables of) every chain again.
    private static let plans = Mutex<[String: (items: [Item], leaves: [String])]>([:])

    /// The plan `prepare` made for this snapshot (made now when there is none).
    static func cachedPlan(_ disks: [String], _ context: SnapshotContext) throws -> (items: [Item], leaves: [String]) {
        if let plan = plans.withLock({ $0[context.snapshotID] }) { return plan }
        let plan = try self.plan(disks, context)
        plans.withLock { $0[context.snapshotID] = plan }
        return plan
    }

    /// Forgets the snapshot's plan (at its end).
    static func forgetPlan(_ context: SnapshotContext) {
        _ = plans.withLock { $0.removeValue(forKey: context.snapshotID) }
    }

    /// The copy plan of `disks`: every level of every chain once (two disks may share a base), bases
    /// first, each copy named after its file (with `-2`, `-3` before the extension when two levels
    /// share a name). `leaves[i]` is the copy of `disks[i]`.
    static func plan(_ disks: [String], _ context: SnapshotContext) throws -> (items: [Item], leaves: [String]) {
        let dir = FilePath(directory(context))
        var items: [Item] = []
        var names: Set<String> = []
        var bySource: [String: Int] = [:]
        var leaves: [String] = []
        for disk in disks {
            let levels = try chainLevels(of: disk)  // leaf first
            var parentTarget: String?
            for (depth, level) in levels.enumerated().reversed() {
                let source = Paths.canonical(level)
                if let i = bySource[source] {
                    if depth == 0 { items[i].isLeaf = true }
                    parentTarget = items[i].target
                    continue
                }
                let target = dir.appending(uniqueName(Paths.baseName(source), taken: &names)).string
                bySource[source] = items.count
                items.append(Item(source: source, target: target, parentTarget: parentTarget, isLeaf: depth == 0))
                parentTarget = target
            }
            leaves.append(items[bySource[Paths.canonical(disk)]!].target)
        }
        return (items, leaves)
    }

    /// Every file of `disks`' chains (leaf first per disk).
    static func chainFiles(of disks: [String]) throws -> [String] {
        try disks.flatMap { try chainLevels(of: $0) }
    }

    /// The files of `disk`'s chain, leaf first: just the disk for a raw image or a base. Parents are
    /// found and verified the way the disk engine opens a chain.
    static func chainLevels(of disk: String) throws -> [String] {
        guard FileOps.exists(FilePath(disk)) else {
            throw ShadowCopyError.providerFailed(provider: "snapshot", reason: "\(disk): no such file")
        }
        let format = try DiskImages.detectFormat(FilePath(disk))
        guard format == .vhd || format == .vhdx else { return [disk] }
        let chain = try DiskChain.open(FilePath(disk))
        defer { try? chain.close() }
        return chain.levels.map { $0.path.string }
    }

    private static func uniqueName(_ name: String, taken: inout Set<String>) -> String {
        var candidate = name
        var n = 2
        let path = FilePath(name)
        while taken.contains(candidate) {
            let stem = path.stem ?? name
            candidate = path.extension.map { "\(stem)-\(n).\($0)" } ?? "\(stem)-\(n)"
            n += 1
        }
        taken.insert(candidate)
        return candidate
    }

    /// Creates the snapshot's folder inside the output folder (checked by the coordinator).
    static func makeDirectory(_ context: SnapshotContext, provider: String) throws {
        var st = stat()
        guard stat(context.outputDirectory, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else {
            throw ShadowCopyError.providerFailed(provider: provider, reason: "output folder \(context.outputDirectory) does not exist")
        }
        let dir = directory(context)
        if mkdir(dir, 0o755) != 0, errno != EEXIST {
            throw ShadowCopyError.providerFailed(provider: provider, reason: "cannot create \(dir): \(Errno(rawValue: errno))")
        }
    }

    /// Points each copied child at its copied parent (relative and absolute locators of the copies,
    /// through the disk engine's reparent), so the copy never reads the live chain.
    static func repoint(_ items: [Item]) throws {
        for item in items {
            guard let parent = item.parentTarget else { continue }
            _ = try ReparentOperation.reparent(child: FilePath(item.target), parent: FilePath(parent))
        }
    }

    /// Removes the copies and the snapshot's folder (after a failure).
    static func removeAll(_ context: SnapshotContext) {
        forgetPlan(context)
        let dir = directory(context)
        if let names = try? FileManager.default.contentsOfDirectory(atPath: dir) {
            for name in names { try? FileOps.remove(FilePath(dir).appending(name)) }
        }
        rmdir(dir)
    }

    /// fsyncs each file and the folder.
    static func sync(_ paths: [String], provider: String) throws {
        for p in paths {
            let f = try BlockFile.open(FilePath(p), writable: false)
            defer { try? f.close() }
            try f.flush()
            try FileOps.syncDirectory(of: FilePath(p))
        }
    }

    /// After the thaw, for the providers that copy (or reflink) whole chains: re-points each copied
    /// level at the copy of its parent and makes the copies durable.
    static func finishCopies(_ context: SnapshotContext, provider: String) async throws {
        try await BlockingPool.disk.run {
            defer { forgetPlan(context) }
            let (items, _) = try cachedPlan(context.disks, context)
            try repoint(items)
            try sync(items.map(\.target), provider: provider)
        }
    }
}
