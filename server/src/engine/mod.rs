//! The copy and sync engine: moves container filesystems between server roots, fully
//! (copy) or incrementally (sync), safely and with progress. No web or database types:
//! the job runner and the benchmark drive it through [`copy`], [`sync`] and [`verify`].
//!
//! Shape of a run: scan (manifests, quick-check cache) -> plan (diff, totals) -> transfer
//! (sender and receiver threads talking frames over a byte stream; every file hashed as it
//! is written and checked before it can become visible) -> commit (one durability barrier,
//! then renames; a marker file makes an interrupted commit repair itself on the next run).

pub mod btrfs;
pub mod convert;
pub mod extents;
pub mod fsx;
pub mod identity;
pub mod image;
pub mod image_room;
pub mod manifest;
pub mod scan;
mod transfer;
mod warm;
pub mod watch;
pub mod wire;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use manifest::{Entry, Kind, Manifest};

/// Maps and sets keyed by a tree's paths or content hashes: foldhash, a quick hasher with
/// a random seed (SipHash, the standard one, was a twentieth of a sync's CPU: a sync puts
/// its 40,000 entries into several maps).
type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
/// Copy and sync between two servers' processes, over one connection (see `transfer/peer.rs`).
pub use transfer::{
    receive_copy_from, receive_sync_from, send_copy_to, send_sync_to, Duplex, Peer,
};

/// Where a tree lives and where the engine keeps its state about it (its manifest, which
/// doubles as the quick-check cache, and a work dir for staged content). The state dir
/// must be on the same filesystem as the root, so staged files can be renamed into place.
#[derive(Clone, Debug)]
pub struct Place {
    pub root: PathBuf,
    pub state_dir: PathBuf,
    /// When a copy lays this tree down file by file: make it an image tree of this many
    /// bytes ([`image`]; sparse, so it takes only what it holds), where its work dir's
    /// filesystem has reflinks and is not btrfs (whose trees are subvolumes). Copies of an
    /// image tree are clones of its image, whatever its number of files. `None`: a
    /// directory. (A tree taken whole, a clone or a snapshot, is what its source is.)
    pub image_size: Option<u64>,
}

impl Place {
    pub fn new(root: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> Place {
        Place {
            root: root.into(),
            state_dir: state_dir.into(),
            image_size: None,
        }
    }
    /// The same place, laid down as an image tree of `size` bytes by a copy where it can
    /// be (see [`Place::image_size`]).
    pub fn with_image_size(self, size: Option<u64>) -> Place {
        Place {
            image_size: size,
            ..self
        }
    }
    pub fn manifest_path(&self) -> PathBuf {
        self.state_dir.join("manifest")
    }
    pub fn work_dir(&self) -> PathBuf {
        self.state_dir.join("work")
    }
    fn commit_marker(&self) -> PathBuf {
        self.work_dir().join("COMMITTING")
    }
    /// Whether a sync stopped while applying its changes: the tree is partly old, partly
    /// new, until the next sync completes the commit.
    pub fn commit_pending(&self) -> bool {
        self.commit_marker().exists()
    }
    /// The last committed (or scanned) state, if any.
    pub fn load_manifest(&self) -> io::Result<Option<Manifest>> {
        Manifest::load(&self.manifest_path())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Scan,
    Plan,
    Transfer,
    Verify,
    Commit,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Scan => "scan",
            Phase::Plan => "plan",
            Phase::Transfer => "transfer",
            Phase::Verify => "verify",
            Phase::Commit => "commit",
        }
    }
}

/// A progress report. Totals are known once planning is done.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    pub phase: Phase,
    pub bytes_done: u64,
    pub bytes_total: Option<u64>,
    pub files_done: u64,
    pub files_total: Option<u64>,
    pub elapsed: Duration,
    /// Bytes per second in this phase so far.
    pub rate: f64,
}

type ProgressFn = dyn Fn(&Progress) + Send + Sync;
type FailFn = dyn Fn(&str) -> io::Result<()> + Send + Sync;

