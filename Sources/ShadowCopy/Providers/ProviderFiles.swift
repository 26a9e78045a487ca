#if canImport(Glibc)
import Glibc
#endif
import SystemPackage
import VirtualDisk
import Storage

/// Where providers put copies: `<output>/<snapshot id>/<disk file name>`.
enum ProviderFiles {
    static func directory(_ context: SnapshotContext) -> String {
        FilePath(context.outputDirectory).appending(context.snapshotID).string
    }

    static func copyPath(of disk: String, _ context: SnapshotContext) -> String {
        FilePath(directory(context)).appending(Paths.baseName(disk)).string
    }

    /// Creates the snapshot's folder (the output folder must exist).
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

    /// Removes the copies and the snapshot's folder (after a failure).
    static func removeAll(_ disks: [String], _ context: SnapshotContext) {
        for d in disks { try? FileOps.remove(FilePath(copyPath(of: d, context))) }
        rmdir(directory(context))
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
}
