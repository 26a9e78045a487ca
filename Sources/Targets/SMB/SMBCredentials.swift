#if canImport(Glibc)
import Glibc
#endif
import Storage
import SystemPackage

/// The user name, password and domain for an SMB share.
///
/// From a mount.cifs credentials file (`username=`, `password=`, `domain=`, one a line), which must
/// not be readable by its group or others, or given explicitly (the command line passes
/// `BULWARK_SMB_PASSWORD`; the library itself reads no environment). The password never appears in a
/// description, a mirror (`dump`, string interpolation) or an error message.
public struct SMBCredentials: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    /// The user name, when given (the URL's user takes precedence).
    public var username: String?
    /// The domain or workgroup, when given (the URL's domain takes precedence).
    public var domain: String?
    /// The secret. Internal so that it is not casually printed; SMBContext copies it into the
    /// authentication callback's buffer and nowhere else.
    let password: String

    public init(username: String? = nil, password: String, domain: String? = nil) {
        self.username = username?.isEmpty == true ? nil : username
        self.password = password
        self.domain = domain?.isEmpty == true ? nil : domain
    }

    /// Reads a mount.cifs credentials file. Refused when the file is readable or writable by its
    /// group or others (a shared password is a leaked password), when it has no password, or when a
    /// line is not `key=value`. Keys: `username`/`user`, `password`/`pass`, `domain`/`dom`/`workgroup`;
    /// blank lines and lines starting with `#` are ignored.
    public init(file: FilePath) throws {
        var st = stat()
        guard stat(file.string, &st) == 0 else {
            let e = Errno(rawValue: errno)
            if e == .noSuchFileOrDirectory { throw SMBError.credentialsFile(path: file.string, reason: "no such file") }
            throw SMBError.credentialsFile(path: file.string, reason: "cannot be read: \(e)")
        }
        guard st.st_mode & S_IFMT == S_IFREG else {
            throw SMBError.credentialsFile(path: file.string, reason: "is not a regular file")
        }
        let mode = st.st_mode & 0o777
        guard mode & 0o077 == 0 else {
            let octal = String(mode, radix: 8)
            throw SMBError.credentialsFile(path: file.string, reason: "its mode is 0\(octal): group or others may read it; the password must be private. Run `chmod 600 \(file.string)`")
        }
        let text: String
        do { text = try FileOps.readSmallFile(file, limit: 64 << 10) } catch {
            throw SMBError.credentialsFile(path: file.string, reason: "cannot be read: \(error)")
        }
        var username: String?, password: String?, domain: String?
        for (number, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            var line = Substring(raw)
            if line.hasSuffix("\r") { line = line.dropLast() }
            let trimmed = line.drop(while: { $0 == " " || $0 == "\t" })
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
            guard let eq = trimmed.firstIndex(of: "=") else {
                // Never echo the line: it may be a password written without its key.
                throw SMBError.credentialsFile(path: file.string, reason: "line \(number + 1) is not key=value (expected username=, password=, domain=)")
            }
            let key = trimmed[..<eq].trimmingCharacters(" \t").lowercased()
            let value = String(trimmed[trimmed.index(after: eq)...])
            switch key {
            case "username", "user": username = value.trimmingCharacters(" \t")
            case "password", "pass": password = value
            case "domain", "dom", "workgroup": domain = value.trimmingCharacters(" \t")
            default: continue
            }
        }
        guard let password else {
            throw SMBError.credentialsFile(path: file.string, reason: "has no password= line")
        }
        self.init(username: username, password: password, domain: domain)
    }

    public var description: String {
        let who = [domain, username].compactMap { $0 }.joined(separator: "\\")
        return "SMB credentials\(who.isEmpty ? "" : " for \(who)") (password hidden)"
    }
    public var debugDescription: String { description }
    public var customMirror: Mirror { Mirror(self, children: ["username": username as Any, "domain": domain as Any, "password": "(hidden)"]) }
}

extension Substring {
    fileprivate func trimmingCharacters(_ set: String) -> String {
        var s = self
        while let f = s.first, set.contains(f) { s = s.dropFirst() }
        while let l = s.last, set.contains(l) { s = s.dropLast() }
        return String(s)
    }
}

extension String {
    fileprivate func trimmingCharacters(_ set: String) -> String { Substring(self).trimmingCharacters(set) }
}
