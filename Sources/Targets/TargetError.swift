import Storage

/// Every failure of a backup target that is not a plain store failure (`StorageError`). Like the disk
/// engine's `DiskError`, each case names the target or file and the cause, and says what to do.
public enum TargetError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The target location cannot be used (an unknown scheme, a relative path, ...).
    case invalidLocation(String, reason: String)
    /// Another process holds the machine's lease on the target.
    case leased(target: String, machine: String, holder: String, expires: String)
    /// A lease this process held was taken over or removed: it must stop writing at once.
    case leaseLost(target: String, machine: String, reason: String)
    /// A file on the target (a manifest, a catalog) is damaged or of an unknown format.
    case damaged(path: String, reason: String)
    /// A recovery point that was asked for does not exist.
    case pointNotFound(target: String, machine: String, version: String)
    /// No machine of that name has points on the target.
    case machineNotFound(target: String, machine: String, known: [String])
    /// A point cannot fit in the room the target has left (checked before anything is written).
    case noRoom(target: String, point: String, needed: UInt64, available: UInt64)

    public var description: String {
        switch self {
        case let .invalidLocation(location, reason):
            return "\(location): not a usable backup target: \(reason)"
        case let .leased(target, machine, holder, expires):
            return "\(target): machine \(machine) is in use by \(holder) (lease valid until \(expires)); wait for that job to finish, or stop it"
        case let .leaseLost(target, machine, reason):
            return "\(target): lost the lease on machine \(machine): \(reason); the job stopped writing, nothing it made is visible"
        case let .damaged(path, reason):
            return "\(path): damaged: \(reason)"
        case let .pointNotFound(target, machine, version):
            return "\(target): machine \(machine) has no recovery point \(version); list them with `bulwark versions --target \(target) --machine \(machine)`"
        case let .machineNotFound(target, machine, known):
            let list = known.isEmpty ? "the target holds no machines yet" : "machines there: \(known.joined(separator: ", "))"
            return "\(target): no recovery points for machine \(machine) (\(list))"
        case let .noRoom(target, point, needed, available):
            return "\(target): not enough room for \(point): it needs \(ByteCount.format(needed)) more and \(ByteCount.format(available)) are free; free space there or prune old recovery points (replicate.keep), then run again (nothing was written)"
        }
    }
}
