import Foundation
import SystemPackage
import Testing
import TestSupport
@testable import VirtualDisk
import Storage

@Suite struct ByteCountTests {
    @Test(arguments: [("512", 512), ("4K", 4096), ("2m", 2 << 20), ("1G", 1 << 30), ("3T", 3 << 40), ("8MiB", 8 << 20), ("64GB", 64 << 30)])
    func parsesBinarySuffixes(text: String, expected: UInt64) throws {
        #expect(try ByteCount.parse(text) == expected)
    }

    @Test(arguments: ["", "G", "12X", "-1", "1.5G", "99999999999T"])
    func rejectsNonsense(text: String) {
        #expect(throws: StorageError.self) { try ByteCount.parse(text) }
    }

    @Test func formatsForPeople() {
        #expect(ByteCount.format(512) == "512 B")
        #expect(ByteCount.format(3 << 30) == "3.0 GiB")
    }
}

@Suite struct RawImageTests {
    @Test func sparseRawReportsHolesAndReadsBack() throws {
        let dir = try TempDir()
        let path = FilePath(dir.file("disk.img"))
        let image = try DiskImages.create(at: path, options: CreateOptions(format: .raw, type: .dynamic, virtualSize: 16 << 20))
        var rng = SeededRandom(seed: 7)
        let data = rng.bytes(300_000)
        try image.write(data, at: 5 << 20)
        try image.close()

        let chain = try DiskChain.open(path)
        defer { try? chain.close() }
        #expect(chain.leaf.virtualSize == 16 << 20)
        #expect(try chain.leaf.read(count: data.count, at: 5 << 20) == data)
        #expect(try chain.leaf.read(count: 4096, at: 0) == [UInt8](repeating: 0, count: 4096))
        let mapped = try chain.map().filter { !$0.isZero }
        #expect(mapped.count == 1)
        let covered = try #require(mapped.first).range
        #expect(covered.lowerBound <= 5 << 20 && covered.upperBound >= (5 << 20) + 300_000)
    }

    @Test func refusesReadsPastTheEnd() throws {
        let dir = try TempDir()
        let path = FilePath(dir.file("disk.img"))
        try DiskImages.create(at: path, options: CreateOptions(format: .raw, type: .fixed, virtualSize: 1 << 20)).close()
        let image = try DiskImages.openLevel(path)
        defer { try? image.close() }
        #expect(throws: DiskError.outOfRange(path: path.string, offset: 1 << 20, length: 1, virtualSize: 1 << 20)) {
            _ = try image.read(count: 1, at: 1 << 20)
        }
    }

    @Test func createNeverOverwrites() throws {
        let dir = try TempDir()
        let path = FilePath(dir.file("disk.img"))
        try Data("keep".utf8).write(to: URL(fileURLWithPath: path.string))
        #expect(throws: StorageError.exists(path: path.string)) {
            try DiskImages.create(at: path, options: CreateOptions(format: .raw, type: .fixed, virtualSize: 1 << 20))
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: path.string)) == Data("keep".utf8))
    }

    @Test func secondWriterIsRefused() throws {
        let dir = try TempDir()
        let path = FilePath(dir.file("disk.img"))
        let first = try DiskImages.create(at: path, options: CreateOptions(format: .raw, type: .fixed, virtualSize: 1 << 20))
        defer { try? first.close() }
        #expect(throws: StorageError.busy(path: path.string, holder: nil)) { try DiskImages.openLevel(path, writable: true) }
    }
}

@Suite struct BlockingIOTests {
    @Test func runsOffThePoolAndReturnsResults() async throws {
        let value = try await BlockingPool.disk.run { 6 * 7 }
        #expect(value == 42)
        await #expect(throws: DiskError.self) {
            try await BlockingPool.disk.run { throw DiskError.invalidArgument("x") }
        }
    }
}

@Suite struct ParentLocatorTests {
    @Test func relativeLocatorsUseWindowsSeparatorsAndResolveBack() throws {
        let same = ParentLocator.locators(child: "/t/BulwarkBackup/m/v2/disk0.vhdx", parent: "/t/BulwarkBackup/m/v1/disk0.vhdx")
        #expect(same[0] == ParentLocator(kind: .relative, path: "..\\v1\\disk0.vhdx"))
        #expect(same[1] == ParentLocator(kind: .absolute, path: "/t/BulwarkBackup/m/v1/disk0.vhdx"))
        let beside = ParentLocator.locators(child: "/d/snap.avhdx", parent: "/d/base.vhdx")
        #expect(beside[0].path == ".\\base.vhdx")
        let link = ParentLink(expectedID: UUID(), locators: same)
        #expect(DiskChain.candidatePaths(of: "/t/BulwarkBackup/m/v2/disk0.vhdx", link: link).first == "/t/BulwarkBackup/m/v1/disk0.vhdx")
        let windows = ParentLink(expectedID: UUID(), locators: [ParentLocator(kind: .absolute, path: "C:\\VMs\\base.vhdx")])
        #expect(DiskChain.candidatePaths(of: "/d/snap.avhdx", link: windows) == ["/d/base.vhdx"])
    }
}
