import Foundation
import Storage
import SystemPackage
import Targets

/// How to import a seed.
public struct SeedImportOptions: Sendable {
    public var progress: ProgressReporter?
    public var log: (@Sendable (String) -> Void)?
    public var pieceSize: Int

    public init(progress: ProgressReporter? = nil, log: (@Sendable (String) -> Void)? = nil, pieceSize: Int = 4 << 20) {
        self.progress = progress
        self.log = log
        self.pieceSize = pieceSize
    }
}

/// What an import did.
public struct SeedImportResult: Codable, Sendable, Equatable {
    public var file: String
    public var machine: String
    /// The points published on the target, oldest first.
    public var imported: [String]
    /// The points the target had already (left as they are).
    public var skipped: [String]
    /// Image bytes written to the target.
    public var bytesWritten: UInt64
    public var seconds: Double
}

/// Publishes the points of a seed on a target the way replication does: parents first, each image
/// written as `.NAME.partial`, its size and SHA-256 checked against the seed's manifest while it is
/// written and once more read back from the target, then renamed to its name (which must not exist); the manifest last, then a new catalog
/// generation; under the machine's lease. Points the target has are skipped and never changed. An
/// entry that is not the header or an expected point file (another machine or version, a path with
/// `..`, an absolute path, a file the manifest does not name, not a regular file) is refused, and so
/// is a damaged or truncated seed: the point being read is never published.
public enum SeedImportOperation {
    public static func run(file: FilePath, to destination: any BackupTarget, options: SeedImportOptions) throws -> SeedImportResult {
        let started = Date()
        let path = file.string
        let reader = try SeedArchiveReader(path: path)
        func refuse(_ reason: String) -> TargetError { .damaged(path: path, reason: reason) }

        guard let first = try reader.next() else { throw refuse("the seed is empty") }
        guard first.name == SeedHeader.entryName, first.regular else {
            throw refuse("the first entry is \(first.name), not \(SeedHeader.entryName): not a Bulwark seed")
        }
        let header: SeedHeader
        do {
            header = try JSONDecoder().decode(SeedHeader.self, from: Data(try reader.readAll(limit: 16 << 20, context: SeedHeader.entryName)))
        } catch let e as DecodingError {
            throw refuse("\(SeedHeader.entryName) is not a seed header (\(e))")
        }
        guard header.format == SeedHeader.currentFormat else {
            throw refuse("seed format \(header.format) is not one this build reads (\(SeedHeader.currentFormat))")
        }
        guard isPlainName(header.machine), !header.versions.isEmpty,
              header.versions.allSatisfy({ isPlainName($0) && RecoveryPoints.isVersionName($0) }) else {
            throw refuse("the seed header names a machine or versions that are not plain names")
        }
        let machine = header.machine
        let lease = try TargetLease.acquire(destination, machine: machine, purpose: "seed import from \(path)")
        defer { lease.release() }
        let to = RecoveryPoints(target: destination, machine: machine)
        to.removeStalePartials()
        let space = destination.space
        let have = Set(try to.completeVersions())
        var result = SeedImportResult(file: path, machine: machine, imported: [], skipped: [], bytesWritten: 0, seconds: 0)

        // The point being read: its manifest, the images still expected, whether it is skipped.
        var current: (manifest: PointManifest, remaining: [String], skip: Bool)?
        var expected = header.versions[...]
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: options.pieceSize, alignment: 4096)
        defer { buffer.deallocate() }
        var done: UInt64 = 0

        func finishPoint() throws {
            guard let c = current else { return }
            guard c.remaining.isEmpty else {
                throw refuse("point \(machine)/\(c.manifest.version): the seed lacks its image(s) \(c.remaining.joined(separator: ", ")); nothing of it was published")
            }
            if !c.skip {
                try lease.check()
                try to.publish(c.manifest)
                try to.rebuildCatalog()
                result.imported.append(c.manifest.version)
                options.log?("\(machine)/\(c.manifest.version): published")
            }
            current = nil
        }

