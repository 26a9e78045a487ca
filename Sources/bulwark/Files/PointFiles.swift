import ArgumentParser
import Dispatch
import FileSets
import Foundation
import Mount
import Storage
import Synchronization
import SystemPackage

/// Why listing or restoring files of a point failed.
enum FilesError: Error, CustomStringConvertible {
    case pathMissing(path: String, volume: String)
    case noVolumeHolds(path: String, volumes: [String])
    case badPath(path: String, reason: String)
    case volumeAmbiguous(volumes: [String])
    case volumeNotFound(number: Int, volumes: [String])
    case noFilesystem
    case destinationNotEmpty(path: String)
    case tool(command: String, status: Int32, output: String)
    case needsRoot

    var description: String {
        switch self {
        case let .pathMissing(path, volume): return "\(path): no such file or folder on volume \(volume)"
        case let .noVolumeHolds(path, volumes): return "\(path): on none of the volumes: \(volumes.joined(separator: "; "))"
        case let .badPath(path, reason): return "\(path): \(reason)"
        case let .volumeAmbiguous(volumes): return "the disk has several volumes; choose one with --volume N: \(volumes.joined(separator: "; "))"
        case let .volumeNotFound(number, volumes): return "volume \(number): no such volume with a filesystem; the volumes: \(volumes.joined(separator: "; "))"
        case .noFilesystem: return "the disk has no volume with a filesystem Linux recognizes"
        case let .destinationNotEmpty(path): return "\(path): exists and is not an empty folder; restore into a new or empty folder"
        case .needsRoot: return "listing or restoring files needs root (the volume is loop-mounted read-only); run it with sudo, or mount the point with `bulwark mount` and loop-mount a partition yourself"
        case let .tool(command, status, output): return "\(command) failed (status \(status)): \(output.trimmingCharacters(in: .whitespacesAndNewlines))"
        }
    }

    var status: Int32 {
        switch self {
        case .pathMissing, .noVolumeHolds, .volumeNotFound, .noFilesystem: ExitStatus.notFound
        case .badPath, .volumeAmbiguous: ExitStatus.usage
        case .destinationNotEmpty: ExitStatus.refused
        case .tool, .needsRoot: ExitStatus.failed
        }
    }
}

/// One volume of a mounted point: a partition (`number` as in `partN`), or the whole disk (0) when
/// it has no partition table.
struct PointVolume: Encodable {
    var number: Int
    var size: UInt64
    var filesystem: String?
    var offset: UInt64
    var label: String { "\(number) (\(ByteCount.format(size)), \(filesystem ?? "no filesystem"))" }
}

/// Runs a program, returning its status and what it printed (both streams).
@discardableResult
func runTool(_ path: String, _ arguments: [String], in directory: String? = nil, check: Bool = true,
             started: (Process?) -> Void = { _ in }) throws -> (status: Int32, output: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = arguments
    if let directory { p.currentDirectoryURL = URL(fileURLWithPath: directory) }
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = pipe
    p.standardInput = FileHandle.nullDevice
    try p.run()
    started(p)
    defer { started(nil) }
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    let output = String(decoding: data, as: UTF8.self)
    if check && p.terminationStatus != 0 {
        throw FilesError.tool(command: ([path] + arguments).joined(separator: " "), status: p.terminationStatus, output: output)
    }
    return (p.terminationStatus, output)
}

func systemTool(_ name: String) -> String {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] where access(dir + "/" + name, X_OK) == 0 { return dir + "/" + name }
    return name
}

/// A point's disk mounted in this process on a temporary folder, with one volume at a time
/// loop-mounted read-only beside it. `close` unmounts everything and removes the folders. On
/// SIGINT/SIGTERM/SIGHUP the handler stops the running program (cp), waits for a mount in progress
/// to be recorded, closes and exits; the command's own thread stops at its next step, so that it
/// never exits first with a mount half undone.
final class PointFilesystem: @unchecked Sendable {
    let folder: String
    private(set) var volumes: [PointVolume] = []
    private var root: String { folder + "/volume" }
    struct State {
        var closed = false
        var mounted = false
        var interrupted = false
        var disk: DiskMount?
        var child: Process?
    }
    private let state = Mutex<State>(State())
    /// Held while a mount is made and recorded: the handler's close waits for it.
    private let mounting = NSLock()
    private var signals: [any DispatchSourceSignal] = []

