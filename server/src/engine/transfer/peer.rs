//! Copy and sync between two processes (two hosts): the source's half and the target's
//! half of each, talking over one byte stream in both directions (a TLS connection; any
//! `Read + Write`). The halves are those the local copy and sync compose in one process;
//! only how they meet differs.
//!
//! On the stream, in turn:
//! - copy: target -> ready (its new tree can be laid down); source -> frames (as a
//!   sub-stream), then the manifest as sent; target -> reply.
//! - sync: target -> its manifest as a change of the state both sides agreed on at the end
//!   of the last transfer (each keeps a copy; a source without it asks for the whole
//!   manifest); source -> how many changes, their frames (if any), the state to reach as a
//!   change of the target's manifest; target -> reply. Root hashes check every
//!   reconstruction. A sync with nothing to do costs a few hundred bytes.
//!
//! A sub-stream is the frame stream cut into pieces (`u32` length, bytes) ended by an empty
//! piece, so the target knows where frames end even when the source gave up half way. A
//! message is a tag byte, a `u64` length and its bytes. The reply is JSON: the target's
//! part of the summary, or why it failed. A side that fails still reads the other to its
//! end before replying, so neither is left writing into a connection nobody reads.

use std::io::{BufReader, Read, Write};

use super::copy::{copy_into, finish_copy, scan_source, send_copy, source_facts, stage_as_image};
use super::receive::{receive, Mode};
use super::sync::{
    commit_sync, drift, make_room, plan, prepare_target, remove_work, scan_sync_source,
    scan_target, send_sync, stage_dir,
};
use super::*;

/// Both directions of a connection.
pub trait Duplex: Read + Write + Send {}
impl<T: Read + Write + Send> Duplex for T {}

/// A connection with reads buffered (frame headers are a few bytes each).
pub struct Peer<T: Duplex> {
    inner: BufReader<T>,
}

impl<T: Duplex> Peer<T> {
    pub fn new(inner: T) -> Peer<T> {
        Peer {
            inner: BufReader::with_capacity(256 << 10, inner),
        }
    }
}

impl<T: Duplex> Read for Peer<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl<T: Duplex> Write for Peer<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.get_mut().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.get_mut().flush()
    }
}

const MANIFEST: u8 = 1;
const TARGET_MANIFEST: u8 = 2;
const CHANGES: u8 = 3;
const ABORT: u8 = 4;
const REPLY: u8 = 5;
const READY: u8 = 6;
/// The target's manifest as a change of the state both sides agreed on at the end of the
/// last transfer (its root hash first): the source keeps a copy of that state.
const TARGET_DELTA: u8 = 7;
/// The source has no copy of that manifest: send it.
const NEED_MANIFEST: u8 = 8;
/// The state to reach, as the target's manifest changed: its root hash, the entries that
/// change (as a manifest) and the paths that go.
const STATE_DELTA: u8 = 9;
/// A copy's first word from its source: the tree's size in bytes (u64, little-endian), as
/// its scan found it, so that the target lays the tree down in something that can hold it
/// (an image tree only where it fits) before anything arrives.
const TREE_SIZE: u8 = 10;
/// A copy's READY says whether it starts afresh or resumes an interrupted one.
const FRESH: u8 = 0;
const RESUME: u8 = 1;
/// The largest message (a manifest of some million entries fits).
const MAX_MESSAGE: u64 = 1 << 30;
const PIECE: usize = 256 << 10;

fn peer_err(context: &'static str) -> impl Fn(io::Error) -> EngineError {
    move |source| EngineError::Disconnected {
        context: format!("{context} (the other server)"),
        source,
    }
}

/// A piece whose length has this bit set is compressed (zstd); pieces are at most
/// `PIECE` bytes either way, so the bit is never part of a length.
const COMPRESSED: u32 = 1 << 31;
/// A message whose tag has this bit set carries its bytes compressed.
const PACKED: u8 = 0x80;
/// zstd's fast end: at 1 Gbit/s one core keeps up, and text still shrinks 3 to 4 times.
const LEVEL: i32 = 1;
/// Messages smaller than this go as they are (not worth a compression context).
const PACK_FROM: usize = 4096;

/// Compresses pieces when that pays. A piece that does not shrink by an eighth goes as it
/// is, and the next ones are not tried (1, 2, 4 ... up to 16 pieces, 4 MiB): content that
/// does not compress (media, archives, encrypted files) costs an attempt per 4 MiB at most,
/// and a tree that mixes both loses little of what compresses.
struct Squeeze {
    ctx: Option<zstd::bulk::Compressor<'static>>,
    out: Vec<u8>,
    skip: u32,
    backoff: u32,
}

