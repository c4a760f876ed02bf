//! The receiving end of a copy or sync: applies frames, hashing everything it writes, and
//! takes content from what the target's server already holds (its previous version,
//! other trees) instead of the stream where it can.

use super::clones::{KernelFile, KernelPool};
use super::*;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Build a fresh tree in place (the staging root).
    Copy,
    /// Stage changed content in a work dir; change the tree only at commit.
    Sync,
}

/// A change the receiver staged for the commit (sync).
pub(super) enum Pending {
    Delete(Vec<u8>),
    /// Content staged in the work dir under `tmp`, verified, metadata applied.
    Place {
        tmp: Vec<u8>,
        e: Entry,
    },
    /// A large file changed only in place: the new ranges are staged in the work dir under
    /// `tmp` (at `(file offset, staged offset, len)`), the rest of the file stays as it is.
    Patch {
        tmp: Vec<u8>,
        ranges: Vec<(u64, u64, u64)>,
        e: Entry,
    },
    /// A directory, symlink, FIFO or hard link to create (replacing what is there).
    Create(Entry),
    /// Only metadata changes.
    Meta(Entry),
}

pub(super) struct Received {
    pub(super) pending: Vec<Pending>,
    pub(super) reused_bytes: u64,
    /// Files laid down by the kernel (shared extents or copy_file_range), and the bytes of
    /// those taken from the source itself.
    pub(super) kernel_copied: u64,
    pub(super) kernel_bytes: u64,
    /// Bytes taken from the source itself but read and written here: on one server, between
    /// two filesystems the kernel cannot copy across (two image trees).
    pub(super) local_bytes: u64,
    /// Files that changed between the sender's scan and their kernel copy, as copied.
    pub(super) changed: Vec<Entry>,
}

impl Received {
    /// Counts a file laid down (`e` as it now is): what it took from where, and whether it
    /// changed since the sender's scan.
    pub(super) fn count_file(&mut self, got: &Content, e: &Entry) {
        self.reused_bytes += got.reused;
        if got.kernel {
            self.kernel_copied += 1;
            self.kernel_bytes += got.source_bytes;
        } else {
            self.local_bytes += got.source_bytes;
        }
        if got.changed {
            self.changed.push(e.clone());
        }
    }
}

/// A file's content is in place: its metadata is applied and it counts as done. (Its pages
/// are written back by the transfer's [`fsx::WriteBack`], not file by file.)
pub(super) fn finish_file(file: &fs::File, e: &Entry, ctl: &Control) -> Result<(), EngineError> {
    fsx::apply_meta_fd(file.as_fd(), e).map_err(io_err("setting metadata"))?;
    ctl.fail("receive:file")?;
    ctl.add_progress(0, 1);
    Ok(())
}

/// Applies frames from the stream. `root` is the tree being built (copy) or synced (sync);
/// `stage` is where sync content goes first; `current` is the target's current manifest
/// (sync), from which deltas and reuse draw.
pub(super) fn receive(
    mode: Mode,
    root: &Path,
    stage: &Path,
    input: PipeReader,
    current: Option<&Manifest>,
    trees: (&[Place], Option<u32>),
    ctl: &Control,
) -> Result<Received, EngineError> {
    if trees.1.is_none() {
        return receive_frames(mode, root, stage, input, current, trees, None, ctl);
    }
    // A copy or sync whose files the kernel takes from the source: they are laid down by
    // workers, several at once (a sync's in its stage). (The pool's end closes its queue,
    // and the scope waits for the workers, before the transfer goes on or its staging
    // tree is removed.)
    let into = match mode {
        Mode::Copy => root,
        Mode::Sync => stage,
    };
    std::thread::scope(|s| {
        let mut pool = KernelPool::start(s, into, trees, ctl)?;
        receive_frames(
            mode,
            root,
            stage,
            input,
            current,
            trees,
            Some(&mut pool),
            ctl,
        )
    })
}

