//! Manifests: the state of a container tree as a sorted list of entries, its binary
//! encodings (the wire's, and a more compact one for storing), its root hash, and the diff
//! of two manifests.

use std::cmp::Ordering;
use std::io;

/// What kind of filesystem object an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    /// Character or block devices and sockets: recorded and reported, never copied.
    Special,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Dir => 1,
            Kind::File => 2,
            Kind::Symlink => 3,
            Kind::Fifo => 4,
            Kind::Special => 5,
        }
    }
    fn from_code(c: u8) -> io::Result<Kind> {
        Ok(match c {
            1 => Kind::Dir,
            2 => Kind::File,
            3 => Kind::Symlink,
            4 => Kind::Fifo,
            5 => Kind::Special,
            _ => return Err(bad("unknown entry kind")),
        })
    }
}

/// A content-defined chunk of a large file (for deltas).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub offset: u64,
    pub len: u32,
    pub hash: [u8; 32],
}

/// One filesystem object. `path` is relative to the root, components joined by `/`, raw
/// bytes (names may be any bytes but `/` and NUL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: Vec<u8>,
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky (no file type bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Content length for files; 0 otherwise.
    pub size: u64,
    pub mtime_ns: i64,
    /// Symlink target.
    pub target: Vec<u8>,
    /// BLAKE3 of a file's content.
    pub hash: [u8; 32],
    /// For the second and later names of a hard-linked file: the first name.
    pub link_to: Option<Vec<u8>>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub rdev: u64,
    // Quick-check data, not part of the entry's identity: an unchanged (size, mtime, ctime,
    // inode) means the content need not be read again.
    pub ino: u64,
    pub ctime_ns: i64,
    /// Content-defined chunks of large files, for deltas.
    pub chunks: Vec<Chunk>,
}

impl Entry {
    pub fn new(path: Vec<u8>, kind: Kind) -> Entry {
        Entry {
            path,
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            mtime_ns: 0,
            target: Vec::new(),
            hash: [0; 32],
            link_to: None,
            xattrs: Vec::new(),
            rdev: 0,
            ino: 0,
            ctime_ns: 0,
            chunks: Vec::new(),
        }
    }

    /// Same content (what would have to be transferred), ignoring metadata.
    pub fn same_content(&self, other: &Entry) -> bool {
        self.kind == other.kind
            && self.link_to == other.link_to
            && match self.kind {
                Kind::File => self.size == other.size && self.hash == other.hash,
                Kind::Symlink => self.target == other.target,
                Kind::Special | Kind::Fifo => self.rdev == other.rdev,
                Kind::Dir => true,
            }
    }

    /// Same metadata (mode, owner, mtime, xattrs). A directory's mtime moves whenever an
    /// entry in it changes, so it is not part of what makes two directories differ.
    pub fn same_metadata(&self, other: &Entry) -> bool {
        self.mode == other.mode
            && self.uid == other.uid
            && self.gid == other.gid
            && (self.kind == Kind::Dir || self.mtime_ns == other.mtime_ns)
            && self.xattrs == other.xattrs
    }

    /// Content whose bytes have to be produced on the target (regular, not a hard link).
    pub fn has_data(&self) -> bool {
        self.kind == Kind::File && self.link_to.is_none()
    }

    pub fn display_path(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

/// Orders paths component by component, so that a directory's descendants follow it
/// directly (`a`, `a/b`, `a-b`): the order a depth-first walk produces.
///
/// That is byte order with `/` below every other byte (names hold no NUL): at the first
/// byte where two paths differ, a `/` ends the one component first. One pass, no
/// splitting (walks, diffs and sorts compare every path of a tree).
pub fn path_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let common = a.iter().zip(b).position(|(x, y)| x != y);
    match common {
        Some(i) => {
            let rank = |c: u8| if c == b'/' { 0 } else { u16::from(c) + 1 };
            rank(a[i]).cmp(&rank(b[i]))
        }
        None => a.len().cmp(&b.len()),
    }
}

/// `true` if `path` is a valid relative path: non-empty components, none `.` or `..`, no NUL.
pub fn valid_path(path: &[u8]) -> bool {
    !path.is_empty()
        && !path.contains(&0)
        && path
            .split(|&c| c == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b"..")
}

/// Which file a stored manifest is (its inode, modification time and length): each store
/// writes a new file and renames it over the old one, so a file stored later is another.
/// What pairs a stored manifest with facts about it kept elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredAs {
    ino: u64,
    mtime_ns: i64,
    len: u64,
}