impl Squeeze {
    fn new() -> Squeeze {
        Squeeze {
            // Without a context (it could not be made) nothing is compressed.
            ctx: zstd::bulk::Compressor::new(LEVEL).ok(),
            out: Vec::with_capacity(PIECE),
            skip: 0,
            backoff: 0,
        }
    }

    /// The piece as it goes: compressed or not, and its bytes.
    fn piece<'a>(&'a mut self, raw: &'a [u8]) -> (bool, &'a [u8]) {
        let Some(ctx) = self.ctx.as_mut() else {
            return (false, raw);
        };
        if self.skip > 0 {
            self.skip -= 1;
            return (false, raw);
        }
        self.out.clear();
        // Room for the worst case: zstd fills the vector's capacity, no more.
        self.out.reserve(zstd::zstd_safe::compress_bound(raw.len()));
        let pays = ctx
            .compress_to_buffer(raw, &mut self.out)
            .is_ok_and(|n| n > 0 && n <= raw.len() - raw.len() / 8);
        if pays {
            self.backoff = 0;
            (true, &self.out)
        } else {
            self.backoff = (self.backoff * 2).clamp(1, 16);
            self.skip = self.backoff;
            (false, raw)
        }
    }
}

/// A message: large ones compressed when that pays (manifests shrink several times).
fn write_message(out: &mut dyn Write, tag: u8, bytes: &[u8]) -> io::Result<()> {
    let packed = (bytes.len() >= PACK_FROM)
        .then(|| zstd::bulk::compress(bytes, LEVEL).ok())
        .flatten()
        .filter(|p| p.len() < bytes.len() - bytes.len() / 8);
    let (tag, bytes) = match &packed {
        Some(p) => (tag | PACKED, p.as_slice()),
        None => (tag, bytes),
    };
    let mut head = [0u8; 9];
    head[0] = tag;
    head[1..].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.write_all(&head)?;
    out.write_all(bytes)?;
    out.flush()
}

/// The next message: its tag and bytes.
fn read_message(input: &mut dyn Read) -> io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 9];
    input.read_exact(&mut head)?;
    let len = u64::from_le_bytes(head[1..].try_into().expect("8 bytes"));
    if len > MAX_MESSAGE {
        return Err(super::super::manifest::bad("a message too large"));
    }
    let mut bytes = vec![0u8; len as usize];
    input.read_exact(&mut bytes)?;
    if head[0] & PACKED != 0 {
        let plain = zstd::bulk::decompress(&bytes, MAX_MESSAGE as usize)
            .map_err(|_| super::super::manifest::bad("a message that does not decompress"))?;
        return Ok((head[0] & !PACKED, plain));
    }
    Ok((head[0], bytes))
}

/// Sends what the pipe carries as a sub-stream (pieces compressed where that pays), then
/// its end, paced by the job's bandwidth limit. (The sender reports its progress, the
/// content and entries it sent: `Control::counting_sent`.)
fn forward_out(mut from: wire::PipeReader, out: &mut dyn Write, ctl: &Control) -> io::Result<()> {
    let mut buf = vec![0u8; PIECE];
    let mut squeeze = Squeeze::new();
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            out.write_all(&0u32.to_le_bytes())?;
            // The last report says all of it went.
            ctl.report(true);
            return out.flush();
        }
        let (compressed, bytes) = squeeze.piece(&buf[..n]);
        let head = bytes.len() as u32 | if compressed { COMPRESSED } else { 0 };
        out.write_all(&head.to_le_bytes())?;
        out.write_all(bytes)?;
        ctl.throttle(4 + bytes.len() as u64);
    }
}

/// Reads a sub-stream into the pipe, to its end: once the pipe's reader is gone (the
/// receiver failed), the rest is read and dropped, so the sender is never left blocked.
fn forward_in(input: &mut dyn Read, into: wire::PipeWriter) -> io::Result<()> {
    let mut into = Some(into);
    let mut buf = vec![0u8; PIECE];
    let mut plain = vec![0u8; PIECE];
    let mut unsqueeze = zstd::bulk::Decompressor::new()?;
    loop {
        let mut head = [0u8; 4];
        input.read_exact(&mut head)?;
        let head = u32::from_le_bytes(head);
        let n = (head & !COMPRESSED) as usize;
        if n == 0 {
            if let Some(mut w) = into.take() {
                w.flush()?;
            }
            return Ok(());
        }
        if n > buf.len() {
            return Err(super::super::manifest::bad("a piece too large"));
        }
        input.read_exact(&mut buf[..n])?;
        let bytes = if head & COMPRESSED != 0 {
            // At most a piece comes out; more is an error, not an allocation.
            let m = unsqueeze
                .decompress_to_buffer(&buf[..n], &mut plain[..])
                .map_err(|_| super::super::manifest::bad("a piece that does not decompress"))?;
            &plain[..m]
        } else {
            &buf[..n]
        };
        if let Some(w) = into.as_mut() {
            if w.write_all(bytes).is_err() {
                into = None;
            }
        }
    }
}

