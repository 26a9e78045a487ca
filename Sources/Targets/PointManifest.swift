import Foundation
import Layout

/// Full or incremental.
public enum PointKind: String, Codable, Sendable {
    /// Every disk is a dynamic VHDX holding the whole disk.
    case full
    /// Every disk is a differencing VHDX whose parent is the previous point's image.
    case incremental
}

/// `<version>/manifest.json`: everything needed to list, verify and restore a recovery point from the
/// target alone (a rescue system with nothing but the share). Written once, published last (after
/// every image), never overwritten: a retention merge that changes a point's images publishes a new
/// revision (`manifest.r2.json`, ...) and readers take the highest valid revision.
public struct PointManifest: Codable, Sendable, Equatable {
    /// The format of this file.
    public var format: String = PointManifest.currentFormat
    public static let currentFormat = "bulwark-point/1"
    public var revision: Int = 1
    public var machine: String
    /// The version identifier (also the folder name), e.g. `2026-11-22T192005Z`.
    public var version: String
    /// When the point-in-time copy was taken (ISO 8601, UTC).
    public var time: String
    public var kind: PointKind
    /// The version this point's images are differencing children of (nil for a full).
    public var parent: String?
    public var consistency: ManifestConsistency
    public var policy: ManifestPolicy
    public var disks: [ManifestDisk]
    /// The file sets of the point (`files:` sources), absent in points of disks only.
    public var fileSets: [ManifestFileSet]?
    /// Host that made the point, and the Bulwark version.
    public var host: String
    public var creator: String
    /// What the job wants the reader to know (a full made because the previous point failed
    /// verification, a writer left out, ...).
    public var notes: [String]

    public init(machine: String, version: String, time: String, kind: PointKind, parent: String?, consistency: ManifestConsistency,
                policy: ManifestPolicy, disks: [ManifestDisk], fileSets: [ManifestFileSet]? = nil, host: String, creator: String, notes: [String]) {
        self.machine = machine
        self.version = version
        self.time = time
        self.kind = kind
        self.parent = parent
        self.consistency = consistency
        self.policy = policy
        self.disks = disks
        self.fileSets = fileSets
        self.host = host
        self.creator = creator
        self.notes = notes
    }

    /// Bytes of all data files of the point.
    public var storedBytes: UInt64 { files.reduce(0) { $0 + $1.size } }

    /// Every data file of the point (disk images, file-set archives and indexes), with the size and
    /// SHA-256 the manifest promises: what replication copies, seeds carry and verify checks.
    public var files: [PointFile] {
        disks.map { PointFile(name: $0.image, size: $0.imageSize, sha256: $0.imageSHA256) }
            + (fileSets ?? []).flatMap { [PointFile(name: $0.archive, size: $0.archiveSize, sha256: $0.archiveSHA256),
                                          PointFile(name: $0.indexFile, size: $0.indexSize, sha256: $0.indexSHA256)] }
    }

    /// The versions whose files this point needs besides its own: for disks, the parent chain (by
    /// `parent`); for file sets, every point whose archive holds a file this point lists.
    public var fileSetReferences: Set<String> { Set((fileSets ?? []).flatMap(\.references)).subtracting([version]) }
}

/// One data file of a point.
public struct PointFile: Sendable, Equatable {
    public var name: String
    public var size: UInt64
    public var sha256: String
    public init(name: String, size: UInt64, sha256: String) {
        self.name = name
        self.size = size
        self.sha256 = sha256
    }
}

/// One file set of a point (a policy's `files:` source): a pax archive (zstd) of what changed since
/// the previous set, and an index of the whole set that says, for every file, which point's archive
/// holds its content. A full's archive holds everything; an incremental's holds the files whose
/// size, mtime, inode-change time or inode differ from the previous set, and every folder and link.
public struct ManifestFileSet: Codable, Sendable, Equatable {
    /// 0, 1, ... in the policy's order; the files are `fileset<index>.tar.zst` and
    /// `fileset<index>.index.json`.
    public var index: Int
    /// The paths the policy names, as written (absolute).
    public var paths: [String]
    public var archive: String
    public var archiveSize: UInt64
    public var archiveSHA256: String
    public var indexFile: String
    public var indexSize: UInt64
    public var indexSHA256: String
    /// Entries (files, folders, links) in the set, and the bytes of its regular files.
    public var entries: Int
    public var bytes: UInt64
    /// Entries and bytes stored in this point's archive.
    public var storedEntries: Int
    public var storedBytes: UInt64
    /// The points whose archives hold content this set lists (this point included when it stores any).
    public var references: [String]