/// How a caller steers a run: progress reports, cancellation, a bandwidth limit, the
/// change watch that spares syncs their walks, and (for tests) failure injection at named
/// points.
#[derive(Clone, Default)]
pub struct Control {
    cancel: Arc<AtomicBool>,
    progress: Option<Arc<ProgressFn>>,
    failpoint: Option<Arc<FailFn>>,
    pace: Option<Arc<Mutex<Pace>>>,
    /// Stream every file, even where the kernel could copy it (tests and benchmarks of the
    /// stream itself).
    stream_only: bool,
    /// Which trees changed since a sync looked (ext4, XFS): a tree nothing touched is not
    /// walked again.
    watch: Option<Arc<watch::Watch>>,
    /// The entries sent count as done (the sending half of a transfer between servers,
    /// whose receiver counts on another host).
    counts_sent: bool,
    state: Arc<ProgressState>,
}

/// A bandwidth limit as a token bucket: `rate` bytes a second on average, in bursts of at
/// most a tenth of a second's worth. A piece larger than the bucket still passes: what it
/// takes beyond the bucket is waited for before the next. (The bucket was at least 512
/// KiB once, so that a piece of the stream fit: at 64 KiB/s that let a copy's first 8 s of
/// data through at once, and a short copy showed 33-50 % over its limit.)
struct Pace {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Pace {
    /// Takes `n` bytes' worth: how long to wait before sending more, and how much of that
    /// wait is for what others took before (two workers laying files down at once: the
    /// second waits out the first's bytes, then its own).
    fn take(&mut self, n: u64) -> (Duration, Duration) {
        let now = Instant::now();
        let earned = now.duration_since(self.at).as_secs_f64() * self.rate;
        let before = (self.tokens + earned).min(self.burst);
        self.tokens = before - n as f64;
        self.at = now;
        let secs = |debt: f64| Duration::from_secs_f64(debt.max(0.0) / self.rate);
        (secs(-self.tokens), secs(-before))
    }
}

type PhaseState = (Phase, Option<u64>, Option<u64>, Instant);

#[derive(Default)]
struct ProgressState {
    bytes: AtomicU64,
    files: AtomicU64,
    last_report: Mutex<Option<Instant>>,
    /// Time spent in each phase so far (milliseconds).
    timings: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// The current phase, its totals and when it began.
    phase: Mutex<Option<PhaseState>>,
}

impl Control {
    pub fn new() -> Control {
        Control::default()
    }

    /// This control (cancellation, progress, limit, watch) for another run, with progress
    /// and phase timings of its own: a sync's final pass, whose summary's timings are then
    /// its own, not the first pass's again.
    pub fn for_another_run(&self) -> Control {
        Control {
            state: Arc::default(),
            ..self.clone()
        }
    }

    pub fn with_progress(mut self, f: impl Fn(&Progress) + Send + Sync + 'static) -> Control {
        self.progress = Some(Arc::new(f));
        self
    }

    /// `f` is called at named points and may fail the run there (crash tests).
    pub fn with_failpoint(
        mut self,
        f: impl Fn(&str) -> io::Result<()> + Send + Sync + 'static,
    ) -> Control {
        self.failpoint = Some(Arc::new(f));
        self
    }

    /// Moves data at most `bytes_per_second` on average (`None`: as fast as it goes). The
    /// side that sends paces what it puts on the connection (after compression); a transfer
    /// within one process paces the content it writes.
    pub fn with_bwlimit(mut self, bytes_per_second: Option<u64>) -> Control {
        self.pace = bytes_per_second.filter(|r| *r > 0).map(|rate| {
            let rate = rate as f64;
            let burst = rate / 10.0;
            Arc::new(Mutex::new(Pace {
                rate,
                burst,
                tokens: burst,
                at: Instant::now(),
            }))
        });
        self
    }

    /// Waits as long as the bandwidth limit asks after `bytes` were moved (in steps, so a
    /// cancel is seen within a fifth of a second).
    fn throttle(&self, bytes: u64) {
        self.paced(bytes, |_| {});
    }

    /// [`Control::throttle`] for `bytes` laid down at once (by the kernel, or a whole file
    /// read and written here), counting them as done as the limit lets them through: with
    /// a low limit, progress then moves at the limit's rate instead of standing still
    /// through a large file's wait and jumping after it.
    fn throttle_counting(&self, bytes: u64) {
        self.throttle_counting_moved(|| bytes, bytes);
    }