/// The target's answer: its part of the summary, or why it failed (and whether the target
/// tree is left partly changed).
#[derive(serde::Serialize, serde::Deserialize)]
struct Reply {
    summary: Option<Summary>,
    error: Option<String>,
    #[serde(default)]
    incomplete: bool,
}

fn reply(out: &mut dyn Write, dst: &Place, result: &Result<Summary, EngineError>) {
    let r = match result {
        Ok(s) => Reply {
            summary: Some(s.clone()),
            error: None,
            incomplete: false,
        },
        Err(e) => Reply {
            summary: None,
            error: Some(e.to_string()),
            incomplete: dst.commit_pending(),
        },
    };
    let bytes = serde_json::to_vec(&r).unwrap_or_default();
    // Best effort: the source may be gone already.
    let _ = write_message(out, REPLY, &bytes);
}

/// The target's reply, as the source reads it.
fn read_reply(input: &mut dyn Read) -> Result<Summary, EngineError> {
    let (tag, bytes) = read_message(input).map_err(peer_err("reading the target's answer"))?;
    if tag != REPLY {
        return Err(EngineError::Integrity(
            "the target answered out of turn".into(),
        ));
    }
    let r: Reply = serde_json::from_slice(&bytes)
        .map_err(|e| EngineError::Integrity(format!("the target's answer: {e}")))?;
    match (r.summary, r.error) {
        (Some(s), None) => Ok(s),
        (_, error) => {
            let why = format!("the target server: {}", error.unwrap_or_default());
            Err(if r.incomplete {
                EngineError::Incomplete(why)
            } else {
                EngineError::Refused(why)
            })
        }
    }
}

/// After the source's own failure: the target is told (and cleans up), and its reply read.
fn abort(stream: &mut dyn Duplex, why: &EngineError) {
    let _ = write_message(stream, ABORT, why.to_string().as_bytes());
    let _ = read_message(stream);
}

/// The frames of `send` through the stream, as a sub-stream; the sender's result.
fn send_frames<S: Send>(
    stream: &mut dyn Duplex,
    ctl: &Control,
    send: impl FnOnce(wire::PipeWriter) -> Result<S, EngineError> + Send,
) -> Result<S, EngineError> {
    let (w, r) = wire::pipe();
    let (sent, forwarded) = std::thread::scope(|s| {
        let sender = s.spawn(|| send(w));
        let forwarded = forward_out(r, stream, ctl);
        (sender.join(), forwarded)
    });
    let sent = sent.unwrap_or_else(|_| Err(EngineError::Integrity("the sender panicked".into())));
    ctl.check()?;
    // When the connection failed, the sender saw only its pipe close: the connection's
    // error is the cause.
    match (sent, forwarded) {
        (Ok(s), Ok(())) => Ok(s),
        (Err(e), Ok(())) => Err(e),
        (Err(EngineError::Cancelled), Err(_)) => Err(EngineError::Cancelled),
        (_, Err(e)) => Err(peer_err("sending")(e)),
    }
}

/// The frames of a sub-stream applied by `receive`; the receiver's result.
fn receive_frames<R: Send>(
    stream: &mut dyn Duplex,
    receive: impl FnOnce(wire::PipeReader) -> Result<R, EngineError> + Send,
) -> Result<R, EngineError> {
    let (w, r) = wire::pipe();
    let (forwarded, received) = std::thread::scope(|s| {
        let reader = s.spawn(|| forward_in(stream, w));
        let received = receive(r);
        (reader.join(), received)
    });
    let forwarded =
        forwarded.unwrap_or_else(|_| Err(super::super::manifest::bad("the reader panicked")));
    match (forwarded, received) {
        (Err(e), _) => Err(peer_err("receiving")(e)),
        (Ok(()), received) => received,
    }
}

