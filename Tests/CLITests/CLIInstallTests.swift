import Foundation
import Testing
import TestSupport

/// `tools/build --install PREFIX` puts completions and the man page under PREFIX/share through
/// tools/install-docs; run here on the debug binary (the release build is too slow for a test).
@Suite struct CLIInstallTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    @Test func installDocsPutsCompletionsAndTheManPageUnderShare() throws {
        let manual = TestEnv.buildDirectory.appendingPathComponent("generate-manual").path
        guard try TestEnv.prerequisite(FileManager.default.isExecutableFile(atPath: manual),
                                       "generate-manual (swift build --product generate-manual; tools/test builds it)") else { return }
        let prefix = try TempDir("install")
        try runChecked(Self.repository.appendingPathComponent("tools/install-docs").path, [TestEnv.bulwark, prefix.path, manual])
        func text(_ path: String) throws -> String { try String(contentsOfFile: prefix.file(path), encoding: .utf8) }
        let bash = try text("share/bash-completion/completions/bulwark")
        #expect(bash.contains("complete") && bash.contains("--children"), "bash completion")
        try runChecked("bash", ["-n", prefix.file("share/bash-completion/completions/bulwark")])
        #expect(try text("share/zsh/site-functions/_bulwark").hasPrefix("#compdef bulwark"))
        #expect(try text("share/fish/vendor_completions.d/bulwark.fish").contains("complete -c 'bulwark'"))
        let man = try text("share/man/man1/bulwark.1")
        #expect(man.contains(".Dt BULWARK 1"), "an mdoc page")
        #expect(man.contains("resize") && man.contains("--children") || man.contains("children"), "subcommands and options are in it")
        if TestEnv.has("man") {
            let rendered = try runChecked("man", ["-l", prefix.file("share/man/man1/bulwark.1")], input: Data())
            #expect(rendered.out.contains("bulwark"))
        }
    }
}