// `receive`'s arguments, and the pool of kernel copies it may have started.
#[allow(clippy::too_many_arguments)]
fn receive_frames(
    mode: Mode,
    root: &Path,
    stage: &Path,
    input: PipeReader,
    current: Option<&Manifest>,
    (local, source): (&[Place], Option<u32>),
    mut pool: Option<&mut KernelPool>,
    ctl: &Control,
) -> Result<Received, EngineError> {
    let mut local = LocalTrees {
        places: local,
        open: local.iter().map(|_| None).collect(),
        source,
    };
    let mut fr = FrameReader::new(input);
    let mut walker = Walker::new(fsx::open_dir(root).map_err(io_err("opening the target"))?);
    // A second walker for a second path at once (hard-link sources, reused files).
    let mut other = Walker::new(fsx::open_dir(root).map_err(io_err("opening the target"))?);
    let stage_fd = fsx::open_dir(stage).map_err(io_err("opening the work dir"))?;
    let current: FastMap<&[u8], &Entry> = current
        .map(|m| m.entries.iter().map(|e| (e.path.as_slice(), e)).collect())
        .unwrap_or_default();
    // Names that other names are hard links of: never changed in place.
    let linked: FastSet<&[u8]> = current
        .values()
        .filter_map(|e| e.link_to.as_deref())
        .collect();
    let mut dirs = Vec::new();
    let mut out = Received {
        pending: Vec::new(),
        reused_bytes: 0,
        kernel_copied: 0,
        kernel_bytes: 0,
        local_bytes: 0,
        changed: Vec::new(),
    };
    let mut seq = 0u64;
    loop {
        ctl.check()?;
        let frame = fr.read_frame().map_err(io_err("receiving"))?;
        let e = match frame {
            Frame::Done => break,
            Frame::Delete { path } if mode == Mode::Sync => {
                out.pending.push(Pending::Delete(path));
                ctl.add_progress(0, 1);
                continue;
            }
            Frame::Meta(e) if mode == Mode::Sync => {
                out.pending.push(Pending::Meta(e));
                ctl.add_progress(0, 1);
                continue;
            }
            Frame::Entry(e) => e,
            _ => return Err(EngineError::Integrity("unexpected frame".into())),
        };
        if e.has_data() {
            if let Some(pool) = pool.as_deref_mut() {
                // A file the kernel lays down from a tree of this server: to a worker.
                match fr.read_frame().map_err(io_err("receiving"))? {
                    Frame::ReuseLocal { tree, from } => {
                        let Frame::FileEnd { hash, size } =
                            fr.read_frame().map_err(io_err("receiving"))?
                        else {
                            return Err(EngineError::Integrity(
                                "unexpected frame inside a file".into(),
                            ));
                        };
                        let (to, pending) = match mode {
                            Mode::Copy => (e.path.clone(), None),
                            Mode::Sync => {
                                // Placed in this order at the commit, as the worker left it.
                                seq += 1;
                                let tmp = seq.to_string().into_bytes();
                                out.pending.push(Pending::Place {
                                    tmp: tmp.clone(),
                                    e: e.clone(),
                                });
                                (tmp, Some(out.pending.len() - 1))
                            }
                        };
                        pool.submit(
                            KernelFile {
                                e,
                                to,
                                pending,
                                tree,
                                from,
                                sent: (hash, size),
                            },
                            &mut out,
                        )?;
                        continue;
                    }
                    next => fr.unread(next),
                }
            }
            let (dir, name) = match mode {
                Mode::Copy => walker
                    .parent(&e.path)
                    .map_err(io_err("opening a directory"))?,
                Mode::Sync => {
                    seq += 1;
                    (stage_fd.as_fd(), &b""[..])
                }
            };
            let mut tmp_name = seq.to_string().into_bytes();
            let name = if mode == Mode::Sync {
                &tmp_name[..]
            } else {
                name
            };
            let mut file = fsx::create_file_with_mode_at(dir, name, e.mode)
                .map_err(io_err("creating a file"))?;
            // The version the target has now, for deltas.
            let old = match (mode, current.get(e.path.as_slice())) {
                (Mode::Sync, Some(c)) if c.kind == Kind::File && !c.chunks.is_empty() => {
                    let (d, n) = other
                        .parent(&e.path)
                        .map_err(io_err("opening a directory"))?;
                    fsx::open_file_at(d, n).ok()
                }
                _ => None,
            };
            // A large file the target has under the same name, alone on its inode, may be
            // changed in place: only its new ranges are written.
            let base = match (&old, current.get(e.path.as_slice())) {
                (Some(_), Some(c))
                    if c.link_to.is_none() && !linked.contains(c.path.as_slice()) =>
                {
                    Some(*c)
                }
                _ => None,
            };
            let mut got = receive_content(
                &mut fr,
                &file,
                &e,
                old.as_ref(),
                base,
                &mut other,
                &mut local,
                ctl,
            )?;
            let mut e = e;
            got.record_in(&mut e);
            out.count_file(&got, &e);
            match got.patch {
                Some(ops) if ops.iter().all(|op| op.old.is_none_or(|o| o == op.at)) => {
                    let ranges = ops
                        .iter()
                        .filter(|op| op.old.is_none())
                        .map(|op| (op.at, op.staged, op.len))
                        .collect();
                    ctl.fail("receive:file")?;
                    ctl.add_progress(0, 1);
                    out.pending.push(Pending::Patch {
                        tmp: tmp_name,
                        ranges,
                        e,
                    });
                    continue;
                }
                Some(ops) => {
                    // Content moved within the file: build the whole new version after all.
                    seq += 1;
                    let full_name = seq.to_string().into_bytes();
                    let mut full = fsx::create_file_at(stage_fd.as_fd(), &full_name)
                        .map_err(io_err("creating a file"))?;
                    let old = old.as_ref().expect("patches have a base");
                    assemble(
                        &mut full,
                        &file,
                        old,
                        &ops,
                        base.expect("patches have a base"),
                    )?;
                    drop(file);
                    fsx::remove_at(stage_fd.as_fd(), &tmp_name)
                        .map_err(io_err("removing a staged file"))?;
                    file = full;
                    tmp_name = full_name;
                }
                None => {}
            }
            finish_file(&file, &e, ctl)?;
            match mode {
                Mode::Copy => {}
                Mode::Sync => out.pending.push(Pending::Place { tmp: tmp_name, e }),
            }
            continue;
        }
        ctl.add_progress(0, 1);
        if mode == Mode::Sync {
            out.pending.push(Pending::Create(e));
            continue;
        }
        if let (Some(pool), Some(_)) = (pool.as_deref_mut(), &e.link_to) {
            // A hard link's first name may be a worker's file still being laid down.
            pool.wait(&mut out)?;
        }
        let (dir, name) = walker
            .parent(&e.path)
            .map_err(io_err("opening a directory"))?;
        create_entry(dir, name, &e, &mut other)?;
        if e.kind == Kind::Dir {
            dirs.push(e);
        } else {
            fsx::apply_meta_at(dir, name, &e).map_err(io_err("setting metadata"))?;
        }
    }
    if let Some(pool) = pool {
        pool.wait(&mut out)?;
    }
    // Directory metadata last, deepest first: creating children moves a directory's mtime.
    for d in dirs.iter().rev() {
        let (dir, name) = walker
            .parent(&d.path)
            .map_err(io_err("opening a directory"))?;
        fsx::apply_meta_at(dir, name, d).map_err(io_err("setting metadata"))?;
    }
    Ok(out)
}