    init(_ point: PointDiskOptions) throws {
        guard geteuid() == 0 else { throw FilesError.needsRoot }
        var template = Array("/tmp/bulwark-files.XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else {
            throw StorageError.io(path: "/tmp", operation: "mkdtemp", errno: Errno(rawValue: errno))
        }
        folder = String(cString: made)
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler { [self] in
                // If the command is closing already, it finishes that and exits by itself.
                let mine = state.withLock { s -> Bool in
                    if s.closed { return false }
                    s.interrupted = true
                    return true
                }
                guard mine else { return }
                if let child = state.withLock({ $0.child }), child.isRunning { child.terminate() }
                mounting.lock()
                close()
                exit(128 + sig)
            }
            source.resume()
            signals.append(source)
        }
        let mount: DiskMount
        do {
            try FileManager.default.createDirectory(atPath: folder + "/disk", withIntermediateDirectories: false)
            try FileManager.default.createDirectory(atPath: folder + "/volume", withIntermediateDirectories: false)
            let disk = try point.openDisk()
            stopIfInterrupted()
            // Not interrupted inside: the handler waits for the lock before it closes.
            mounting.lock()
            defer { mounting.unlock() }
            do {
                mount = try DiskMount.mount(disk: disk, at: FilePath(folder + "/disk"))
            } catch {
                try? disk.close()
                throw error
            }
            state.withLock { $0.disk = mount }
        } catch {
            close()
            throw error
        }
        let parts = mount.files.filter { $0.partition != nil }
        let files = parts.isEmpty ? mount.files : parts
        let base = folder + "/disk/"
        volumes = files.map { f in
            let number = f.partition == nil ? 0 : Int(f.name.dropFirst(4)) ?? 0
            let probe = try? runTool(systemTool("blkid"), ["-p", "-o", "value", "-s", "TYPE", base + f.name], check: false)
            let type = probe.flatMap { $0.status == 0 ? $0.output.trimmingCharacters(in: .whitespacesAndNewlines) : nil }
            return PointVolume(number: number, size: f.size, filesystem: type?.isEmpty == false ? type : nil, offset: f.offset)
        }
    }

    var labels: [String] { volumes.map(\.label) }

    /// On the command's thread after a signal: waits for the exit the signal's handler makes.
    private func stopIfInterrupted() {
        guard state.withLock({ $0.interrupted }) else { return }
        while true { pause() }
    }

    /// Runs a program (cp) as the command's current child, which an interruption stops.
    @discardableResult
    func run(_ path: String, _ arguments: [String], in directory: String? = nil, check: Bool = true) throws -> (status: Int32, output: String) {
        stopIfInterrupted()
        do {
            return try runTool(path, arguments, in: directory, check: check) { p in self.state.withLock { $0.child = p } }
        } catch {
            stopIfInterrupted()
            throw error
        }
    }

    /// The volume to use: `number`, else the only one with a filesystem, else the only one on which
    /// every path exists.
    func choose(_ number: Int?, paths: [String]) throws -> PointVolume {
        let usable = volumes.filter { $0.filesystem != nil }
        if let number {
            guard let v = usable.first(where: { $0.number == number }) else { throw FilesError.volumeNotFound(number: number, volumes: labels) }
            return v
        }
        guard !usable.isEmpty else { throw FilesError.noFilesystem }
        if usable.count == 1 { return usable[0] }
        guard !paths.isEmpty else { throw FilesError.volumeAmbiguous(volumes: labels) }
        var holding: [PointVolume] = []
        for v in usable {
            let root = try mountVolume(v)
            let all = paths.allSatisfy { (try? Self.resolve($0, in: root)) != nil }
            try unmountVolume()
            if all { holding.append(v) }
        }
        if holding.count == 1 { return holding[0] }
        if holding.isEmpty { throw FilesError.noVolumeHolds(path: paths.joined(separator: ", "), volumes: labels) }
        throw FilesError.volumeAmbiguous(volumes: holding.map(\.label))
    }

    /// Loop-mounts a volume read-only (no journal replay) and returns the folder it is on.
    func mountVolume(_ v: PointVolume) throws -> String {
        let options: String
        switch v.filesystem ?? "" {
        case "ext3", "ext4": options = "ro,loop,noload,nodev,nosuid,noexec"
        case "xfs": options = "ro,loop,norecovery,nodev,nosuid,noexec"
        default: options = "ro,loop,nodev,nosuid,noexec"
        }
        let file = folder + "/disk/" + (v.number == 0 ? "disk" : "part\(v.number)")
        stopIfInterrupted()
        mounting.lock()
        defer { mounting.unlock() }
        try runTool(systemTool("mount"), ["-o", options, file, root])
        state.withLock { $0.mounted = true }
        return root
    }

    func unmountVolume() throws {
        stopIfInterrupted()
        guard state.withLock({ $0.mounted }) else { return }
        try runTool(systemTool("umount"), [root])
        state.withLock { $0.mounted = false }
    }

    /// Unmounts the volume and the disk (lazily when busy) and removes the folders. Runs once.
    func close() {
        let (wasClosed, mounted, disk) = state.withLock { s -> (Bool, Bool, DiskMount?) in
            defer { s.closed = true; s.mounted = false; s.disk = nil }
            return (s.closed, s.mounted, s.disk)
        }
        guard !wasClosed else { return stopIfInterrupted() }
        if mounted, (try? runTool(systemTool("umount"), [root])) == nil {
            _ = try? runTool(systemTool("umount"), ["-l", root], check: false)
        }
        if let disk {
            if (try? disk.unmount()) == nil { try? disk.unmount(lazy: true) }
            disk.wait()
        }
        _ = rmdir(folder + "/volume")
        _ = rmdir(folder + "/disk")
        _ = rmdir(folder)
    }

    /// `path` relative to the volume root (no `..`, no symbolic link on the way to it), checked to
    /// exist; "" is the root itself.
    static func resolve(_ path: String, in root: String) throws -> String {
        let parts = path.split(separator: "/").map(String.init).filter { $0 != "." }
        if parts.contains("..") { throw FilesError.badPath(path: path, reason: "`..` is not allowed; give the path from the volume's root") }
        var st = stat()
        for i in parts.indices {
            let p = root + "/" + parts[0...i].joined(separator: "/")
            guard lstat(p, &st) == 0 else { throw FilesError.pathMissing(path: path, volume: "") }
            if i < parts.count - 1 && (st.st_mode & S_IFMT) != S_IFDIR {
                if (st.st_mode & S_IFMT) == S_IFLNK {
                    throw FilesError.badPath(path: path, reason: "/\(parts[0...i].joined(separator: "/")) is a symbolic link; give the path it points to")
                }
                throw FilesError.pathMissing(path: path, volume: "")
            }
        }
        return parts.joined(separator: "/")
    }

    func resolve(_ path: String, volume: PointVolume, root: String) throws -> String {
        do { return try Self.resolve(path, in: root) } catch FilesError.pathMissing {
            throw FilesError.pathMissing(path: path, volume: volume.label)
        }
    }
}

