// swift-tools-version: 6.1
import PackageDescription

let system = Target.Dependency.product(name: "SystemPackage", package: "swift-system")
let argumentParser = Target.Dependency.product(name: "ArgumentParser", package: "swift-argument-parser")
let propertyBased = Target.Dependency.product(name: "PropertyBased", package: "swift-property-based")
let yams = Target.Dependency.product(name: "Yams", package: "Yams")
let grdb = Target.Dependency.product(name: "GRDB", package: "GRDB.swift")
let logging = Target.Dependency.product(name: "Logging", package: "swift-log")
let crypto = Target.Dependency.product(name: "Crypto", package: "swift-crypto")

let package = Package(
    name: "Bulwark",
    products: [
        .executable(name: "bulwark", targets: ["bulwark"]),
        .library(name: "Storage", targets: ["Storage"]),
        .library(name: "VirtualDisk", targets: ["VirtualDisk"]),
        .library(name: "ShadowCopy", targets: ["ShadowCopy"]),
        .library(name: "Targets", targets: ["Targets"]),
        .library(name: "Protection", targets: ["Protection"]),
        .library(name: "Recovery", targets: ["Recovery"]),
        .library(name: "Replication", targets: ["Replication"]),
        .library(name: "Mount", targets: ["Mount"]),
        .library(name: "Layout", targets: ["Layout"]),
        .library(name: "FileSets", targets: ["FileSets"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.1"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
    ],
    targets: [
        // C libraries, found through pkg-config.
        .systemLibrary(name: "CSMBClient", pkgConfig: "smbclient", providers: [.apt(["libsmbclient-dev"])]),
        .systemLibrary(name: "CBlkid", pkgConfig: "blkid", providers: [.apt(["libblkid-dev"])]),
        .systemLibrary(name: "CArchive", pkgConfig: "libarchive", providers: [.apt(["libarchive-dev"])]),
        .systemLibrary(name: "CFuse", pkgConfig: "fuse3", providers: [.apt(["libfuse3-dev"])]),

        // Linux calls the Glibc overlay lacks (fallocate, copy_file_range, FICLONE, FIFREEZE).
        .target(name: "CLinux"),

        // Support: the byte-range store protocol and its POSIX implementation, errors, the bounded
        // blocking pools, progress and cancellation, timestamps and byte counts.
        .target(name: "Storage", dependencies: ["CLinux", system]),
        // The disk engine: VHD, VHDX, raw images, chains and operations, over any store.
        .target(name: "VirtualDisk", dependencies: ["Storage", "CLinux", system]),
        // The VSS analog: writers, providers and the snapshot coordinator.
        .target(name: "ShadowCopy", dependencies: ["Storage", "VirtualDisk", "CLinux", system]),
        // Disk layouts: partition tables (read, and fitted to a larger disk), what libblkid finds on a
        // disk (table, partitions, filesystems, labels, UUIDs), and the host's whole disks (serial,
        // WWN, what holds them): what bare-metal backup records and system recovery recreates.
        .target(name: "Layout", dependencies: ["Storage", "CBlkid", system]),
        // Where backups live: the target protocol ("publish a complete file", list, read back), the
        // local directory target, the SMB share target (libsmbclient), the lease, and the on-target
        // catalog and manifests.
        .target(name: "Targets", dependencies: ["Storage", "Layout", "CSMBClient", system, crypto]),
        // File sets: folders and files archived with libarchive (pax, zstd, owners, modes, times,
        // xattrs, ACLs) into a target, incremental against the previous set's index, and restored
        // from it with every path checked.
        .target(name: "FileSets", dependencies: ["Storage", "Targets", "CArchive", system]),
        // Protection policies, backup jobs and recovery points, retention, verify, job history,
        // the scheduler and the daemon.
        .target(name: "Protection", dependencies: ["Storage", "VirtualDisk", "ShadowCopy", "Targets", "Layout", "FileSets", "Replication", system, yams, grdb, logging, crypto]),
        // Copying recovery points between targets: resumable, verified, throttled by a token bucket
        // whose rate follows a weekly bandwidth schedule (a decorator of any store).
        .target(name: "Replication", dependencies: ["Storage", "Targets", "CArchive", system]),
        // Restore: disks and whole machines (system recovery: disks matched, checked and rewritten,
        // partition tables fitted) from a target, checked against the point's manifest (the checks
        // verify uses, from Protection).
        .target(name: "Recovery", dependencies: ["Storage", "VirtualDisk", "Targets", "Protection", "Layout", system]),
        // FUSE views of a virtual disk (Mount-VHD): the whole disk and each partition as read-only
        // files, served from any readable disk (a chain on a local folder or on a target's store).
        .target(name: "Mount", dependencies: ["Storage", "VirtualDisk", "Layout", "CFuse", system]),
        // The command-line tool: parses and prints; behaviour lives in the libraries.
        .executableTarget(name: "bulwark", dependencies: ["Storage", "VirtualDisk", "ShadowCopy", "Targets", "Protection", "Recovery", "Replication", "Mount", "Layout", "FileSets", argumentParser, system, logging]),

        // Shared helpers for the tests: temporary folders, external oracles, the built CLI.
        .target(name: "TestSupport", dependencies: [system, "Storage", "VirtualDisk"], path: "Tests/TestSupport"),
        .testTarget(name: "VirtualDiskTests", dependencies: ["Storage", "VirtualDisk", "TestSupport", propertyBased]),
        .testTarget(name: "ShadowCopyTests", dependencies: ["Storage", "ShadowCopy", "VirtualDisk", "TestSupport"]),
        .testTarget(name: "SystemLibraryTests", dependencies: ["CSMBClient", "CBlkid", "CArchive", "TestSupport"]),
        .testTarget(name: "CLITests", dependencies: ["TestSupport", "Storage", "VirtualDisk"]),
        .testTarget(name: "MountTests", dependencies: ["TestSupport", "Storage", "VirtualDisk", "Mount", "Layout"]),
        .testTarget(name: "ProtectionTests", dependencies: ["TestSupport", "Storage", "VirtualDisk", "ShadowCopy", "Targets", "Protection", "Recovery", "Replication", "Layout", "FileSets", "CArchive", yams, logging]),
    ],
    swiftLanguageModes: [.v6]
)
