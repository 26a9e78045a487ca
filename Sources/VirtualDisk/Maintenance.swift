import Foundation
import SystemPackage
import Storage

/// What the disk utility (resize, reparent, compact) needs from a format beyond reading and writing.
/// VHD and VHDX images conform; every change is crash-safe (a kill at any moment leaves a readable
/// image holding the old or the new state).
public protocol MaintainableImage: DiskImage {
    /// Changes the virtual size. New space reads as zeros. Shrinking is allowed only where the format
    /// permits it and the cut-off tail holds no data; otherwise `DiskError.unsupported`.
    func resize(to newSize: UInt64) throws
    /// Rewrites what this differencing image records about its parent (its identity and locators).
    func setParent(_ link: ParentLink) throws
    /// Takes `identity` (the VHDX DataWriteGuid, the VHD unique id) as this image's own, after all
    /// data writes are flushed. For an image that now presents exactly the view of the image that had
    /// it: a fold's merged parent standing in for the child it replaces, so that every image recording
    /// that identity (the child's children, on this target and on its replicas) links to it unchanged.
    /// A later data write gives the image a new identity again, as usual.
    func adoptIdentity(_ identity: UUID) throws
    /// Releases storage that holds only zeros without changing any byte read through the chain
    /// (in a differencing image a zero block that hides parent data stays, unless the format can mark
    /// it zero). Returns the bytes of file space reclaimed.
    func compact(progress: ProgressReporter?) throws -> UInt64
}

/// One finding of `check`.
public struct CheckProblem: Codable, Sendable, Equatable {
    public enum Severity: String, Codable, Sendable { case error, warning }
    public var severity: Severity
    /// What is wrong, naming the structure (e.g. "BAT entry 17 points past the end of the file").
    public var message: String
    /// Whether `check --repair` can fix it.
    public var repairable: Bool
    public init(_ severity: Severity, _ message: String, repairable: Bool) {
        self.severity = severity
        self.message = message
        self.repairable = repairable
    }
}

/// The result of checking one image level.
public struct CheckReport: Codable, Sendable, Equatable {
    public var path: String
    public var format: DiskFormat
    public var problems: [CheckProblem]
    /// What `--repair` changed, in order.
    public var repairs: [String]
    public var isClean: Bool { problems.allSatisfy { $0.severity == .warning } }
    public init(path: String, format: DiskFormat, problems: [CheckProblem] = [], repairs: [String] = []) {
        self.path = path
        self.format = format
        self.problems = problems
        self.repairs = repairs
    }
}

/// Formats that can check (and repair) their structures, even in files too damaged to open.
public protocol CheckableFormat: DiskImageFormat {
    /// Checks the file's structures; with `repair`, fixes what it safely can and says what it did.
    /// Without `repair` the file is never changed.
    static func check(_ path: FilePath, repair: Bool) throws -> CheckReport
}

extension ParentLocator {
    /// The locators a new child at `child` should record for `parent`: a relative path (Windows
    /// separators, as Hyper-V writes it, e.g. `.\base.vhdx` or `..\v1\disk0.vhdx`) and an absolute one.
    public static func locators(child: FilePath, parent: FilePath) -> [ParentLocator] {
        let c = FileOps.absolute(child).removingLastComponent().components.map(\.string)
        let pAbs = FileOps.absolute(parent)
        let p = pAbs.removingLastComponent().components.map(\.string)
        var common = 0
        while common < c.count, common < p.count, c[common] == p[common] { common += 1 }
        var parts = [String](repeating: "..", count: c.count - common) + p[common...]
        parts.append(pAbs.lastComponent?.string ?? "")
        let relative = (parts.first == ".." ? "" : ".\\") + parts.joined(separator: "\\")
        return [ParentLocator(kind: .relative, path: relative), ParentLocator(kind: .absolute, path: pAbs.string)]
    }
}