/// The source's half of a copy to another server: scan, send, then the manifest as sent;
/// the summary with the target's part.
fn copy_source_half(
    src: &Place,
    stream: &mut dyn Duplex,
    peer: Option<&std::path::Path>,
    ctl: &Control,
) -> Result<Summary, EngineError> {
    let started = Instant::now();
    let began = scan_begins();
    let (mut m, report) = match scan_source(src, ctl) {
        Ok(r) => r,
        Err(e) => {
            abort(stream, &e);
            return Err(e);
        }
    };
    write_message(stream, TREE_SIZE, &m.bytes().to_le_bytes())
        .map_err(peer_err("sending the tree's size"))?;
    // The target says whether it can take the tree at all.
    let (tag, bytes) = read_message(stream).map_err(peer_err("reading the target's answer"))?;
    if tag != READY {
        return Err(read_reply_after(tag, &bytes));
    }
    if bytes == [RESUME] {
        // The target kept what an interrupted attempt sent: only the rest crosses now.
        let mut summary = sync_source_half(src, stream, &|_| false, peer, ctl)?;
        summary.notes.push(format!(
            "resumed a copy interrupted by a lost connection: {} of {} bytes sent again",
            summary.content_bytes, summary.tree_bytes
        ));
        summary.files_added = summary.tree_files;
        return Ok(summary);
    }
    let offer = HashMap::new();
    let root = &src.root;
    // (Its receiver, which counts what it lays down, is on another host.)
    let counting = ctl.counting_sent();
    let sent = send_frames(stream, ctl, |w| {
        send_copy(root, &mut m, (&offer, None), w, &counting)
    });
    let (stats, sent_unstable) = match sent {
        Ok(s) => s,
        Err(e) => {
            abort(stream, &e);
            return Err(e);
        }
    };
    let _ = store_source_cache(src, &m, began);
    write_message(stream, MANIFEST, &m.encode()).map_err(peer_err("sending the manifest"))?;
    let mut summary = read_reply(stream)?;
    if let Some(path) = peer {
        // The state both sides now agree on (the target keeps the same).
        let _ = without_specials(m).store(path);
    }
    source_facts(&mut summary, report, sent_unstable, stats);
    summary.duration_ms = started.elapsed().as_millis() as u64;
    summary.phase_ms.extend(ctl.timings());
    Ok(summary)
}

/// Where a copy interrupted by a lost connection keeps the tree it had received (each
/// file checked as it was written; the one in progress may be short): the next attempt
/// syncs it up to the source instead of starting from nothing.
fn partial_of(dst: &Place) -> Place {
    Place::new(
        dst.state_dir.join("partial"),
        dst.state_dir.join("partial-state"),
    )
}