    /// [`Control::throttle_counting`] for content of `bytes` of which only `moved()` were
    /// written (a sparse file's data, its holes left as they are): the limit waits for
    /// what moved, and progress counts the whole content. `moved` is asked only under a
    /// limit (it costs a `stat` per file).
    fn throttle_counting_moved(&self, moved: impl FnOnce() -> u64, bytes: u64) {
        let mut counted = 0;
        if self.pace.is_some() {
            self.paced(moved(), |share| {
                let due = (bytes as f64 * share) as u64;
                self.add_progress(due.saturating_sub(counted), 0);
                counted = counted.max(due);
            });
        }
        self.add_progress(bytes.saturating_sub(counted), 0);
    }

    /// Waits as long as the bandwidth limit wants for `bytes` (in steps, so that a cancel
    /// is seen), telling `step` the share of its own wait done after each step: the part
    /// that waits out what others took first counts for none of `bytes` (else two files
    /// laid down at once each showed their bytes moving at the limit, together twice it).
    fn paced(&self, bytes: u64, mut step: impl FnMut(f64)) {
        let Some(pace) = &self.pace else { return };
        let (wait, others) = pace.lock().map(|mut p| p.take(bytes)).unwrap_or_default();
        let own = wait.saturating_sub(others);
        let mut waited = Duration::ZERO;
        while waited < wait && !self.is_cancelled() {
            let s = (wait - waited).min(Duration::from_millis(200));
            std::thread::sleep(s);
            waited += s;
            if !own.is_zero() {
                step(waited.saturating_sub(others).as_secs_f64() / own.as_secs_f64());
            }
        }
    }

    /// Streams every file through the engine's pipe, even within one filesystem whose
    /// kernel could copy it (what a copy between servers does; tests and benchmarks).
    pub fn stream_only(mut self) -> Control {
        self.stream_only = true;
        self
    }

    /// Syncs ask `watch` whether their trees changed since the last sync (see
    /// [`watch::Watch`]); `None`: they walk them (outside btrfs).
    pub fn with_watch(mut self, watch: Option<Arc<watch::Watch>>) -> Control {
        self.watch = watch;
        self
    }

    /// The flag that cancels the run when set.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Passes on a report made elsewhere (another server's half of a transfer).
    pub fn relay(&self, p: &Progress) {
        if let Some(cb) = &self.progress {
            cb(p);
        }
    }