/// Creates a directory, symlink, FIFO or hard link named `name` in `dir`.
pub(super) fn create_entry(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &[u8],
    e: &Entry,
    other: &mut Walker,
) -> Result<(), EngineError> {
    match (e.kind, &e.link_to) {
        (Kind::Dir, _) => fsx::mkdir_at(dir, name).map_err(io_err("creating a directory")),
        (Kind::Symlink, _) => {
            fsx::symlink_at(&e.target, dir, name).map_err(io_err("creating a symlink"))
        }
        (Kind::Fifo, _) => fsx::mkfifo_at(dir, name).map_err(io_err("creating a FIFO")),
        (Kind::File, Some(first)) => {
            let (fdir, fname) = other.parent(first).map_err(io_err("opening a directory"))?;
            fsx::link_at(fdir, fname, dir, name).map_err(io_err("creating a hard link"))
        }
        _ => Err(EngineError::Integrity(format!(
            "cannot create {:?}",
            e.display_path()
        ))),
    }
}

/// Other trees on the receiver's server that content may be taken from, opened when first
/// used (always beneath their roots, like the tree being built).
pub(super) struct LocalTrees<'a> {
    pub(super) places: &'a [Place],
    pub(super) open: Vec<Option<Walker>>,
    /// Which of them is the source tree itself (a copy within one filesystem): a file of it
    /// that changed since the sender's scan is copied as it is now, not refused.
    pub(super) source: Option<u32>,
}