impl StoredAs {
    fn of(m: &std::fs::Metadata) -> StoredAs {
        use std::os::unix::fs::MetadataExt;
        StoredAs {
            ino: m.ino(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            len: m.len(),
        }
    }
}

/// A tree's state: entries sorted by [`path_cmp`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    pub entries: Vec<Entry>,
}

impl Manifest {
    /// The BLAKE3 over every entry's identity (content and metadata, not quick-check data):
    /// two trees with the same root hash are the same.
    pub fn root_hash(&self) -> [u8; 32] {
        // Each entry as (length, identity), hashed a megabyte at a time: BLAKE3 takes a
        // long input many chunks at once (SIMD), small updates one block at a time. The
        // bytes, and so the hash, are the same either way.
        let mut h = blake3::Hasher::new();
        let mut enc = Enc::default();
        for e in &self.entries {
            let at = enc.buf.len();
            enc.buf.extend_from_slice(&[0; 8]);
            enc.identity(e);
            let len = (enc.buf.len() - at - 8) as u64;
            enc.buf[at..at + 8].copy_from_slice(&len.to_le_bytes());
            if enc.buf.len() >= 1 << 20 {
                h.update(&enc.buf);
                enc.buf.clear();
            }
        }
        h.update(&enc.buf);
        *h.finalize().as_bytes()
    }

    pub fn root_hex(&self) -> String {
        hex::encode(self.root_hash())
    }