    public init(index: Int, paths: [String], archive: String, archiveSize: UInt64, archiveSHA256: String, indexFile: String, indexSize: UInt64,
                indexSHA256: String, entries: Int, bytes: UInt64, storedEntries: Int, storedBytes: UInt64, references: [String]) {
        self.index = index
        self.paths = paths
        self.archive = archive
        self.archiveSize = archiveSize
        self.archiveSHA256 = archiveSHA256
        self.indexFile = indexFile
        self.indexSize = indexSize
        self.indexSHA256 = indexSHA256
        self.entries = entries
        self.bytes = bytes
        self.storedEntries = storedEntries
        self.storedBytes = storedBytes
        self.references = references
    }
}

/// How consistent the point is, and what each writer did.
public struct ManifestConsistency: Codable, Sendable, Equatable {
    /// `application-consistent` or `crash-consistent`.
    public var level: String
    /// The provider that took the point-in-time copy (`reflink`, `copy`, `differencing`, `none`).
    public var provider: String
    public var writers: [ManifestWriter]
    /// First freeze to last thaw, seconds.
    public var freezeSeconds: Double
    public var warnings: [String]
    public init(level: String, provider: String, writers: [ManifestWriter], freezeSeconds: Double, warnings: [String]) {
        self.level = level
        self.provider = provider
        self.writers = writers
        self.freezeSeconds = freezeSeconds
        self.warnings = warnings
    }
}

public struct ManifestWriter: Codable, Sendable, Equatable {
    public var name: String
    public var kind: String
    public var state: String
    public var froze: Bool
    public var error: String?
    public init(name: String, kind: String, state: String, froze: Bool, error: String?) {
        self.name = name
        self.kind = kind
        self.state = state
        self.froze = froze
        self.error = error
    }
}

/// The policy that made the point: its name and its text, so a point says how it was meant to be kept.
public struct ManifestPolicy: Codable, Sendable, Equatable {
    public var name: String
    public var file: String?
    public var text: String?
    public init(name: String, file: String?, text: String?) {
        self.name = name
        self.file = file
        self.text = text
    }
}

/// One disk of a point.
public struct ManifestDisk: Codable, Sendable, Equatable {
    /// 0, 1, ... in the policy's order; the image is `disk<index>.vhdx`.
    public var index: Int
    /// The source as the policy names it (a path: an image file or a block device).
    public var source: String
    public var virtualSize: UInt64
    public var logicalSectorSize: Int
    public var physicalSectorSize: Int
    /// The image file's name in the point's folder.
    public var image: String
    /// The image's block size (the unit changed data is stored in).
    public var blockSize: Int
    public var imageSize: UInt64
    public var imageSHA256: String
    /// The parent image as the child's relative locator names it (`../<version>/disk0.vhdx`), nil for a full.
    public var parentImage: String?
    /// The size of each checksummed piece of the virtual disk (4 MiB; the last may be shorter).
    public var chunkSize: Int
    /// SHA-256 of each chunk of the virtual disk as the point reads it (through its chain).
    public var chunks: [String]
    /// Virtual bytes that differ from the parent point (the whole disk's data for a full).
    public var changedBytes: UInt64
    /// How the changes were found: `provider` (the snapshot provider's frozen child), `hashes`
    /// (every chunk read and compared with the parent's checksums), `full`.
    public var changeDetection: String
    /// For the differencing provider: the live leaf that the next point's changes accumulate in, and
    /// the identity of the frozen level this point was read from.
    public var providerLeaf: String?
    public var providerFrozenIdentity: String?
    /// The disk's partition table, partitions and volumes, and the device's serial and WWN, as they
    /// were when the point was taken (nil when the source's content could not be described: a VHD
    /// or VHDX source, or a point made before layouts were recorded). System recovery recreates and
    /// matches disks from it.
    public var layout: DiskLayout?

    public init(index: Int, source: String, virtualSize: UInt64, logicalSectorSize: Int, physicalSectorSize: Int, image: String, blockSize: Int,
                imageSize: UInt64, imageSHA256: String, parentImage: String?, chunkSize: Int, chunks: [String], changedBytes: UInt64,
                changeDetection: String, providerLeaf: String? = nil, providerFrozenIdentity: String? = nil, layout: DiskLayout? = nil) {
        self.index = index
        self.source = source
        self.virtualSize = virtualSize
        self.logicalSectorSize = logicalSectorSize
        self.physicalSectorSize = physicalSectorSize
        self.image = image
        self.blockSize = blockSize
        self.imageSize = imageSize
        self.imageSHA256 = imageSHA256
        self.parentImage = parentImage
        self.chunkSize = chunkSize
        self.chunks = chunks
        self.changedBytes = changedBytes
        self.changeDetection = changeDetection
        self.providerLeaf = providerLeaf
        self.providerFrozenIdentity = providerFrozenIdentity
        self.layout = layout
    }

    /// The virtual byte range of chunk `i`.
    public func chunkRange(_ i: Int) -> Range<UInt64> {
        let start = UInt64(i) * UInt64(chunkSize)
        return start..<min(start + UInt64(chunkSize), virtualSize)
    }
}