impl LocalTrees<'_> {
    pub(super) fn walker(&mut self, tree: u32) -> Result<&mut Walker, EngineError> {
        let i = tree as usize;
        let place = self
            .places
            .get(i)
            .ok_or_else(|| EngineError::Integrity("reuse from an unknown tree".into()))?;
        if self.open[i].is_none() {
            let fd = fsx::open_dir(&place.root).map_err(io_err("opening a local tree"))?;
            self.open[i] = Some(Walker::new(fd));
        }
        Ok(self.open[i].as_mut().expect("opened above"))
    }
}

/// What the receiver's server holds of the content `m` needs: for each hash, a tree (index
/// into `local`) and a path there. Only files that still match their tree's recorded
/// manifest entry are offered, so the offer is current; what is taken is hashed and checked
/// again as it is written.
pub(super) fn local_content(local: &[Place], m: &Manifest) -> HashMap<[u8; 32], (u32, Vec<u8>)> {
    let wanted: std::collections::HashSet<[u8; 32]> = m
        .entries
        .iter()
        .filter(|e| e.kind == Kind::File && e.link_to.is_none() && e.hash != [0; 32] && e.size > 0)
        .map(|e| e.hash)
        .collect();
    let mut offer = HashMap::new();
    for (i, place) in local.iter().enumerate() {
        if offer.len() == wanted.len() {
            break;
        }
        let (Ok(Some(manifest)), Ok(root)) = (place.load_manifest(), fsx::open_dir(&place.root))
        else {
            continue;
        };
        let mut walker = Walker::new(root);
        for e in &manifest.entries {
            if e.kind != Kind::File
                || e.link_to.is_some()
                || !wanted.contains(&e.hash)
                || offer.contains_key(&e.hash)
            {
                continue;
            }
            let Ok((dir, name)) = walker.parent(&e.path) else {
                continue;
            };
            let still = fsx::stat_at(dir, name).is_ok_and(|st| {
                fsx::kind_of(&st) == Kind::File
                    && st.st_size as u64 == e.size
                    && fsx::mtime_ns(&st) == e.mtime_ns
                    && fsx::ctime_ns(&st) == e.ctime_ns
                    && st.st_ino == e.ino
            });
            if still {
                offer.insert(e.hash, (i as u32, e.path.clone()));
            }
        }
    }
    offer
}

/// One piece of a file received as a patch: `len` bytes at `at` in the new version, from
/// the previous version at `old`, or else from the staged file at `staged`.
pub(super) struct PatchOp {
    pub(super) at: u64,
    pub(super) old: Option<u64>,
    pub(super) staged: u64,
    pub(super) len: u64,
}

/// What `receive_content` got.
pub(super) struct Content {
    pub(super) hash: [u8; 32],
    pub(super) size: u64,
    pub(super) chunks: Vec<Chunk>,
    pub(super) reused: u64,
    /// For a patch: how the new version is made of the previous one and the staged bytes.
    pub(super) patch: Option<Vec<PatchOp>>,
    /// Laid down by the kernel from a file that changed after the sender scanned it: the
    /// content is what the file held when copied, not what the sender announced (a copy
    /// records it as it is, and says the file was unstable).
    pub(super) changed: bool,
    /// Laid down by the kernel; and how many bytes of it came from the source itself (by
    /// the kernel, or else read and written here).
    pub(super) kernel: bool,
    pub(super) source_bytes: u64,
}

