#if canImport(Glibc)
import Glibc
#endif
import CLinux
import Foundation
import SystemPackage
import Storage

/// Point-in-time copy by reflink (FICLONE): the copy shares the disk file's extents, so it takes
/// milliseconds whatever the size. Needs the copy on the same filesystem as the disk, and a
/// filesystem that can share extents: xfs made with `reflink=1`, or btrfs. ext4 cannot (EOPNOTSUPP);
/// `prepare` finds that out with a probe clone before anything is frozen. A differencing disk is
/// cloned with its whole chain (the parents before the freeze) and the clones re-pointed at each
/// other after the thaw, so the snapshot stands alone.
public struct ReflinkProvider: SnapshotProvider {
    public init() {}
    public var name: String { "reflink" }

    public func prepare(disks: [String], context: SnapshotContext) async throws {
        try ProviderFiles.makeDirectory(context, provider: name)
        let dir = ProviderFiles.directory(context)
        try await BlockingPool.disk.run {
            let (items, _) = try ProviderFiles.cachedPlan(disks, context)
            for item in items where Paths.device(of: item.source) != Paths.device(of: dir) {
                throw ShadowCopyError.reflinkUnsupported(source: item.source, destination: dir, reason: "a reflink copy must be on the same filesystem as the disk; choose an output folder on it or use the copy provider")
            }
            try Self.probe(in: dir, source: disks.first ?? dir)
            for item in items where !item.isLeaf { try Self.clone(item.source, to: item.target) }
        }
    }

    /// Clones an empty probe file inside `dir` to learn whether the filesystem can reflink.
    static func probe(in dir: String, source: String) throws {
        let a = FilePath(dir).appending(".reflink-probe-a").string, b = FilePath(dir).appending(".reflink-probe-b").string
        let fa = open(a, O_CREAT | O_RDWR | O_TRUNC | O_CLOEXEC, 0o600), fb = open(b, O_CREAT | O_RDWR | O_TRUNC | O_CLOEXEC, 0o600)
        defer {
            if fa >= 0 { close(fa) }
            if fb >= 0 { close(fb) }
            unlink(a); unlink(b)
        }
        guard fa >= 0, fb >= 0 else { throw ShadowCopyError.providerFailed(provider: "reflink", reason: "cannot create a probe file in \(dir): \(Errno(rawValue: errno))") }
        _ = write(fa, "probe", 5)
        if bulwark_ficlone(fb, fa) != 0 {
            throw ShadowCopyError.reflinkUnsupported(source: source, destination: dir, reason: explain(Errno(rawValue: errno)))
        }
    }

    static func explain(_ e: Errno) -> String {
        switch e {
        case .notSupported, .notSupportedOnSocket, .invalidArgument, .inappropriateIOCTLForDevice:
            return "the filesystem cannot share extents (FICLONE failed: \(e), errno \(e.rawValue)\(e == .notSupported ? " EOPNOTSUPP" : "")); reflink needs xfs with reflink=1 or btrfs (ext4 has none); use the copy provider"
        case .improperLink:
            return "the copy is on another filesystem (FICLONE: EXDEV)"
        default:
            return "FICLONE failed: \(e) (errno \(e.rawValue))"
        }
    }

    public func snapshot(disks: [String], context: SnapshotContext, deadline: Date) async throws -> ProviderSnapshot {
        let leaves = try await BlockingPool.disk.run {
            let (items, leaves) = try ProviderFiles.cachedPlan(disks, context)
            for item in items where item.isLeaf { try Self.clone(item.source, to: item.target) }
            return leaves
        }
        return ProviderSnapshot(copies: leaves)
    }

    /// FICLONE of the whole of `source` into a new file `target`.
    static func clone(_ source: String, to target: String) throws {
        let src = open(source, O_RDONLY | O_CLOEXEC)
        guard src >= 0 else { throw ShadowCopyError.providerFailed(provider: "reflink", reason: "\(source): open: \(Errno(rawValue: errno))") }
        defer { close(src) }
        let dst = open(target, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o644)
        guard dst >= 0 else { throw ShadowCopyError.providerFailed(provider: "reflink", reason: "\(target): create: \(Errno(rawValue: errno))") }
        defer { close(dst) }
        if bulwark_ficlone(dst, src) != 0 {
            let e = Errno(rawValue: errno)
            unlink(target)
            throw ShadowCopyError.reflinkUnsupported(source: source, destination: target, reason: Self.explain(e))
        }
    }

    public func finish(_ snapshot: ProviderSnapshot, context: SnapshotContext) async throws {
        try await ProviderFiles.finishCopies(context, provider: "reflink")
    }

    public func abort(disks: [String], context: SnapshotContext) async {
        ProviderFiles.removeAll(context)
    }
}
