//! Scanning a tree into a manifest, with a quick-check cache: a file whose size, mtime,
//! ctime and inode match the cached entry keeps its cached hash and is never read again.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs as rfs;

use super::extents;
use super::fsx::{self, ctime_ns, kind_of, mtime_ns};
use super::manifest::{path_cmp, Chunk, Entry, Kind, Manifest};
use super::{Control, EngineError, FastSet};

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
    pub specials: Listed,
    /// Files that kept changing while being read (left out of the state).
    pub unstable: Listed,
    /// Files whose content was read and hashed (cache misses).
    pub hashed_files: u64,
    pub hashed_bytes: u64,
    /// Bytes of those files not read: ranges still sharing their extents with the twin's
    /// file (see [`Twin`]).
    pub shared_bytes: u64,
    /// Bytes of those files read but not hashed: found equal to the twin's bytes, cached
    /// (see [`Twin`]).
    pub compared_bytes: u64,
    /// Directories listed (in a scan of what changed only, [`scan_changed`], those it
    /// read again).
    pub listed_dirs: u64,
    /// Entries looked at (stat); in a scan of what changed only, the others were taken
    /// from the last scan.
    pub looked_at: u64,
    /// Whether it read only what changed ([`scan_changed`]).
    pub partial: bool,
}

/// A copy of the tree being scanned, and its recorded manifest: a sync's source scan has
/// its target as twin. A large file whose quick check fails is compared with its twin's
/// file, as long as that is the recorded version: where the two still share extents
/// (FIEMAP; see [`Sharing`]), the content is the twin's as recorded, and is
/// not read again (after a reflink copy or a snapshot, a large file written in place
/// shares all but what was written); elsewhere the twin's bytes that are in the page
/// cache are compared instead of hashing.
pub struct Twin<'a> {
    pub root: OwnedFd,
    pub recorded: &'a Manifest,
    pub sharing: Sharing,
}

/// What the extents of a tree's files and of its twin's say about their content.
pub enum Sharing {
    /// Nothing: equal block numbers on two filesystems mean nothing, and a filesystem
    /// without reflinks shares no extent.
    Nothing,
    /// One filesystem with reflinks: a shared extent is shared content.
    OneFilesystem,
    /// Two image trees whose images (the tree's, then the twin's) are on one filesystem
    /// with reflinks: see [`extents::same_ranges_through_images`].
    Images(File, File),
}

/// A twin's file: opened, with its recorded entry.
struct TwinFile<'a> {
    file: File,
    recorded: &'a Entry,
    sharing: &'a Sharing,
}

impl<'a> Twin<'a> {
    /// The twin's file at `path`, opened beneath its root, with its recorded entry, if that
    /// entry has chunks (large files only). Whether the file is still that version is
    /// [`hash_file`]'s to check, around its reading of the file.
    fn file(&self, path: &[u8]) -> Option<TwinFile<'_>> {
        let entries = &self.recorded.entries;
        let e = &entries[entries.binary_search_by(|e| path_cmp(&e.path, path)).ok()?];
        if e.kind != Kind::File || e.link_to.is_some() || e.chunks.is_empty() {
            return None;
        }
        let mut walker = fsx::Walker::new(self.root.try_clone().ok()?);
        let (dir, name) = walker.parent(path).ok()?;
        let file = fsx::open_file_at(dir, name).ok()?;
        Some(TwinFile {
            file,
            recorded: e,
            sharing: &self.sharing,
        })
    }
}

/// How many paths of one kind a summary lists; the counts are exact. A tree with a million
/// sockets must not make a summary of tens of megabytes, stored and streamed.
pub const LISTED_PATHS: usize = 100;

/// Paths of one kind a job reports: the first [`LISTED_PATHS`], and how many there were.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Listed {
    pub paths: Vec<String>,
    pub count: u64,
}

impl Listed {
    /// Counts one; formats its path only while the list has room.
    pub fn push(&mut self, path: impl FnOnce() -> String) {
        self.count += 1;
        if self.paths.len() < LISTED_PATHS {
            self.paths.push(path());
        }
    }

    /// Adds `other`'s, each entry once: a path both list (a file that changed under the
    /// scan and again as it was sent) is one entry, counted once. (Beyond the listed
    /// paths, an entry in both is counted twice.)
    pub fn extend(&mut self, other: Listed) {
        self.count += other.count;
        for path in other.paths {
            if self.paths.contains(&path) {
                self.count -= 1;
            } else if self.paths.len() < LISTED_PATHS {
                self.paths.push(path);
            }
        }
    }
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
    file: &File,
    size_hint: u64,
    ctl: &Control,
    mut each: impl FnMut(&[u8], Option<&Chunk>) -> io::Result<()>,
) -> Result<([u8; 32], Vec<Chunk>, u64), EngineError> {
    if size_hint < CHUNKED_FILE_MIN {
        let mut h = blake3::Hasher::new();
        // Sized to the file: a zeroed 256 KiB buffer for each of 40,000 small files costs
        // more than reading them.
        let size = usize::try_from(size_hint).unwrap_or(usize::MAX);
        let mut buf = vec![0u8; size.saturating_add(1).clamp(4096, 256 * 1024)];
        let mut total = 0u64;
        loop {
            let n = read_at(file, &mut buf, total)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            each(&buf[..n], None).map_err(EngineError::io("sending a file"))?;
            ctl.sent_bytes(n as u64);
            total += n as u64;
            ctl.check()?;
        }
        // The hash kind follows the size the caller expected, even if the file grew while
        // read: sender and receiver decide it the same way.
        return Ok((*h.finalize().as_bytes(), Vec::new(), total));
    }
    let mut chunks = Vec::new();
    let mut window = vec![0u8; CDC_WINDOW];
    let total = cdc_chunks(file, 0, u64::MAX, &mut window, ctl, |offset, data| {
        let c = Chunk {
            offset,
            len: data.len() as u32,
            hash: *blake3::hash(data).as_bytes(),
        };
        each(data, Some(&c)).map_err(EngineError::io("sending a file"))?;
        ctl.sent_bytes(data.len() as u64);
        chunks.push(c);
        Ok(true)
    })?;
    Ok((chunked_file_hash(&chunks), chunks, total))
}