/// One entry of a listing.
struct FileEntry: Encodable {
    var path: String
    var type: String
    var size: UInt64
    var mode: String
    var uid: UInt32
    var gid: UInt32
    var mtime: String
    var target: String?

    static func at(_ full: String, path: String) -> FileEntry? {
        var st = stat()
        guard lstat(full, &st) == 0 else { return nil }
        let type: String
        switch st.st_mode & S_IFMT {
        case S_IFDIR: type = "directory"
        case S_IFREG: type = "file"
        case S_IFLNK: type = "symlink"
        case S_IFCHR: type = "char-device"
        case S_IFBLK: type = "block-device"
        case S_IFIFO: type = "fifo"
        case S_IFSOCK: type = "socket"
        default: type = "other"
        }
        let target = type == "symlink" ? try? FileManager.default.destinationOfSymbolicLink(atPath: full) : nil
        let seconds = Double(st.st_mtim.tv_sec) + Double(st.st_mtim.tv_nsec) / 1e9
        return FileEntry(path: path, type: type, size: UInt64(st.st_size), mode: String(format: "%04o", st.st_mode & 0o7777),
                         uid: st.st_uid, gid: st.st_gid, mtime: Timestamp.iso8601(Date(timeIntervalSince1970: seconds)), target: target)
    }

    /// The entry at `rel` and, for a folder, everything under it (names sorted; links not followed).
    static func walk(root: String, rel: String) -> [FileEntry] {
        let full = rel.isEmpty ? root : root + "/" + rel
        guard let e = at(full, path: "/" + rel) else { return [] }
        var out = [e]
        if e.type == "directory" {
            let names = ((try? FileManager.default.contentsOfDirectory(atPath: full)) ?? []).sorted()
            for n in names { out += walk(root: root, rel: rel.isEmpty ? n : rel + "/" + n) }
        }
        return out
    }
}

struct FilesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "files",
        abstract: "Browse the files of a recovery point.",
        subcommands: [FilesList.self]
    )
}

