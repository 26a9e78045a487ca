import Foundation
import SystemPackage
import VirtualDisk
import Storage

/// Printing helpers shared by the commands.
enum Output {
    /// Prints `value` as pretty JSON with sorted keys on standard output.
    static func json<T: Encodable>(_ value: T) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let data = try encoder.encode(value)
        try Self.out(Array(data) + [10])
    }

    /// Prints a line on standard error.
    static func note(_ line: String) {
        err(line + "\n")
    }

    /// Writes to standard output; a failure (a closed pipe, a full disk behind a redirection) is an
    /// error the command reports.
    static func out(_ bytes: [UInt8]) throws {
        do { _ = try FileDescriptor.standardOutput.writeAll(bytes) } catch let e as Errno {
            throw StorageError.io(path: "standard output", operation: "write", errno: e)
        }
    }

    /// Writes to standard error. Diagnostics and progress that cannot be written (standard error
    /// redirected to a full disk, a closed pipe) are dropped: they are never a reason to stop an
    /// operation half way (Foundation's FileHandle would trap here).
    static func err(_ text: String) {
        _ = try? FileDescriptor.standardError.writeAll(Array(text.utf8))
    }

    /// Whether standard error is a terminal (progress bars go there).
    static var stderrIsTerminal: Bool { isatty(2) == 1 }

    /// Formats rows as aligned columns.
    static func table(_ header: [String], _ rows: [[String]]) -> String {
        let all = [header] + rows
        var widths = [Int](repeating: 0, count: header.count)
        for row in all { for (i, cell) in row.enumerated() where i < widths.count { widths[i] = max(widths[i], cell.count) } }
        return all.map { row in
            row.enumerated().map { i, cell in
                i == row.count - 1 ? cell : cell.padding(toLength: widths[i], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }.joined(separator: "\n")
    }
}

/// Progress for long operations: a bar with rate and ETA on a terminal, plain lines otherwise
/// (at most one every few seconds), both on standard error.
///
/// Unchecked Sendable: an operation reports from one thread at a time, and the bar is read by nobody else.
final class ProgressBar: @unchecked Sendable {
    private let label: String
    private let interactive: Bool
    private let start = Date()
    private var lastPrint = Date.distantPast
    private var lastPercent = -1
    private var finished = false

    init(_ label: String, interactive: Bool = Output.stderrIsTerminal) {
        self.label = label
        self.interactive = interactive
    }

    /// The reporter to hand to engine operations.
    var handler: ProgressReporter { ProgressReporter { [self] done, total in self.update(done, total) } }

    func update(_ done: UInt64, _ total: UInt64) {
        let now = Date()
        let percent = total == 0 ? 100 : Int(Double(done) * 100 / Double(total))
        let elapsed = now.timeIntervalSince(start)
        let rate = elapsed > 0 ? Double(done) / elapsed : 0
        let eta = rate > 0 && total > done ? Double(total - done) / rate : 0
        if interactive {
            guard now.timeIntervalSince(lastPrint) >= 0.1 || done == total else { return }
            lastPrint = now
            let width = 30
            let filled = total == 0 ? width : Int(Double(width) * Double(done) / Double(total))
            let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: max(0, width - filled))
            let line = "\r\(label) [\(bar)] \(percent)% \(ByteCount.format(done))/\(ByteCount.format(total)) \(ByteCount.format(UInt64(rate)))/s ETA \(Self.duration(eta))\u{1B}[K"
            Output.err(line)
        } else {
            guard now.timeIntervalSince(lastPrint) >= 5 || (done == total && percent != lastPercent) else { return }
            lastPrint = now
            lastPercent = percent
            Output.note("\(label): \(percent)% (\(ByteCount.format(done)) of \(ByteCount.format(total)), \(ByteCount.format(UInt64(rate)))/s, ETA \(Self.duration(eta)))")
        }
    }

    /// Prints a line of the job log above the bar (the bar redraws at the next update).
    func note(_ line: String) {
        if interactive { Output.err("\r\u{1B}[K" + line + "\n") } else { Output.note(line) }
    }

    /// Ends the bar line.
    func finish() {
        guard !finished else { return }
        finished = true
        if interactive { Output.err("\n") }
    }

    static func duration(_ seconds: Double) -> String {
        let s = Int(seconds.rounded())
        return s >= 3600 ? "\(s / 3600)h\(String(format: "%02d", s % 3600 / 60))m" : "\(s / 60)m\(String(format: "%02d", s % 60))s"
    }
}