impl Content {
    /// Records what was received in the file's entry: its hash, size and chunk list (moved
    /// there: the entry is what is kept).
    pub(super) fn record_in(&mut self, e: &mut Entry) {
        e.hash = self.hash;
        e.size = self.size;
        e.chunks = std::mem::take(&mut self.chunks);
    }
}

/// Receives one file's content into `out`, hashing as it writes; fails unless the result
/// is exactly what the sender announced.
///
/// With a `base` (a large file the target has, whose chunk hashes its scan just recorded),
/// only new bytes go to `out`, and ranges of the previous version are recorded, not copied:
/// their hashes come from the base's chunk list. The caller applies such a patch in place
/// when every kept range stays where it was, and assembles the whole file otherwise.
// The stream, the file being written, its entry, the previous version (file and chunk
// list) and the three places content may be taken from: all needed, none related enough
// to bundle.
#[allow(clippy::too_many_arguments)]
pub(super) fn receive_content(
    fr: &mut FrameReader<PipeReader>,
    out: &fs::File,
    e: &Entry,
    old: Option<&fs::File>,
    base: Option<&Entry>,
    other: &mut Walker,
    local: &mut LocalTrees<'_>,
    ctl: &Control,
) -> Result<Content, EngineError> {
    let chunked = e.size >= CHUNKED_FILE_MIN;
    let base_chunks: HashMap<u64, &Chunk> = base
        .filter(|_| chunked)
        .map(|b| b.chunks.iter().map(|c| (c.offset, c)).collect())
        .unwrap_or_default();
    let mut patch: Option<Vec<PatchOp>> = (!base_chunks.is_empty()).then(Vec::new);
    let mut staged = 0u64;
    let mut whole = blake3::Hasher::new();
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut written = 0u64;
    let mut reused = 0u64;
    let mut from_reuse: Option<([u8; 32], Vec<Chunk>)> = None;
    // Laid down by the kernel; from the source tree's own file (which may have changed).
    let mut kernel_copied = false;
    let mut source_bytes = 0u64;
    let mut of_source = false;
    let mut buf = Vec::new();
    // Pieces of zeros become holes: a sparse file stays sparse.
    let mut sparse = fsx::SparseOut::new(out);
    loop {
        match fr.read_frame().map_err(io_err("receiving"))? {
            // A file's content is data and ranges of its previous version, or one reuse
            // alone.
            Frame::Data(_) | Frame::CopyOld { .. } if from_reuse.is_some() => {
                return Err(EngineError::Integrity("data after a reuse".into()));
            }
            Frame::Data(d) => {
                sparse.write(&d).map_err(io_err("writing a file"))?;
                if chunked {
                    chunks.push(Chunk {
                        offset: written,
                        len: d.len() as u32,
                        hash: *blake3::hash(&d).as_bytes(),
                    });
                } else {
                    whole.update(&d);
                }
                if let Some(ops) = &mut patch {
                    ops.push(PatchOp {
                        at: written,
                        old: None,
                        staged,
                        len: d.len() as u64,
                    });
                    staged += d.len() as u64;
                }
                written += d.len() as u64;
                // Within one process the receiver sets the pace (the sender waits on the
                // pipe); between hosts the sending side does, and the receiver's control
                // has no limit. Counted as the limit lets it through, so the rate shown
                // is the limit's, not a piece ahead of it.
                ctl.throttle_counting(d.len() as u64);
            }
            Frame::CopyOld { offset, len } => {
                let old =
                    old.ok_or_else(|| EngineError::Integrity("delta without a base".into()))?;
                if !chunked || len > 8 << 20 {
                    return Err(EngineError::Integrity("bad delta range".into()));
                }
                let known = base_chunks
                    .get(&offset)
                    .filter(|c| c.len as u64 == len)
                    .map(|c| c.hash);
                let hash = match (&mut patch, known) {
                    (Some(ops), Some(hash)) => {
                        ops.push(PatchOp {
                            at: written,
                            old: Some(offset),
                            staged: 0,
                            len,
                        });
                        hash
                    }
                    // The sender draws its ranges from the same chunk list.
                    (Some(_), None) => {
                        return Err(EngineError::Integrity(
                            "a delta range that is not a chunk of the previous version".into(),
                        ))
                    }
                    (None, _) => {
                        buf.resize(len as usize, 0);
                        old.read_exact_at(&mut buf, offset)
                            .map_err(io_err("reading the previous version"))?;
                        sparse.write(&buf).map_err(io_err("writing a file"))?;
                        *blake3::hash(&buf).as_bytes()
                    }
                };
                chunks.push(Chunk {
                    offset: written,
                    len: len as u32,
                    hash,
                });
                written += len;
                reused += len;
                ctl.add_progress(len, 0);
            }
            // The whole content of a file the receiver's side holds: in this tree, or in
            // another tree on its server. Only where it is found differs.
            frame @ (Frame::Reuse { .. } | Frame::ReuseLocal { .. }) => {
                if written > 0 {
                    return Err(EngineError::Integrity("reuse inside a file".into()));
                }
                patch = None;
                let (walker, from, from_source) = match frame {
                    Frame::ReuseLocal { tree, from } => {
                        let from_source = local.source == Some(tree) && from == e.path;
                        (local.walker(tree)?, from, from_source)
                    }
                    Frame::Reuse { from } => (&mut *other, from, false),
                    _ => unreachable!("matched above"),
                };
                let (d, n) = walker
                    .parent(&from)
                    .map_err(io_err("opening a directory"))?;
                let src = fsx::open_file_at(d, n).map_err(io_err("opening a file to reuse"))?;
                of_source = from_source;
                let taken = take_content(out, &src, e, from_source, ctl)?;
                written += taken.len;
                reused += taken.reused;
                source_bytes += taken.source_bytes;
                kernel_copied |= taken.kernel;
                from_reuse = Some((taken.hash, taken.chunks));
            }
            Frame::FileEnd { hash, size } => {
                sparse.finish().map_err(io_err("writing a file"))?;
                let (got, got_chunks) = match from_reuse {
                    Some(r) => r,
                    None if chunked => (chunked_file_hash(&chunks), chunks),
                    None => (*whole.finalize().as_bytes(), Vec::new()),
                };
                let changed = changed_since_sent(e, (got, written), (hash, size), of_source)?;
                return Ok(Content {
                    hash: got,
                    size: written,
                    chunks: got_chunks,
                    reused,
                    patch,
                    changed,
                    kernel: kernel_copied,
                    source_bytes,
                });
            }
            _ => {
                return Err(EngineError::Integrity(
                    "unexpected frame inside a file".into(),
                ))
            }
        }
    }
}