    pub fn bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.has_data())
            .map(|e| e.size)
            .sum()
    }

    pub fn files(&self) -> u64 {
        self.entries.iter().filter(|e| e.kind == Kind::File).count() as u64
    }

    pub fn encode(&self) -> Vec<u8> {
        // Room for the whole encoding at once: a buffer doubled again and again copies it
        // and touches fresh pages each time.
        let room: usize = self
            .entries
            .iter()
            .map(|e| {
                112 + e.path.len()
                    + e.target.len()
                    + e.link_to.as_ref().map_or(0, Vec::len)
                    + e.xattrs
                        .iter()
                        .map(|(k, v)| 8 + k.len() + v.len())
                        .sum::<usize>()
                    + 44 * e.chunks.len()
            })
            .sum();
        let mut enc = Enc {
            buf: Vec::with_capacity(room),
        };
        enc.buf.extend_from_slice(MAGIC);
        enc.u64(self.entries.len() as u64);
        for e in &self.entries {
            enc.entry(e);
        }
        enc.buf
    }

    /// Decodes either encoding: [`Manifest::encode`]'s or [`Manifest::encode_stored`]'s.
    pub fn decode(buf: &[u8]) -> io::Result<Manifest> {
        let (rest, stored) = match (buf.strip_prefix(MAGIC), buf.strip_prefix(MAGIC_STORED)) {
            (Some(rest), _) => (rest, false),
            (_, Some(rest)) => (rest, true),
            _ => return Err(bad("not a doppel manifest")),
        };
        let mut dec = Dec::new(rest);
        let n = dec.u64()?;
        let mut entries: Vec<Entry> = Vec::with_capacity(n.min(1 << 20) as usize);
        for _ in 0..n {
            let e = match stored {
                true => dec.stored_entry(entries.last().map_or(&[][..], |p| &p.path))?,
                false => dec.entry()?,
            };
            entries.push(e);
        }
        if stored && !dec.is_empty() {
            return Err(bad("trailing bytes after the manifest"));
        }
        Ok(Manifest { entries })
    }

    /// The encoding a manifest is stored in: about 60 % of the size of
    /// [`Manifest::encode`]'s (the wire's) on the bench's tree, so it is written, made
    /// durable and read back sooner. Each path is
    /// stored as what it shares with the one before (entries are sorted: mostly their
    /// directory) and the rest; numbers take as many bytes as they need; fields a kind of
    /// entry leaves empty take a bit each.
    pub fn encode_stored(&self) -> Vec<u8> {
        let room: usize = self
            .entries
            .iter()
            .map(|e| 80 + e.path.len() / 2 + e.target.len() + 36 * e.chunks.len())
            .sum();
        let mut enc = Enc {
            buf: Vec::with_capacity(room),
        };
        enc.buf.extend_from_slice(MAGIC_STORED);
        enc.u64(self.entries.len() as u64);
        let mut prev: &[u8] = &[];
        for e in &self.entries {
            enc.stored_entry(e, prev);
            prev = &e.path;
        }
        enc.buf
    }

    /// Loads a manifest file; a missing file is `None`.
    ///
    /// The file is decoded where the page cache holds it (mapped, not read into a buffer of
    /// its own): a no-op sync loads two manifests of 6 MB, and fresh buffers that size were
    /// a fifth of its page faults (perf). Safe because a manifest file is never changed in
    /// place: [`Manifest::store`] writes a new file and renames it over the old one, which
    /// stays whole for whoever still maps it.
    pub fn load(path: &std::path::Path) -> io::Result<Option<Manifest>> {
        Ok(Manifest::load_stored(path)?.map(|(m, _)| m))
    }

    /// [`Manifest::load`], with which stored file it read.
    pub fn load_stored(path: &std::path::Path) -> io::Result<Option<(Manifest, StoredAs)>> {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let stored = StoredAs::of(&file.metadata()?);
        if let Some(kept) = kept::take(path, stored) {
            return Ok(Some((kept, stored)));
        }
        Ok(Some((Manifest::decode_file(path, &file)?, stored)))
    }

    fn decode_file(path: &std::path::Path, file: &std::fs::File) -> io::Result<Manifest> {
        use std::os::fd::AsRawFd;
        let len = usize::try_from(file.metadata()?.len()).map_err(|_| bad("too large"))?;
        if len == 0 {
            return Manifest::decode(&[]);
        }
        // SAFETY: a private read-only mapping of `len` bytes of an open file, unmapped below
        // and only read through `bytes` before that (the file is never truncated: see above).
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if at == libc::MAP_FAILED {
            return Manifest::decode(&std::fs::read(path)?);
        }
        let bytes = unsafe { std::slice::from_raw_parts(at as *const u8, len) };
        let decoded = Manifest::decode(bytes);
        // SAFETY: the mapping made above; `bytes` is not used after this.
        unsafe { libc::munmap(at, len) };
        decoded
    }

    /// Writes the manifest to `path` atomically: a temp file of this writer's own (several
    /// threads may store one container's manifest at once: a job and a status probe), made
    /// durable, then renamed over the old one.
    pub fn store(&self, path: &std::path::Path) -> io::Result<()> {
        self.write_to(path, true).map(drop)
    }

    /// [`Manifest::store`] without waiting for the disk: for a quick-check cache (after a
    /// crash, one that is missing or does not decode only costs a scan that reads), or for
    /// a manifest that the caller's `syncfs` of its filesystem makes durable next.
    pub fn store_unsynced(&self, path: &std::path::Path) -> io::Result<StoredAs> {
        self.write_to(path, false)
    }

    /// [`Manifest::store`], keeping the manifest decoded in this process for the next load
    /// of `path` ([`kept`]): a sync's target state, which the next sync loads.
    pub fn store_keeping(self, path: &std::path::Path) -> io::Result<()> {
        let stored = self.write_to(path, true)?;
        kept::keep(path, stored, self);
        Ok(())
    }

    fn write_to(&self, path: &std::path::Path, durable: bool) -> io::Result<StoredAs> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let meta = super::fsx::replace_file(path, &self.encode_stored(), durable)?;
        // (What was kept for this path is of a file no longer there.)
        kept::forget(path);
        Ok(StoredAs::of(&meta))
    }
}

/// Manifests this process stored, kept decoded for the next load of their file: a sync
/// loads the target's manifest the sync before it stored, and decoding one of 40,000
/// entries took about 8 ms of each sync. A load takes its manifest out (the caller owns it,
/// no copy); [`Manifest::store_keeping`] puts one in. Matched by path and by which file is
/// there now ([`StoredAs`]), and forgotten when this process stores another at that path,
/// so a load never gets what the file does not hold.
mod kept {
    use super::{Manifest, StoredAs};
    use std::collections::VecDeque;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    /// How many entries all kept manifests hold at most (about 250 bytes each): the oldest
    /// kept goes first.
    const MOST_ENTRIES: usize = 100_000;

