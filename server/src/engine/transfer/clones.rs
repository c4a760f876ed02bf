//! A copy's files laid down by the kernel from trees of the same filesystem, several at
//! once. Each such file is all syscalls (create, clone or copy_file_range, metadata), the
//! kernel doing the work in the caller's time: one thread leaves the other cores idle. On
//! XFS, 40,000 reflinks took 4.4 s from one thread and 2.0 s from two on a 2-core machine
//! (`cp -a --reflink` on two halves of a tree); `make bench` on XFS at BENCH_SCALE=0.5
//! copied in 1.99 and 2.15 s with this pool against 2.48 and 2.50 s without (runs taking
//! turns).
//!
//! The receiver hands these files to the pool, a batch at a time, and goes on with the
//! stream; it waits for the pool before anything that needs a worker's file (a hard link
//! to it) and at the end (directory metadata, then the verification of the whole tree). A sync's changed files
//! go the same way, into its stage: each is placed in order at its commit, by the entry
//! the receiver listed for it when handing it out, which the worker's result completes.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::Scope;

use super::receive::{
    changed_since_sent, finish_file, take_content, Content, LocalTrees, Pending, Received,
};
use super::*;

/// A file to lay down: its entry, which local tree holds its content and where, and the
/// hash and size the sender announced. `to`: where, in the pool's tree (a copy's: the
/// entry's path; a sync's stage: its staged name); `pending`: for a sync, its place in
/// what the commit applies.
pub(super) struct KernelFile {
    pub(super) e: Entry,
    pub(super) to: Vec<u8>,
    pub(super) pending: Option<usize>,
    pub(super) tree: u32,
    pub(super) from: Vec<u8>,
    pub(super) sent: ([u8; 32], u64),
}

type Done = Result<(Content, Entry, Option<usize>), EngineError>;

/// Files go to the workers, and their results come back, in batches of up to this many
/// files: one at a time, handing a file over and back cost more wake-ups (futex calls and
/// context switches) than the file itself did syscalls (40,000 small files, strace).
const BATCH_FILES: usize = 32;
/// ... and of up to this many bytes: a large file closes its batch, so that two of them
/// do not end up with one worker while another idles.
const BATCH_BYTES: u64 = 1 << 20;

pub(super) struct KernelPool {
    queue: mpsc::SyncSender<Vec<KernelFile>>,
    done: mpsc::Receiver<Vec<Done>>,
    /// Files not handed out yet.
    batch: Vec<KernelFile>,
    batch_bytes: u64,
    /// Files handed out whose result has not been counted yet.
    outstanding: usize,
}

impl KernelPool {
    /// Workers laying down files in `root` (the tree a copy builds, or a sync's stage),
    /// taking content from `trees` (the local trees, and which of them is the source).
    pub(super) fn start<'scope>(
        s: &'scope Scope<'scope, '_>,
        root: &'scope Path,
        trees: (&'scope [Place], Option<u32>),
        ctl: &'scope Control,
    ) -> Result<KernelPool, EngineError> {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
        // Each worker's own handle on the tree, opened here: a worker's every result is
        // then a file's.
        let roots = (0..workers)
            .map(|_| fsx::open_dir(root).map_err(io_err("opening the target")))
            .collect::<Result<Vec<_>, _>>()?;
        // A short queue: enough to keep every worker busy, never the whole tree in memory.
        let (queue, jobs) = mpsc::sync_channel::<Vec<KernelFile>>(workers * 2);
        let jobs = Arc::new(Mutex::new(jobs));
        let (tx, done) = mpsc::channel();
        for root in roots {
            let (jobs, tx) = (jobs.clone(), tx.clone());
            s.spawn(move || work(Walker::new(root), trees, &jobs, &tx, ctl));
        }
        Ok(KernelPool {
            queue,
            done,
            batch: Vec::with_capacity(BATCH_FILES),
            batch_bytes: 0,
            outstanding: 0,
        })
    }

    /// Hands `file` to a worker (with the next files, in a batch); counts into `out` what
    /// the workers finished meanwhile, and fails with the first error one of them met.
    pub(super) fn submit(
        &mut self,
        file: KernelFile,
        out: &mut Received,
    ) -> Result<(), EngineError> {
        // A batch holds one directory's files: two workers creating files in one
        // directory take turns at its lock (and spin on it), in two they do not.
        fn parent(f: &KernelFile) -> &[u8] {
            fsx::split_parent(&f.to).0
        }
        if self
            .batch
            .last()
            .is_some_and(|last| parent(last) != parent(&file))
        {
            self.hand_out(out)?;
        }
        self.batch_bytes += file.e.size;
        self.batch.push(file);
        if self.batch.len() < BATCH_FILES && self.batch_bytes < BATCH_BYTES {
            return Ok(());
        }
        self.hand_out(out)
    }

