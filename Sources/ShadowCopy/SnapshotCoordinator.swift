import Foundation
import VirtualDisk
import Storage

/// Runs snapshot sets (the VSS coordinator): identify → prepare → freeze → provider snapshot →
/// thaw → complete for every writer, freezing as late and thawing as early as possible, each phase
/// under a deadline, and thawing on every path (error, timeout, cancellation; a watchdog process
/// covers SIGKILL). Writer states are persisted in the state folder (`writers.json`); a writer
/// left failed (or mid-snapshot) by an earlier run is reset at the start and the result says so.
///
/// Snapshots of different guests run at once; two on the same resource (agent socket,
/// filesystem, disk, hook) are serialized, in this process and across processes.
public actor SnapshotCoordinator {
    public let stateDirectory: String
    /// nil: no watchdog process (a SIGKILL while frozen then leaves writers frozen).
    public let watchdog: WatchdogConfiguration?
    private let echo: (@Sendable (String) -> Void)?

    /// `echo` receives every log line as it happens (hook output, notes).
    public init(stateDirectory: String = WriterStateStore.resolveDirectory(),
                watchdog: WatchdogConfiguration? = .default,
                echo: (@Sendable (String) -> Void)? = nil) {
        self.stateDirectory = stateDirectory
        self.watchdog = watchdog
        self.echo = echo
    }

    /// A new snapshot id: the time (no ':', sorts by time) and a random suffix.
    public static func makeID(date: Date = Date()) -> String {
        Timestamp.compact(date) + "-" + String(UInt32.random(in: 0...UInt32.max), radix: 16)
    }

    /// Takes a snapshot. Throws `SnapshotFailure` (cause + what was recorded) after thawing.
    public func snapshot(_ request: SnapshotRequest) async throws -> SnapshotResult {
        let run = SnapshotRun(request: request, stateDirectory: stateDirectory, watchdog: watchdog,
                              log: SnapshotLog(echo: echo))
        return try await run.execute()
    }
}

/// The mutable bookkeeping of one writer during one snapshot.
struct WriterTrack {
    let writer: any SnapshotWriter
    let identity: WriterIdentity
    var state: WriterState = .stable
    var error: WriterErrorClass = .none
    var message = ""
    var froze = false
    var freezeAttempted = false
    var wasReset = false
    var resetFrom: String?
    var notes: [String] = []

    init(_ writer: any SnapshotWriter) {
        self.writer = writer
        identity = writer.identity
    }

    mutating func fail(_ error: Error) {
        if (error as? ShadowCopyError) == .cancelled || error is CancellationError {
            // Stopped by the caller, not the writer's fault: it stays usable.
            notes.append("cancelled")
            return
        }
        state = .failed
        let e = error as? ShadowCopyError
        self.error = e?.writerErrorClass ?? .nonRetryable
        message = e?.description ?? "\(error)"
    }

    var result: WriterResult {
        WriterResult(identity: identity, state: state, lastError: error, errorMessage: message, froze: froze,
                     wasReset: wasReset, resetFrom: resetFrom, notes: notes)
    }

    var record: WriterRecord {
        WriterRecord(identity: identity, state: state, lastError: error, lastErrorMessage: message, snapshotID: "")
    }
}

/// One execution of a snapshot request.
final class SnapshotRun: @unchecked Sendable {
    let request: SnapshotRequest
    let store: WriterStateStore
    let watchdogConfig: WatchdogConfiguration?
    let log: SnapshotLog
    let context: SnapshotContext
    let policy: SnapshotPolicy
    var tracks: [WriterTrack]
    let started = Clock.now()
    var holdStart: Double?
    var holdStartDate: Date?
    var holdEnd: Double?
    var provided: ProviderSnapshot?
    /// The provider taking the copy: the request's, or the one it resolved to (`auto`).
    var provider: any SnapshotProvider
    var providerChoice: String?
    var output: OutputFolder?
    var warnings: [String] = []

    init(request: SnapshotRequest, stateDirectory: String, watchdog: WatchdogConfiguration?, log: SnapshotLog) {
        self.request = request
        store = WriterStateStore(directory: stateDirectory)
        watchdogConfig = watchdog
        self.log = log
        policy = request.policy
        let disks = request.disks.map { Paths.canonical($0) }
        context = SnapshotContext(snapshotID: SnapshotCoordinator.makeID(), disks: disks,
                                  outputDirectory: Paths.canonical(request.outputDirectory), log: log,
                                  protectedPaths: [stateDirectory, request.outputDirectory])
        tracks = request.writers.map(WriterTrack.init)
        provider = request.provider
    }

