import Storage
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The embedded default target: a folder on a local filesystem (a second disk, a NAS mounted by the
/// system, a USB drive). Publishing is a hidden temporary file, fsync, rename (never over an existing
/// name) and an fsync of the folder.
public struct LocalDirectoryTarget: BackupTarget {
    public let root: FilePath
    public var space: any StoreSpace { LocalFileSystem() }
    public var location: String { root.string }

    public init(path: FilePath) { root = LocalFileSystem().absolute(path) }

    public func publish(_ bytes: [UInt8], at path: FilePath) throws { try publishThroughSpace(bytes, at: path) }

    public func read(_ path: FilePath, limit: Int) throws -> [UInt8] { try readThroughSpace(path, limit: limit) }

    public func writableProblem() -> String? {
        var probe = root
        // The target folder is made by the first job when its parent exists and is writable.
        while !FileOps.exists(probe) {
            let up = probe.removingLastComponent()
            guard up != probe, !up.isEmpty else { return "no folder on the way to \(root) exists" }
            probe = up
        }
        guard LocalFileSystem().kind(of: probe) == .directory else { return "\(probe) is not a folder" }
        if access(probe.string, W_OK | X_OK) != 0 { return "\(probe) is not writable by this user (uid \(getuid()))" }
        var st = statvfs()
        if statvfs(probe.string, &st) == 0, st.f_flag & UInt(ST_RDONLY) != 0 { return "\(probe) is on a read-only filesystem" }
        return nil
    }
}
