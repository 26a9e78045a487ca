import Foundation
import SystemPackage

/// Finds the differencing images whose parent is a given file: those in the parent's folder (and in
/// any extra folders or files named) whose parent locators resolve to it. Merge, resize, reparent and
/// compact use it to avoid breaking children they were not told about.
public enum ChildFinder {
    /// The images among `parent`'s folder, `folders` and `candidates` whose parent resolves to
    /// `parent`, as absolute paths, sorted. Files that are not images, or cannot be opened, are skipped.
    public static func children(of parent: FilePath, folders: [FilePath] = [], candidates: [FilePath] = []) -> [FilePath] {
        let target = OperationIO.key(parent)
        var seen = Set<String>()
        var found: [FilePath] = []
        for file in images(in: [FileOps.absolute(parent).removingLastComponent()] + folders) + candidates.map(FileOps.absolute) {
            let key = OperationIO.key(file)
            guard key != target, seen.insert(key).inserted else { continue }
            if let resolved = parentPath(of: file), OperationIO.key(resolved) == target {
                found.append(file)
            }
        }
        return found.sorted { $0.string < $1.string }
    }

    /// The file `image`'s parent link resolves to (the first locator path that exists), or nil for an
    /// image without a parent or one that cannot be opened.
    public static func parentPath(of image: FilePath) -> FilePath? {
        guard let level = try? DiskImages.openLevel(image) else { return nil }
        defer { try? level.close() }
        guard let link = level.parentLink else { return nil }
        return DiskChain.candidatePaths(of: image, link: link).first(where: FileOps.exists)
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
