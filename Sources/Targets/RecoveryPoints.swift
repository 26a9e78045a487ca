import Foundation
import Storage
import SystemPackage

/// One machine's folder on a target: its points (manifests and images), marker files and catalog.
/// Reading needs nothing but the target; changing anything needs the machine's lease (the caller
/// holds a `TargetLease`).
public struct RecoveryPoints: Sendable {
    public let target: any BackupTarget
    public let machine: String

    public init(target: any BackupTarget, machine: String) {
        self.target = target
        self.machine = machine
    }

    public var folder: FilePath { target.machineFolder(machine) }
    public func pointFolder(_ version: String) -> FilePath { folder.appending(version) }
    var space: any StoreSpace { target.space }

    /// The machines with a folder on the target.
    public static func machines(on target: any BackupTarget) throws -> [String] {
        do {
            return try target.space.contents(of: target.backupFolder).filter {
                !$0.hasPrefix(".") && target.space.kind(of: target.backupFolder.appending($0)) == .directory
            }
        } catch StorageError.notFound {
            return []
        }
    }

    /// Whether `name` has the shape of a version identifier (`2026-11-22T192005Z`, maybe `-N`).
    public static func isVersionName(_ name: String) -> Bool {
        let u = Array(name.utf8)
        guard u.count >= 18, u[4] == UInt8(ascii: "-"), u[10] == UInt8(ascii: "T"), u[17] == UInt8(ascii: "Z") else { return false }
        return u[0..<4].allSatisfy { $0 >= 48 && $0 <= 57 }
    }

    /// A new version identifier for `date`, unique in the folder (a second run in the same second
    /// gets the next second).
    public func newVersion(at date: Date) -> String {
        var date = date
        while true {
            let name = Timestamp.compact(date)
            if !space.exists(pointFolder(name)) { return name }
            date = date.addingTimeInterval(1)
        }
    }

    // MARK: manifests

    /// The manifest revisions present in a point folder, highest first.
    func manifestNames(in version: String) -> [(revision: Int, name: String)] {
        guard let names = try? space.contents(of: pointFolder(version)) else { return [] }
        var out: [(Int, String)] = []
        for n in names {
            if n == "manifest.json" { out.append((1, n)) }
            else if n.hasPrefix("manifest.r"), n.hasSuffix(".json"), let r = Int(n.dropFirst(10).dropLast(5)) { out.append((r, n)) }
        }
        return out.sorted { $0.0 > $1.0 }
    }

    /// The versions whose manifest is published (complete points), oldest first.
    public func completeVersions() throws -> [String] {
        let names: [String]
        do { names = try space.contents(of: folder) } catch StorageError.notFound { return [] }
        return names.filter { Self.isVersionName($0) && !manifestNames(in: $0).isEmpty }.sorted()
    }

    /// Version folders without a manifest: points whose job died before publishing. Removed by the
    /// next job that holds the lease; never listed.
    public func incompleteVersions() throws -> [String] {
        let names: [String]
        do { names = try space.contents(of: folder) } catch StorageError.notFound { return [] }
        return names.filter { Self.isVersionName($0) && manifestNames(in: $0).isEmpty }.sorted()
    }

    /// The newest valid manifest revision of `version`.
    public func manifest(_ version: String) throws -> PointManifest {
        let revisions = manifestNames(in: version)
        guard !revisions.isEmpty else { throw TargetError.pointNotFound(target: target.location, machine: machine, version: version) }
        var firstError: Error?
        for (_, name) in revisions {
            let path = pointFolder(version).appending(name)
            do {
                let m = try Self.decoder.decode(PointManifest.self, from: Data(try target.read(path, limit: 256 << 20)))
                guard m.format == PointManifest.currentFormat else {
                    throw TargetError.damaged(path: path.string, reason: "format \(m.format) is not one this build reads (\(PointManifest.currentFormat))")
                }
                guard m.version == version, m.machine == machine else {
                    throw TargetError.damaged(path: path.string, reason: "it describes \(m.machine)/\(m.version), not \(machine)/\(version)")
                }
                return m
            } catch let e as DecodingError {
                firstError = firstError ?? TargetError.damaged(path: path.string, reason: "not a valid manifest (\(Self.describe(e)))")
            } catch {
                firstError = firstError ?? error
            }
        }
        throw firstError ?? TargetError.pointNotFound(target: target.location, machine: machine, version: version)
    }