        do {
        while let entry = try reader.next() {
            let name = entry.name
            let parts = name.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
            guard entry.regular, !name.hasPrefix("/"), parts.count == 3, parts.allSatisfy(isPlainName), parts[0] == machine else {
                throw refuse("entry \(name) is not a point file of \(machine); the seed was refused")
            }
            let (version, fileName) = (parts[1], parts[2])
            if current?.manifest.version != version {
                // A new point starts with its manifest, in the header's order.
                try finishPoint()
                guard expected.first == version else {
                    throw refuse("entry \(name) is not the next point the header lists (\(expected.first ?? "none left"))")
                }
                expected.removeFirst()
                guard fileName == "manifest.json" || (fileName.hasPrefix("manifest.r") && fileName.hasSuffix(".json")) else {
                    throw refuse("entry \(name): point \(machine)/\(version) does not start with its manifest")
                }
                let manifest: PointManifest
                do {
                    manifest = try JSONDecoder().decode(PointManifest.self, from: Data(try reader.readAll(limit: 256 << 20, context: name)))
                } catch let e as DecodingError {
                    throw refuse("entry \(name) is not a valid manifest (\(e))")
                }
                guard manifest.format == PointManifest.currentFormat, manifest.machine == machine, manifest.version == version,
                      manifestFileName(manifest) == fileName else {
                    throw refuse("entry \(name) describes \(manifest.machine)/\(manifest.version) (\(manifest.format), revision \(manifest.revision)), not that point")
                }
                let images = manifest.files.map(\.name)
                guard images.allSatisfy(isPlainName), Set(images).count == images.count,
                      !images.contains(where: { $0.hasPrefix("manifest") || $0.hasPrefix("verify.") || $0 == "protected" }) else {
                    throw refuse("entry \(name) names data files that are not plain, distinct names")
                }
                let skip = have.contains(version)
                if skip {
                    options.log?("\(machine)/\(version): already on the target; skipped")
                    result.skipped.append(version)
                } else if let parent = manifest.parent, !have.contains(parent), !result.imported.contains(parent) {
                    throw refuse("point \(machine)/\(version): its parent \(parent) is neither on the target nor earlier in the seed")
                } else if let needed = manifest.fileSetReferences.sorted().first(where: { !have.contains($0) && !result.imported.contains($0) }) {
                    throw refuse("point \(machine)/\(version): its file sets need point \(needed), which is neither on the target nor earlier in the seed")
                } else {
                    try ReplicationOperation.checkRoom(for: manifest, version: version, in: to)
                    try space.makeFolder(to.pointFolder(version))
                    options.log?("\(machine)/\(version): \(manifest.files.count) file(s), \(ByteCount.format(manifest.storedBytes))")
                }
                current = (manifest, images, skip)
                continue
            }
            guard var c = current, let index = c.remaining.firstIndex(of: fileName),
                  let file = c.manifest.files.first(where: { $0.name == fileName }) else {
                throw refuse("entry \(name) is not an image the manifest of \(machine)/\(version) names, or it comes twice")
            }
            c.remaining.remove(at: index)
            current = c
            guard entry.size == file.size else {
                throw refuse("point \(machine)/\(version): image \(fileName) is \(entry.size) bytes in the seed; the manifest says \(file.size); nothing of the point was published")
            }
            if c.skip {
                try reader.skip()
                done += file.size
                continue
            }
            try lease.check()
            let target = to.pointFolder(version).appending(fileName)
            if space.exists(target) {
                // An earlier import renamed it and stopped before the manifest: keep it if it verifies.
                guard try Digest.file(target, in: space, progress: options.progress).sha256 == file.sha256 else {
                    throw TargetError.damaged(path: target.string, reason: "a file of an unpublished point does not have the manifest's SHA-256; remove it and import again")
                }
                try reader.skip()
                done += file.size
                continue
            }
            let partial = FileTransfer.partial(of: target)
            if space.exists(partial) { try space.remove(partial) }
            let output = try space.create(partial)
            var hasher = Digest.Stream()
            var offset: UInt64 = 0
            do {
                while true {
                    try options.progress?.checkCancelled()
                    let n = try reader.read(into: buffer, context: "point \(machine)/\(version), image \(fileName)")
                    if n == 0 { break }
                    let slice = UnsafeRawBufferPointer(rebasing: buffer[..<n])
                    try output.write(slice, at: offset)
                    hasher.update(slice)
                    offset += UInt64(n)
                    done += UInt64(n)
                    options.progress?.report(done, of: header.imageBytes ?? 0)
                }
                try output.flush()
                try output.close()
            } catch {
                try? output.close()
                try? space.remove(partial)
                throw error
            }
            let digest = hasher.finish()
            guard offset == file.size, digest == file.sha256 else {
                try? space.remove(partial)
                throw refuse("point \(machine)/\(version): image \(fileName) in the seed has \(offset) bytes with SHA-256 \(digest); the manifest says \(file.size) bytes, \(file.sha256); nothing of the point was published")
            }
            // What the target holds, read back (over SMB the only proof the server has the bytes:
            // there is no fsync there), must be what the manifest says before the file is named.
            let stored = try Digest.file(partial, in: space, progress: nil).sha256
            guard stored == file.sha256 else {
                try? space.remove(partial)
                throw TargetError.damaged(path: partial.string, reason: "read back from \(to.target.location), image \(fileName) of point \(machine)/\(version) has SHA-256 \(stored), not the manifest's \(file.sha256): the target did not keep the bytes written; check its storage and import again")
            }
            try space.rename(partial, to: target)
            try space.syncFolder(of: target)
            result.bytesWritten += offset
        }
        try finishPoint()
        } catch {
            // Nothing of a point that failed stays behind (it was never listed: no manifest).
            if let c = current, !c.skip { try? to.removeIncomplete(c.manifest.version) }
            throw error
        }
        guard expected.isEmpty else {
            throw refuse("the seed ends before point(s) \(expected.joined(separator: ", ")) the header lists: it is truncated")
        }
        result.seconds = Date().timeIntervalSince(started)
        return result
    }
}
