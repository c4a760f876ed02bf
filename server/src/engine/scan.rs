//! Scanning a tree into a manifest, with a quick-check cache: a file whose size, mtime,
//! ctime and inode match the cached entry keeps its cached hash and is never read again.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs as rfs;

use super::fsx::{self, ctime_ns, kind_of, mtime_ns};
use super::manifest::{Chunk, Entry, Kind, Manifest};
use super::{Control, EngineError};

/// Files from this size on are cut into content-defined chunks, so a later change can be
/// sent as a delta.
pub const CHUNKED_FILE_MIN: u64 = 1 << 20;
const CDC_MIN: u32 = 4 * 1024;
const CDC_AVG: u32 = 16 * 1024;
const CDC_MAX: u32 = 64 * 1024;

/// What a scan found besides the manifest.
#[derive(Debug, Default, Clone)]
pub struct ScanReport {
    /// Device files and sockets (recorded, not copied).
    pub specials: Vec<String>,
    /// Files that kept changing while being read (their last read state is recorded).
    pub unstable: Vec<String>,
    /// Files whose content was read and hashed (cache misses).
    pub hashed_files: u64,
    pub hashed_bytes: u64,
}

/// The hash of a chunked file: BLAKE3 over its chunk list. Deterministic for the content,
/// and lets a receiver verify a file chunk by chunk.
pub fn chunked_file_hash(chunks: &[Chunk]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"doppel-chunked-v1");
    for c in chunks {
        h.update(&c.len.to_le_bytes());
        h.update(&c.hash);
    }
    *h.finalize().as_bytes()
}

/// Reads a file to its end, returning its hash, chunk list (large files) and length.
/// `each` sees the content in the pieces it was hashed in (chunks for large files).
pub fn hash_reader(
    mut r: impl Read,
    size_hint: u64,
    ctl: &Control,
    mut each: impl FnMut(&[u8], Option<&Chunk>) -> io::Result<()>,
) -> Result<([u8; 32], Vec<Chunk>, u64), EngineError> {
    if size_hint < CHUNKED_FILE_MIN {
        let mut h = blake3::Hasher::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = r
                .read(&mut buf)
                .map_err(EngineError::io("reading a file"))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            each(&buf[..n], None).map_err(EngineError::io("sending a file"))?;
            total += n as u64;
            ctl.check()?;
        }
        // The hash kind follows the size the caller expected, even if the file grew while
        // read: sender and receiver decide it the same way.
        return Ok((*h.finalize().as_bytes(), Vec::new(), total));
    }
    let mut chunks = Vec::new();
    let mut total = 0u64;
    for chunk in fastcdc::v2020::StreamCDC::new(r, CDC_MIN, CDC_AVG, CDC_MAX) {
        let chunk = chunk.map_err(|e| EngineError::Io {
            context: "reading a file".into(),
            source: io::Error::other(e.to_string()),
        })?;
        let c = Chunk {
            offset: chunk.offset,
            len: chunk.length as u32,
            hash: *blake3::hash(&chunk.data).as_bytes(),
        };
        each(&chunk.data, Some(&c)).map_err(EngineError::io("sending a file"))?;
        total += chunk.length as u64;
        chunks.push(c);
        ctl.check()?;
    }
    Ok((chunked_file_hash(&chunks), chunks, total))
}

/// Scans the tree at `root`. With `hash_content` false, files the cache cannot vouch for
/// keep a zero hash (a copy hashes them while sending instead of reading them twice).
pub fn scan(
    root: &Path,
    cache: Option<&Manifest>,
    hash_content: bool,
    ctl: &Control,
) -> Result<(Manifest, ScanReport), EngineError> {
    let root_fd = fsx::open_dir(root).map_err(EngineError::io_path("opening", root))?;
    let cache: HashMap<&[u8], &Entry> = cache
        .map(|m| m.entries.iter().map(|e| (e.path.as_slice(), e)).collect())
        .unwrap_or_default();
    let mut s = Scanner {
        cache,
        hash_content,
        ctl,
        entries: Vec::new(),
        links: HashMap::new(),
        link_fixups: Vec::new(),
        deferred: Vec::new(),
        lost: Vec::new(),
        report: ScanReport::default(),
    };
    s.walk(root_fd.as_fd(), &[])?;
    s.finish()
}