    static KEPT: Mutex<VecDeque<(PathBuf, StoredAs, Manifest)>> = Mutex::new(VecDeque::new());

    pub(super) fn keep(path: &Path, stored: StoredAs, m: Manifest) {
        if m.entries.len() > MOST_ENTRIES {
            return;
        }
        let Ok(mut kept) = KEPT.lock() else {
            return;
        };
        kept.retain(|(p, _, _)| p != path);
        let mut held: usize = kept.iter().map(|(_, _, m)| m.entries.len()).sum();
        while held + m.entries.len() > MOST_ENTRIES {
            match kept.pop_front() {
                Some((_, _, old)) => held -= old.entries.len(),
                None => break,
            }
        }
        kept.push_back((path.to_path_buf(), stored, m));
    }

    pub(super) fn take(path: &Path, stored: StoredAs) -> Option<Manifest> {
        let mut kept = KEPT.lock().ok()?;
        let at = kept.iter().position(|(p, _, _)| p == path)?;
        let (_, was, m) = kept.remove(at)?;
        (was == stored).then_some(m)
    }

    pub(super) fn forget(path: &Path) {
        if let Ok(mut kept) = KEPT.lock() {
            kept.retain(|(p, _, _)| p != path);
        }
    }
}

const MAGIC: &[u8] = b"DPLMAN1\n";
/// [`Manifest::encode_stored`]'s.
const MAGIC_STORED: &[u8] = b"DPLMAN2\n";

/// [`Enc::stored_entry`]'s flags: which of an entry's optional fields follow.
const HAS_HASH: u8 = 1;
const HAS_TARGET: u8 = 2;
const HAS_LINK: u8 = 4;
const HAS_XATTRS: u8 = 8;
const HAS_RDEV: u8 = 16;
const HAS_CHUNKS: u8 = 32;

pub(crate) fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// A little-endian binary encoder shared by manifests and the wire protocol.
#[derive(Default)]
pub struct Enc {
    pub buf: Vec<u8>,
}