/// The target's half of a copy from another server: the tree laid down at `dst` (new),
/// verified against the source's manifest, committed; the reply sent. Also its result here.
/// When the connection breaks, what arrived is kept for the next attempt, which resumes
/// from it (see [`partial_of`]). The source's size comes first ([`TREE_SIZE`]): whether the
/// tree fits an image tree is decided on it.
fn copy_target_half(
    dst: &Place,
    stream: &mut dyn Duplex,
    ctl: &Control,
) -> Result<Summary, EngineError> {
    let source_bytes = match read_tree_size(stream) {
        Ok(bytes) => bytes,
        Err(e) => {
            let result = Err(e);
            reply(stream, dst, &result);
            return result;
        }
    };
    let partial = partial_of(dst);
    if partial.root.is_dir() && !dst.commit_marker().exists() && !dst.root.exists() {
        let result = resume_copy(dst, &partial, stream, ctl);
        reply(stream, dst, &result);
        return result;
    }
    let result = copy_into(dst, ctl, |staging| {
        let laid_down = stage_as_image(dst, staging, Some(source_bytes))?;
        write_message(stream, READY, &[FRESH]).map_err(peer_err("answering"))?;
        let writeback = fsx::WriteBack::start(staging);
        let received = receive_frames(stream, |r| {
            receive(Mode::Copy, staging, staging, r, None, (&[], None), ctl)
        });
        drop(writeback);
        // The source's next message (the manifest, or why it stopped) is read even after a
        // failure here, before the reply.
        let next = read_message(stream).map_err(peer_err("reading the manifest"));
        let lost = |e: &EngineError| matches!(e, EngineError::Disconnected { .. });
        if received.as_ref().err().is_some_and(lost) || next.as_ref().err().is_some_and(lost) {
            // Kept for the next attempt (the work dir itself is removed on the way out).
            let _ = remove_tree(&partial.root);
            let _ = remove_tree(&partial.state_dir);
            if let Some(parent) = partial.root.parent() {
                let _ = fs::create_dir_all(parent);
            }
            let _ = if image::is_image_tree(staging) {
                image::rename_tree(staging, &partial.root)
            } else {
                fs::rename(staging, &partial.root)
            };
        }
        let received = received?;
        let (tag, bytes) = next?;
        if tag == ABORT {
            return Err(EngineError::Refused(format!(
                "the source gave up: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        if tag != MANIFEST {
            return Err(EngineError::Integrity("no manifest from the source".into()));
        }
        let m = Manifest::decode(&bytes).map_err(peer_err("reading the manifest"))?;
        let mut summary = finish_copy(dst, staging, &m, ctl)?;
        summary.reused_bytes = received.reused_bytes;
        summary.notes.extend(laid_down);
        let _ = without_specials(m).store(&agreed_path(dst));
        Ok(summary)
    });
    reply(stream, dst, &result);
    result
}

/// A copy's first message from its source: the tree's size, or why the source stopped.
fn read_tree_size(stream: &mut dyn Duplex) -> Result<u64, EngineError> {
    let (tag, bytes) = read_message(stream).map_err(peer_err("reading the tree's size"))?;
    match tag {
        TREE_SIZE => <[u8; 8]>::try_from(bytes.as_slice())
            .map(u64::from_le_bytes)
            .map_err(|_| EngineError::Integrity("the tree's size is not 8 bytes".into())),
        ABORT => Err(EngineError::Refused(format!(
            "the source gave up: {}",
            String::from_utf8_lossy(&bytes)
        ))),
        _ => Err(EngineError::Integrity(
            "the source spoke out of turn (another version of doppel?)".into(),
        )),
    }
}

/// A copy resumed: the partial tree synced up to the source (the source's half is a
/// sync's), then moved into place as the copy. Nothing is visible before it is verified.
fn resume_copy(
    dst: &Place,
    partial: &Place,
    stream: &mut dyn Duplex,
    ctl: &Control,
) -> Result<Summary, EngineError> {
    write_message(stream, READY, &[RESUME]).map_err(peer_err("answering"))?;
    let summary = sync_target_half(partial, stream, &|_| false, ctl)?;
    // The partial tree now is the source's state, verified and durable: it becomes the
    // copy, with its manifest.
    fs::create_dir_all(&dst.state_dir).map_err(io_err("recording the copy's manifest"))?;
    fs::rename(partial.manifest_path(), dst.manifest_path())
        .map_err(io_err("recording the copy's manifest"))?;
    let _ = fs::rename(agreed_path(partial), agreed_path(dst));
    move_into_place(&partial.root, dst)?;
    let _ = remove_tree(&partial.state_dir);
    Ok(summary)
}

/// The source's half of a sync to another server: the target's manifest read, the plan
/// made, the changes sent, then the state to reach; the summary with the target's part.
fn sync_source_half(
    src: &Place,
    stream: &mut dyn Duplex,
    keep: &dyn Fn(&[u8]) -> bool,
    peer: Option<&std::path::Path>,
    ctl: &Control,
) -> Result<Summary, EngineError> {
    let started = Instant::now();
    ctl.phase(Phase::Scan, None, None);
    let scanned = scan_sync_source(src, ctl);
    let t_man = match target_manifest(stream, peer) {
        Ok(m) => m,
        Err(e) => {
            if !matches!(e, EngineError::Disconnected { .. }) {
                abort(stream, &e);
            }
            return Err(e);
        }
    };
    let (s_man, s_report) = match scanned {
        Ok(s) => s,
        Err(e) => {
            abort(stream, &e);
            return Err(e);
        }
    };
    ctl.phase(Phase::Plan, None, None);
    let mut summary = Summary::default();
    let mut plan = plan(s_man, &s_report, &t_man, keep, &mut summary, ctl);
    // How many entries change, what the target will hold and what it stages on the way
    // (its image tree, if it is one, grows first where that would not fit).
    let mut changes = plan.files_total.to_le_bytes().to_vec();
    changes.extend_from_slice(&plan.want.bytes().to_le_bytes());
    changes.extend_from_slice(&plan.bytes_total.to_le_bytes());
    write_message(stream, CHANGES, &changes).map_err(peer_err("sending"))?;
    if plan.files_total > 0 {
        let (changes, deleted, root) = (&plan.changes, &plan.deleted, &src.root);
        let counting = ctl.counting_sent();
        let sent = send_frames(stream, ctl, |w| {
            send_sync(root, (changes, deleted), &t_man, None, w, &counting)
        });
        match sent {
            Ok(sent) => plan.sent(sent, &mut summary),
            Err(e) => {
                abort(stream, &e);
                return Err(e);
            }
        }
    }
    write_message(stream, STATE_DELTA, &state_delta(&plan))
        .map_err(peer_err("sending the state to reach"))?;
    let theirs = read_reply(stream)?;
    // What the target now holds, for the next sync (its recorded manifest has this root).
    if let Some(path) = peer {
        let _ = plan.want.store(path);
    }
    plan.finish(&mut summary);
    summary.drift = theirs.drift;
    summary.drift_paths = theirs.drift_paths;
    summary.notes.extend(theirs.notes);
    summary.recovered = theirs.recovered;
    summary.reused_bytes = theirs.reused_bytes;
    summary.tree_files = theirs.tree_files;
    summary.tree_bytes = theirs.tree_bytes;
    summary.root_hash = theirs.root_hash;
    summary.duration_ms = started.elapsed().as_millis() as u64;
    summary.phase_ms = ctl.timings();
    for (phase, ms) in theirs.phase_ms {
        summary
            .phase_ms
            .entry(format!("target {phase}"))
            .or_insert(ms);
    }
    Ok(summary)
}

/// The target's manifest: sent whole, or as a change of the agreed state when the
/// source's copy of it (`peer`) has the same root hash.
fn target_manifest(
    stream: &mut dyn Duplex,
    peer: Option<&std::path::Path>,
) -> Result<Manifest, EngineError> {
    let (tag, bytes) = read_message(stream).map_err(peer_err("reading the target's manifest"))?;
    let bytes = match tag {
        TARGET_MANIFEST => bytes,
        TARGET_DELTA if bytes.len() >= 32 => {
            let known = peer
                .and_then(|p| Manifest::load(p).ok().flatten())
                .filter(|m| m.root_hash().as_slice() == &bytes[..32]);
            if let Some(agreed) = known {
                return apply_delta(&agreed, &bytes[32..]);
            }
            write_message(stream, NEED_MANIFEST, &[]).map_err(peer_err("asking"))?;
            let (tag, bytes) =
                read_message(stream).map_err(peer_err("reading the target's manifest"))?;
            if tag != TARGET_MANIFEST {
                return Err(read_reply_after(tag, &bytes));
            }
            bytes
        }
        _ => return Err(read_reply_after(tag, &bytes)),
    };
    Manifest::decode(&bytes).map_err(peer_err("reading the target's manifest"))
}

/// Where the target keeps the state both sides agreed on at the end of the last transfer.
fn agreed_path(dst: &Place) -> std::path::PathBuf {
    dst.state_dir.join("agreed-manifest")
}

/// A manifest as a change of another: its root hash, the entries that differ (as `new`
/// has them) and the paths that go.
fn encode_delta(root: [u8; 32], changed: Vec<Entry>, deleted: &[Vec<u8>]) -> Vec<u8> {
    let mut out = root.to_vec();
    let changed = Manifest { entries: changed }.encode();
    out.extend_from_slice(&(changed.len() as u64).to_le_bytes());
    out.extend_from_slice(&changed);
    out.extend_from_slice(&(deleted.len() as u64).to_le_bytes());
    for path in deleted {
        out.extend_from_slice(&(path.len() as u32).to_le_bytes());
        out.extend_from_slice(path);
    }
    out
}

/// `new` as a change of `old` (see [`encode_delta`]).
fn delta_between(old: &Manifest, new: &Manifest) -> Vec<u8> {
    let (pairs, deleted) = diff(old, new);
    let changed = pairs
        .into_iter()
        .filter(|(c, _, _)| *c != Change::Unchanged)
        .map(|(_, e, _)| e.clone())
        .collect();
    let deleted: Vec<Vec<u8>> = deleted.iter().map(|e| e.path.clone()).collect();
    encode_delta(new.root_hash(), changed, &deleted)
}

/// The state to reach as a change of the target's manifest: the entries that change (as
/// the state has them, after any re-read) and the paths that go.
fn state_delta(plan: &super::sync::Plan) -> Vec<u8> {
    let changed: Vec<Entry> = plan
        .changes
        .iter()
        .filter_map(|(_, e)| {
            plan.want
                .entries
                .binary_search_by(|w| path_cmp(&w.path, &e.path))
                .ok()
                .map(|i| plan.want.entries[i].clone())
        })
        .collect();
    encode_delta(plan.want.root_hash(), changed, &plan.deleted)
}

/// A manifest from another and a change of it ([`encode_delta`]); its root hash must be
/// the one the other side computed.
fn apply_delta(current: &Manifest, delta: &[u8]) -> Result<Manifest, EngineError> {
    let bad = || EngineError::Integrity("a malformed manifest change from the other server".into());
    let take = |at: &mut usize, n: usize| -> Result<&[u8], EngineError> {
        let piece = delta.get(*at..*at + n).ok_or_else(bad)?;
        *at += n;
        Ok(piece)
    };
    let mut at = 0;
    let root: [u8; 32] = take(&mut at, 32)?.try_into().map_err(|_| bad())?;
    let len = u64::from_le_bytes(take(&mut at, 8)?.try_into().map_err(|_| bad())?) as usize;
    let changed = Manifest::decode(take(&mut at, len)?).map_err(|_| bad())?;
    let count = u64::from_le_bytes(take(&mut at, 8)?.try_into().map_err(|_| bad())?);
    let mut gone = std::collections::HashSet::new();
    for _ in 0..count {
        let n = u32::from_le_bytes(take(&mut at, 4)?.try_into().map_err(|_| bad())?) as usize;
        gone.insert(take(&mut at, n)?.to_vec());
    }
    let mut by_path: std::collections::HashMap<Vec<u8>, Entry> = current
        .entries
        .iter()
        .filter(|e| !gone.contains(&e.path))
        .map(|e| (e.path.clone(), e.clone()))
        .collect();
    for e in changed.entries {
        by_path.insert(e.path.clone(), e);
    }
    let mut entries: Vec<Entry> = by_path.into_values().collect();
    entries.sort_by(|a, b| path_cmp(&a.path, &b.path));
    let want = Manifest { entries };
    if want.root_hash() != root {
        return Err(EngineError::Integrity(
            "a manifest rebuilt from a change does not match the other server's".into(),
        ));
    }
    Ok(want)
}

/// A reply where another message was due: the target failed before the transfer.
fn read_reply_after(tag: u8, bytes: &[u8]) -> EngineError {
    if tag != REPLY {
        return EngineError::Integrity("the target answered out of turn".into());
    }
    let mut framed = vec![REPLY];
    framed.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    framed.extend_from_slice(bytes);
    match read_reply(&mut framed.as_slice()) {
        Err(e) => e,
        Ok(_) => EngineError::Integrity("the target ended the sync early".into()),
    }
}

/// [`receive_sync_from`] but the reply.
fn sync_target_half(
    dst: &Place,
    stream: &mut dyn Duplex,
    keep: &dyn Fn(&[u8]) -> bool,
    ctl: &Control,
) -> Result<Summary, EngineError> {
    let started = Instant::now();
    (|| {
        let prepared = prepare_target(dst)?;
        ctl.phase(Phase::Scan, None, None);
        let target = scan_target(dst, prepared, ctl)?;
        let mut summary = Summary::default();
        drift(&target, keep, &mut summary);
        // As a change of the state agreed on last time, when there is one.
        let agreed = Manifest::load(&agreed_path(dst)).ok().flatten();
        let (mut tag, mut bytes) = match &agreed {
            Some(agreed) => {
                let mut message = agreed.root_hash().to_vec();
                message.extend_from_slice(&delta_between(agreed, &target.man));
                write_message(stream, TARGET_DELTA, &message)
                    .map_err(peer_err("sending the manifest"))?;
                read_message(stream).map_err(peer_err("reading the plan"))?
            }
            None => (NEED_MANIFEST, Vec::new()),
        };
        if tag == NEED_MANIFEST {
            write_message(stream, TARGET_MANIFEST, &target.man.encode())
                .map_err(peer_err("sending the manifest"))?;
            (tag, bytes) = read_message(stream).map_err(peer_err("reading the plan"))?;
        }
        if tag == ABORT {
            return Err(EngineError::Refused(format!(
                "the source gave up: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        let word = |i: usize| -> Option<u64> {
            let b = bytes.get(i * 8..i * 8 + 8)?;
            Some(u64::from_le_bytes(b.try_into().ok()?))
        };
        let (files_total, want, staged) = match (word(0), word(1), word(2)) {
            (Some(files), Some(want), Some(staged)) if tag == CHANGES && bytes.len() == 24 => {
                (files, want, staged)
            }
            _ => return Err(EngineError::Integrity("no plan from the source".into())),
        };
        ctl.phase(Phase::Transfer, None, Some(files_total));
        let received = if files_total > 0 {
            let prepared =
                make_room(dst, want, staged).and_then(|note| Ok((note, stage_dir(dst)?)));
            let (note, stage) = match prepared {
                Ok(prepared) => prepared,
                Err(e) => {
                    let _ = remove_work(dst);
                    // The source sends its frames regardless: they are read to their end
                    // (and dropped), then its next message, before the reply says why.
                    let _ = receive_frames(stream, |r| {
                        drop(r);
                        Ok(())
                    });
                    let _ = read_message(stream);
                    return Err(e);
                }
            };
            summary.notes.extend(note);
            let current = &target.man;
            let writeback = fsx::WriteBack::start(&stage);
            let received = receive_frames(stream, |r| {
                receive(
                    Mode::Sync,
                    &dst.root,
                    &stage,
                    r,
                    Some(current),
                    (&[], None),
                    ctl,
                )
            });
            drop(writeback);
            match received {
                Ok(r) => Some(r),
                Err(e) => {
                    let _ = remove_work(dst);
                    // The source's next message (its state, or why it stopped) is read
                    // before the reply.
                    let _ = read_message(stream);
                    return Err(e);
                }
            }
        } else {
            None
        };
        let (tag, bytes) = read_message(stream).map_err(peer_err("reading the state"))?;
        if tag != STATE_DELTA {
            let _ = remove_work(dst);
            return Err(EngineError::Refused(format!(
                "the source gave up: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        let want = match apply_delta(&target.man, &bytes) {
            Ok(w) => w,
            Err(e) => {
                let _ = remove_work(dst);
                return Err(e);
            }
        };
        commit_sync(dst, target, &want, received, &mut summary, ctl)?;
        // The state both sides now agree on (the source keeps the same).
        let _ = want.store(&agreed_path(dst));
        summary.duration_ms = started.elapsed().as_millis() as u64;
        summary.phase_ms = ctl.timings();
        Ok(summary)
    })()
}

/// A connection that counts the bytes crossing it both ways.
struct Counted<'a> {
    inner: &'a mut dyn Duplex,
    bytes: u64,
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

impl Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Runs a half over `stream`; its summary says what crossed the connection.
fn counted(
    stream: &mut dyn Duplex,
    half: impl FnOnce(&mut dyn Duplex) -> Result<Summary, EngineError>,
) -> Result<Summary, EngineError> {
    let mut c = Counted {
        inner: stream,
        bytes: 0,
    };
    let mut result = half(&mut c);
    if let Ok(summary) = &mut result {
        summary.wire_bytes = Some(c.bytes);
    }
    result
}

/// The source's half of a copy to another server (see `copy_source_half`), counting
/// what crosses the connection.
pub fn send_copy_to(
    src: &Place,
    stream: &mut dyn Duplex,
    peer: Option<&std::path::Path>,
    ctl: &Control,
) -> Result<Summary, EngineError> {
    crate::engine::mounted(&[src])?;
    counted(stream, |s| copy_source_half(src, s, peer, ctl))
}

/// The target's half of a copy from another server (see `copy_target_half`), counting
/// what crosses the connection.
pub fn receive_copy_from(
    dst: &Place,
    stream: &mut dyn Duplex,
    ctl: &Control,
) -> Result<Summary, EngineError> {
    crate::engine::mounted(&[dst])?;
    counted(stream, |s| copy_target_half(dst, s, ctl))
}

/// The source's half of a sync to another server (see `sync_source_half`), counting
/// what crosses the connection.
pub fn send_sync_to(
    src: &Place,
    stream: &mut dyn Duplex,
    keep: &dyn Fn(&[u8]) -> bool,
    peer: Option<&std::path::Path>,
    ctl: &Control,
) -> Result<Summary, EngineError> {
    crate::engine::mounted(&[src])?;
    counted(stream, |s| sync_source_half(src, s, keep, peer, ctl))
}

/// The target's half of a sync from another server: its tree scanned and its manifest
/// sent, the changes staged, then applied (behind the commit marker) and verified against
/// the state the source sends; the reply sent. Also its result here.
pub fn receive_sync_from(
    dst: &Place,
    stream: &mut dyn Duplex,
    keep: &dyn Fn(&[u8]) -> bool,
    ctl: &Control,
) -> Result<Summary, EngineError> {
    counted(stream, |s| {
        // (A tree that cannot be mounted fails here, so that the reply says why.)
        let result =
            crate::engine::mounted(&[dst]).and_then(|()| sync_target_half(dst, s, keep, ctl));
        reply(s, dst, &result);
        result
    })
}
