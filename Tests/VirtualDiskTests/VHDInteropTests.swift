import Foundation
import SystemPackage
import Testing
import TestSupport
@testable import VirtualDisk

/// Shared helpers of the VHD tests.
enum VHDTest {
    /// Every virtual byte of `image` (through its chain).
    static func readAll(_ image: any DiskImage) throws -> [UInt8] {
        try image.read(count: Int(image.virtualSize), at: 0)
    }

    /// The first offset where `a` and `b` differ (nil when equal), found with memcmp so that large
    /// images compare quickly in debug builds and a failure prints an offset, not megabytes.
    static func firstDifference(_ a: ArraySlice<UInt8>, _ b: ArraySlice<UInt8>) -> Int? {
        guard a.count == b.count else { return min(a.count, b.count) }
        let equal = a.withUnsafeBytes { x in b.withUnsafeBytes { y in x.count == 0 || memcmp(x.baseAddress!, y.baseAddress!, x.count) == 0 } }
        if equal { return nil }
        return zip(a.indices, b.indices).first { a[$0.0] != b[$0.1] }.map { $0.0 - a.startIndex } ?? 0
    }

    /// Where whole byte arrays differ (nil when equal).
    static func mismatch(_ a: [UInt8], _ b: [UInt8]) -> Int? { firstDifference(a[...], b[...]) }

    static func isZero(_ a: ArraySlice<UInt8>) -> Bool {
        firstDifference(a, [UInt8](repeating: 0, count: a.count)[...]) == nil
    }

    static func bytes(_ path: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path)) }

    /// Writes `model` as a raw file.
    static func writeRaw(_ model: [UInt8], to path: String) throws {
        try Data(model).write(to: URL(fileURLWithPath: path))
    }

    /// The virtual size qemu-img reports.
    static func qemuVirtualSize(_ path: String, format: String = "vpc") throws -> UInt64 {
        let r = try runChecked("qemu-img", ["info", "-f", format, "--output", "json", path])
        let json = try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any]
        return (json?["virtual-size"] as? NSNumber)?.uint64Value ?? 0
    }

    /// Reads a chain through pyvhdi (base first), returning every byte of the leaf. Reads go in
    /// 32 KiB pieces: libvhdi 20210425 returns wrong bytes for one read that spans more than two
    /// blocks of a differencing image (it reads them right piece by piece).
    static func pyvhdiRead(_ levels: [String], dir: TempDir) throws -> [UInt8] {
        let script = dir.file("pyvhdi-dump.py")
        try """
        import pyvhdi, sys
        out, paths = sys.argv[1], sys.argv[2:]
        files = []
        for p in paths:
            f = pyvhdi.file()
            f.open(p)
            files.append(f)
        for i in range(1, len(files)):
            files[i].set_parent(files[i - 1])
        leaf = files[-1]
        size = leaf.get_media_size()
        with open(out, "wb") as o:
            off = 0
            while off < size:
                n = min(32768, size - off)
                o.write(leaf.read_buffer_at_offset(n, off))
                off += n
        """.write(toFile: script, atomically: true, encoding: .utf8)
        let out = dir.file("pyvhdi-out.raw")
        try runChecked("/usr/bin/python3", [script, out] + levels)
        return [UInt8](try bytes(out))
    }

    /// Applies one write to the image and to the model.
    static func write(_ image: any DiskImage, _ model: inout [UInt8], _ data: [UInt8], at offset: Int) throws {
        try image.write(data, at: UInt64(offset))
        model.replaceSubrange(offset..<offset + data.count, with: data)
    }

    /// Random writes: unaligned offsets and lengths, some sector-aligned, some zeros.
    static func randomWrites(_ image: any DiskImage, _ model: inout [UInt8], count: Int, maxLength: Int, rng: inout SeededRandom) throws {
        let size = model.count
        for i in 0..<count {
            var length = Int(rng.next() % UInt64(maxLength)) + 1
            var offset = Int(rng.next() % UInt64(size - 1))
            if i % 3 == 0 { offset = offset / 512 * 512; length = (length + 511) / 512 * 512 }
            length = min(length, size - offset)
            let data = i % 4 == 1 ? [UInt8](repeating: 0, count: length) : rng.bytes(length)
            try write(image, &model, data, at: offset)
        }
    }
}