impl Enc {
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.buf.extend_from_slice(v);
    }
    pub fn hash(&mut self, v: &[u8; 32]) {
        self.buf.extend_from_slice(v);
    }

    /// The fields that make an entry what it is (hashed into the root hash).
    fn identity(&mut self, e: &Entry) {
        self.bytes(&e.path);
        self.u8(e.kind.code());
        self.u32(e.mode);
        self.u32(e.uid);
        self.u32(e.gid);
        // Directory mtimes and sizes depend on the filesystem; they are not content.
        if e.kind != Kind::Dir {
            self.u64(e.size);
            self.i64(e.mtime_ns);
        }
        self.bytes(&e.target);
        self.hash(&e.hash);
        match &e.link_to {
            Some(l) => {
                self.u8(1);
                self.bytes(l);
            }
            None => self.u8(0),
        }
        self.u32(e.xattrs.len() as u32);
        for (k, v) in &e.xattrs {
            self.bytes(k);
            self.bytes(v);
        }
        self.u64(e.rdev);
    }

    pub fn entry(&mut self, e: &Entry) {
        self.identity(e);
        if e.kind == Kind::Dir {
            self.u64(e.size);
            self.i64(e.mtime_ns);
        }
        self.u64(e.ino);
        self.i64(e.ctime_ns);
        self.chunks(&e.chunks);
    }

    /// An entry as it travels: no quick-check data or chunk lists (the receiver's own).
    pub fn wire_entry(&mut self, e: &Entry) {
        self.identity(e);
        if e.kind == Kind::Dir {
            self.u64(e.size);
            self.i64(e.mtime_ns);
        }
        // The source's inode and change time: a receiver on the source's filesystem checks
        // a file it takes from the source by the kernel is still the version the sender
        // scanned (they mean nothing anywhere else, and are not applied).
        self.u64(e.ino);
        self.i64(e.ctime_ns);
        self.chunks(&[]);
    }

    /// An unsigned number in 7-bit groups, low first (LEB128).
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn var_bytes(&mut self, v: &[u8]) {
        self.varint(v.len() as u64);
        self.buf.extend_from_slice(v);
    }

    /// An entry as [`Manifest::encode_stored`] stores it, after the entry whose path is
    /// `prev`.
    fn stored_entry(&mut self, e: &Entry, prev: &[u8]) {
        let shared = e.path.iter().zip(prev).take_while(|(a, b)| a == b).count();
        self.varint(shared as u64);
        self.var_bytes(&e.path[shared..]);
        self.u8(e.kind.code());
        let flags = [
            (e.hash != [0; 32], HAS_HASH),
            (!e.target.is_empty(), HAS_TARGET),
            (e.link_to.is_some(), HAS_LINK),
            (!e.xattrs.is_empty(), HAS_XATTRS),
            (e.rdev != 0, HAS_RDEV),
            (!e.chunks.is_empty(), HAS_CHUNKS),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .fold(0, |f, (_, bit)| f | bit);
        self.u8(flags);
        self.varint(e.mode.into());
        self.varint(e.uid.into());
        self.varint(e.gid.into());
        self.varint(e.size);
        self.i64(e.mtime_ns);
        self.varint(e.ino);
        self.i64(e.ctime_ns);
        if flags & HAS_HASH != 0 {
            self.hash(&e.hash);
        }
        if flags & HAS_TARGET != 0 {
            self.var_bytes(&e.target);
        }
        if let Some(l) = &e.link_to {
            self.var_bytes(l);
        }
        if flags & HAS_XATTRS != 0 {
            self.varint(e.xattrs.len() as u64);
            for (k, v) in &e.xattrs {
                self.var_bytes(k);
                self.var_bytes(v);
            }
        }
        if flags & HAS_RDEV != 0 {
            self.varint(e.rdev);
        }
        if flags & HAS_CHUNKS != 0 {
            self.varint(e.chunks.len() as u64);
            // Offsets as the distance from where the chunk before ended (0: contiguous).
            let mut end = 0u64;
            for c in &e.chunks {
                self.varint(c.offset.wrapping_sub(end));
                self.varint(c.len.into());
                self.hash(&c.hash);
                end = c.offset.wrapping_add(c.len.into());
            }
        }
    }

    pub fn chunks(&mut self, chunks: &[Chunk]) {
        self.u32(chunks.len() as u32);
        for c in chunks {
            self.u64(c.offset);
            self.u32(c.len);
            self.hash(&c.hash);
        }
    }
}