struct Scanner<'a> {
    cache: HashMap<&'a [u8], &'a Entry>,
    hash_content: bool,
    ctl: &'a Control,
    entries: Vec<Entry>,
    /// (dev, inode) of multiply-linked files -> index of their first entry.
    links: HashMap<(u64, u64), usize>,
    /// (hard link, its first file): the link takes the first file's hash at the end.
    link_fixups: Vec<(usize, usize)>,
    /// Large files still to hash.
    deferred: Vec<Deferred>,
    /// Entries to leave out: files that could not be read in a stable state.
    lost: Vec<usize>,
    report: ScanReport,
}

impl Scanner<'_> {
    fn walk(&mut self, dir: BorrowedFd<'_>, prefix: &[u8]) -> Result<(), EngineError> {
        let names = fsx::list_dir(dir).map_err(EngineError::io("listing a directory"))?;
        for name in names {
            self.ctl.check()?;
            let mut path = prefix.to_vec();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&name);
            let st = match fsx::stat_at(dir, &name) {
                Ok(st) => st,
                // Vanished since the listing: it is simply not part of this state.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(EngineError::io("reading metadata")(e)),
            };
            let kind = kind_of(&st);
            let mut e = Entry::new(path, kind);
            e.mode = st.st_mode & 0o7777;
            e.uid = st.st_uid;
            e.gid = st.st_gid;
            e.mtime_ns = mtime_ns(&st);
            e.ctime_ns = ctime_ns(&st);
            e.ino = st.st_ino;
            match kind {
                Kind::Dir => {
                    let sub = match fsx::open_dir_at(dir, &name) {
                        Ok(fd) => fd,
                        // Replaced by something else since the stat: skip it, report it.
                        Err(_) => {
                            self.report.unstable.push(e.display_path());
                            continue;
                        }
                    };
                    e.xattrs =
                        fsx::read_xattrs(sub.as_fd()).map_err(EngineError::io("reading xattrs"))?;
                    let path = e.path.clone();
                    self.entries.push(e);
                    self.walk(sub.as_fd(), &path)?;
                }
                Kind::Symlink => {
                    e.target = read_link(dir, &name)?;
                    e.size = e.target.len() as u64;
                    self.entries.push(e);
                }
                Kind::File => {
                    e.size = st.st_size as u64;
                    if st.st_nlink > 1 {
                        let key = (st.st_dev as u64, st.st_ino);
                        if let Some(&first) = self.links.get(&key) {
                            e.link_to = Some(self.entries[first].path.clone());
                            self.link_fixups.push((self.entries.len(), first));
                            self.entries.push(e);
                            continue;
                        }
                        self.links.insert(key, self.entries.len());
                    }
                    self.file(dir, &name, e)?;
                }
                Kind::Fifo => self.entries.push(e),
                Kind::Special => {
                    e.rdev = st.st_rdev;
                    self.report.specials.push(e.display_path());
                    self.entries.push(e);
                }
            }
        }
        Ok(())
    }

    fn file(&mut self, dir: BorrowedFd<'_>, name: &[u8], mut e: Entry) -> Result<(), EngineError> {
        if let Some(c) = self.cache.get(e.path.as_slice()) {
            if c.kind == Kind::File
                && c.link_to.is_none()
                && c.size == e.size
                && c.mtime_ns == e.mtime_ns
                && c.ctime_ns == e.ctime_ns
                && c.ino == e.ino
                && c.hash != [0; 32]
            {
                e.hash = c.hash;
                e.chunks = c.chunks.clone();
                // xattr changes move ctime, so the cached ones are current too.
                e.xattrs = c.xattrs.clone();
                self.entries.push(e);
                return Ok(());
            }
        }
        if !self.hash_content {
            self.entries.push(e);
            return Ok(());
        }
        if e.size >= CHUNKED_FILE_MIN {
            // Large files are hashed in batches on every core once the walk has moved on:
            // a sync that touched a few big files is bound by hashing them.
            let dir = dir
                .try_clone_to_owned()
                .map_err(EngineError::io("duplicating a directory handle"))?;
            self.deferred.push(Deferred {
                index: self.entries.len(),
                dir,
                name: name.to_vec(),
            });
            self.entries.push(e);
            if self.deferred.len() >= DEFERRED_BATCH {
                self.hash_deferred()?;
            }
            return Ok(());
        }
        if hash_file(dir, name, &mut e, self.ctl)? {
            self.report.hashed_files += 1;
            self.report.hashed_bytes += e.size;
        } else {
            self.lost.push(self.entries.len());
        }
        // Pushed even when lost, so that indices (hard links) stay aligned until `finish`.
        self.entries.push(e);
        Ok(())
    }

    /// Hashes the deferred large files, spread over the available cores.
    fn hash_deferred(&mut self) -> Result<(), EngineError> {
        let batch = std::mem::take(&mut self.deferred);
        if batch.is_empty() {
            return Ok(());
        }
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 4)
            .min(batch.len());
        let next = std::sync::atomic::AtomicUsize::new(0);
        let entries = &self.entries;
        let ctl = self.ctl;
        let results: Vec<Result<Vec<Hashed>, EngineError>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(d) = batch.get(i) else {
                                return Ok(done);
                            };
                            let mut e = entries[d.index].clone();
                            let stable = hash_file(d.dir.as_fd(), &d.name, &mut e, ctl)?;
                            done.push((d.index, e, stable));
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join().unwrap_or_else(|_| {
                        Err(EngineError::Integrity("a hashing thread panicked".into()))
                    })
                })
                .collect()
        });
        for r in results {
            for (index, e, stable) in r? {
                if stable {
                    self.report.hashed_files += 1;
                    self.report.hashed_bytes += e.size;
                    self.entries[index] = e;
                } else {
                    self.lost.push(index);
                }
            }
        }
        Ok(())
    }

    /// Ends the scan: hashes what is still deferred, gives hard links their first file's
    /// hash, and leaves out files that could not be read in a stable state (and links to
    /// them).
    fn finish(mut self) -> Result<(Manifest, ScanReport), EngineError> {
        self.hash_deferred()?;
        let mut lost = vec![false; self.entries.len()];
        for &i in &self.lost {
            lost[i] = true;
            self.report.unstable.push(self.entries[i].display_path());
        }
        for &(link, first) in &self.link_fixups {
            if lost[first] {
                lost[link] = true;
                self.report.unstable.push(self.entries[link].display_path());
            } else {
                self.entries[link].hash = self.entries[first].hash;
                self.entries[link].xattrs = self.entries[first].xattrs.clone();
            }
        }
        let entries = self
            .entries
            .into_iter()
            .zip(lost)
            .filter_map(|(e, lost)| (!lost).then_some(e))
            .collect();
        Ok((Manifest { entries }, self.report))
    }
}

