import Foundation
import Testing
import TestSupport

/// The exit statuses README "Exit codes" promises (Sources/bulwark/Support/Failure.swift defines them).
enum Exit {
    static let failed: Int32 = 1, notFound: Int32 = 3, corrupt: Int32 = 4, busy: Int32 = 5, noSpace: Int32 = 6
    static let refused: Int32 = 8, usage: Int32 = 64
}

extension RunResult {
    /// Whether the process died of a Swift runtime trap (it prints "Fatal error" and a crash report).
    var trapped: Bool { err.contains("Fatal error") || err.contains("Program crashed") }
}

/// User input that must never trap: every size and offset is range-checked with a clear message.
@Suite struct CLIInputTests {
    static let huge = "9223372036854775808"   // 2^63: one past Int64.max
    static let max = "18446744073709551615"   // UInt64.max

    func refused(_ arguments: [String], _ message: String, status: Int32 = Exit.usage) throws {
        let r = try run(TestEnv.bulwark, arguments)
        #expect(!r.trapped, "\(arguments) trapped: \(r.err)")
        #expect(r.status == status, "\(arguments): status \(r.status), \(r.err)")
        #expect(r.err.contains(message), "\(arguments): \(r.err)")
    }

    @Test func hugeOffsetsLengthsAndSizesAreRefusedNotTrapped() throws {
        let dir = try TempDir()
        let image = dir.file("disk.img")
        try runChecked(TestEnv.bulwark, ["disk", "create", image, "--size", "4M"])
        try refused(["disk", "read", image, "--length", Self.huge], "beyond the virtual disk size 4194304")
        try refused(["disk", "read", image, "--offset", "1", "--length", Self.max], "beyond the virtual disk size")
        try refused(["disk", "read", image, "--offset", Self.max], "beyond the virtual disk size")
        try refused(["disk", "write", image, "--offset", Self.max], "beyond the virtual disk size")
        try refused(["disk", "resize", image, "--size", Self.huge], "exceeds the largest file size")
        try refused(["disk", "convert", image, dir.file("out.vhdx"), "--block-size", Self.huge], "--block-size \(Self.huge) is too large")
        try refused(["disk", "convert", image, dir.file("out.vhdx"), "--block-size", "512M"], "block size 536870912 must be a power of two")
        #expect(try run(TestEnv.bulwark, ["disk", "read", image, "--offset", "4M"]).status == 0, "the end itself is a valid empty range")
        for (name, message) in [("big.img", "exceeds the largest file size"), ("big.vhd", "exceeds the format's maximum of 2040 GiB"),
                                ("big.vhdx", "must be between 1 byte and 64 TiB")] {
            try refused(["disk", "create", dir.file(name), "--size", Self.huge], message)
            #expect(!FileManager.default.fileExists(atPath: dir.file(name)), "a refused create leaves no \(name)")
        }
        try refused(["disk", "create", dir.file("huge.vhdx"), "--size", "65T"], "64 TiB")
        try refused(["disk", "create", dir.file("huge.vhd"), "--size", "2041G"], "2040 GiB")
        #expect(!FileManager.default.fileExists(atPath: dir.file("huge.vhd")))
    }

    @Test func sizesTakeDecimalsOfAUnit() throws {
        let dir = try TempDir()
        for (i, (text, bytes)) in [("1.5G", 1_610_612_736), ("0.5M", 524_288), ("2.5k", 2560), ("1.5GiB", 1_610_612_736), ("64m", 67_108_864)].enumerated() {
            let image = dir.file("d\(i).vhdx")
            let r = try runChecked(TestEnv.bulwark, ["disk", "create", image, "--size", text, "--json"])
            let level = try #require(JSONSerialization.jsonObject(with: r.stdout) as? [String: Any])
            #expect(level["virtualSize"] as? Int == bytes, "\(text)")
        }
        // A whole number of bytes, and sector-aligned where the format needs it.
        try refused(["disk", "create", dir.file("a.img"), "--size", "0.1K"], "not a whole number of bytes")
        try refused(["disk", "create", dir.file("a.vhd"), "--size", "1000"], "multiple of 512")
    }

    @Test(arguments: [["--size", "-1G"], ["--size=-1G"], ["--size", "abc"], ["--size", "1.G"], ["--size", "12Q"], ["--size", "99999999999T"]])
    func badSizesShowTheAcceptedForms(size: [String]) throws {
        let dir = try TempDir()
        try refused(["disk", "create", dir.file("x.vhdx")] + size, "expected a size like 512, 64M, 1.5G, 2T (binary units K, M, G, T)")
        #expect(!FileManager.default.fileExists(atPath: dir.file("x.vhdx")))
    }

    @Test func negativeSizeSaysSo() throws {
        let dir = try TempDir()
        try refused(["disk", "create", dir.file("x.vhdx"), "--size", "-1G"], "cannot be negative")
        try refused(["disk", "resize", dir.file("x.vhdx"), "--size=-1G"], "cannot be negative")
    }

    @Test func createWithoutSizeOrParentSaysWhatIsMissing() throws {
        let dir = try TempDir()
        let r = try run(TestEnv.bulwark, ["disk", "create", dir.file("x.vhdx")])
        #expect(r.status == Exit.usage)
        #expect(r.err.contains("missing --size SIZE (a new image) or --parent PARENT"), "\(r.err)")
        #expect(r.err.contains("Usage: bulwark disk create"), "the usage shown is create's: \(r.err)")
    }

    @Test(arguments: ["img", "vhdx"])
    func shrinkRefusalNamesWhereDataEndsAndTheSmallestSize(ext: String) throws {
        let dir = try TempDir()
        let image = dir.file("disk.\(ext)")
        try runChecked(TestEnv.bulwark, ["disk", "create", image, "--size", "8M"] + (ext == "vhdx" ? ["--block-size", "1M"] : []))
        try runChecked(TestEnv.bulwark, ["disk", "write", image, "--offset", "3M"], input: Data(repeating: 7, count: 4096))
        let r = try run(TestEnv.bulwark, ["disk", "resize", image, "--size", "1M"])
        #expect(r.status == Exit.failed)
        let end = ext == "vhdx" ? "4.0 MiB (4194304 bytes)" : "3.0 MiB (3149824 bytes)"
        #expect(r.err.contains("data is stored up to \(end)"), "\(r.err)")
        #expect(r.err.contains("the smallest size that keeps it is \(end)"), "\(r.err)")
        let smallest = ext == "vhdx" ? "4194304" : "3149824"
        try runChecked(TestEnv.bulwark, ["disk", "resize", image, "--size", smallest])
    }

    @Test func convertTypeDoesNotOfferDifferencing() throws {
        let help = try runChecked(TestEnv.bulwark, ["disk", "convert", "--help"]).out
        let typeLine = help.split(separator: "\n").filter { $0.contains("--type") }
        #expect(!typeLine.isEmpty && typeLine.allSatisfy { !$0.contains("differencing") }, "\(typeLine)")
        let dir = try TempDir()
        try runChecked(TestEnv.bulwark, ["disk", "create", dir.file("a.img"), "--size", "1M"])
        let r = try run(TestEnv.bulwark, ["disk", "convert", dir.file("a.img"), dir.file("b.vhdx"), "--type", "differencing"])
        #expect(r.status == Exit.usage)
        #expect(r.err.contains("'fixed' and 'dynamic'"), "\(r.err)")
    }
}
