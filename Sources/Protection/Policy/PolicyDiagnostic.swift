import Foundation

/// One problem found in a policy file, where it is (1-based line and column of the value or key at
/// fault; line 0 and column 0 mean the file as a whole, such as a file that cannot be read), what is
/// wrong, and how to fix it.
public struct PolicyDiagnostic: Sendable, Equatable, Codable, CustomStringConvertible {
    public enum Severity: String, Sendable, Equatable, Codable {
        /// The policy cannot run as written.
        case error
        /// The policy runs, but probably not as meant.
        case warning
    }

    public var file: String
    public var line: Int
    public var column: Int
    public var message: String
    public var fix: String?
    public var severity: Severity

    public init(file: String, line: Int, column: Int, message: String, fix: String? = nil, severity: Severity = .error) {
        self.file = file
        self.line = line
        self.column = column
        self.message = message
        self.fix = fix
        self.severity = severity
    }

    enum CodingKeys: String, CodingKey { case file, line, column, severity, message, fix }

    /// Encodes `fix` as null when absent, so every diagnostic has the same keys in JSON.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(file, forKey: .file)
        try container.encode(line, forKey: .line)
        try container.encode(column, forKey: .column)
        try container.encode(severity, forKey: .severity)
        try container.encode(message, forKey: .message)
        try container.encode(fix, forKey: .fix)
    }

    /// `FILE:LINE:COL: error: MESSAGE (fix: FIX)`, the compiler convention editors jump to.
    public var description: String {
        "\(file):\(line):\(column): \(severity.rawValue): \(message)" + (fix.map { " (fix: \($0))" } ?? "")
    }

    /// Sorted by file, line, column; errors before warnings at the same place.
    public static func sorted(_ diagnostics: [PolicyDiagnostic]) -> [PolicyDiagnostic] {
        diagnostics.enumerated().sorted { a, b in
            let l = a.element, r = b.element
            if l.file != r.file { return l.file < r.file }
            if l.line != r.line { return l.line < r.line }
            if l.column != r.column { return l.column < r.column }
            if l.severity != r.severity { return l.severity == .error }
            return a.offset < b.offset
        }.map(\.element)
    }
}

/// A policy file that cannot be loaded, with every problem found in it (not only the first), each
/// naming the file, line and column.
public struct PolicyError: Error, Sendable, Equatable, CustomStringConvertible {
    public var diagnostics: [PolicyDiagnostic]

    public init(diagnostics: [PolicyDiagnostic]) {
        self.diagnostics = diagnostics
    }

    /// One `FILE:LINE:COL: error: MESSAGE (fix: ...)` line per problem.
    public var description: String {
        diagnostics.map(\.description).joined(separator: "\n")
    }
}
