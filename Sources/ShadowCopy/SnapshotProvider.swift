import Foundation

/// What a provider produced while the writers were frozen.
public struct ProviderSnapshot: Sendable {
    /// The point-in-time copy of each disk.
    public var copies: [String]
    /// For a differencing snapshot: the new live leaf of each disk.
    public var newLeaves: [String]
    public init(copies: [String], newLeaves: [String] = []) {
        self.copies = copies
        self.newLeaves = newLeaves
    }
}

/// Takes the point-in-time copy of the disks (a VSS provider). `prepare` runs before the freeze
/// and does every check and every slow step it can; `snapshot` runs while frozen and must honour
/// `deadline`; `finish` runs after the thaw (flushes, bookkeeping); `abort` removes a partial copy.
public protocol SnapshotProvider: Sendable {
    /// `reflink`, `copy`, `differencing`, ...
    var name: String { get }
    /// The provider that takes the copy: itself, or the one a chooser (`AutoProvider`) picks for
    /// these disks and this output folder, with why. Called once the output folder exists and
    /// before any writer is prepared.
    func resolve(disks: [String], context: SnapshotContext) async throws -> ProviderChoice
    /// Resources to lock (the disks).
    func resources(disks: [String]) -> [String]
    func prepare(disks: [String], context: SnapshotContext) async throws
    func snapshot(disks: [String], context: SnapshotContext, deadline: Date) async throws -> ProviderSnapshot
    func finish(_ snapshot: ProviderSnapshot, context: SnapshotContext) async throws
    func abort(disks: [String], context: SnapshotContext) async
}

/// The provider a snapshot uses, and why it was chosen (nil when it was asked for by name).
public struct ProviderChoice: Sendable {
    public var provider: any SnapshotProvider
    public var reason: String?
    public init(_ provider: any SnapshotProvider, reason: String? = nil) {
        self.provider = provider
        self.reason = reason
    }
}

extension SnapshotProvider {
    public func resolve(disks: [String], context: SnapshotContext) async throws -> ProviderChoice { ProviderChoice(self) }
    public func resources(disks: [String]) -> [String] { disks.map { "disk:" + Paths.canonical($0) } }
    public func finish(_ snapshot: ProviderSnapshot, context: SnapshotContext) async throws {}
    public func abort(disks: [String], context: SnapshotContext) async {}
}