    /// Publishes a manifest: revision 1 as `manifest.json`, later revisions as `manifest.rN.json`.
    /// The point becomes visible (or its new revision current) at this moment.
    public func publish(_ manifest: PointManifest) throws {
        let name = manifest.revision <= 1 ? "manifest.json" : "manifest.r\(manifest.revision).json"
        try target.publish(try Self.encode(manifest), at: pointFolder(manifest.version).appending(name))
    }

    // MARK: markers

    public func isProtected(_ version: String) -> Bool { space.exists(pointFolder(version).appending("protected")) }

    /// Marks a point protected (retention never removes or merges it away) or not.
    public func setProtected(_ version: String, _ on: Bool) throws {
        let path = pointFolder(version).appending("protected")
        if on {
            if !space.exists(path) { try target.publish(Array("protected from retention\n".utf8), at: path) }
        } else {
            try space.remove(path)
            try space.syncFolder(of: path)
        }
    }

    /// The verify records of a point, newest first: `verify.<sequence>.json`.
    func verificationNames(_ version: String) -> [(Int, String)] {
        guard let names = try? space.contents(of: pointFolder(version)) else { return [] }
        return names.compactMap { n -> (Int, String)? in
            guard n.hasPrefix("verify."), n.hasSuffix(".json"), let seq = Int(n.dropFirst(7).dropLast(5)) else { return nil }
            return (seq, n)
        }.sorted { $0.0 > $1.0 }
    }

    /// The newest verify record of a point.
    public func verification(_ version: String) -> VerificationRecord? {
        for (_, name) in verificationNames(version) {
            if let bytes = try? target.read(pointFolder(version).appending(name), limit: 1 << 20),
               let record = try? Self.decoder.decode(VerificationRecord.self, from: Data(bytes)) { return record }
        }
        return nil
    }

    /// Publishes a verify record as the point's next one (records are numbered, never overwritten).
    public func record(_ verification: VerificationRecord, for version: String) throws {
        let next = (verificationNames(version).first?.0 ?? 0) + 1
        let digits = String(next)
        let name = "verify." + String(repeating: "0", count: max(0, 6 - digits.count)) + digits + ".json"
        try target.publish(try Self.encode(verification), at: pointFolder(version).appending(name))
    }

    // MARK: catalog

    /// The highest valid catalog generation, or nil when there is none.
    public func catalog() -> Catalog? {
        guard let names = try? space.contents(of: folder) else { return nil }
        let generations = names.compactMap { n in Catalog.generation(ofFileName: n).map { ($0, n) } }.sorted { $0.0 > $1.0 }
        for (generation, name) in generations {
            guard let bytes = try? target.read(folder.appending(name), limit: 256 << 20),
                  let c = try? Self.decoder.decode(Catalog.self, from: Data(bytes)),
                  c.format == Catalog.currentFormat, c.generation == generation, c.machine == machine else { continue }
            return c
        }
        return nil
    }

