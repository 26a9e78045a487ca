#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SystemPackage

/// The folder a snapshot writes into, made and checked before any writer is prepared or frozen: a
/// copy that can only fail once the guest is frozen should fail before.
public struct OutputFolder: Codable, Sendable, Equatable {
    /// The canonical path.
    public var path: String
    /// The type of the filesystem holding it (`ext4`, `xfs`, `btrfs`, ...), as the mount table says.
    public var filesystem: String
    /// Whether the snapshot created it (with its missing parents).
    public var created: Bool

    /// Creates `path` (and its parents) when missing, then checks that it is a folder we can create
    /// files in (a probe file, so a read-only mount or a permission problem shows here).
    public static func prepare(_ path: String) throws -> OutputFolder {
        var st = stat()
        var created = false
        if stat(path, &st) != 0 {
            guard errno == ENOENT else { throw unusable(path, "cannot look at it", Errno(rawValue: errno)) }
            if let e = makeDirectories(path) { throw unusable(path, "it does not exist and cannot be created", e) }
            created = true
            guard stat(path, &st) == 0 else { throw unusable(path, "cannot look at it after creating it", Errno(rawValue: errno)) }
        }
        guard st.st_mode & S_IFMT == S_IFDIR else {
            throw ShadowCopyError.outputUnusable(path: path, reason: "it is not a folder; choose a folder for the copies")
        }
        let probe = FilePath(path).appending(".bulwark-probe-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").string
        let fd = open(probe, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw unusable(path, "cannot create files in it", Errno(rawValue: errno)) }
        close(fd)
        unlink(probe)
        let canonical = Paths.canonical(path)
        return OutputFolder(path: canonical, filesystem: filesystemType(of: canonical) ?? "unknown", created: created)
    }

    /// The filesystem type of the mount holding `path` (the longest mount point that contains it, in
    /// /proc/self/mountinfo), or nil when the table cannot be read.
    public static func filesystemType(of path: String) -> String? {
        guard let table = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return nil }
        let target = Paths.canonical(path)
        var best: (length: Int, type: String)?
        for line in table.split(separator: "\n") {
            // ID parent major:minor root MOUNTPOINT options... - TYPE source superoptions
            let halves = line.components(separatedBy: " - ")
            let fields = halves[0].split(separator: " ")
            guard halves.count >= 2, fields.count >= 5, let type = halves[1].split(separator: " ").first else { continue }
            let mountpoint = unescape(String(fields[4]))
            let inside = mountpoint == "/" || target == mountpoint || target.hasPrefix(mountpoint + "/")
            if inside, mountpoint.count >= best?.length ?? -1 { best = (mountpoint.count, String(type)) }
        }
        return best?.type
    }

    /// mountinfo escapes space, tab, newline and backslash as \ooo.
    private static func unescape(_ s: String) -> String {
        guard s.contains("\\") else { return s }
        var out: [UInt8] = []
        let b = Array(s.utf8)
        var i = 0
        while i < b.count {
            if b[i] == 0x5C, i + 3 < b.count,
               let v = UInt8(String(decoding: b[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                out.append(v)
                i += 4
            } else {
                out.append(b[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    private static func unusable(_ path: String, _ what: String, _ e: Errno) -> ShadowCopyError {
        let next: String
        switch e {
        case .readOnlyFileSystem: next = "its filesystem is mounted read-only; choose another output folder"
        case .permissionDenied, .notPermitted: next = "run as a user who may write there, or choose another output folder"
        case .noSpace: next = "its filesystem is full; free space or choose another output folder"
        default: next = "choose another output folder"
        }
        return .outputUnusable(path: path, reason: "\(what): \(e) (errno \(e.rawValue)); \(next)")
    }

    /// `mkdir -p`; returns the errno of the first mkdir that failed (nil when done).
    private static func makeDirectories(_ path: String) -> Errno? {
        var current = FilePath(path).isAbsolute ? FilePath("/") : FilePath(".")
        for component in FilePath(path).components {
            current.append(component)
            if mkdir(current.string, 0o755) != 0, errno != EEXIST { return Errno(rawValue: errno) }
        }
        return nil
    }
}
