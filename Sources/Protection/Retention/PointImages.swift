import Storage
import SystemPackage
import Targets
import VirtualDisk

extension RecoveryPoints {
    /// The image file a point's disk is read from: its own, or, while an interrupted prune is being
    /// finished, the file the journal says holds its data (see `FoldJournal`). Every reader of points
    /// (verify, restore, the next backup's parent) goes through here.
    public func imagePath(_ version: String, disk: ManifestDisk) -> FilePath {
        FoldJournal.imagePath(self, version: version, image: disk.image)
    }

    /// Opens the chain of one disk of a point, read-only, through the target's space.
    public func openDisk(_ version: String, disk: ManifestDisk) throws -> DiskChain {
        try DiskChain.open(imagePath(version, disk: disk), in: target.space)
    }

    /// The points whose files an interrupted prune is changing: their data reads right, their file
    /// digests are those of the revision the prune publishes when it is finished.
    public var pointsInFlux: Set<String> { FoldJournal.inFlux(self) }
}