    /// The points as `versions` shows them: the catalog, corrected by the folder listing (a point
    /// published after the catalog's last generation is read from its manifest; an entry whose
    /// manifest is gone is dropped). Oldest first.
    public func listing() throws -> [CatalogEntry] {
        let versions = try completeVersions()
        let cached = Dictionary((catalog()?.points ?? []).map { ($0.version, $0) }, uniquingKeysWith: { a, _ in a })
        var out: [CatalogEntry] = []
        for v in versions {
            let newest = manifestNames(in: v).first?.revision ?? 1
            // Markers change without a manifest revision: read them from the point's folder, so a
            // verify failure or a protection is never missed because the catalog is one step behind.
            if var entry = cached[v], entry.revision == newest {
                entry.protected = isProtected(v)
                entry.verification = verification(v)
                out.append(entry)
            } else if let m = try? manifest(v) {
                out.append(CatalogEntry(manifest: m, protected: isProtected(v), verification: verification(v)))
            }
        }
        return out
    }

    /// Writes a new catalog generation from the manifests and markers (the catalog is never edited in
    /// place), and removes generations more than two behind it.
    @discardableResult
    public func rebuildCatalog(now: Date = Date()) throws -> Catalog {
        var entries: [CatalogEntry] = []
        for v in try completeVersions() {
            let m = try manifest(v)
            entries.append(CatalogEntry(manifest: m, protected: isProtected(v), verification: verification(v)))
        }
        let names = (try? space.contents(of: folder)) ?? []
        let generations = names.compactMap(Catalog.generation(ofFileName:))
        let next = (generations.max() ?? 0) + 1
        let catalog = Catalog(machine: machine, generation: next, written: Timestamp.iso8601(now), points: entries)
        try target.publish(try Self.encode(catalog), at: folder.appending(Catalog.fileName(generation: next)))
        for g in generations where g < next - 2 {
            try? space.remove(folder.appending(Catalog.fileName(generation: g)))
        }
        return catalog
    }

    // MARK: removal

    /// Removes a point: its manifests first (it stops being listed at that moment), then everything
    /// else, then the folder. Safe to repeat after a crash part-way.
    public func removePoint(_ version: String) throws {
        let dir = pointFolder(version)
        for (_, name) in manifestNames(in: version) { try space.remove(dir.appending(name)) }
        try? space.syncFolder(of: dir.appending("manifest.json"))
        try removeFolderContents(dir)
    }

    /// Removes the hidden temporary files (`.NAME.partial-PID`) that publishing processes left when
    /// they were killed, in the machine's folder and its points' folders. Only files of processes that
    /// are gone are removed; call it holding the lease.
    public func removeStalePartials() {
        var folders = [folder]
        folders += ((try? space.contents(of: folder)) ?? []).filter(Self.isVersionName).map(pointFolder)
        for dir in folders {
            for name in (try? space.contents(of: dir)) ?? [] where name.hasPrefix(".") {
                guard let range = name.range(of: ".partial-", options: .backwards),
                      let pid = Int32(name[range.upperBound...]), !ProcessState.isRunning(pid) else { continue }
                try? space.remove(dir.appending(name))
            }
        }
    }

    /// Removes an incomplete point's folder (no manifest).
    public func removeIncomplete(_ version: String) throws {
        guard manifestNames(in: version).isEmpty else { return }
        try removeFolderContents(pointFolder(version))
    }

    private func removeFolderContents(_ dir: FilePath) throws {
        let names: [String]
        do { names = try space.contents(of: dir) } catch StorageError.notFound { return }
        for n in names { try space.remove(dir.appending(n)) }
        try space.removeFolder(dir)
        try? space.syncFolder(of: dir)
    }

    // MARK: coding

    static let decoder = JSONDecoder()
    /// The JSON form of every file Bulwark publishes on a target (sorted keys, readable).
    public static func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return [UInt8](try encoder.encode(value)) + [UInt8(ascii: "\n")]
    }

    static func describe(_ error: DecodingError) -> String {
        switch error {
        case let .dataCorrupted(c): return c.debugDescription
        case let .keyNotFound(k, _): return "missing \(k.stringValue)"
        case let .typeMismatch(_, c), let .valueNotFound(_, c):
            return "\(c.codingPath.map(\.stringValue).joined(separator: ".")): \(c.debugDescription)"
        @unknown default: return "\(error)"
        }
    }
}