    /// Counts what the workers finished so far, then sends them the batch being gathered.
    fn hand_out(&mut self, out: &mut Received) -> Result<(), EngineError> {
        while let Ok(done) = self.done.try_recv() {
            self.count(done, out)?;
        }
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_FILES));
        let files = batch.len();
        self.batch_bytes = 0;
        if self.queue.send(batch).is_err() {
            // Every worker has stopped: their results say why.
            self.wait(out)?;
            return Err(EngineError::Integrity(
                "the kernel copy workers stopped".into(),
            ));
        }
        self.outstanding += files;
        Ok(())
    }

    /// Waits until every file handed out is laid down (or one failed).
    pub(super) fn wait(&mut self, out: &mut Received) -> Result<(), EngineError> {
        self.hand_out(out)?;
        while self.outstanding > 0 {
            let done = self
                .done
                .recv()
                .map_err(|_| EngineError::Integrity("the kernel copy workers stopped".into()))?;
            self.count(done, out)?;
        }
        Ok(())
    }

    /// Counts a batch's results into `out` (the first error fails the transfer: a worker
    /// stops at its first failure, so a batch's results end with it).
    fn count(&mut self, done: Vec<Done>, out: &mut Received) -> Result<(), EngineError> {
        for result in done {
            self.outstanding -= 1;
            let (got, e, pending) = result?;
            out.count_file(&got, &e);
            if let Some(Pending::Place { e: placed, .. }) =
                pending.and_then(|i| out.pending.get_mut(i))
            {
                *placed = e;
            }
        }
        Ok(())
    }
}

/// A worker: lays down batches of files from the queue until it closes, or until one
/// fails (its error is the last result it sends; a panic is reported as an error, so the
/// receiver never waits for a result that will not come).
fn work(
    mut walker: Walker,
    (places, source): (&[Place], Option<u32>),
    jobs: &Mutex<mpsc::Receiver<Vec<KernelFile>>>,
    done: &mpsc::Sender<Vec<Done>>,
    ctl: &Control,
) {
    let mut local = LocalTrees {
        places,
        open: places.iter().map(|_| None).collect(),
        source,
    };
    loop {
        // The lock is held only while waiting for the next batch.
        let Ok(batch) = jobs
            .lock()
            .map_err(|_| ())
            .and_then(|q| q.recv().map_err(|_| ()))
        else {
            return;
        };
        let mut results = Vec::with_capacity(batch.len());
        let mut failed = false;
        for file in batch {
            let result = catch_unwind(AssertUnwindSafe(|| {
                lay_down(file, &mut walker, &mut local, ctl)
            }))
            .unwrap_or_else(|_| {
                Err(EngineError::Integrity(
                    "a kernel copy worker panicked".into(),
                ))
            });
            failed = result.is_err();
            results.push(result);
            if failed {
                break;
            }
        }
        if done.send(results).is_err() || failed {
            return;
        }
    }
}

/// One file: created in the tree being built, its content taken from its local tree,
/// checked against what the sender announced, its metadata applied.
fn lay_down(
    file: KernelFile,
    walker: &mut Walker,
    local: &mut LocalTrees<'_>,
    ctl: &Control,
) -> Done {
    ctl.check()?;
    let KernelFile {
        mut e,
        to,
        pending,
        tree,
        from,
        sent,
    } = file;
    let (dir, name) = walker.parent(&to).map_err(io_err("opening a directory"))?;
    let out =
        fsx::create_file_with_mode_at(dir, name, e.mode).map_err(io_err("creating a file"))?;
    let of_source = local.source == Some(tree) && from == e.path;
    let (d, n) = local
        .walker(tree)?
        .parent(&from)
        .map_err(io_err("opening a directory"))?;
    let src = fsx::open_file_at(d, n).map_err(io_err("opening a file to reuse"))?;
    let taken = take_content(&out, &src, &e, of_source, ctl)?;
    let changed = changed_since_sent(&e, (taken.hash, taken.len), sent, of_source)?;
    let mut got = Content {
        hash: taken.hash,
        size: taken.len,
        chunks: taken.chunks,
        reused: taken.reused,
        patch: None,
        changed,
        kernel: taken.kernel,
        source_bytes: taken.source_bytes,
    };
    got.record_in(&mut e);
    finish_file(&out, &e, ctl)?;
    Ok((got, e, pending))
}