struct FilesList: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List the files of a volume of a recovery point's disk (recursively under --path).",
        discussion: "Needs root: mounts the point's disk through FUSE on a temporary folder and loop-mounts the volume read-only (no journal replay), then unmounts both."
    )

    @OptionGroup var point: PointDiskOptions
    @Option(help: "The partition number (default: the only filesystem, else the one where --path exists).") var volume: Int?
    @Option(help: ArgumentHelp("The folder or file to list, from the volume's root.", valueName: "path")) var path: String = "/"
    @Option(help: "For a point of file sets: which set (default 0).") var fileset: Int?
    @OptionGroup var printing: OutputOptions

    struct Listing: Encodable {
        var volume: PointVolume?
        var fileSet: Int?
        var entries: [FileEntry]
    }

    func run() throws {
        if let files = try FileSetPoint.open(point, set: fileset) {
            let entries = try files.list(path)
            if printing.json { return try Output.json(Listing(volume: nil, fileSet: files.set.index, entries: entries)) }
            return try print(entries)
        }
        let fs = try PointFilesystem(point)
        defer { fs.close() }
        let v = try fs.choose(volume, paths: path == "/" ? [] : [path])
        let root = try fs.mountVolume(v)
        let rel = try fs.resolve(path, volume: v, root: root)
        let entries = FileEntry.walk(root: root, rel: rel)
        try fs.unmountVolume()
        if printing.json { return try Output.json(Listing(volume: v, fileSet: nil, entries: entries)) }
        try print(entries)
    }

    func print(_ entries: [FileEntry]) throws {
        var text = ""
        for e in entries {
            let link = e.target.map { " -> \($0)" } ?? ""
            text += "\(e.mode) \("\(e.uid):\(e.gid)".leftPad(11)) \(String(e.size).leftPad(12)) \(e.mtime) \(e.type.prefix(1)) \(e.path)\(link)\n"
        }
        try Output.out(Array(text.utf8))
    }
}

struct RestoreFiles: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "files",
        abstract: "Copy files and folders out of a recovery point's disk.",
        discussion: "Needs root. Each --path is copied under --to with the folders above it (--path /etc/hosts gives TO/etc/hosts), with modes, ownership, times and extended attributes; symbolic links are copied as links, never followed. --to must not exist or be an empty folder."
    )

    @OptionGroup var point: PointDiskOptions
    @Option(help: "The partition number (default: the only filesystem, else the one where the paths exist).") var volume: Int?
    @Option(name: .customLong("path"), help: ArgumentHelp("A file or folder to restore, from the volume's root (repeatable).", valueName: "path"))
    var paths: [String]
    @Option(name: .customLong("to"), help: ArgumentHelp("A new or empty folder to restore into.", valueName: "dir")) var destination: String
    @Option(help: "For a point of file sets: which set (default 0).") var fileset: Int?
    @OptionGroup var printing: OutputOptions

    struct Result: Encodable {
        var volume: PointVolume
        var destination: String
        var paths: [String]
        var entries: Int
    }

    func validate() throws {
        if paths.isEmpty { throw ValidationError("give at least one --path") }
    }

    func run() throws {
        let to = FileManager.default.currentDirectoryPath.appendingPathIfRelative(destination)
        if let files = try FileSetPoint.open(point, set: fileset) {
            let options = FileSetRestoreOptions(machine: files.points.machine, version: files.manifest.version, set: files.set.index,
                                                paths: paths, destination: FilePath(to))
            let result = try FileSetRestore.run(target: files.target, options: options)
            if printing.json { return try Output.json(result) }
            print("restored \(result.entries) entries (\(ByteCount.format(result.bytes))) of \(paths.joined(separator: ", ")) from file set \(result.set) of \(result.version) (archives of \(result.archives.joined(separator: ", "))) -> \(result.destination)")
            return
        }
        var st = stat()
        if lstat(to, &st) == 0 {
            let empty = (st.st_mode & S_IFMT) == S_IFDIR && ((try? FileManager.default.contentsOfDirectory(atPath: to)) ?? ["?"]).isEmpty
            guard empty else { throw FilesError.destinationNotEmpty(path: to) }
        }
        let fs = try PointFilesystem(point)
        defer { fs.close() }
        let v = try fs.choose(volume, paths: paths)
        let root = try fs.mountVolume(v)
        let rels = try paths.map { try fs.resolve($0, volume: v, root: root) }
        let created = lstat(to, &st) != 0
        if created { try FileManager.default.createDirectory(atPath: to, withIntermediateDirectories: true) }
        var count = 0
        do {
            for rel in rels {
                if rel.isEmpty {
                    try fs.run(systemTool("cp"), ["-a", "--preserve=all", "--no-target-directory", "--", root + "/.", to])
                } else {
                    try fs.run(systemTool("cp"), ["-a", "--preserve=all", "--parents", "--", rel, to], in: root)
                }
                count += FileEntry.walk(root: root, rel: rel).count
            }
        } catch {
            if created { try? FileManager.default.removeItem(atPath: to) }
            throw error
        }
        try fs.unmountVolume()
        if printing.json { return try Output.json(Result(volume: v, destination: to, paths: rels.map { "/" + $0 }, entries: count)) }
        print("restored \(count) entries of \(rels.map { "/" + $0 }.joined(separator: ", ")) from volume \(v.label) -> \(to)")
    }
}

extension String {
    func leftPad(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
    func appendingPathIfRelative(_ p: String) -> String { p.hasPrefix("/") ? p : self + "/" + p }
}
