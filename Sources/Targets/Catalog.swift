import Foundation

/// `catalog.<generation>.json`: the index of a machine's points, so `versions` reads one small file.
/// A new generation per change, never overwritten; readers take the highest generation that parses
/// and names itself correctly. It is derived data: everything in it comes from the points' manifests
/// and their marker files (`protected`, `verify.<sequence>.json`), so it can be rebuilt at will, and a
/// point whose manifest is published but missing from the catalog (a crash between the two) is still
/// listed by `RecoveryPoints.listing()`.
public struct Catalog: Codable, Sendable, Equatable {
    public var format: String = Catalog.currentFormat
    public static let currentFormat = "bulwark-catalog/1"
    public var machine: String
    public var generation: Int
    public var written: String
    /// Oldest first.
    public var points: [CatalogEntry]

    public init(machine: String, generation: Int, written: String, points: [CatalogEntry]) {
        self.machine = machine
        self.generation = generation
        self.written = written
        self.points = points
    }

    public static func fileName(generation: Int) -> String {
        let digits = String(generation)
        return "catalog." + String(repeating: "0", count: max(0, 6 - digits.count)) + digits + ".json"
    }

    /// The generation a file name carries, or nil for other names.
    public static func generation(ofFileName name: String) -> Int? {
        guard name.hasPrefix("catalog."), name.hasSuffix(".json") else { return nil }
        return Int(name.dropFirst("catalog.".count).dropLast(".json".count))
    }
}

/// One point as `versions` lists it.
public struct CatalogEntry: Codable, Sendable, Equatable {
    public var version: String
    public var time: String
    public var kind: PointKind
    public var parent: String?
    public var consistency: String
    public var provider: String
    public var policy: String
    public var disks: Int
    public var virtualBytes: UInt64
    public var storedBytes: UInt64
    public var changedBytes: UInt64
    public var revision: Int
    public var protected: Bool
    /// The newest verify result, nil when never verified.
    public var verification: VerificationRecord?

    public init(manifest m: PointManifest, protected: Bool, verification: VerificationRecord?) {
        version = m.version
        time = m.time
        kind = m.kind
        parent = m.parent
        consistency = m.consistency.level
        provider = m.consistency.provider
        policy = m.policy.name
        disks = m.disks.count
        virtualBytes = m.disks.reduce(0) { $0 + $1.virtualSize }
        storedBytes = m.storedBytes
        changedBytes = m.disks.reduce(0) { $0 + $1.changedBytes }
        revision = m.revision
        self.protected = protected
        self.verification = verification
    }

    /// Whether the point may be the parent of a new incremental: not known bad.
    public var usableAsParent: Bool { verification?.ok ?? true }
}

/// `<version>/verify.<sequence>.json`: one verify of a point. Published once; the highest sequence counts.
public struct VerificationRecord: Codable, Sendable, Equatable {
    public var time: String
    public var ok: Bool
    /// For a failed verify: the first bad range or file, and why.
    public var problem: String?
    public var bytesRead: UInt64
    public init(time: String, ok: Bool, problem: String?, bytesRead: UInt64) {
        self.time = time
        self.ok = ok
        self.problem = problem
        self.bytesRead = bytesRead
    }
}
