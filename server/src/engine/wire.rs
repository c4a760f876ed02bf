//! The sender/receiver protocol: length-prefixed frames over any byte stream. In this
//! process both ends run in threads joined by [`pipe`]; a remote server agent later reads
//! the same frames from a socket, so the copy and sync algorithms do not change.

use std::io::{self, Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use super::manifest::{bad, Dec, Enc, Entry};

/// Largest frame a receiver accepts (a data frame is at most one chunk or read buffer).
const MAX_FRAME: usize = 8 << 20;

#[derive(Debug, PartialEq)]
pub enum Frame {
    /// An entry to create or update; for a file with content, content frames follow,
    /// then [`Frame::FileEnd`].
    Entry(Entry),
    /// Literal content.
    Data(Vec<u8>),
    /// Content the receiver already has: this range of its current version of the file.
    CopyOld { offset: u64, len: u64 },
    /// The whole content of another file the receiver already has (rename, duplicate).
    Reuse { from: Vec<u8> },
    /// The whole content of a file in another tree on the receiver's server, one of those
    /// the receiver offered before the transfer (`tree` indexes that offer).
    ReuseLocal { tree: u32, from: Vec<u8> },
    /// End of a file's content: what the receiver must have written.
    /// (Chunk lists do not travel: the receiver cuts the same chunks, the hash covers them.)
    FileEnd { hash: [u8; 32], size: u64 },
    /// Only the metadata of this (existing, same-content) entry changes.
    Meta(Entry),
    /// Remove this path (and anything below it).
    Delete { path: Vec<u8> },
    /// The sender is done.
    Done,
}

/// Counts what crosses the stream, by kind.
#[derive(Debug, Default, Clone, Copy)]
pub struct WireStats {
    pub total: u64,
    pub data: u64,
}

pub struct FrameWriter<W: Write> {
    inner: W,
    pub stats: WireStats,
    enc: Enc,
}

impl<W: Write> FrameWriter<W> {
    pub fn new(inner: W) -> Self {
        FrameWriter {
            inner,
            stats: WireStats::default(),
            enc: Enc::default(),
        }
    }

    fn header(&mut self, tag: u8, len: usize) -> io::Result<()> {
        let mut h = [0u8; 5];
        h[0] = tag;
        h[1..].copy_from_slice(&(len as u32).to_le_bytes());
        self.inner.write_all(&h)?;
        self.stats.total += 5 + len as u64;
        Ok(())
    }

    /// Literal content, written without an intermediate copy.
    pub fn data(&mut self, bytes: &[u8]) -> io::Result<()> {
        for piece in bytes.chunks(MAX_FRAME) {
            self.header(2, piece.len())?;
            self.inner.write_all(piece)?;
            self.stats.data += piece.len() as u64;
        }
        Ok(())
    }

    pub fn send(&mut self, frame: &Frame) -> io::Result<()> {
        if let Frame::Data(d) = frame {
            return self.data(d);
        }
        self.enc.buf.clear();
        let tag = match frame {
            Frame::Entry(e) => {
                self.enc.wire_entry(e);
                1
            }
            Frame::Data(_) => unreachable!("handled above"),
            Frame::CopyOld { offset, len } => {
                self.enc.u64(*offset);
                self.enc.u64(*len);
                3
            }
            Frame::Reuse { from } => {
                self.enc.bytes(from);
                4
            }
            Frame::FileEnd { hash, size } => {
                self.enc.hash(hash);
                self.enc.u64(*size);
                5
            }
            Frame::Delete { path } => {
                self.enc.bytes(path);
                6
            }
            Frame::ReuseLocal { tree, from } => {
                self.enc.u32(*tree);
                self.enc.bytes(from);
                9
            }
            Frame::Done => 7,
            Frame::Meta(e) => {
                self.enc.wire_entry(e);
                8
            }
        };
        let payload = std::mem::take(&mut self.enc.buf);
        let res = self
            .header(tag, payload.len())
            .and_then(|_| self.inner.write_all(&payload));
        self.enc.buf = payload;
        res
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub struct FrameReader<R: Read> {
    inner: R,
    buf: Vec<u8>,
    /// A frame read ahead and put back (`unread`): the next one `read_frame` returns.
    ahead: Option<Frame>,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: Vec::new(),
            ahead: None,
        }
    }

    /// Puts back a frame read ahead: the next `read_frame` returns it.
    pub fn unread(&mut self, frame: Frame) {
        debug_assert!(self.ahead.is_none(), "one frame read ahead at most");
        self.ahead = Some(frame);
    }

    pub fn read_frame(&mut self) -> io::Result<Frame> {
        if let Some(frame) = self.ahead.take() {
            return Ok(frame);
        }
        let mut h = [0u8; 5];
        self.inner.read_exact(&mut h)?;
        let len = u32::from_le_bytes([h[1], h[2], h[3], h[4]]) as usize;
        if len > MAX_FRAME {
            return Err(bad("frame too large"));
        }
        self.buf.resize(len, 0);
        self.inner.read_exact(&mut self.buf)?;
        let mut d = Dec::new(&self.buf);
        let frame = match h[0] {
            1 => Frame::Entry(d.entry()?),
            2 => return Ok(Frame::Data(std::mem::take(&mut self.buf))),
            3 => Frame::CopyOld {
                offset: d.u64()?,
                len: d.u64()?,
            },
            4 => Frame::Reuse {
                from: checked_path(d.bytes()?)?,
            },
            5 => Frame::FileEnd {
                hash: d.hash()?,
                size: d.u64()?,
            },
            6 => Frame::Delete {
                path: checked_path(d.bytes()?)?,
            },
            7 => Frame::Done,
            8 => Frame::Meta(d.entry()?),
            9 => Frame::ReuseLocal {
                tree: d.u32()?,
                from: checked_path(d.bytes()?)?,
            },
            _ => return Err(bad("unknown frame")),
        };
        if !d.is_empty() {
            return Err(bad("trailing bytes in frame"));
        }
        Ok(frame)
    }
}

fn checked_path(p: Vec<u8>) -> io::Result<Vec<u8>> {
    if super::manifest::valid_path(&p) {
        Ok(p)
    } else {
        Err(bad("invalid path in frame"))
    }
}

/// An in-process byte stream between two threads: buffers of 1 MiB handed over a bounded
/// channel (so a slow receiver slows the sender down instead of growing memory).
pub fn pipe() -> (PipeWriter, PipeReader) {
    let (tx, rx) = sync_channel(8);
    // Read buffers go back to the writer: no new megabyte allocated per megabyte sent.
    let (back, spare) = sync_channel(8);
    (
        PipeWriter {
            tx,
            spare,
            buf: Vec::with_capacity(PIPE_BUF),
        },
        PipeReader {
            rx,
            back,
            cur: Vec::new(),
            pos: 0,
        },
    )
}

const PIPE_BUF: usize = 1 << 20;

pub struct PipeWriter {
    tx: SyncSender<Vec<u8>>,
    spare: Receiver<Vec<u8>>,
    buf: Vec<u8>,
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PIPE_BUF {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(PIPE_BUF));
        let full = std::mem::replace(&mut self.buf, next);
        self.tx
            .send(full)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "receiver gone"))
    }
}