pub struct Dec<'a> {
    buf: &'a [u8],
}

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Dec { buf }
    }
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(bad("truncated record"));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    pub fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    pub fn i64(&mut self) -> io::Result<i64> {
        Ok(i64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    pub fn bytes(&mut self) -> io::Result<Vec<u8>> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    pub fn hash(&mut self) -> io::Result<[u8; 32]> {
        let mut h = [0u8; 32];
        h.copy_from_slice(self.take(32)?);
        Ok(h)
    }

    pub fn entry(&mut self) -> io::Result<Entry> {
        let path = self.bytes()?;
        if !valid_path(&path) {
            return Err(bad("invalid path in manifest"));
        }
        let kind = Kind::from_code(self.u8()?)?;
        let mut e = Entry::new(path, kind);
        e.mode = self.u32()?;
        e.uid = self.u32()?;
        e.gid = self.u32()?;
        if kind != Kind::Dir {
            e.size = self.u64()?;
            e.mtime_ns = self.i64()?;
        }
        e.target = self.bytes()?;
        e.hash = self.hash()?;
        if self.u8()? == 1 {
            let l = self.bytes()?;
            if !valid_path(&l) {
                return Err(bad("invalid hard link path"));
            }
            e.link_to = Some(l);
        }
        let n = self.u32()?;
        for _ in 0..n {
            e.xattrs.push((self.bytes()?, self.bytes()?));
        }
        e.rdev = self.u64()?;
        if kind == Kind::Dir {
            e.size = self.u64()?;
            e.mtime_ns = self.i64()?;
        }
        e.ino = self.u64()?;
        e.ctime_ns = self.i64()?;
        e.chunks = self.chunks()?;
        Ok(e)
    }

    /// [`Enc::varint`]'s number.
    fn varint(&mut self) -> io::Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("number too long"))
    }

    fn var_u32(&mut self) -> io::Result<u32> {
        u32::try_from(self.varint()?).map_err(|_| bad("number out of range"))
    }

    fn var_bytes(&mut self) -> io::Result<&'a [u8]> {
        let n = usize::try_from(self.varint()?).map_err(|_| bad("length out of range"))?;
        self.take(n)
    }

    /// [`Enc::stored_entry`]'s entry, after the one whose path is `prev`.
    fn stored_entry(&mut self, prev: &[u8]) -> io::Result<Entry> {
        let shared = usize::try_from(self.varint()?).map_err(|_| bad("bad path"))?;
        let rest = self.var_bytes()?;
        let head = prev.get(..shared).ok_or_else(|| bad("bad path"))?;
        let path = [head, rest].concat();
        if !valid_path(&path) {
            return Err(bad("invalid path in manifest"));
        }
        let kind = Kind::from_code(self.u8()?)?;
        let flags = self.u8()?;
        let mut e = Entry::new(path, kind);
        e.mode = self.var_u32()?;
        e.uid = self.var_u32()?;
        e.gid = self.var_u32()?;
        e.size = self.varint()?;
        e.mtime_ns = self.i64()?;
        e.ino = self.varint()?;
        e.ctime_ns = self.i64()?;
        if flags & HAS_HASH != 0 {
            e.hash = self.hash()?;
        }
        if flags & HAS_TARGET != 0 {
            e.target = self.var_bytes()?.to_vec();
        }
        if flags & HAS_LINK != 0 {
            let l = self.var_bytes()?;
            if !valid_path(l) {
                return Err(bad("invalid hard link path"));
            }
            e.link_to = Some(l.to_vec());
        }
        if flags & HAS_XATTRS != 0 {
            let n = self.varint()?;
            for _ in 0..n {
                e.xattrs
                    .push((self.var_bytes()?.to_vec(), self.var_bytes()?.to_vec()));
            }
        }
        if flags & HAS_RDEV != 0 {
            e.rdev = self.varint()?;
        }
        if flags & HAS_CHUNKS != 0 {
            let n = self.varint()?;
            let mut end = 0u64;
            e.chunks = Vec::with_capacity(n.min(1 << 16) as usize);
            for _ in 0..n {
                let offset = end.wrapping_add(self.varint()?);
                let len = self.var_u32()?;
                e.chunks.push(Chunk {
                    offset,
                    len,
                    hash: self.hash()?,
                });
                end = offset.wrapping_add(len.into());
            }
        }
        Ok(e)
    }

    pub fn chunks(&mut self) -> io::Result<Vec<Chunk>> {
        let n = self.u32()?;
        let mut v = Vec::with_capacity(n.min(1 << 16) as usize);
        for _ in 0..n {
            v.push(Chunk {
                offset: self.u64()?,
                len: self.u32()?,
                hash: self.hash()?,
            });
        }
        Ok(v)
    }
}

/// How an entry of the new state relates to the old one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Added,
    /// Content (or type) differs.
    Changed,
    MetadataOnly,
    Unchanged,
}

/// An entry of the new state, how it changed, and its old counterpart.
pub type Pair<'a> = (Change, &'a Entry, Option<&'a Entry>);

