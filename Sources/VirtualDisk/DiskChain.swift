#if canImport(Glibc)
import Glibc
#endif
import SystemPackage
import struct Foundation.UUID
import Storage

/// An open leaf image with its parents resolved and verified, leaf first.
///
/// Parents are found through the child's locators (relative first, then absolute), and each must
/// carry the identity the child recorded. Only the leaf is ever opened writable.
public struct DiskChain: Closable {
    /// Every level, leaf first, base last.
    public let levels: [any DiskImage]
    /// The image reads and writes go to.
    public var leaf: any DiskImage { levels[0] }
    /// The bottom of the chain.
    public var base: any DiskImage { levels[levels.count - 1] }

    public init(levels: [any DiskImage]) { self.levels = levels }

    /// Opens `path` and all its parents, in `space` (the leaf's space: parents are found there by
    /// their locators, so a chain on a share is read straight off the share). `acceptsMismatch(child,
    /// parent)`, when given, may excuse a parent whose identity differs from the child's record (a
    /// merge in progress; see `PendingMergeChain`); everything else is checked as always. `format`
    /// applies to the leaf only (nil detects it); parents are always detected. `pendingMerges` says how
    /// merge records beside the levels are honoured: by default a chain being merged reads through the
    /// merge, and what would see it mid-change is refused (local files only).
    public static func open(_ path: FilePath, writable: Bool = false, format: DiskFormat? = nil, in space: any StoreSpace = LocalFileSystem(),
                            acceptsMismatch: ((FilePath, FilePath) -> Bool)? = nil,
                            pendingMerges: PendingMergePolicy = .guarded) throws -> DiskChain {
        let before = space is LocalFileSystem ? fileID(path) : nil
        do {
            return try openOnce(path, writable: writable, format: format, in: space, acceptsMismatch: acceptsMismatch, pendingMerges: pendingMerges)
        } catch let error as DiskError {
            // A merge that finished while the chain was being opened gives the merged image the leaf's
            // name and removes the levels above the base: the leaf read first then finds its parent
            // gone. When the name now holds another file (or none), the chain is opened again as it
            // is now, once; a parent missing for any other reason is reported as it is.
            guard case .parentNotFound = error, let before, fileID(path) != before else { throw error }
            return try openOnce(path, writable: writable, format: format, in: space, acceptsMismatch: acceptsMismatch, pendingMerges: pendingMerges)
        }
    }

    /// The device and inode `path` names now (local files), nil when nothing is there.
    private static func fileID(_ path: FilePath) -> [UInt64]? {
        var st = stat()
        guard stat(path.string, &st) == 0 else { return nil }
        return [UInt64(st.st_dev), UInt64(st.st_ino)]
    }

    private static func openOnce(_ path: FilePath, writable: Bool, format: DiskFormat?, in space: any StoreSpace,
                                 acceptsMismatch: ((FilePath, FilePath) -> Bool)?, pendingMerges: PendingMergePolicy) throws -> DiskChain {
        let guarded = pendingMerges == .guarded && space is LocalFileSystem
        // The link from a merging child to its changed ancestor is accepted in any space (records are
        // read through it); refusals of what would see a merge mid-change need local locks and PIDs.
        let mergeLink: ((FilePath, FilePath) -> Bool)? = pendingMerges == .guarded
            ? { PendingMergeChain.acceptsMergeLink(child: $0, parent: $1, in: space) } : nil
        let accepts = acceptsMismatch ?? mergeLink
        let leaf: any DiskImage
        do {
            leaf = try DiskImages.openLevel(path, writable: writable, format: format, in: space)
        } catch let error as StorageError where guarded {
            throw PendingMergeChain.explain(error, opening: path)
        }
        var levels: [any DiskImage] = [leaf]
        var seen: [String] = [space.canonical(path).string]
        do {
            while let link = levels.last!.parentLink {
                let child = levels.last!
                let parentPath = try resolveParent(of: child.path, link: link, in: space)
                let canonical = space.canonical(parentPath).string
                if seen.contains(canonical) {
                    throw DiskError.chainLoop(path: path.string, chain: seen + [canonical])
                }
                let parent: any DiskImage
                do {
                    parent = try DiskImages.openLevel(parentPath, writable: false, in: space)
                } catch let StorageError.notAFile(_, kind) {
                    // A FIFO, socket or folder where the parent should be: refused at once (never opened blocking).
                    throw DiskError.unsupported(path: child.path.string, reason: "its parent locator leads to \(parentPath.string), which is a \(kind), not an image file; put the parent image there (or point the child elsewhere with reparent)")
                }
                levels.append(parent)
                seen.append(canonical)
                guard parent.format == child.format else {
                    throw DiskError.unsupported(path: child.path.string, reason: "its parent \(parentPath.string) is \(parent.format.rawValue.uppercased()) but the child is \(child.format.rawValue.uppercased()); a chain must use one format (convert the parent first)")
                }
                guard parent.identity == link.expectedID || accepts?(child.path, parentPath) == true else {
                    throw DiskError.parentMismatch(child: child.path.string, parent: parentPath.string,
                                                   expectedID: link.expectedID.uuidString.lowercased(),
                                                   foundID: parent.identityString)
                }
                try child.attachParent(parent)
            }
            if guarded { try PendingMergeChain.guardChain(levels.map(\.path), writable: writable) }
        } catch {
            for level in levels { try? level.close() }
            throw error
        }
        return DiskChain(levels: levels)
    }

