import Foundation
import Replication

/// One protection policy: what to back up (`sources`), how to make it consistent (`consistency`),
/// where the recovery points go (`target`), when jobs run (`schedule`, `full`, `verify`) and how many
/// points stay (`keep`), and where they are copied to (`replicate`). Loaded from a YAML file in `policies/` by `PolicyLoader`; README "Policies"
/// documents every key.
public struct Policy: Sendable, Equatable {
    /// The policy's name (`[A-Za-z0-9._-]+`): job history and logs name jobs by it.
    public var name: String
    /// The machine protected (`[A-Za-z0-9._-]+`): it becomes the folder
    /// `<target>/BulwarkBackup/<machine>/`, so it must be a safe file name on Linux and on SMB shares.
    public var machine: String
    /// The disks captured, at least one.
    public var sources: [PolicySource]
    public var consistency: ConsistencySettings
    /// A local absolute path, or `smb://[domain;]user@host[:port]/share[/path]` (only its shape is
    /// checked here: the share is reached by the target code).
    public var target: String
    /// The credentials file (mount.cifs format, mode 0600) for an `smb://` target; required for one,
    /// refused for a local one. The password stays in that file: never in the policy.
    public var credentials: String?
    /// When scheduled jobs run; nil: manual jobs only.
    public var schedule: CalendarEvent?
    /// When a scheduled run is a full backup instead of an incremental one.
    public var full: CalendarEvent?
    public var keep: KeepRules
    /// When the scheduled verify job runs; nil: no scheduled verify.
    public var verify: CalendarEvent?
    public var retry: RetrySettings
    /// Where the points are replicated after each backup; nil: nowhere.
    public var replicate: ReplicationSettings?
    /// The file the policy was loaded from (nil when parsed from a string without one).
    public var file: String?

    public init(name: String, machine: String, sources: [PolicySource], consistency: ConsistencySettings = ConsistencySettings(),
                target: String, credentials: String? = nil, schedule: CalendarEvent? = nil, full: CalendarEvent? = nil,
                keep: KeepRules = KeepRules(), verify: CalendarEvent? = nil, retry: RetrySettings = RetrySettings(),
                replicate: ReplicationSettings? = nil, file: String? = nil) {
        self.name = name
        self.machine = machine
        self.sources = sources
        self.consistency = consistency
        self.target = target
        self.credentials = credentials
        self.schedule = schedule
        self.full = full
        self.keep = keep
        self.verify = verify
        self.retry = retry
        self.replicate = replicate
        self.file = file
    }
}

extension Policy {
    /// The paths of each `files:` source, in the policy's order (file set 0, 1, ...).
    public var fileSetPaths: [[String]] {
        sources.compactMap { source in if case let .files(paths) = source { paths } else { nil } }
    }
}

/// One thing a policy captures. YAML: `- disk: PATH`, `- machine: true` or `- files: [PATH, ...]`.
public enum PolicySource: Sendable, Equatable {
    /// A VHD, VHDX or raw image file, or a block device (`/dev/vg0/data`, a whole disk `/dev/sda`),
    /// by absolute path. Raw disks and devices get their layout recorded (bare metal).
    case disk(String)
    /// Every whole disk of the host (`/sys/block`, less loop, RAM, optical and mapped devices and the
    /// disk holding a local target), each captured as a disk with its layout: a bare-metal backup.
    case machine
    /// Folders and files (absolute paths) archived as a file set: pax with zstd, owners, modes,
    /// times, xattrs and ACLs; incrementals store what changed. A policy of file sets has no disks.
    case files([String])

    /// What the source names, as the policy says it.
    public var path: String {
        switch self {
        case let .disk(path): path
        case .machine: "machine"
        case let .files(paths): paths.joined(separator: ", ")
        }
    }
}

/// How a point-in-time copy is made consistent. YAML key `consistency`.
public struct ConsistencySettings: Sendable, Equatable {
    /// Writers frozen around the copy, in order (thawed in reverse).
    public var writers: [WriterSpec]
    /// How the point-in-time copy is taken. Default `auto`.
    public var provider: ProviderKind
    /// Whether a job may go on with a crash-consistent copy when a writer fails to freeze (key
    /// `allow-crash-consistent`). Default false: the job fails instead, so a point is never silently
    /// weaker than the policy promises.
    public var allowCrashConsistent: Bool
    /// The longest time writers stay frozen, in seconds (key `hold-timeout`). Default 10, as VSS.
    public var holdTimeout: Double
    /// Where point-in-time copies are made (key `snapshot-dir`); nil: the job decides (next to the
    /// source, so reflinks work).
    public var snapshotDirectory: String?

