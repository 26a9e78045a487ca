import Foundation
import Storage
import SystemPackage
import Testing
import TestSupport
import VirtualDisk

/// The storage implementations the chain, convert and merge tests run over: the local filesystem
/// (`BlockFile`), and a read-only store whose every byte comes from a helper process through a pipe
/// (`bulwark storage serve /` behind `HelperProcessSource`), the second implementation that proves the
/// formats use nothing but the `ByteStore` seam.
public enum StoreKind: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case local
    case helperProcess

    public var testDescription: String { rawValue }

    /// A space to read images through (paths are the local absolute paths in both).
    public func space() throws -> any StoreSpace {
        switch self {
        case .local:
            return LocalFileSystem()
        case .helperProcess:
            return RangeSpace(try HelperProcessSource(executable: TestEnv.bulwark, arguments: ["storage", "serve", "/"]))
        }
    }

    /// Opens a chain for reading in this kind of store.
    public func openChain(_ path: String) throws -> DiskChain {
        try DiskChain.open(FilePath(path), in: try space())
    }

    /// Checks that the chain's reads went through this kind of store.
    public func readThroughSeam(_ chain: DiskChain) -> Bool {
        switch self {
        case .local: return chain.levels.allSatisfy { $0.store is BlockFile }
        case .helperProcess: return chain.levels.allSatisfy { ($0.store as? RangeStore)?.readCount.reads ?? 0 > 0 }
        }
    }
}