    /// The candidate file paths for a child's parent, in the order they are tried.
    public static func candidatePaths(of childPath: FilePath, link: ParentLink,
                                      in space: any StoreSpace = LocalFileSystem()) -> [FilePath] {
        var out: [FilePath] = []
        let dir = space.absolute(childPath).removingLastComponent()
        for locator in link.locators.sorted(by: { order($0.kind) < order($1.kind) }) {
            var p = locator.path.replacingAll("\\", with: "/")
            guard !p.isEmpty else { continue }
            switch locator.kind {
            case .relative:
                if p.hasPrefix("./") { p.removeFirst(2) }
                let candidate = FilePath(p).isAbsolute ? FilePath(p) : dir.pushing(FilePath(p))
                out.append(candidate.lexicallyNormalized())
            case .absolute, .volume:
                // A POSIX path is used as it is; a Windows path (C:/..., //?/Volume{...}/...) cannot
                // be opened here, so its last component is looked for beside the child.
                if p.hasPrefix("/") && !p.hasPrefix("//") {
                    out.append(FilePath(p).lexicallyNormalized())
                } else if let name = p.split(separator: "/").last {
                    out.append(dir.appending(String(name)))
                }
            }
        }
        var unique: [FilePath] = []
        for p in out where !unique.contains(p) { unique.append(p) }
        return unique
    }

    private static func order(_ kind: ParentLocator.Kind) -> Int {
        switch kind { case .relative: 0; case .absolute: 1; case .volume: 2 }
    }

    static func resolveParent(of childPath: FilePath, link: ParentLink, in space: any StoreSpace) throws -> FilePath {
        let candidates = candidatePaths(of: childPath, link: link, in: space)
        // The first candidate that exists is opened (a FIFO or folder there fails the open with a
        // clear error rather than being skipped silently).
        for c in candidates where space.exists(c) { return c }
        throw DiskError.parentNotFound(child: childPath.string, tried: candidates.map(\.string),
                                       expectedID: link.expectedID.uuidString.lowercased())
    }

    /// Flushes and closes every level.
    public func close() throws {
        var firstError: Error?
        for level in levels {
            do { try level.close() } catch { if firstError == nil { firstError = error } }
        }
        if let firstError { throw firstError }
    }

    /// Which level supplies each byte of `range`: a run of data at a level, or zeros.
    public func map(_ range: Range<UInt64>? = nil) throws -> [MappedExtent] {
        let whole = range ?? 0..<leaf.virtualSize
        var out: [MappedExtent] = []
        try mapLevel(0, whole, into: &out)
        // Join neighbours with the same source.
        var joined: [MappedExtent] = []
        for m in out {
            if var last = joined.last, last.range.upperBound == m.range.lowerBound, last.level == m.level, last.isZero == m.isZero {
                last.range = last.range.lowerBound..<m.range.upperBound
                joined[joined.count - 1] = last
            } else {
                joined.append(m)
            }
        }
        return joined
    }

    private func mapLevel(_ index: Int, _ range: Range<UInt64>, into out: inout [MappedExtent]) throws {
        guard index < levels.count else {
            out.append(MappedExtent(range: range, level: nil, isZero: true))
            return
        }
        let level = levels[index]
        let inside = range.clamped(to: 0..<level.virtualSize)
        for e in try level.extents(in: inside) {
            switch e.kind {
            case .data: out.append(MappedExtent(range: e.range, level: index, isZero: false))
            case .zero: out.append(MappedExtent(range: e.range, level: index, isZero: true))
            case .unallocated: try mapLevel(index + 1, e.range, into: &out)
            }
        }
        if inside.upperBound < range.upperBound {
            out.append(MappedExtent(range: inside.upperBound..<range.upperBound, level: nil, isZero: true))
        }
    }
}

/// A run of virtual bytes and where it comes from.
public struct MappedExtent: Equatable, Sendable, Codable {
    public var range: Range<UInt64>
    /// The chain level (0 = leaf) that holds the run, or nil when no level does (it reads as zeros).
    public var level: Int?
    /// Whether the run reads as zeros (unallocated everywhere, or a level's explicit zero block).
    public var isZero: Bool
    public init(range: Range<UInt64>, level: Int?, isZero: Bool) {
        self.range = range
        self.level = level
        self.isZero = isZero
    }
}

extension String {
    func replacingAll(_ target: Character, with replacement: String) -> String {
        split(separator: target, omittingEmptySubsequences: false).joined(separator: replacement)
    }
}