    public init(writers: [WriterSpec] = [], provider: ProviderKind = .auto, allowCrashConsistent: Bool = false,
                holdTimeout: Double = 10, snapshotDirectory: String? = nil) {
        self.writers = writers
        self.provider = provider
        self.allowCrashConsistent = allowCrashConsistent
        self.holdTimeout = holdTimeout
        self.snapshotDirectory = snapshotDirectory
    }
}

/// A writer to freeze. YAML forms: `{qga: SOCKET}`, `{qga: SOCKET, mountpoints: [/, /var]}`,
/// `{hook: PATH}`, `{hook: PATH, timeout: 30s}`, `{fsfreeze: /mnt/data}`.
public enum WriterSpec: Sendable, Equatable {
    /// The QEMU guest agent on `socket`; `mountpoints` empty: the agent freezes every filesystem.
    case qga(socket: String, mountpoints: [String])
    /// A hook script run with `freeze` and `thaw`; `timeout` nil: the coordinator's default.
    case hook(path: String, timeout: Double?)
    /// A host filesystem frozen with FIFREEZE.
    case fsfreeze(mountpoint: String)
}

/// How the point-in-time copy is taken (the ShadowCopy providers).
public enum ProviderKind: String, Sendable, Equatable, CaseIterable {
    /// Reflink where the filesystem allows it, else a copy while frozen, or a differencing child for
    /// VHDX sources Bulwark manages.
    case auto
    /// A FICLONE reflink (btrfs, xfs): instant, fails where unsupported.
    case reflink
    /// A full copy while writers are frozen: slow, works everywhere.
    case copy
    /// A new differencing child takes the writes; the frozen parent is the point.
    case differencing
    /// No copy: the job reads the source as it is, so the point is crash-consistent at best.
    case none
}

/// What happens when a scheduled job fails. YAML: `retry: {attempts: 2, delay: 5m}`.
public struct RetrySettings: Sendable, Equatable {
    /// How many more times a failed scheduled job is run (0: never retried). Default 2.
    public var attempts: Int
    /// Seconds between a failure and the next attempt. Default 300.
    public var delay: Double

    public init(attempts: Int = 2, delay: Double = 300) {
        self.attempts = attempts
        self.delay = delay
    }
}

/// A policy's `replicate:` section: the second target every point is copied to after each backup
/// (DPM's backup replication, Hyper-V Replica's replica site), at the bandwidth the schedule allows.
/// YAML:
/// ```yaml
/// replicate:
///   to: smb://backup@dr-site:445/bulwark
///   credentials: /etc/bulwark/dr-site.cred
///   throttle:
///     work-hours: {days: mon..fri, from: "08:00", to: "18:00", rate: 10MiB/s}
///     other-hours: unlimited
///   keep: {last: 14, monthly: 12}
///   alert-after: 24h
/// ```
public struct ReplicationSettings: Sendable, Equatable {
    /// The destination: a local absolute path or an `smb://` URL, as `target`.
    public var to: String
    /// The credentials file for an `smb://` destination (required for one).
    public var credentials: String?
    /// The bandwidth over the week; default unlimited. `throttle: 20MiB/s` is a fixed rate.
    public var throttle: BandwidthSchedule
    /// Retention on the destination; nil: the destination keeps every point it receives (retention on
    /// the source never deletes there).
    public var keep: KeepRules?
    /// Seconds without a successful replication after which `jobs list` and the daemon's log warn
    /// (Hyper-V Replica's health warning). Default 24 h.
    public var alertAfter: Double
    public static let defaultAlertAfter: Double = 86_400

    public init(to: String, credentials: String? = nil, throttle: BandwidthSchedule = .unlimited, keep: KeepRules? = nil,
                alertAfter: Double = ReplicationSettings.defaultAlertAfter) {
        self.to = to
        self.credentials = credentials
        self.throttle = throttle
        self.keep = keep
        self.alertAfter = alertAfter
    }
}
