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
    /// Host that made the point, and the Bulwark version.
    public var host: String
    public var creator: String
    /// What the job wants the reader to know (a full made because the previous point failed
    /// verification, a writer left out, ...).
    public var notes: [String]

    public init(machine: String, version: String, time: String, kind: PointKind, parent: String?, consistency: ManifestConsistency,
                policy: ManifestPolicy, disks: [ManifestDisk], host: String, creator: String, notes: [String]) {
        self.machine = machine
        self.version = version
        self.time = time
        self.kind = kind
        self.parent = parent
        self.consistency = consistency
        self.policy = policy
        self.disks = disks
        self.host = host
        self.creator = creator
        self.notes = notes
    }

    /// Bytes of all image files of the point.
    public var storedBytes: UInt64 { disks.reduce(0) { $0 + $1.imageSize } }
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
