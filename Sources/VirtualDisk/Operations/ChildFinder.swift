import Foundation
import SystemPackage
import Storage

/// Finds the differencing images whose parent is a given file: those in the parent's folder (and in
/// any extra folders or files named) whose parent locators resolve to it. Merge, resize, reparent and
/// compact use it to avoid breaking children they were not told about.
///
/// A finder scans once (each candidate image is opened once to read its parent link) and then answers
/// any number of `children(of:)` questions, so a merge asking about every level of a chain pays for one
/// scan of the folder.
public struct ChildFinder: Sendable {
    /// Each candidate image (absolute), its key, and the key of the file its parent link resolves to.
    private let links: [(image: FilePath, key: String, parentKey: String)]

    /// Scans the folders of `near` and the `extra` paths given by the user (`--children`): folders are
    /// scanned, files taken as candidates. An extra path that does not exist is an error: silently
    /// looking nowhere would let the guard pass children it was meant to find.
    public init(near paths: [FilePath], extra: [FilePath] = []) throws {
        for p in extra where !FileOps.exists(p) {
            throw DiskError.invalidArgument("\(p.string): no such file or folder, given as a place to look for children (differencing images) of \(paths.map(\.string).joined(separator: ", ")); name existing images or folders")
        }
        var folders: [FilePath] = []
        for p in paths.map({ FileOps.absolute($0).removingLastComponent() }) + extra.filter(Self.isFolder)
        where !folders.contains(p) {
            folders.append(p)
        }
        self.init(folders: folders, candidates: extra.filter { !Self.isFolder($0) })
    }

    /// Scans `folders` and the image files `candidates`. Files that are not images, or cannot be
    /// opened, are skipped.
    public init(folders: [FilePath], candidates: [FilePath] = []) {
        var seen = Set<String>()
        var links: [(image: FilePath, key: String, parentKey: String)] = []
        for store in Self.images(in: folders) + candidates.map(FileOps.absolute) {
            let key = OperationIO.key(store)
            guard seen.insert(key).inserted, let parent = Self.parentPath(of: store) else { continue }
            links.append((store, key, OperationIO.key(parent)))
        }
        self.links = links
    }

    /// The scanned images whose parent resolves to `parent`, as absolute paths, sorted.
    public func children(of parent: FilePath) -> [FilePath] {
        let target = OperationIO.key(parent)
        return links.filter { $0.parentKey == target && $0.key != target }
            .map(\.image).sorted { $0.string < $1.string }
    }

    /// The images among `parent`'s folder, `folders` and `candidates` whose parent resolves to `parent`.
    public static func children(of parent: FilePath, folders: [FilePath] = [], candidates: [FilePath] = []) throws -> [FilePath] {
        try ChildFinder(near: [parent], extra: folders + candidates).children(of: parent)
    }

    /// The file `image`'s parent link resolves to (the first locator path that exists), or nil for an
    /// image without a parent or one that cannot be opened.
    public static func parentPath(of image: FilePath) -> FilePath? {
        guard let level = try? DiskImages.openLevel(image) else { return nil }
        defer { try? level.close() }
        guard let link = level.parentLink else { return nil }
        return DiskChain.candidatePaths(of: image, link: link).first(where: FileOps.exists)
    }

    /// Whether `path` is an existing folder.
    static func isFolder(_ path: FilePath) -> Bool {
        var isDir: ObjCBool = false
        return FileManager.default.fileExists(atPath: path.string, isDirectory: &isDir) && isDir.boolValue
    }

    /// Regular files in `folders` that could be differencing images (VHD or VHDX names, or any name
    /// not hidden and not a record of ours).
    static func images(in folders: [FilePath]) -> [FilePath] {
        var out: [FilePath] = []
        for folder in folders {
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: folder.string) else { continue }
            for name in names.sorted() where !name.hasPrefix(".") && !name.hasSuffix(".json") {
                let path = folder.appending(name)
                var st = stat()
                guard stat(path.string, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, st.st_size >= 512 else { continue }
                out.append(path)
            }
        }
        return out
    }
}