/// Large files waiting to be hashed in parallel: each keeps its directory open, so it is
/// opened beneath the root like any other.
const DEFERRED_BATCH: usize = 32;

/// A deferred file after hashing: (its index, its entry, whether it read stably).
type Hashed = (usize, Entry, bool);

struct Deferred {
    index: usize,
    dir: OwnedFd,
    name: Vec<u8>,
}

/// Reads and hashes one file into `e`, retrying while it changes under the read. False when
/// it vanished, was replaced by a non-file, or kept changing after three reads: such a file
/// is left out of the state rather than recorded with a hash that matches no moment of it.
fn hash_file(
    dir: BorrowedFd<'_>,
    name: &[u8],
    e: &mut Entry,
    ctl: &Control,
) -> Result<bool, EngineError> {
    for _attempt in 0..3 {
        let file = match fsx::open_file_at(dir, name) {
            Ok(f) => f,
            Err(_) => break,
        };
        let before =
            rfs::fstat(&file).map_err(|x| EngineError::io("reading metadata")(x.into()))?;
        e.xattrs = fsx::read_xattrs(file.as_fd()).map_err(EngineError::io("reading xattrs"))?;
        let res = hash_reader(&file, before.st_size as u64, ctl, |_, _| Ok(()));
        let after = rfs::fstat(&file).map_err(|x| EngineError::io("reading metadata")(x.into()))?;
        match res {
            Ok((hash, chunks, len))
                if after.st_size as u64 == len
                    && mtime_ns(&after) == mtime_ns(&before)
                    && after.st_ino == e.ino =>
            {
                e.hash = hash;
                e.chunks = chunks;
                e.size = len;
                e.mtime_ns = mtime_ns(&after);
                e.ctime_ns = ctime_ns(&after);
                e.mode = after.st_mode & 0o7777;
                ctl.add_progress(len, 1);
                return Ok(true);
            }
            Ok(_) => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(false)
}

fn read_link(dir: BorrowedFd<'_>, name: &[u8]) -> Result<Vec<u8>, EngineError> {
    use std::os::unix::ffi::OsStrExt;
    rfs::readlinkat(dir, std::ffi::OsStr::from_bytes(name), Vec::new())
        .map(|c| c.into_bytes())
        .map_err(|e| EngineError::io("reading a symlink")(e.into()))
}