fn read_at(file: &File, buf: &mut [u8], offset: u64) -> Result<usize, EngineError> {
    loop {
        match file.read_at(buf, offset) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r.map_err(EngineError::io("reading a file")),
        }
    }
}

/// Bytes read ahead for the chunker: many chunks per read, none copied or allocated alone.
const CDC_WINDOW: usize = 1 << 20;

/// Cuts `file` from `start` (up to `end` or its end) into content-defined chunks and hands
/// each to `each` (offset, bytes) until it returns false. Returns the offset reached.
/// `buf` is the read-ahead window (at least `CDC_MAX` bytes; `CDC_WINDOW` reads many
/// chunks at once).
///
/// The cuts are those of chunking the whole file from 0, provided `start` is one of its
/// cuts: a cut depends only on the bytes after its chunk's start, at most `CDC_MAX` of them,
/// so a chunk is only cut once that many bytes (or the end) are in the window.
fn cdc_chunks(
    file: &File,
    start: u64,
    end: u64,
    buf: &mut [u8],
    ctl: &Control,
    mut each: impl FnMut(u64, &[u8]) -> Result<bool, EngineError>,
) -> Result<u64, EngineError> {
    debug_assert!(buf.len() >= CDC_MAX as usize);
    // `buf[..len]` holds the file from offset `pos`.
    let (mut pos, mut len) = (start, 0usize);
    loop {
        let mut at_end = false;
        while len < buf.len() {
            let want = (buf.len() - len)
                .min(usize::try_from(end - (pos + len as u64)).unwrap_or(usize::MAX));
            if want == 0 {
                at_end = true;
                break;
            }
            let n = read_at(file, &mut buf[len..len + want], pos + len as u64)?;
            if n == 0 {
                at_end = true;
                break;
            }
            len += n;
        }
        if len == 0 {
            return Ok(pos);
        }
        let mut used = 0usize;
        for c in fastcdc::v2020::FastCDC::new(&buf[..len], CDC_MIN, CDC_AVG, CDC_MAX) {
            if !at_end && len - c.offset < CDC_MAX as usize {
                break;
            }
            ctl.check()?;
            let go_on = each(pos + c.offset as u64, &buf[c.offset..c.offset + c.length])?;
            used = c.offset + c.length;
            if !go_on {
                return Ok(pos + used as u64);
            }
        }
        buf.copy_within(used..len, 0);
        pos += used as u64;
        len -= used;
    }
}

/// What a large file's earlier version is known by, besides its chunk list: byte ranges
/// known to hold the earlier content (`same`: extents still shared with the twin, never
/// read), and a file that holds it all (`bytes`: the twin's, while it is as recorded).
#[derive(Default)]
struct Known<'a> {
    same: &'a [(u64, u64)],
    bytes: Option<&'a File>,
}

/// What [`hash_with_earlier_chunks`] did not hash: bytes it did not read (within `same`)
/// and bytes it found equal to the earlier content's (`bytes`).
#[derive(Default)]
struct NotHashed {
    unread: u64,
    compared: u64,
}

/// Hashes a large file whose earlier chunk list is known (its quick check failed): a chunk
/// still at its offset with the same bytes is kept after one BLAKE3 pass, without running
/// the chunker over it; the chunker runs only from a chunk that differs, until one of its
/// cuts lands on an earlier chunk's start again. Since a cut depends only on the bytes
/// after its chunk's start (at most `CDC_MAX`, fewer near the end), the result is the
/// same as chunking the whole file.
///
/// A chunk wholly within `known.same` is kept without reading it. Where `known.bytes` has
/// the chunk's bytes in the page cache, they are compared instead of hashing the chunk: a
/// sync after a small change to a large file on a filesystem without shared extents
/// (ext4) otherwise hashes all of it, and reading and comparing costs less (measured on
/// the bench's 100 MiB files: 0.3 ms per MB, reading this file included, against 0.48 for
/// reading and hashing). What is not cached is never read from disk for this; the chunk
/// is hashed.
/// Returns (hash, chunks, bytes covered up to `size`).
fn hash_with_earlier_chunks(
    file: &File,
    size: u64,
    earlier: &Entry,
    known: &Known<'_>,
    not_hashed: &mut NotHashed,
    ctl: &Control,
) -> Result<([u8; 32], Vec<Chunk>, u64), EngineError> {
    let (earlier, earlier_size) = (&earlier.chunks[..], earlier.size);
    let starts_at = |pos: u64| earlier.binary_search_by_key(&pos, |c| c.offset).ok();
    let mut chunks = Vec::new();
    // One window for the whole file: for comparing a chunk, and for the chunker.
    let mut buf = vec![0u8; CDC_WINDOW];
    // The earlier bytes of one chunk, and a window of them known to be all cached or not.
    let mut other = if known.bytes.is_some() {
        vec![0u8; CDC_MAX as usize]
    } else {
        Vec::new()
    };
    let mut window = (0u64, 0u64, false);
    let mut pos = 0u64;
    while pos < size {
        ctl.check()?;
        if let Some(i) = starts_at(pos) {
            let c = &earlier[i];
            let end = pos + u64::from(c.len);
            // The cut saw the same bytes and the same room before the end of the file.
            let room = |file_size: u64| (file_size - pos).min(u64::from(CDC_MAX));
            if end <= size && end <= earlier_size && room(size) == room(earlier_size) {
                if extents::covers(known.same, pos, end) {
                    not_hashed.unread += u64::from(c.len);
                    chunks.push(c.clone());
                    pos = end;
                    continue;
                }
                let len = c.len as usize;
                let n = read_at(file, &mut buf[..len], pos)?;
                let cached = known.bytes.and_then(|f| {
                    if !(window.0 <= pos && end <= window.1) {
                        let until = (pos + CDC_WINDOW as u64).clamp(end, earlier_size);
                        window = (pos, until, fsx::is_cached(f, pos, until - pos));
                    }
                    window
                        .2
                        .then(|| fsx::read_cached_at(f, &mut other[..len], pos))
                        .flatten()
                });
                let same = match cached {
                    Some(m) => n == len && m == len && buf[..len] == other[..len],
                    None => n == len && blake3::hash(&buf[..n]).as_bytes() == &c.hash,
                };
                if same {
                    if cached.is_some() {
                        not_hashed.compared += u64::from(c.len);
                    }
                    chunks.push(c.clone());
                    pos = end;
                    continue;
                }
            }
        }
        let reached = cdc_chunks(file, pos, size, &mut buf, ctl, |offset, data| {
            chunks.push(Chunk {
                offset,
                len: data.len() as u32,
                hash: *blake3::hash(data).as_bytes(),
            });
            // Back to comparing once a cut meets an earlier chunk's start.
            Ok(starts_at(offset + data.len() as u64).is_none())
        })?;
        if reached == pos {
            break; // the file ended early (it shrank): the caller sees the short length
        }
        pos = reached;
    }
    Ok((chunked_file_hash(&chunks), chunks, pos))
}