/// VHD files made by qemu-img read byte for byte as their raw source, and files Bulwark makes are
/// what qemu-img expects.
@Suite struct VHDInteropTests {
    /// A raw file of `size` bytes: random data in some megabytes, zeros (holes) elsewhere.
    static func makeRaw(_ path: String, size: Int, seed: UInt64) throws -> [UInt8] {
        var rng = SeededRandom(seed: seed)
        var model = [UInt8](repeating: 0, count: size)
        // One random megabyte, stamped with its position so a misplaced block shows.
        var pattern = rng.bytes(1 << 20)
        var offset = 0
        var chunk = 0
        while offset < size {
            let n = min(1 << 20, size - offset)
            if chunk % 3 != 1 {
                withUnsafeBytes(of: UInt64(chunk).bigEndian) { pattern.replaceSubrange(0..<8, with: $0) }
                pattern[(1 << 19) + chunk % 4096] &+= 1
                model.replaceSubrange(offset..<offset + n, with: pattern[..<n])
            }
            offset += n
            chunk += 1
        }
        // An unaligned tail of data, so sizes that are not CHS multiples matter.
        try VHDTest.writeRaw(model, to: path)
        return model
    }

    @Test(arguments: [
        ("fixed", 10 << 20, false), ("dynamic", 10 << 20, false),
        ("fixed", (33 << 20) + 512, false), ("dynamic", (33 << 20) + 512, false),
        ("dynamic", 100 << 20, false), ("fixed", (33 << 20) + 512, true), ("dynamic", (33 << 20) + 512, true),
        ("dynamic", 10 << 20, true),
    ])
    func qemuConvertedImagesReadIdentically(subformat: String, size: Int, forceSize: Bool) throws {
        guard try TestEnv.tools("qemu-img") else { return }
        let dir = try TempDir()
        let raw = dir.file("src.raw"), vhd = dir.file("img.vhd")
        let model = try Self.makeRaw(raw, size: size, seed: UInt64(size) ^ (forceSize ? 1 : 0))
        let options = "subformat=\(subformat)" + (forceSize ? ",force_size=on" : "")
        try runChecked("qemu-img", ["convert", "-f", "raw", "-O", "vpc", "-o", options, raw, vhd])
        let qemuSize = try VHDTest.qemuVirtualSize(vhd)

        let image = try DiskImages.openLevel(FilePath(vhd))
        defer { try? image.close() }
        #expect(image.format == .vhd)
        #expect(image.type == (subformat == "fixed" ? .fixed : .dynamic))
        #expect(image.virtualSize == qemuSize, "Bulwark and qemu disagree on the size rule: \(image.properties["size rule"] ?? "")")
        if forceSize { #expect(image.virtualSize == UInt64(size)) }
        let content = try VHDTest.readAll(image)
        let common = min(content.count, model.count)
        #expect(VHDTest.firstDifference(content[..<common], model[..<common]) == nil)
        #expect(VHDTest.isZero(content[common...]))
        #expect(image.properties["size rule"]?.contains(forceSize ? "current size" : "CHS") == true)
    }

    @Test(arguments: [("fixed", "10M"), ("dynamic", "10M"), ("dynamic", "34603520"), ("fixed", "64M")])
    func qemuCreatedEmptyImagesReadAsZeros(subformat: String, size: String) throws {
        guard try TestEnv.tools("qemu-img") else { return }
        let dir = try TempDir()
        let vhd = dir.file("empty.vhd")
        try runChecked("qemu-img", ["create", "-f", "vpc", "-o", "subformat=\(subformat)", vhd, size])
        let image = try DiskImages.openLevel(FilePath(vhd))
        defer { try? image.close() }
        #expect(image.virtualSize == (try VHDTest.qemuVirtualSize(vhd)))
        #expect(VHDTest.isZero(try VHDTest.readAll(image)[...]))
        let extents = try image.extents(in: 0..<image.virtualSize)
        #expect(extents.count == 1)
    }

    @Test(arguments: [
        (DiskType.fixed, (10 << 20) + 512, nil as Int?), (.fixed, 7 * 1_000_448, nil),
        (.dynamic, (33 << 20) + 512, nil), (.dynamic, 9 * 1_000_448, 512 << 10),
        (.dynamic, (16 << 20) + 4608, 64 << 10), (.dynamic, 5 << 20, 4096),
    ])
    func bulwarkImagesPassQemu(type: DiskType, size: Int, blockSize: Int?) throws {
        guard try TestEnv.tools("qemu-img") else { return }
        let dir = try TempDir()
        let vhd = dir.file("made.vhd"), raw = dir.file("model.raw")
        let image = try DiskImages.create(at: FilePath(vhd), options: CreateOptions(format: .vhd, type: type, virtualSize: UInt64(size), blockSize: blockSize))
        var model = [UInt8](repeating: 0, count: size)
        var rng = SeededRandom(seed: UInt64(size))
        try VHDTest.randomWrites(image, &model, count: 40, maxLength: 300_000, rng: &rng)
        // One large write across several blocks, and the disk's last byte.
        try VHDTest.write(image, &model, rng.bytes(3 << 20), at: 1_234_567)
        try VHDTest.write(image, &model, [0xAB], at: size - 1)
        #expect(VHDTest.mismatch(try VHDTest.readAll(image), model) == nil)
        try image.close()
        try VHDTest.writeRaw(model, to: raw)

        #expect(try VHDTest.qemuVirtualSize(vhd) == UInt64(size))
        let compare = try run("qemu-img", ["compare", "-f", "vpc", "-F", "raw", vhd, raw])
        #expect(compare.status == 0, "\(compare.out) \(compare.err)")
        // qemu 7.2 has no `check` for vpc; Bulwark's own check must be clean.
        #expect(try VHDFormat.check(FilePath(vhd), repair: false).problems == [])
        let reopened = try DiskImages.openLevel(FilePath(vhd))
        defer { try? reopened.close() }
        #expect(VHDTest.mismatch(try VHDTest.readAll(reopened), model) == nil)
        #expect(reopened.properties["creator application"] == "win ")
        #expect(reopened.properties["size rule"] == "current size (creator 'win ')")
    }

    @Test func geometryFollowsTheSpecification() {
        // Values from the specification's algorithm (as qemu and Hyper-V compute them).
        #expect(VHDGeometry(forSize: 10 << 20).description == "301/4/17")
        #expect(VHDGeometry(forSize: 100 << 20).description == "1003/12/17")
        let big = VHDGeometry(forSize: 127 << 30)
        #expect(big.heads == 16 && big.sectorsPerTrack == 255)
        #expect(VHDGeometry(forSize: 3 << 40).sectors == VHDGeometry.maximumSectors)
    }

    @Test func probeFindsTheCookieAtEitherEnd() throws {
        let dir = try TempDir()
        let fixed = dir.file("f.vhd"), dynamic = dir.file("d.vhd"), plain = dir.file("p.img")
        try DiskImages.create(at: FilePath(fixed), options: CreateOptions(format: .vhd, type: .fixed, virtualSize: 1 << 20)).close()
        try DiskImages.create(at: FilePath(dynamic), options: CreateOptions(format: .vhd, type: .dynamic, virtualSize: 1 << 20)).close()
        try Data(count: 4096).write(to: URL(fileURLWithPath: plain))
        #expect(try DiskImages.detectFormat(FilePath(fixed)) == .vhd)
        #expect(try DiskImages.detectFormat(FilePath(dynamic)) == .vhd)
        #expect(try DiskImages.detectFormat(FilePath(plain)) == .raw)
        // An old 511-byte footer (the last byte cut off) still opens.
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: fixed))
        try handle.truncate(atOffset: (1 << 20) + 511)
        try handle.close()
        let image = try DiskImages.openLevel(FilePath(fixed))
        defer { try? image.close() }
        #expect(image.virtualSize == 1 << 20)
        #expect(image.properties["footer"] == "end (511-byte footer)")
    }
}