    var disks: [String] { context.disks }

    func execute() async throws -> SnapshotResult {
        guard !disks.isEmpty else { throw ShadowCopyError.invalidArgument("a snapshot needs at least one disk") }
        if let problem = SnapshotPolicy.holdTimeoutProblem(policy.holdTimeout) { throw ShadowCopyError.invalidArgument(problem) }
        let ids = tracks.map(\.identity.id)
        guard Set(ids).count == ids.count else { throw ShadowCopyError.invalidArgument("the same writer is listed twice") }
        let keys = tracks.flatMap(\.writer.resources) + provider.resources(disks: disks)
        let lease: ResourceLease
        do {
            try await BlockingPool.disk.run { [store] in
                try FileManager.default.createDirectory(atPath: store.directory, withIntermediateDirectories: true)
            }
            lease = try await ResourceLocks.shared.acquire(keys, stateDirectory: store.directory, timeout: policy.lockTimeout)
        } catch {
            throw SnapshotFailure(cause: Self.cause(error), result: result(consistency: .crashConsistent))
        }
        log.add("snapshot \(context.snapshotID): \(tracks.count) writer(s), provider \(provider.name), disk(s) \(disks.joined(separator: ", "))")
        let outcome: Result<SnapshotResult, SnapshotFailure>
        do {
            outcome = .success(try await body(lease: lease))
        } catch let failure as SnapshotFailure {
            outcome = .failure(failure)
        } catch {
            outcome = .failure(SnapshotFailure(cause: Self.cause(error), result: result(consistency: .crashConsistent)))
        }
        // No hook process of this snapshot outlives it (a freeze or thaw past its deadline).
        let id = context.snapshotID
        await BlockingPool.control.runQuietly { RunningHooks.shared.stop(snapshotID: id, wait: TimedProcess.killGrace) }
        await lease.release()
        return try outcome.get()
    }

    /// The error as a `ShadowCopyError`; others (a `DiskError` from a provider) are wrapped.
    static func cause(_ error: Error, provider: String = "snapshot") -> ShadowCopyError {
        if let e = error as? ShadowCopyError { return e }
        if error is CancellationError { return .cancelled }
        return .providerFailed(provider: provider, reason: "\(error)")
    }

    private func fail(_ cause: Error) -> SnapshotFailure {
        SnapshotFailure(cause: Self.cause(cause, provider: provider.name), result: result(consistency: .crashConsistent))
    }

    // MARK: phases

