import Foundation
import Storage

/// The default provider: reflink where the output folder's filesystem can share extents with the
/// disks (same filesystem, xfs with reflink=1 or btrfs: a copy in milliseconds whatever the size),
/// else a copy (any filesystem). The choice, and why, is in the result: reflink's failure on ext4
/// should not be the first thing a user meets.
public struct AutoProvider: SnapshotProvider {
    public init() {}
    public var name: String { "auto" }

    public func resolve(disks: [String], context: SnapshotContext) async throws -> ProviderChoice {
        let output = context.outputDirectory
        let reason: String? = try await BlockingPool.disk.run {
            for level in try ProviderFiles.chainFiles(of: disks) where Paths.device(of: level) != Paths.device(of: output) {
                return "\(level) is on another filesystem than the output folder \(output)"
            }
            do {
                try ReflinkProvider.probe(in: output, source: disks.first ?? output)
                return nil
            } catch let e as ShadowCopyError {
                if case let .reflinkUnsupported(_, _, why) = e { return "the output folder's filesystem (\(OutputFolder.filesystemType(of: output) ?? "unknown")) cannot reflink: \(why.components(separatedBy: ";").first ?? why)" }
                throw e
            }
        }
        if let reason { return ProviderChoice(CopyProvider(), reason: reason) }
        return ProviderChoice(ReflinkProvider(), reason: "the output folder shares the disks' filesystem (\(OutputFolder.filesystemType(of: output) ?? "unknown")), which can share extents")
    }

    // Never called: the coordinator uses the provider `resolve` chose.
    public func prepare(disks: [String], context: SnapshotContext) async throws {
        throw ShadowCopyError.providerFailed(provider: name, reason: "auto is resolved to reflink or copy before prepare")
    }

    public func snapshot(disks: [String], context: SnapshotContext, deadline: Date) async throws -> ProviderSnapshot {
        throw ShadowCopyError.providerFailed(provider: name, reason: "auto is resolved to reflink or copy before the snapshot")
    }
}