    fn check(&self) -> Result<(), EngineError> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(EngineError::Cancelled)
        } else {
            Ok(())
        }
    }

    fn fail(&self, point: &str) -> Result<(), EngineError> {
        match &self.failpoint {
            Some(f) => f(point).map_err(|source| EngineError::Io {
                context: format!("at {point}"),
                source,
            }),
            None => Ok(()),
        }
    }

    fn phase(&self, phase: Phase, bytes_total: Option<u64>, files_total: Option<u64>) {
        self.state.bytes.store(0, Ordering::Relaxed);
        self.state.files.store(0, Ordering::Relaxed);
        self.close_phase();
        if let Ok(mut p) = self.state.phase.lock() {
            *p = Some((phase, bytes_total, files_total, Instant::now()));
        }
        self.report(true);
    }

    /// Adds the running phase's time to the timings.
    fn close_phase(&self) {
        let Ok(p) = self.state.phase.lock() else {
            return;
        };
        if let (Some((phase, _, _, started)), Ok(mut t)) = (*p, self.state.timings.lock()) {
            *t.entry(phase.as_str()).or_default() += started.elapsed().as_millis() as u64;
        }
    }

    /// Where the time went: milliseconds per phase (call once, at the end of a run).
    fn timings(&self) -> std::collections::BTreeMap<String, u64> {
        self.close_phase();
        if let Ok(mut p) = self.state.phase.lock() {
            *p = None;
        }
        self.state
            .timings
            .lock()
            .map(|t| t.iter().map(|(k, v)| (k.to_string(), *v)).collect())
            .unwrap_or_default()
    }

    /// This control, with the entries its sender sends counted as done (see
    /// `counts_sent`).
    fn counting_sent(&self) -> Control {
        Control {
            counts_sent: true,
            ..self.clone()
        }
    }

    /// An entry sent (a file, a directory, a link, a deletion), where the sender counts.
    fn sent_entry(&self) {
        if self.counts_sent {
            self.add_progress(0, 1);
        }
    }

    /// Content of a file sent, read as it is sent or (reused, a delta) all at once, where
    /// the sender counts: against the files' sizes, as the phase's total is.
    fn sent_bytes(&self, bytes: u64) {
        if self.counts_sent {
            self.add_progress(bytes, 0);
        }
    }

    fn add_progress(&self, bytes: u64, files: u64) {
        self.state.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.state.files.fetch_add(files, Ordering::Relaxed);
        self.report(false);
    }

    /// Reports at most every 50 ms, except phase changes and the end of a phase.
    fn report(&self, force: bool) {
        let Some(cb) = &self.progress else { return };
        if !force {
            let Ok(mut last) = self.state.last_report.lock() else {
                return;
            };
            if last.is_some_and(|t| t.elapsed() < Duration::from_millis(50)) {
                return;
            }
            *last = Some(Instant::now());
        }
        let Some((phase, bytes_total, files_total, started)) =
            self.state.phase.lock().ok().and_then(|p| *p)
        else {
            return;
        };
        let elapsed = started.elapsed();
        let bytes_done = self.state.bytes.load(Ordering::Relaxed);
        cb(&Progress {
            phase,
            bytes_done,
            bytes_total,
            files_done: self.state.files.load(Ordering::Relaxed),
            files_total,
            elapsed,
            rate: bytes_done as f64 / elapsed.as_secs_f64().max(1e-3),
        });
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cancelled")]
    Cancelled,
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("integrity check failed: {0}")]
    Integrity(String),
    #[error("{0}")]
    Refused(String),
    /// The connection to the other server of a transfer broke (or it stopped answering):
    /// worth trying again once it is back.
    #[error("{context}: {source}")]
    Disconnected { context: String, source: io::Error },
    /// A sync failed while applying its changes (the cause): the target is partly updated
    /// until the next sync completes it.
    #[error("{0}; the copy is partly updated: sync again to complete it")]
    Incomplete(String),
}

impl EngineError {
    fn io(context: &'static str) -> impl Fn(io::Error) -> EngineError {
        move |source| EngineError::Io {
            context: context.to_string(),
            source,
        }
    }
    fn io_path<'a>(what: &'static str, path: &'a Path) -> impl Fn(io::Error) -> EngineError + 'a {
        move |source| EngineError::Io {
            context: format!("{what} {}", path.display()),
            source,
        }
    }
}

/// Removes each tree (a deleted container's root, state, snapshots, bundle) without
/// recursion and without following links; one that does not exist is skipped.
pub fn remove_trees(paths: &[PathBuf]) -> Result<(), EngineError> {
    use std::os::fd::AsFd;
    use std::os::unix::ffi::OsStrExt;
    for path in paths {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            continue;
        };
        // Image trees are unmounted and their images removed first.
        if image::remove_image_trees(path).map_err(EngineError::io_path("removing", path))? {
            continue;
        }
        let dir = match fsx::open_dir(parent) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(EngineError::io_path("opening", parent)(e)),
        };
        match fsx::remove_at(dir.as_fd(), name.as_bytes()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(EngineError::io_path("removing", path)(e))
            }
            _ => {}
        }
    }
    Ok(())
}

/// What a copy or sync did. It is the job summary the API shows, defined once in the wire
/// model (plain data: counts, paths, timings), so the runner passes it on as it is.
pub use app::model::JobSummary as Summary;

/// Copies the tree at `src.root` to `dst.root`, which must not exist. The copy appears at
/// `dst.root` complete and verified, or not at all.
pub fn copy(src: &Place, dst: &Place, ctl: &Control) -> Result<Summary, EngineError> {
    copy_reusing(src, dst, &[], ctl)
}

/// Image trees among `places` mounted where their filesystem is not (after the host
/// restarted; see [`image::ensure_mounted`]): before anything reads or writes them.
pub(crate) fn mounted(places: &[&Place]) -> Result<(), EngineError> {
    for p in places {
        image::ensure_mounted(&p.root, p.image_size)
            .map_err(EngineError::io_path("mounting", &p.root))?;
    }
    Ok(())
}