/// Scans the tree at `root`. With `hash_content` false, files the cache cannot vouch for
/// keep a zero hash (a copy hashes them while sending instead of reading them twice).
pub fn scan(
    root: &Path,
    cache: Option<&Manifest>,
    hash_content: bool,
    ctl: &Control,
) -> Result<(Manifest, ScanReport), EngineError> {
    scan_beside(root, cache, hash_content, None, ctl)
}

/// [`scan`], with the tree's twin (see [`Twin`]) if it has one.
pub fn scan_beside(
    root: &Path,
    cache: Option<&Manifest>,
    hash_content: bool,
    twin: Option<Twin<'_>>,
    ctl: &Control,
) -> Result<(Manifest, ScanReport), EngineError> {
    let (manifest, report, _) = scan_with(root, cache, hash_content, twin, None, ctl)?;
    Ok((manifest, report))
}

/// [`scan_beside`], reading again only what changed since `cache` was scanned. `changed`
/// names (paths relative to `root`) every entry that changed since, and the directory it
/// is in: those directories are listed again, as are those whose own metadata changed
/// (each directory is looked at: a change to its entries moves its times). In a listed
/// directory, an entry `changed` does not name that is still the same inode (as listed)
/// is taken from `cache`, as is everything in the directories not listed. `cache` must
/// describe the tree as it was then, whole. `None` where the result could differ from a
/// full scan's (a file hard-linked in a way `cache` does not record): then the tree must
/// be scanned whole.
pub fn scan_changed(
    root: &Path,
    cache: &Manifest,
    changed: &[Vec<u8>],
    twin: Option<Twin<'_>>,
    ctl: &Control,
) -> Result<Option<(Manifest, ScanReport)>, EngineError> {
    let mut dirty: FastSet<Vec<u8>> = changed.iter().cloned().collect();
    // Hard-linked files are read again wherever one of their names is: a write through
    // one name is an event in that name's directory only.
    let mut linked = FastSet::default();
    for e in &cache.entries {
        if let Some(first) = &e.link_to {
            for name in [&e.path, first] {
                dirty.insert(parent_of(name).to_vec());
                dirty.insert(name.clone());
            }
            linked.insert(e.ino);
        }
    }
    // The directories on the way to a change: the walk goes down those, and takes every
    // other directory from the cache whole, unopened.
    let mut ancestors = FastSet::default();
    for path in &dirty {
        for (i, c) in path.iter().enumerate() {
            if *c == b'/' {
                ancestors.insert(path[..i].to_vec());
            }
        }
    }
    let partial = Partial {
        dirty,
        ancestors,
        linked,
        unsure: false,
    };
    let (manifest, mut report, partial) =
        scan_with(root, Some(cache), true, twin, Some(partial), ctl)?;
    report.partial = true;
    Ok((!partial.is_some_and(|p| p.unsure)).then_some((manifest, report)))
}

/// The directory `path` (relative, `/`-separated) is in: `""` for the root.
fn parent_of(path: &[u8]) -> &[u8] {
    path.iter()
        .rposition(|c| *c == b'/')
        .map_or(&[][..], |i| &path[..i])
}