/// What `take_content` laid down.
pub(super) struct Taken {
    pub(super) hash: [u8; 32],
    pub(super) chunks: Vec<Chunk>,
    pub(super) len: u64,
    /// Laid down by the kernel (else read and written here).
    pub(super) kernel: bool,
    /// Its bytes as content the target's server held, or as taken from the source itself.
    pub(super) reused: u64,
    pub(super) source_bytes: u64,
}

/// Lays the whole content of `src` (a file of a tree on the receiver's server) down in
/// `out`. Where both share a filesystem the kernel does it (shared extents, or copied
/// inside the kernel) and nothing passes through here: then the hash is the sender's if
/// `src` is still the very version the sender scanned or read (inode, size and times as it
/// saw them), else `out` is read once to hash it. Elsewhere (two filesystems) `src` is
/// read and written here: hashed on the way, or, where it is the source's own file, with
/// the sender's hash on the same condition as the kernel's copy.
pub(super) fn take_content(
    out: &fs::File,
    src: &fs::File,
    e: &Entry,
    from_source: bool,
    ctl: &Control,
) -> Result<Taken, EngineError> {
    let unchanged =
        || e.hash != [0; 32] && fsx::stat_fd(src.as_fd()).is_ok_and(|st| fsx::same_version(&st, e));
    let taken = if let Ok(how) = fsx::kernel_copy(out, src, e.size) {
        let (hash, chunks, len) = if unchanged() {
            (e.hash, e.chunks.clone(), e.size)
        } else {
            hash_reader(out, e.size, ctl, |_, _| Ok(()))?
        };
        if how == fsx::KernelCopy::CopyFileRange {
            ctl.throttle_counting_moved(|| fsx::data_bytes(out, len), len);
        } else {
            ctl.add_progress(len, 0);
        }
        // From the source itself: not content the target held already.
        let (reused, source_bytes) = if from_source { (0, len) } else { (len, 0) };
        Taken {
            hash,
            chunks,
            len,
            kernel: true,
            reused,
            source_bytes,
        }
    } else if from_source {
        // The source's own file on another filesystem of this server (two image trees):
        // copied here, and like the kernel's copy it has the sender's hash while it is
        // still the version the sender scanned.
        ctl.fail("receive:local-file")?;
        let len = fsx::copy_content(out, src, e.size)
            .map_err(io_err("copying a file from the source"))?;
        let (hash, chunks, len) = if len == e.size && unchanged() {
            (e.hash, e.chunks.clone(), len)
        } else {
            hash_reader(out, len, ctl, |_, _| Ok(()))?
        };
        ctl.throttle_counting_moved(|| fsx::data_bytes(out, len), len);
        Taken {
            hash,
            chunks,
            len,
            kernel: false,
            reused: 0,
            source_bytes: len,
        }
    } else {
        let mut sparse = fsx::SparseOut::new(out);
        let (hash, chunks, len) = hash_reader(src, e.size, ctl, |data, _| sparse.write(data))?;
        sparse.finish().map_err(io_err("writing a file"))?;
        ctl.add_progress(len, 0);
        Taken {
            hash,
            chunks,
            len,
            kernel: false,
            reused: len,
            source_bytes: 0,
        }
    };
    Ok(taken)
}

