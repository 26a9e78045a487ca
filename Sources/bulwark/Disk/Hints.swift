import VirtualDisk

/// The command line's hints on engine errors: the library says what is wrong, and why, in its own
/// terms; the command line adds which command or flag deals with it.
enum Hints {
    /// Runs `body`, adding a hint to the engine errors that have one.
    static func adding<T>(_ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let error as DiskError {
            guard let hint = hint(for: error) else { throw error }
            throw HintedError(description: "\(error); \(hint)")
        }
    }

    static func hint(for error: DiskError) -> String? {
        switch error {
        case let .mergePending(_, child, _, _, runningPID):
            return runningPID != nil
                ? "or, if it was interrupted, run `bulwark disk merge \(child)` to finish it"
                : "run `bulwark disk merge \(child)` to finish it"
        case let .parentNotFound(child, _, _):
            return "if the parent was moved or renamed, run `bulwark disk reparent \(child) --parent PATH` to point it there"
        case let .parentMismatch(child, parent, _, _):
            return "if \(parent) holds the same data, `bulwark disk reparent \(child) --parent \(parent) --ignore-id-mismatch` accepts it"
        case .hasChildren:
            return "name other places to look with --children DIR|FILE..."
        default:
            return nil
        }
    }
}

/// An engine error with the command line's hint appended.
struct HintedError: Error, CustomStringConvertible {
    var description: String
}