fn scan_with<'a>(
    root: &Path,
    cache: Option<&'a Manifest>,
    hash_content: bool,
    twin: Option<Twin<'a>>,
    partial: Option<Partial>,
    ctl: &'a Control,
) -> Result<(Manifest, ScanReport, Option<Partial>), EngineError> {
    let root_fd = fsx::open_dir(root).map_err(EngineError::io_path("opening", root))?;
    let cached = cache.map_or(&[][..], |m| m.entries.as_slice());
    let mut s = Scanner {
        cache: CacheCursor {
            entries: cached,
            next: 0,
        },
        hash_content,
        twin,
        ctl,
        // Room for the tree as it was: no regrowing (copying) a large list entry by entry.
        entries: Vec::with_capacity(cached.len() + 64),
        links: HashMap::new(),
        link_fixups: Vec::new(),
        deferred: Vec::new(),
        lost: Vec::new(),
        report: ScanReport::default(),
        partial,
    };
    s.walk(root_fd)?;
    let partial = s.partial.take();
    if partial.as_ref().is_some_and(|p| p.unsure) {
        return Ok((Manifest::default(), ScanReport::default(), partial));
    }
    let (manifest, report) = s.finish()?;
    Ok((manifest, report, partial))
}

/// What a scan that reads only what changed ([`scan_changed`]) needs.
struct Partial {
    /// Directories listed again, and entries looked at again.
    dirty: FastSet<Vec<u8>>,
    /// Every directory a path of `dirty` is in, however deep.
    ancestors: FastSet<Vec<u8>>,
    /// The inodes of the files the cache records as hard-linked (every name of those is
    /// looked at again, or is in a directory where something changed).
    linked: FastSet<u64>,
    /// Set when a file looked at again is hard-linked and the cache does not say so: its
    /// other names may be in directories taken from the cache.
    unsure: bool,
}

/// What a directory taken from the cache holds next.
enum Cached {
    /// An entry other than a directory taken as it is, or a directory nothing in changed
    /// taken with all it holds.
    Taken,
    /// An entry (its name) to look at: a directory on the way to a change (and maybe
    /// descended into), or an entry the change list names.
    Look(Vec<u8>),
    /// Nothing more.
    End,
}

/// The cached manifest, looked up in walk order: the walk visits paths in the order a
/// manifest is sorted in ([`path_cmp`]), so a cursor that only moves forward finds every
/// entry, with no index to build. (An unsorted cache would only cost cache misses.)
struct CacheCursor<'a> {
    entries: &'a [Entry],
    next: usize,
}

impl<'a> CacheCursor<'a> {
    /// The entry at `path`, left for [`CacheCursor::get`] to take.
    fn peek(&mut self, path: &[u8]) -> Option<&'a Entry> {
        while let Some(e) = self.entries.get(self.next) {
            match path_cmp(&e.path, path) {
                Ordering::Less => self.next += 1,
                Ordering::Equal => return Some(e),
                Ordering::Greater => return None,
            }
        }
        None
    }

    fn get(&mut self, path: &[u8]) -> Option<&'a Entry> {
        let e = self.peek(path)?;
        self.next += 1;
        Some(e)
    }
}

struct Scanner<'a> {
    cache: CacheCursor<'a>,
    hash_content: bool,
    twin: Option<Twin<'a>>,
    ctl: &'a Control,
    entries: Vec<Entry>,
    /// (dev, inode) of multiply-linked files -> index of their first entry.
    links: HashMap<(u64, u64), usize>,
    /// (hard link, its first file): the link takes the first file's hash at the end.
    link_fixups: Vec<(usize, usize)>,
    /// Large files still to hash.
    deferred: Vec<Deferred<'a>>,
    /// Entries to leave out: files that could not be read in a stable state.
    lost: Vec<usize>,
    report: ScanReport,
    /// Set for a scan of what changed only.
    partial: Option<Partial>,
}

/// A directory the walk is in: open, with the names it has yet to visit and their inode
/// numbers as listed (`None`: those of its cached entries, in the cache's order).
struct Level {
    fd: OwnedFd,
    prefix: Vec<u8>,
    names: Option<std::vec::IntoIter<(Vec<u8>, u64)>>,
}

/// How many directories deep a tree may be. Deeper trees are refused with a clear error:
/// a walk keeps one descriptor open per level, and paths that long (beyond PATH_MAX for any
/// realistic names) are out of reach of the tools a container runs anyway.
pub const MAX_DEPTH: usize = 1024;

/// An entry the scan cannot read (permission, no descriptors left, an I/O error): the scan
/// fails rather than leave it out of a state that would then look complete.
fn unreadable(what: &str, path: &[u8], err: io::Error) -> EngineError {
    EngineError::Io {
        context: format!("{what} {}", shortened(&String::from_utf8_lossy(path))),
        source: err,
    }
}

/// A path for an error message: its start and end when it is very long.
fn shortened(path: &str) -> String {
    const KEEP: usize = 120;
    let chars: Vec<char> = path.chars().collect();
    if chars.len() <= 2 * KEEP {
        return path.to_string();
    }
    let head: String = chars[..KEEP].iter().collect();
    let tail: String = chars[chars.len() - KEEP..].iter().collect();
    format!("{head}…{tail} ({} characters)", chars.len())
}

