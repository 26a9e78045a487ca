import Foundation
import Glibc

/// A loop-mounted test filesystem (ext4, xfs with reflink, btrfs) in a temporary folder. `cleanup`
/// thaws (fsfreeze -u), unmounts and detaches the loop device, whatever state the test left.
public final class LoopVolume: @unchecked Sendable {
    public let dir: TempDir
    public let image: String
    public let mountpoint: String
    public let fs: String
    private var mounted = false

    public init(_ fs: String = "ext4", size: String = "64M", in base: TempDir? = nil) throws {
        dir = try TempDir("bulwark-vol")
        self.fs = fs
        image = dir.file("\(fs).img")
        mountpoint = dir.file("mnt")
        try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
        try runChecked(sys("truncate"), ["-s", fs == "xfs" ? "320M" : size, image])
        switch fs {
        case "xfs": try runChecked(sys("mkfs.xfs"), ["-q", "-m", "reflink=1", image])
        case "btrfs": try runChecked(sys("mkfs.btrfs"), ["-q", image])
        default: try runChecked(sys("mkfs.ext4"), ["-q", image])
        }
        try runChecked(sys("mount"), ["-o", "loop", image, mountpoint])
        mounted = true
    }

    public func file(_ name: String) -> String { mountpoint + "/" + name }

    /// The files in the volume (without lost+found), sorted.
    public var files: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: mountpoint)) ?? []).filter { $0 != "lost+found" }.sorted()
    }

    /// Thaws (ignoring "not frozen"), unmounts, detaches.
    public func cleanup() {
        guard mounted else { return }
        mounted = false
        _ = try? run(sys("fsfreeze"), ["-u", mountpoint])
        let loop = (try? run(sys("findmnt"), ["-n", "-o", "SOURCE", mountpoint]))?.out.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        for _ in 0..<20 {
            if (try? run(sys("umount"), [mountpoint]))?.status == 0 { break }
            _ = try? run(sys("fsfreeze"), ["-u", mountpoint])
            usleep(100_000)
        }
        if loop.hasPrefix("/dev/loop") { _ = try? run(sys("losetup"), ["-d", loop]) }
    }

    deinit { cleanup() }
}

extension LoopVolume {
    /// Whether a write into the volume completes within `seconds` (run in a child that is not waited
    /// on: a write into a frozen filesystem blocks uninterruptibly until the thaw).
    public func writeCompletes(within seconds: Double, name: String = "probe") -> Bool {
        let marker = dir.file("\(name)-done-\(UUID().uuidString.prefix(6))")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", "echo data > '\(file(name))' && touch '\(marker)'"]
        try? p.run()
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if FileManager.default.fileExists(atPath: marker) { return true }
            usleep(10_000)
        }
        return FileManager.default.fileExists(atPath: marker)
    }
}

/// The absolute path of a system program (the test runner's PATH may lack the system folders).
public func sys(_ tool: String) -> String {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] where FileManager.default.isExecutableFile(atPath: "\(dir)/\(tool)") {
        return "\(dir)/\(tool)"
    }
    return tool
}