/// [`copy`], taking content the target's server already holds in other trees (`local`,
/// each with its recorded manifest) from there instead of sending it. A file is offered
/// only while it still matches its manifest entry (size, mtime, ctime, inode), and what is
/// taken is hashed and checked like sent content.
pub fn copy_reusing(
    src: &Place,
    dst: &Place,
    local: &[Place],
    ctl: &Control,
) -> Result<Summary, EngineError> {
    mounted(&[src])?;
    transfer::copy(src, dst, local, ctl)
}

/// [`copy_reusing`] for a copy that may have run before: a job resumed after a restart.
/// If an earlier attempt already put its complete tree at `dst.root` (it stopped after the
/// commit, before its caller recorded the result), that tree is brought up to `src` by a
/// [`sync`] instead of being refused as an existing target. Only for a target that
/// belongs to this copy alone (a job's new container).
pub fn resume_copy(
    src: &Place,
    dst: &Place,
    local: &[Place],
    ctl: &Control,
) -> Result<Summary, EngineError> {
    mounted(&[dst])?;
    if dst.root.is_dir() && !dst.commit_marker().exists() {
        return sync(src, dst, ctl);
    }
    copy_reusing(src, dst, local, ctl)
}

/// Brings the tree at `dst.root` (an earlier copy of `src`) to `src`'s current state,
/// sending only what changed.
pub fn sync(src: &Place, dst: &Place, ctl: &Control) -> Result<Summary, EngineError> {
    sync_keeping(src, dst, &|_| false, ctl)
}

/// [`sync`], leaving the target's entries at the paths `keep` names as they are (neither
/// overwritten, removed nor counted as drift): a copy's own identity
/// ([`identity::is_identity_path`]). The kept paths are listed in the summary's
/// `identity_files`.
pub fn sync_keeping(
    src: &Place,
    dst: &Place,
    keep: &dyn Fn(&[u8]) -> bool,
    ctl: &Control,
) -> Result<Summary, EngineError> {
    mounted(&[src, dst])?;
    transfer::sync(src, dst, keep, ctl)
}

/// Re-reads a tree and compares it with its recorded manifest.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub expected_root: String,
    pub actual_root: String,
    /// Paths that differ (first 100).
    pub differences: Vec<String>,
}

pub fn verify(place: &Place, ctl: &Control) -> Result<VerifyReport, EngineError> {
    mounted(&[place])?;
    let expected = place
        .load_manifest()
        .map_err(EngineError::io("reading the manifest"))?
        .ok_or_else(|| EngineError::Refused("no manifest recorded for this tree".into()))?;
    // No cache: every byte is read again.
    ctl.phase(Phase::Verify, None, None);
    let (actual, _) = scan::scan(&place.root, None, true, ctl)?;
    let (pairs, deleted) = manifest::diff(&expected, &actual);
    let mut differences: Vec<String> = pairs
        .iter()
        .filter(|(c, _, _)| *c != manifest::Change::Unchanged)
        .map(|(_, e, _)| e.display_path())
        .chain(deleted.iter().map(|e| e.display_path()))
        .collect();
    differences.truncate(100);
    Ok(VerifyReport {
        ok: differences.is_empty() && expected.root_hash() == actual.root_hash(),
        expected_root: expected.root_hex(),
        actual_root: actual.root_hex(),
        differences,
    })
}

/// The state (manifest root) a tree is in now, as cheaply as possible: metadata only, with
/// the tree's quick-check cache. A file the cache cannot vouch for counts as changed (its
/// hash is unknown, so the root differs from every recorded state), so comparing the result
/// with the state a copy last matched answers "did the source change since?" without
/// reading any content. Device files are left out, as copies leave them out.
pub fn probe(place: &Place) -> Result<String, EngineError> {
    mounted(&[place])?;
    let cache = place.load_manifest().ok().flatten();
    let (mut m, _) = scan::scan(&place.root, cache.as_ref(), false, &Control::new())?;
    m.entries.retain(|e| e.kind != manifest::Kind::Special);
    Ok(m.root_hex())
}

#[cfg(test)]
mod tests;