    private func body(lease: ResourceLease) async throws -> SnapshotResult {
        for t in tracks {
            log.add("writer \(t.identity.name) id \(t.identity.id) covers \(t.identity.covers.joined(separator: ", "))")
        }
        // The output folder and the provider, before any writer is even prepared.
        do {
            let dir = request.outputDirectory
            let folder = try await BlockingPool.control.run { try OutputFolder.prepare(dir) }
            output = folder
            log.add("output folder \(folder.path) (\(folder.filesystem))\(folder.created ? ", created" : "")")
            let (disks, context) = (self.disks, self.context)
            let choice = try await request.provider.resolve(disks: disks, context: context)
            provider = choice.provider
            providerChoice = choice.reason
            if let reason = choice.reason { log.add("provider \(request.provider.name) chose \(provider.name): \(reason)") }
        } catch {
            try await finishWithoutFreeze(writerFailed: false)
            throw fail(error)
        }
        if tracks.isEmpty {
            warn("no writer given: nothing is frozen, so the copy is only crash-consistent (what a power cut would leave); add a writer (guest agent, filesystem freeze or hook) for an application-consistent copy")
        }
        try await resetStuckWriters()

        // Prepare (nothing frozen yet: everything slow happens here).
        for i in tracks.indices {
            let writer = tracks[i].writer, context = self.context
            do {
                tracks[i].notes += try await withDeadline("prepare of \(tracks[i].identity.name)", seconds: policy.prepareTimeout) {
                    try await writer.prepare(context)
                }
                tracks[i].state = .waitingForFreeze
            } catch {
                tracks[i].fail(error)
                log.add("writer \(tracks[i].identity.name) failed in prepare: \(tracks[i].message)")
                if !policy.fallBackToCrashConsistent || Self.cause(error) == .cancelled {
                    try await finishWithoutFreeze(writerFailed: true)
                    throw fail(error)
                }
            }
        }
        do {
            let (provider, disks, context) = (self.provider, self.disks, self.context)
            try await withDeadline("prepare of provider \(provider.name)", seconds: policy.prepareTimeout) {
                try await provider.prepare(disks: disks, context: context)
            }
        } catch {
            await provider.abort(disks: disks, context: context)
            try await finishWithoutFreeze(writerFailed: false)
            throw fail(error)
        }
        try await persist()

        // Freeze, copy, thaw.
        let active = tracks.indices.filter { tracks[$0].state == .waitingForFreeze }
        var watchdog: WatchdogHandle?
        if !active.isEmpty, let config = watchdogConfig {
            do {
                let (dir, fds) = (store.directory, lease.fds)
                watchdog = try await BlockingPool.control.run { try WatchdogHandle.start(config, stateDirectory: dir, keep: fds) }
            } catch {
                await provider.abort(disks: disks, context: context)
                try await finishWithoutFreeze(writerFailed: false)
                throw fail(error)
            }
        }
        var failure: Error?
        let holdDeadline = Clock.now() + policy.holdTimeout
        if let watchdog {
            try? watchdog.send(.start(snapshotID: context.snapshotID, stateDirectory: store.directory, deadline: holdDeadline + 1))
        }
        for i in active {
            let writer = tracks[i].writer, context = self.context
            if let action = writer.recovery(for: context) {
                try? watchdog?.send(.frozen(identity: tracks[i].identity, action: action))
            }
            if holdStart == nil { holdStart = Clock.now(); holdStartDate = Date() }
            tracks[i].freezeAttempted = true
            tracks[i].state = .waitingForThaw
            do {
                tracks[i].notes += try await withDeadline("freeze of \(tracks[i].identity.name)", seconds: holdDeadline - Clock.now()) {
                    try await writer.freeze(context)
                }
                tracks[i].froze = true
            } catch {
                tracks[i].fail(error)
                log.add("writer \(tracks[i].identity.name) failed to freeze: \(tracks[i].message)")
                if !policy.fallBackToCrashConsistent || Self.cause(error) == .cancelled { failure = error; break }
            }
        }
        let anyFrozen = tracks.contains { $0.froze }
        if failure == nil {
            let (provider, disks, context, pause) = (self.provider, self.disks, self.context, request.pauseWhileFrozen)
            let seconds = anyFrozen ? holdDeadline - Clock.now() : policy.unfrozenProviderTimeout
            let deadline = Date().addingTimeInterval(seconds)
            do {
                provided = try await withDeadline(anyFrozen ? "the freeze hold (provider \(provider.name))" : "provider \(provider.name)",
                                                  seconds: seconds) {
                    let snap = try await provider.snapshot(disks: disks, context: context, deadline: deadline)
                    if pause > 0 { try await Task.sleep(for: .seconds(pause)) }
                    return snap
                }
            } catch {
                failure = error
                if case .timedOut? = error as? ShadowCopyError {
                    // Frozen past the deadline: every frozen writer is timed out (as VSS does).
                    for i in tracks.indices where tracks[i].froze { tracks[i].fail(ShadowCopyError.timedOut(phase: "the freeze hold", seconds: policy.holdTimeout)) }
                    failure = ShadowCopyError.timedOut(phase: "the freeze hold (provider \(provider.name))", seconds: policy.holdTimeout)
                }
                log.add("provider \(provider.name) failed while frozen: \(Self.cause(error))")
            }
        }
        let thawError = await thawAll()
        if let watchdog {
            let handle = watchdog
            if thawError == nil { await BlockingPool.control.runQuietly { handle.finish() } } else { await BlockingPool.control.runQuietly { handle.abandon() } }
        }
        if failure == nil, let thawError, !policy.fallBackToCrashConsistent { failure = thawError }

        // After the thaw: the provider's flushes, then complete.
        if failure == nil, let provided {
            do {
                let (provider, context) = (self.provider, self.context)
                try await withDeadline("finish of provider \(provider.name)", seconds: policy.completeTimeout) {
                    try await provider.finish(provided, context: context)
                }
            } catch { failure = error }
        }
        let writerFailed = tracks.contains { $0.state == .failed }
        if failure != nil {
            await provider.abort(disks: disks, context: context)
            provided = nil
        }
        await completeAll(succeeded: failure == nil)
        do { try await persist() } catch { log.add("could not record writer states: \(error)") }
        if let failure { throw fail(failure) }
        for t in tracks where t.state == .failed {
            warn("writer \(t.identity.name) failed (\(t.message)); the snapshot went on without it, so the copy is only crash-consistent")
        }
        return result(consistency: anyFrozen && !writerFailed ? .applicationConsistent : .crashConsistent)
    }

