#if canImport(Glibc)
import Glibc
#endif
import SystemPackage
import Storage

/// Path helpers.
enum Paths {
    /// The canonical absolute path (symlinks resolved) when the file exists, else the absolute path.
    static func canonical(_ path: String) -> String { FileOps.canonical(FilePath(path)).string }

    /// The device (st_dev) of the filesystem holding `path`, or nil when it cannot be stat'ed.
    static func device(of path: String) -> UInt64? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return UInt64(st.st_dev)
    }

    /// The file name of `path`.
    static func baseName(_ path: String) -> String { FilePath(path).lastComponent?.string ?? path }
}

/// The current time as seconds (CLOCK_MONOTONIC).
enum Clock {
    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