/// Whether a file's content as laid down (`got`: hash, length) differs from what the sender
/// announced at its end (`sent`). Only the source's own file may have changed since (a
/// running container): content of any other tree must be exactly what was offered.
pub(super) fn changed_since_sent(
    e: &Entry,
    got: ([u8; 32], u64),
    sent: ([u8; 32], u64),
    of_source: bool,
) -> Result<bool, EngineError> {
    let changed = got != sent;
    if changed && !of_source {
        return Err(EngineError::Integrity(format!(
            "{:?}: received content does not match its hash",
            e.display_path()
        )));
    }
    Ok(changed)
}

/// Builds the whole new version of a patched file into `full`, checking every range kept
/// from the previous version against the hash its chunk list recorded.
pub(super) fn assemble(
    full: &mut fs::File,
    staged: &fs::File,
    old: &fs::File,
    ops: &[PatchOp],
    base: &Entry,
) -> Result<(), EngineError> {
    let known: HashMap<u64, [u8; 32]> = base.chunks.iter().map(|c| (c.offset, c.hash)).collect();
    let mut buf = Vec::new();
    // (A new file: pieces of zeros become holes.)
    let mut sparse = fsx::SparseOut::new(full);
    for op in ops {
        buf.resize(op.len as usize, 0);
        match op.old {
            Some(o) => {
                old.read_exact_at(&mut buf, o)
                    .map_err(io_err("reading the previous version"))?;
                if known.get(&o) != Some(blake3::hash(&buf).as_bytes()) {
                    return Err(EngineError::Integrity(format!(
                        "{:?} changed on the target during the sync",
                        base.display_path()
                    )));
                }
            }
            None => staged
                .read_exact_at(&mut buf, op.staged)
                .map_err(io_err("reading a staged file"))?,
        }
        sparse.write(&buf).map_err(io_err("writing a file"))?;
    }
    sparse.finish().map_err(io_err("writing a file"))?;
    Ok(())
}