    /// A warning for the user: in the log as it happens and in the result.
    private func warn(_ text: String) {
        warnings.append(text)
        log.add("warning: " + text)
    }

    /// Writers found not stable (failed, or left mid-snapshot by a crash) are reset to stable; one
    /// that may still be frozen is thawed first.
    private func resetStuckWriters() async throws {
        let records = try await BlockingPool.disk.run { [store] in try store.load() }
        let byID = Dictionary(records.map { ($0.identity.id, $0) }, uniquingKeysWith: { $1 })
        for i in tracks.indices {
            guard let r = byID[tracks[i].identity.id], r.state != .stable else { continue }
            tracks[i].wasReset = true
            tracks[i].resetFrom = "\(r.state.rawValue) (\(r.lastError.rawValue)\(r.lastErrorMessage.isEmpty ? "" : ": " + r.lastErrorMessage))"
            log.add("writer \(tracks[i].identity.name) was \(tracks[i].resetFrom!); reset to stable")
            if r.state == .waitingForThaw || r.state == .waitingForFreeze {
                let writer = tracks[i].writer, context = self.context
                try? await withDeadline("thaw of \(tracks[i].identity.name)", seconds: policy.thawTimeout, cancellable: false) {
                    try await writer.recover(context)
                }
            }
        }
    }

    /// Thaws every writer whose freeze was attempted, last frozen first; never cancelled.
    private func thawAll() async -> Error? {
        var firstError: Error?
        for i in tracks.indices.reversed() where tracks[i].freezeAttempted {
            let writer = tracks[i].writer, context = self.context
            do {
                try await withDeadline("thaw of \(tracks[i].identity.name)", seconds: policy.thawTimeout, cancellable: false) {
                    try await writer.thaw(context)
                }
                if tracks[i].state != .failed { tracks[i].state = .waitingForCompletion }
            } catch {
                if firstError == nil { firstError = error }
                tracks[i].fail(error)
                log.add("writer \(tracks[i].identity.name) failed to thaw: \(tracks[i].message)")
            }
        }
        if holdStart != nil { holdEnd = Clock.now() }
        if let s = holdStart, let e = holdEnd { log.add(String(format: "freeze hold %.3f s", e - s)) }
        return firstError
    }

    private func completeAll(succeeded: Bool) async {
        for i in tracks.indices where tracks[i].state != .failed {
            let writer = tracks[i].writer, context = self.context
            tracks[i].state = .waitingForCompletion
            do {
                try await withDeadline("complete of \(tracks[i].identity.name)", seconds: policy.completeTimeout, cancellable: false) {
                    try await writer.complete(context, succeeded: succeeded)
                }
                tracks[i].state = .stable
                tracks[i].error = .none
                tracks[i].message = ""
            } catch {
                tracks[i].fail(error)
            }
        }
    }

    /// Ends a snapshot that failed before any freeze: healthy writers go back to stable.
    private func finishWithoutFreeze(writerFailed: Bool) async throws {
        for i in tracks.indices where tracks[i].state != .failed { tracks[i].state = .stable }
        try? await persist()
    }

    private func persist() async throws {
        let records = tracks.map { t -> WriterRecord in
            var r = t.record
            r.snapshotID = context.snapshotID
            return r
        }
        try await BlockingPool.disk.run { [store] in
            try store.update { map in for r in records { map[r.identity.id] = r } }
        }
    }

    func result(consistency: Consistency) -> SnapshotResult {
        SnapshotResult(snapshotID: context.snapshotID, consistency: consistency, copies: provided?.copies ?? [],
                       newLeaves: provided?.newLeaves ?? [],
                       freezeHoldSeconds: holdStart.map { (holdEnd ?? Clock.now()) - $0 } ?? 0, freezeStarted: holdStartDate,
                       totalSeconds: Clock.now() - started, provider: provider.name, providerChoice: providerChoice,
                       output: output, warnings: warnings,
                       writers: tracks.map(\.result), log: log.all)
    }
}

extension BlockingPool {
    /// Runs `body` on a blocking thread, ignoring errors.
    func runQuietly(_ body: @escaping @Sendable () -> Void) async {
        _ = try? await run { body() }
    }
}