pub struct PipeReader {
    rx: Receiver<Vec<u8>>,
    back: SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.cur.len() {
            match self.rx.recv() {
                Ok(buf) => {
                    let mut used = std::mem::replace(&mut self.cur, buf);
                    if used.capacity() >= PIPE_BUF {
                        used.clear();
                        let _ = self.back.try_send(used);
                    }
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::manifest::Kind;

    #[test]
    fn frames_round_trip_through_the_pipe() {
        let (w, r) = pipe();
        let mut e = Entry::new(b"a/b\n\xff".to_vec(), Kind::File);
        e.size = 3;
        let frames = vec![
            Frame::Entry(e),
            Frame::Data(b"abc".to_vec()),
            Frame::CopyOld { offset: 7, len: 9 },
            Frame::Reuse {
                from: b"x/y".to_vec(),
            },
            Frame::FileEnd {
                hash: [7; 32],
                size: 3,
            },
            Frame::Delete {
                path: b"gone".to_vec(),
            },
            Frame::Done,
        ];
        let sent: Vec<_> = frames.iter().map(|f| format!("{f:?}")).collect();
        let t = std::thread::spawn(move || {
            let mut fw = FrameWriter::new(w);
            for f in &frames {
                fw.send(f).unwrap();
            }
            fw.flush().unwrap();
            fw.stats
        });
        let mut fr = FrameReader::new(r);
        let got: Vec<_> = (0..sent.len())
            .map(|_| format!("{:?}", fr.read_frame().unwrap()))
            .collect();
        assert_eq!(got, sent);
        let stats = t.join().unwrap();
        assert_eq!(stats.data, 3);
        assert!(fr.read_frame().is_err(), "end of stream");
    }

    #[test]
    fn hostile_frames_are_refused() {
        for bytes in [
            vec![9, 0, 0, 0, 0],
            vec![2, 255, 255, 255, 255],
            vec![6, 6, 0, 0, 0, 2, 0, 0, 0, b'.', b'.'],
        ] {
            let mut fr = FrameReader::new(&bytes[..]);
            assert!(fr.read_frame().is_err(), "{bytes:?}");
        }
    }
}
