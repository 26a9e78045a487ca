import CArchive
import CBlkid
import CSMBClient
import Foundation
import Testing
import TestSupport

/// Proves the C wiring of each system library by calling into it for real.
@Suite struct SystemLibraryTests {
    @Test func libsmbclientMakesAndInitialisesAContext() throws {
        let ctx = try #require(smbc_new_context())
        defer { smbc_free_context(ctx, 1) }
        smbc_setOptionNoAutoAnonymousLogin(ctx, 1)
        let initialised = smbc_init_context(ctx)
        #expect(initialised != nil)
        // Opening a share on a closed port must fail cleanly with an errno, not crash.
        smbc_setPort(ctx, 1)
        let open = smbc_getFunctionOpendir(ctx)
        #expect(open != nil)
        let dir = open!(ctx, "smb://127.0.0.1/none")
        #expect(dir == nil)
        #expect(errno != 0)
    }

    @Test func libblkidIdentifiesAnExt4Image() throws {
        guard try TestEnv.tools("mkfs.ext4") else { return }
        let dir = try TempDir()
        let image = dir.file("fs.img")
        _ = FileManager.default.createFile(atPath: image, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: image))
        try handle.truncate(atOffset: 8 << 20)
        try handle.close()
        try runChecked("mkfs.ext4", ["-q", "-F", "-L", "bulwarktest", image])
        let probe = try #require(blkid_new_probe_from_filename(image))
        defer { blkid_free_probe(probe) }
        blkid_probe_enable_superblocks(probe, 1)
        blkid_probe_set_superblocks_flags(probe, BLKID_SUBLKS_TYPE | BLKID_SUBLKS_LABEL)
        #expect(blkid_do_safeprobe(probe) == 0)
        var value: UnsafePointer<CChar>?
        var length = 0
        #expect(blkid_probe_lookup_value(probe, "TYPE", &value, &length) == 0)
        #expect(String(cString: value!) == "ext4")
        #expect(blkid_probe_lookup_value(probe, "LABEL", &value, &length) == 0)
        #expect(String(cString: value!) == "bulwarktest")
    }

    @Test func libarchiveRoundTripsATarInMemory() throws {
        let payload = Array("bulwark archive payload\n".utf8)
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        var used = 0
        let writer = try #require(archive_write_new())
        archive_write_set_format_pax_restricted(writer)
        #expect(archive_write_open_memory(writer, &buffer, buffer.count, &used) == ARCHIVE_OK)
        let entry = archive_entry_new()
        archive_entry_set_pathname(entry, "dir/file.txt")
        archive_entry_set_size(entry, la_int64_t(payload.count))
        archive_entry_set_filetype(entry, 0o100000 /* AE_IFREG */)
        archive_entry_set_perm(entry, 0o644)
        #expect(archive_write_header(writer, entry) == ARCHIVE_OK)
        #expect(archive_write_data(writer, payload, payload.count) == payload.count)
        archive_entry_free(entry)
        archive_write_close(writer)
        archive_write_free(writer)
        #expect(used > 512)

        let reader = try #require(archive_read_new())
        defer { archive_read_free(reader) }
        archive_read_support_format_all(reader)
        #expect(archive_read_open_memory(reader, buffer, used) == ARCHIVE_OK)
        var readEntry: OpaquePointer?
        #expect(archive_read_next_header(reader, &readEntry) == ARCHIVE_OK)
        #expect(String(cString: archive_entry_pathname(readEntry)) == "dir/file.txt")
        var back = [UInt8](repeating: 0, count: payload.count)
        #expect(archive_read_data(reader, &back, back.count) == payload.count)
        #expect(back == payload)
    }
}