impl Scanner<'_> {
    /// Visits the tree depth first in manifest order, with a stack of open directories
    /// instead of recursion: a tree of any depth cannot overflow the thread's stack, and
    /// one deeper than [`MAX_DEPTH`] fails the scan with an error that says so.
    fn walk(&mut self, root: OwnedFd) -> Result<(), EngineError> {
        let names = match &self.partial {
            Some(p) if !p.dirty.contains(&b""[..]) => None,
            _ => {
                self.report.listed_dirs += 1;
                let names = fsx::list_dir_inodes(root.as_fd())
                    .map_err(EngineError::io("listing a directory"))?;
                Some(names.into_iter())
            }
        };
        let mut stack = vec![Level {
            fd: root,
            prefix: Vec::new(),
            names,
        }];
        while let Some(level) = stack.last_mut() {
            self.ctl.check()?;
            if self.partial.as_ref().is_some_and(|p| p.unsure) {
                // Its result is thrown away: the tree is scanned whole instead.
                return Ok(());
            }
            let at = self.cache.next;
            let (next, cached) = match &mut level.names {
                Some(names) => (names.next().map(|(name, ino)| (name, Some(ino))), false),
                None => match self.next_cached(&level.prefix) {
                    Cached::Taken => continue,
                    Cached::Look(name) => (Some((name, None)), true),
                    Cached::End => (None, false),
                },
            };
            let Some((name, listed_ino)) = next else {
                stack.pop();
                continue;
            };
            let mut path = level.prefix.clone();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&name);
            if listed_ino.is_some_and(|ino| self.take_unchanged(&path, ino)) {
                continue;
            }
            let depth = stack.len();
            let dir = stack.last().expect("a level").fd.as_fd();
            let sub = self.entry(dir, &name, path, depth)?;
            if cached && self.cache.next == at {
                // Gone since its parent was looked at: past its cached entry all the same.
                self.cache.next += 1;
            }
            if let Some(sub) = sub {
                stack.push(sub);
            }
        }
        Ok(())
    }

    /// In a scan of what changed only, takes the cached entry at `path` of a directory
    /// listed again, if the change list does not name it and it is still the same inode
    /// (`ino`, as listed): nothing changed it, or the change list would name it. A
    /// directory is taken with what it holds where no change is in it
    /// ([`Scanner::take_unchanged_dir`]); a hard-linked file never.
    fn take_unchanged(&mut self, path: &[u8], ino: u64) -> bool {
        let Some(p) = &self.partial else {
            return false;
        };
        if p.dirty.contains(path) {
            return false;
        }
        match self.cache.peek(path) {
            Some(c) if c.ino == ino && c.kind == Kind::Dir => self.take_unchanged_dir(path),
            Some(c)
                if c.ino == ino
                    && c.kind != Kind::Dir
                    && c.link_to.is_none()
                    && !p.linked.contains(&c.ino) =>
            {
                self.cache.next += 1;
                self.entries.push(c.clone());
                true
            }
            _ => false,
        }
    }

    /// In a scan of what changed only, takes the directory at `path`, the cache's next
    /// entry, and everything in it from the cache, if no change is in it: the change list
    /// names every entry added, removed, renamed, written or whose metadata changed (its
    /// directories' included), so nothing in it needs a look.
    fn take_unchanged_dir(&mut self, path: &[u8]) -> bool {
        let Some(p) = &self.partial else {
            return false;
        };
        if p.dirty.contains(path) || p.ancestors.contains(path) {
            return false;
        }
        let first = self.cache.next;
        let entries = self.cache.entries;
        if entries.get(first).is_none_or(|e| e.path != path) {
            return false;
        }
        // (In walk order, what a directory holds follows it, together.)
        let end = first
            + 1
            + entries[first + 1..]
                .iter()
                .take_while(|e| {
                    e.path
                        .strip_prefix(path)
                        .is_some_and(|r| r.first() == Some(&b'/'))
                })
                .count();
        self.entries.extend_from_slice(&entries[first..end]);
        self.cache.next = end;
        true
    }

    /// In a directory taken from the cache (at `prefix`), its next cached entry: one other
    /// than a directory is taken as it is, unless the change list names it.
    fn next_cached(&mut self, prefix: &[u8]) -> Cached {
        loop {
            let Some(e) = self.cache.entries.get(self.cache.next) else {
                return Cached::End;
            };
            let rest = match prefix {
                [] => Some(&e.path[..]),
                _ => e
                    .path
                    .strip_prefix(prefix)
                    .and_then(|r| r.strip_prefix(b"/")),
            };
            // (The cache is in walk order: a directory's entries follow it, together.)
            let Some(rest) = rest else {
                return Cached::End;
            };
            if rest.contains(&b'/') {
                // Left over from a subdirectory walked already (gone from it since).
                self.cache.next += 1;
                continue;
            }
            if e.kind == Kind::Dir {
                if self.take_unchanged_dir(&e.path) {
                    return Cached::Taken;
                }
                // Looked up again by `entry`, like any directory on the way to a change.
                return Cached::Look(rest.to_vec());
            }
            if self
                .partial
                .as_ref()
                .is_some_and(|p| p.dirty.contains(&e.path))
            {
                // Written, or its metadata changed: looked at again.
                return Cached::Look(rest.to_vec());
            }
            self.cache.next += 1;
            if e.link_to.is_some() {
                // (Never here: the directories of hard links are all read again.)
                if let Some(p) = &mut self.partial {
                    p.unsure = true;
                }
            }
            self.entries.push(e.clone());
            return Cached::Taken;
        }
    }

    /// Records the entry `name` of `dir` (at `path`, `depth` directories below the root);
    /// for a directory, returns it opened and listed, for the walk to descend into.
    fn entry(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        path: Vec<u8>,
        depth: usize,
    ) -> Result<Option<Level>, EngineError> {
        self.report.looked_at += 1;
        let st = match fsx::stat_at(dir, name) {
            Ok(st) => st,
            // Vanished since the listing: it is simply not part of this state.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(unreadable("reading the metadata of", &path, e)),
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
                if depth >= MAX_DEPTH {
                    return Err(EngineError::Refused(format!(
                        "the tree is more than {MAX_DEPTH} directories deep (at {}); doppel \
                         copies trees up to {MAX_DEPTH} levels",
                        shortened(&e.display_path())
                    )));
                }
                let sub = match fsx::open_dir_at(dir, name) {
                    Ok(fd) => fd,
                    // Deleted or replaced by something else since the stat: the tree changed
                    // under the scan; it is reported, and not part of this state.
                    Err(err) if fsx::is_gone(&err) => {
                        self.report.unstable.push(|| e.display_path());
                        return Ok(None);
                    }
                    Err(err) => return Err(unreadable("opening the directory", &e.path, err)),
                };
                let cached = self.cache.get(&e.path);
                if let (Some(p), Some(c)) = (&self.partial, cached) {
                    // Nothing changed in it, and its entries are the same (a change to
                    // them moves its times): taken from the cache. (Its xattrs too: a
                    // change to them moves its ctime.)
                    if c.kind == Kind::Dir
                        && (c.ino, c.mtime_ns, c.ctime_ns) == (e.ino, e.mtime_ns, e.ctime_ns)
                        && !p.dirty.contains(&e.path)
                    {
                        e.xattrs = c.xattrs.clone();
                        let prefix = e.path.clone();
                        self.entries.push(e);
                        return Ok(Some(Level {
                            fd: sub,
                            prefix,
                            names: None,
                        }));
                    }
                }
                e.xattrs = fsx::read_xattrs(sub.as_fd())
                    .map_err(|err| unreadable("reading the xattrs of", &e.path, err))?;
                self.report.listed_dirs += 1;
                let names = fsx::list_dir_inodes(sub.as_fd())
                    .map_err(|err| unreadable("listing the directory", &e.path, err))?;
                let prefix = e.path.clone();
                self.entries.push(e);
                return Ok(Some(Level {
                    fd: sub,
                    prefix,
                    names: Some(names.into_iter()),
                }));
            }
            Kind::Symlink => {
                // A link's target never changes in place (a new one is a new inode), and
                // setting an xattr moves ctime: an unchanged link keeps its cached target
                // and xattrs. (Not reading it again also leaves its access time alone.)
                match self.cache.get(&e.path) {
                    Some(c)
                        if c.kind == Kind::Symlink
                            && c.ctime_ns == e.ctime_ns
                            && c.ino == e.ino
                            && c.size == st.st_size as u64 =>
                    {
                        e.target = c.target.clone();
                        e.xattrs = c.xattrs.clone();
                    }
                    _ => {
                        e.target = read_link(dir, name)?;
                        e.xattrs = match fsx::read_link_xattrs(dir, name) {
                            Ok(x) => x,
                            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
                            Err(err) => return Err(EngineError::io("reading xattrs")(err)),
                        };
                    }
                }
                e.size = e.target.len() as u64;
                self.entries.push(e);
            }
            Kind::File => {
                e.size = st.st_size as u64;
                if st.st_nlink > 1 {
                    if let Some(p) = &mut self.partial {
                        p.unsure |= !p.linked.contains(&e.ino);
                    }
                    let key = (st.st_dev as u64, st.st_ino);
                    if let Some(&first) = self.links.get(&key) {
                        e.link_to = Some(self.entries[first].path.clone());
                        self.link_fixups.push((self.entries.len(), first));
                        self.entries.push(e);
                        return Ok(None);
                    }
                    self.links.insert(key, self.entries.len());
                }
                self.file(dir, name, e)?;
            }
            Kind::Fifo => self.entries.push(e),
            Kind::Special => {
                e.rdev = st.st_rdev;
                self.report.specials.push(|| e.display_path());
                self.entries.push(e);
            }
        }
        Ok(None)
    }

    fn file(&mut self, dir: BorrowedFd<'_>, name: &[u8], mut e: Entry) -> Result<(), EngineError> {
        let cached = self.cache.get(&e.path);
        if let Some(c) = cached {
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
        // Files are hashed in batches on every core once the walk has moved on: a sync
        // that touched a few big files is bound by hashing them, a first scan by hashing
        // all of them.
        let dir = dir
            .try_clone_to_owned()
            .map_err(EngineError::io("duplicating a directory handle"))?;
        self.deferred.push(Deferred {
            index: self.entries.len(),
            dir,
            name: name.to_vec(),
            // Its earlier chunks, if it had any: most of them are usually still there.
            earlier: cached.filter(|c| c.kind == Kind::File && !c.chunks.is_empty()),
        });
        // Pushed even if it turns out lost, so that indices (hard links) stay aligned until
        // `finish`.
        self.entries.push(e);
        if self.deferred.len() >= DEFERRED_BATCH {
            self.hash_deferred()?;
        }
        Ok(())
    }

    /// Hashes the deferred files, spread over the available cores.
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
        let twin = self.twin.as_ref();
        let ctl = self.ctl;
        let work = || {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(d) = batch.get(i) else {
                    return Ok(done);
                };
                let mut e = entries[d.index].clone();
                // (Only a large file is read by chunks, some of which the twin may share.)
                let twin = twin
                    .filter(|_| e.size >= CHUNKED_FILE_MIN)
                    .and_then(|t| t.file(&e.path));
                let read = hash_file(d.dir.as_fd(), &d.name, &mut e, d.earlier, twin, ctl)?;
                done.push((d.index, e, read));
            }
        };
        // The walk's own thread takes its share too.
        let results: Vec<Result<Vec<Hashed>, EngineError>> = std::thread::scope(|s| {
            let workers: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
            let mut results = vec![work()];
            results.extend(workers.into_iter().map(|w| {
                w.join().unwrap_or_else(|_| {
                    Err(EngineError::Integrity("a hashing thread panicked".into()))
                })
            }));
            results
        });
        for r in results {
            for (index, e, read) in r? {
                if let Some(not) = read {
                    self.report.hashed_files += 1;
                    self.report.hashed_bytes += e.size.saturating_sub(not.unread + not.compared);
                    self.report.shared_bytes += not.unread;
                    self.report.compared_bytes += not.compared;
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
            self.report.unstable.push(|| self.entries[i].display_path());
        }
        for &(link, first) in &self.link_fixups {
            if lost[first] {
                lost[link] = true;
                self.report
                    .unstable
                    .push(|| self.entries[link].display_path());
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

/// Files waiting to be hashed in parallel: each keeps its directory open (so it is opened
/// beneath the root like any other), and a scan's descriptors stay few.
const DEFERRED_BATCH: usize = 32;

/// A deferred file after hashing: (its index, its entry, what [`hash_file`] said).
type Hashed = (usize, Entry, Option<NotHashed>);

struct Deferred<'a> {
    index: usize,
    dir: OwnedFd,
    name: Vec<u8>,
    earlier: Option<&'a Entry>,
}

/// Reads and hashes one file into `e`, retrying while it changes under the read. `None`
/// when it vanished, was replaced by a non-file, or kept changing after three reads: such a
/// file is left out of the state (and listed as unstable in the summary) rather than
/// recorded with a hash that matches no moment of it. A file that cannot be opened is an
/// error. Else the bytes it did not need to hash: ranges shared with its `twin` (the twin
/// tree's file at its path, and that file's recorded entry), or equal to its bytes.
fn hash_file(
    dir: BorrowedFd<'_>,
    name: &[u8],
    e: &mut Entry,
    earlier: Option<&Entry>,
    twin: Option<TwinFile<'_>>,
    ctl: &Control,
) -> Result<Option<NotHashed>, EngineError> {
    for _attempt in 0..3 {
        let file = match fsx::open_file_at(dir, name) {
            Ok(f) => f,
            Err(err) if fsx::is_gone(&err) => break,
            Err(err) => return Err(unreadable("opening the file", &e.path, err)),
        };
        let before =
            rfs::fstat(&file).map_err(|x| EngineError::io("reading metadata")(x.into()))?;
        e.xattrs = fsx::read_xattrs(file.as_fd()).map_err(EngineError::io("reading xattrs"))?;
        let size = before.st_size as u64;
        // The twin's file holds its recorded content while its version is the recorded
        // one: where it still shares this one's extents, that content is this one's too,
        // and elsewhere its bytes can be compared. Its version is checked before and after
        // both, so a write to it in between cannot pass for the recorded content.
        let recorded = |t: &TwinFile<'_>| {
            rfs::fstat(&t.file).is_ok_and(|st| fsx::same_version(&st, t.recorded))
        };
        let twin = twin
            .as_ref()
            .filter(|t| size >= CHUNKED_FILE_MIN && recorded(t));
        let mut not_hashed = NotHashed::default();
        let res = match (twin, earlier) {
            (Some(t), _) => {
                let same = match t.sharing {
                    Sharing::Nothing => Vec::new(),
                    Sharing::OneFilesystem => extents::same_ranges(&file, &t.file),
                    Sharing::Images(image, twin_image) => {
                        extents::same_ranges_through_images(&file, image, &t.file, twin_image)
                    }
                };
                let known = Known {
                    same: &same,
                    bytes: Some(&t.file),
                };
                let res =
                    hash_with_earlier_chunks(&file, size, t.recorded, &known, &mut not_hashed, ctl);
                if recorded(t) {
                    res
                } else {
                    not_hashed = NotHashed::default();
                    let known = Known::default();
                    hash_with_earlier_chunks(&file, size, t.recorded, &known, &mut not_hashed, ctl)
                }
            }
            (None, Some(old)) if size >= CHUNKED_FILE_MIN => {
                let known = Known::default();
                hash_with_earlier_chunks(&file, size, old, &known, &mut not_hashed, ctl)
            }
            _ => hash_reader(&file, size, ctl, |_, _| Ok(())),
        };
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
                return Ok(Some(not_hashed));
            }
            Ok(_) => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(None)
}

fn read_link(dir: BorrowedFd<'_>, name: &[u8]) -> Result<Vec<u8>, EngineError> {
    use std::os::unix::ffi::OsStrExt;
    rfs::readlinkat(dir, std::ffi::OsStr::from_bytes(name), Vec::new())
        .map(|c| c.into_bytes())
        .map_err(|e| EngineError::io("reading a symlink")(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn file_with(dir: &tempfile::TempDir, name: &str, data: &[u8]) -> File {
        let path = dir.path().join(name);
        std::fs::write(&path, data).unwrap();
        File::open(path).unwrap()
    }

    /// The reference: the crate's stream chunker over the whole file.
    fn stream_chunks(data: &[u8]) -> Vec<(u64, usize)> {
        fastcdc::v2020::StreamCDC::new(data, CDC_MIN, CDC_AVG, CDC_MAX)
            .map(|c| {
                let c = c.unwrap();
                (c.offset, c.length)
            })
            .collect()
    }

    #[test]
    fn windowed_chunking_cuts_where_the_stream_chunker_does() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng(7);
        // Sizes around the window and the chunk limits, and a run of zeros (max-size cuts).
        for (i, len) in [
            0,
            100,
            5000,
            70_000,
            CDC_WINDOW - 1,
            CDC_WINDOW + 1,
            3 * CDC_WINDOW + 12_345,
        ]
        .into_iter()
        .enumerate()
        {
            let mut data = vec![0u8; len];
            rng.fill(&mut data);
            if len > 400_000 {
                data[200_000..400_000].fill(0);
            }
            let f = file_with(&dir, &format!("f{i}"), &data);
            let mut got = Vec::new();
            let reached = cdc_chunks(
                &f,
                0,
                u64::MAX,
                &mut vec![0u8; CDC_WINDOW],
                &Control::new(),
                |o, d| {
                    got.push((o, d.len()));
                    Ok(true)
                },
            )
            .unwrap();
            assert_eq!(reached, len as u64);
            assert_eq!(got, stream_chunks(&data), "length {len}");
        }
    }

    #[test]
    fn rehashing_with_earlier_chunks_equals_hashing_from_scratch() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng(11);
        let mut base = vec![0u8; 3 * CDC_WINDOW + 777];
        rng.fill(&mut base);
        let ctl = Control::new();
        let old = file_with(&dir, "old", &base);
        let (_, earlier, old_size) =
            hash_reader(&old, base.len() as u64, &ctl, |_, _| Ok(())).unwrap();
        assert!(earlier.len() > 100);

        let mut patch = vec![0u8; 100_000];
        rng.fill(&mut patch);
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut v = base.clone();
        v[1_000_000..1_100_000].copy_from_slice(&patch);
        cases.push(("overwritten in the middle", v));
        let mut v = base.clone();
        v.splice(500_000..500_000, patch[..3000].iter().copied());
        cases.push(("bytes inserted", v));
        let mut v = base.clone();
        v.drain(2_000_000..2_000_100);
        cases.push(("bytes removed", v));
        let mut v = base.clone();
        v.extend_from_slice(&patch);
        cases.push(("appended", v));
        cases.push(("truncated", base[..2_500_000].to_vec()));
        cases.push((
            "just over the size that is chunked",
            base[..CHUNKED_FILE_MIN as usize + 10].to_vec(),
        ));
        cases.push(("unchanged", base.clone()));
        let mut v = base.clone();
        v[0] ^= 1;
        let last = v.len() - 1;
        v[last] ^= 1;
        cases.push(("first and last byte flipped", v));

        let mut earlier_entry = Entry::new(b"old".to_vec(), Kind::File);
        (earlier_entry.chunks, earlier_entry.size) = (earlier, old_size);
        for (what, data) in cases {
            let f = file_with(&dir, "new", &data);
            let fresh = hash_reader(&f, data.len() as u64, &ctl, |_, _| Ok(())).unwrap();
            let len = data.len() as u64;
            let mut not = NotHashed::default();
            let nothing = Known::default();
            let reused =
                hash_with_earlier_chunks(&f, len, &earlier_entry, &nothing, &mut not, &ctl)
                    .unwrap();
            assert_eq!(reused.2, data.len() as u64, "{what}");
            assert_eq!(reused.1, fresh.1, "{what}: chunks");
            assert_eq!(reused.0, fresh.0, "{what}: hash");
            assert_eq!((not.unread, not.compared), (0, 0), "{what}");
            // Given a file with the earlier bytes, in the page cache (just written): the same
            // result, and the chunks still equal to it are compared, not hashed.
            let mut not = NotHashed::default();
            let bytes = Known {
                same: &[],
                bytes: Some(&old),
            };
            let compared =
                hash_with_earlier_chunks(&f, len, &earlier_entry, &bytes, &mut not, &ctl).unwrap();
            assert_eq!(compared, reused, "{what}: with the earlier bytes");
            assert_eq!(not.unread, 0, "{what}");
            if what == "overwritten in the middle" || what == "unchanged" {
                assert!(
                    not.compared > len / 2,
                    "{what}: {} of {len} bytes compared",
                    not.compared
                );
            }
            // Told which 4 KiB blocks still hold the earlier bytes (as shared extents would
            // say): the same result, and those blocks are not read.
            let same: Vec<(u64, u64)> = (0..data.len().min(base.len()) / 4096)
                .filter(|b| data[b * 4096..][..4096] == base[b * 4096..][..4096])
                .map(|b| (b as u64 * 4096, b as u64 * 4096 + 4096))
                .fold(Vec::new(), |mut out, (s, e)| {
                    match out.last_mut() {
                        Some(last) if last.1 == s => last.1 = e,
                        _ => out.push((s, e)),
                    }
                    out
                });
            let mut not = NotHashed::default();
            let known = Known {
                same: &same,
                bytes: None,
            };
            let known =
                hash_with_earlier_chunks(&f, len, &earlier_entry, &known, &mut not, &ctl).unwrap();
            assert_eq!(known, reused, "{what}: with shared ranges");
            if what == "overwritten in the middle" || what == "unchanged" {
                assert!(
                    not.unread > len / 2,
                    "{what}: {} of {len} bytes not read",
                    not.unread
                );
            }
        }
        // The earlier bytes out of the page cache: they are not read from the disk, the
        // chunks are hashed (and the result is the same).
        old.sync_all().unwrap();
        rfs::fadvise(&old, 0, None, rfs::Advice::DontNeed).unwrap();
        let f = file_with(&dir, "again", &base);
        let mut not = NotHashed::default();
        let bytes = Known {
            same: &[],
            bytes: Some(&old),
        };
        let (hash, chunks, _) = hash_with_earlier_chunks(
            &f,
            base.len() as u64,
            &earlier_entry,
            &bytes,
            &mut not,
            &ctl,
        )
        .unwrap();
        assert_eq!(chunks, earlier_entry.chunks);
        assert_eq!(hash, chunked_file_hash(&earlier_entry.chunks));
        assert_eq!(not.compared, 0, "compared with bytes not cached");
    }

    #[test]
    fn a_path_listed_by_both_is_one_entry() {
        let listed = |paths: &[&str]| {
            let mut l = Listed::default();
            for p in paths {
                l.push(|| p.to_string());
            }
            l
        };
        let mut scanned = listed(&["data/blob", "data/counter"]);
        scanned.extend(listed(&["data/blob", "logs/app"]));
        assert_eq!(scanned.paths, ["data/blob", "data/counter", "logs/app"]);
        assert_eq!(scanned.count, 3);
    }
}