/// Pairs every entry of `new` with its counterpart in `old`, and lists what `old` has that
/// `new` lacks (deleted). Both manifests must be sorted by [`path_cmp`].
pub fn diff<'a>(old: &'a Manifest, new: &'a Manifest) -> (Vec<Pair<'a>>, Vec<&'a Entry>) {
    let (mut i, mut j) = (0, 0);
    let (mut pairs, mut deleted) = (Vec::with_capacity(new.entries.len()), Vec::new());
    while i < old.entries.len() || j < new.entries.len() {
        let ord = match (old.entries.get(i), new.entries.get(j)) {
            (Some(o), Some(n)) => path_cmp(&o.path, &n.path),
            (Some(_), None) => Ordering::Less,
            (None, _) => Ordering::Greater,
        };
        match ord {
            Ordering::Less => {
                deleted.push(&old.entries[i]);
                i += 1;
            }
            Ordering::Greater => {
                pairs.push((Change::Added, &new.entries[j], None));
                j += 1;
            }
            Ordering::Equal => {
                let (o, n) = (&old.entries[i], &new.entries[j]);
                let change = if !n.same_content(o) {
                    Change::Changed
                } else if !n.same_metadata(o) {
                    Change::MetadataOnly
                } else {
                    Change::Unchanged
                };
                pairs.push((change, n, Some(o)));
                i += 1;
                j += 1;
            }
        }
    }
    (pairs, deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &[u8]) -> Entry {
        let mut e = Entry::new(path.as_bytes().to_vec(), Kind::File);
        e.size = content.len() as u64;
        e.hash = *blake3::hash(content).as_bytes();
        e.mode = 0o644;
        e
    }

    /// A manifest stored keeping it is loaded once from memory, and never after its file
    /// was replaced.
    #[test]
    fn a_kept_manifest_is_loaded_once_and_only_while_its_file_is_the_one_stored() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest");
        let one = Manifest {
            entries: vec![file("a", b"one"), file("b", b"two")],
        };
        let two = Manifest {
            entries: vec![file("c", b"three")],
        };
        one.clone().store_keeping(&path).unwrap();
        // Its bytes spoilt in place, its length and time as they were: only a load that
        // does not read the file gets the manifest (what proves it was kept).
        let stored = std::fs::metadata(&path).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&vec![0xee; stored.len() as usize], 0)
            .unwrap();
        f.set_modified(stored.modified().unwrap()).unwrap();
        drop(f);
        assert_eq!(Manifest::load(&path).unwrap(), Some(one.clone()));
        // Taken: the next load reads the file.
        assert!(Manifest::load(&path).is_err());
        // Kept, then another stored at its path: that one is loaded.
        one.clone().store_keeping(&path).unwrap();
        two.store(&path).unwrap();
        assert_eq!(Manifest::load(&path).unwrap(), Some(two.clone()));
        // Kept, then replaced by a file written by someone else.
        one.clone().store_keeping(&path).unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, two.encode_stored()).unwrap();
        std::fs::rename(&other, &path).unwrap();
        assert_eq!(Manifest::load(&path).unwrap(), Some(two));
    }

    #[test]
    fn descendants_sort_right_after_their_directory() {
        let mut v = vec!["a-b", "a/b", "a", "a/b/c", "b", "a.txt"];
        v.sort_by(|x, y| path_cmp(x.as_bytes(), y.as_bytes()));
        assert_eq!(v, ["a", "a/b", "a/b/c", "a-b", "a.txt", "b"]);
    }

    #[test]
    fn path_order_is_the_order_of_components() {
        // Every pair of paths of up to four bytes over bytes around `/`, against the
        // definition.
        let alphabet = [b'/', b'-', b'.', b'0', b'a', 0xff];
        let mut paths = vec![Vec::new()];
        let mut last = vec![Vec::new()];
        for _ in 0..4 {
            last = last
                .iter()
                .flat_map(|p: &Vec<u8>| {
                    alphabet.iter().map(move |&c| [p.as_slice(), &[c]].concat())
                })
                .collect();
            paths.extend(last.iter().cloned());
        }
        let by_components =
            |a: &[u8], b: &[u8]| a.split(|&c| c == b'/').cmp(b.split(|&c| c == b'/'));
        for a in &paths {
            for b in &paths {
                assert_eq!(path_cmp(a, b), by_components(a, b), "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn invalid_paths_are_refused() {
        for p in ["", "/a", "a//b", "a/", "..", "a/../b", "./a", "a\0b"] {
            assert!(!valid_path(p.as_bytes()), "{p:?}");
        }
        assert!(valid_path(b"a/b c/\xff\n"));
    }

    #[test]
    fn encoding_round_trips_and_root_hash_ignores_quick_check_data() {
        let mut a = file("dir/f", b"hello");
        a.xattrs.push((b"user.k".to_vec(), b"v".to_vec()));
        a.chunks.push(Chunk {
            offset: 0,
            len: 5,
            hash: a.hash,
        });
        let mut l = Entry::new(b"link".to_vec(), Kind::Symlink);
        l.target = b"/etc/passwd".to_vec();
        let m = Manifest {
            entries: vec![Entry::new(b"dir".to_vec(), Kind::Dir), a, l],
        };
        let back = Manifest::decode(&m.encode()).unwrap();
        assert_eq!(back, m);
        let mut m2 = m.clone();
        m2.entries[1].ino = 99;
        m2.entries[1].ctime_ns = 5;
        assert_eq!(m.root_hash(), m2.root_hash());
        m2.entries[1].mode = 0o600;
        assert_ne!(m.root_hash(), m2.root_hash());
        assert!(Manifest::decode(b"garbage").is_err());
        assert!(Manifest::decode(&m.encode()[..20]).is_err());
    }

    #[test]
    fn the_stored_encoding_round_trips_every_field_and_is_about_half_the_wire_s() {
        let mut a = file("dir/f", b"hello");
        a.xattrs.push((b"user.k".to_vec(), b"v".to_vec()));
        a.xattrs.push((b"security.x".to_vec(), vec![0, 255, 7]));
        // Contiguous chunks, then a gap and one out of order: offsets are not assumed.
        for (offset, len) in [(0, 5), (5, 70_000), (90_000, 3), (10, 1)] {
            a.chunks.push(Chunk {
                offset,
                len,
                hash: [offset as u8; 32],
            });
        }
        a.ino = u64::MAX;
        a.ctime_ns = -1;
        a.mtime_ns = i64::MIN;
        a.uid = u32::MAX;
        let mut h = file("dir/f-hard", b"hello");
        h.link_to = Some(b"dir/f".to_vec());
        let mut l = Entry::new(b"link".to_vec(), Kind::Symlink);
        l.target = b"/etc/passwd".to_vec();
        let mut dev = Entry::new(b"null".to_vec(), Kind::Special);
        dev.rdev = 0x103;
        let mut entries = vec![Entry::new(b"dir".to_vec(), Kind::Dir), a, h, l, dev];
        entries.extend((0..1000u32).map(|i| file(&format!("dir/many/file-{i:04}"), b"x")));
        entries.sort_by(|a, b| path_cmp(&a.path, &b.path));
        let m = Manifest { entries };
        let stored = m.encode_stored();
        assert_eq!(Manifest::decode(&stored).unwrap(), m);
        // Manifests stored before keep loading.
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
        assert!(
            stored.len() * 2 < m.encode().len(),
            "{} bytes",
            stored.len()
        );
        for cut in [9, 20, stored.len() / 2, stored.len() - 1] {
            assert!(Manifest::decode(&stored[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = stored.clone();
        longer.push(0);
        assert!(Manifest::decode(&longer).is_err());
        // A path sharing more than the one before it has is refused, not read past.
        let one = Manifest {
            entries: vec![file("a", b"1")],
        };
        let mut bad_prefix = one.encode_stored();
        bad_prefix[MAGIC_STORED.len() + 8] = 5;
        assert!(Manifest::decode(&bad_prefix).is_err());
    }

    #[test]
    fn root_hash_is_the_hash_of_every_length_and_identity_in_order() {
        // Stored states (a copy's `source_state`) were computed entry by entry: the
        // batched hashing must give exactly the same root, over more than one batch too.
        let entries: Vec<Entry> = (0..30_000u32)
            .map(|i| file(&format!("d{}/file-{i:06}", i % 97), &i.to_le_bytes()))
            .collect();
        let m = Manifest { entries };
        let mut h = blake3::Hasher::new();
        for e in &m.entries {
            let mut enc = Enc::default();
            enc.identity(e);
            h.update(&(enc.buf.len() as u64).to_le_bytes());
            h.update(&enc.buf);
        }
        assert_eq!(m.root_hash(), *h.finalize().as_bytes());
    }

    #[test]
    fn diff_classifies_every_entry() {
        let old = Manifest {
            entries: vec![
                file("a", b"1"),
                file("b", b"2"),
                file("c", b"3"),
                file("d", b"4"),
            ],
        };
        let mut b = file("b", b"2");
        b.mode = 0o600;
        let new = Manifest {
            entries: vec![file("a", b"1"), b, file("c", b"333"), file("e", b"5")],
        };
        let (pairs, deleted) = diff(&old, &new);
        let kinds: Vec<_> = pairs
            .iter()
            .map(|(c, e, _)| (c, e.display_path()))
            .collect();
        assert_eq!(
            kinds,
            [
                (&Change::Unchanged, "a".to_string()),
                (&Change::MetadataOnly, "b".into()),
                (&Change::Changed, "c".into()),
                (&Change::Added, "e".into())
            ]
        );
        assert_eq!(deleted.len(), 1);
        assert_eq!(deleted[0].path, b"d");
    }
}
