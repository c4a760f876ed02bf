//! Which byte ranges of two files are the same physical data (FIEMAP). After a reflink
//! copy (XFS) or a snapshot (btrfs), a file and its copy share their extents until one of
//! them is written; a write gets new extents for what it wrote only. Where both map a range
//! to the same shared extent, their content there is identical without reading either:
//! a sync reads only a large file's ranges that are its own.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `FS_IOC_FIEMAP`: `_IOWR('f', 11, struct fiemap)`.
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
/// Write the file's dirty pages first: until written back, a write into a shared range may
/// still be mapped to the old, shared extent (XFS keeps it in a separate fork).
const FIEMAP_FLAG_SYNC: u32 = 0x1;
const EXTENT_LAST: u32 = 0x1;
/// Flags under which an extent's physical address says nothing certain about its bytes:
/// unknown or not yet allocated, encoded (compressed, encrypted), not block-aligned, inline
/// or tail-packed, or preallocated and unwritten.
const EXTENT_UNCERTAIN: u32 = 0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800;
const EXTENT_SHARED: u32 = 0x2000;
/// Extents asked for per call.
const BATCH: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

/// `struct fiemap` with room for [`BATCH`] extents.
#[repr(C)]
struct Fiemap {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
    extents: [FiemapExtent; BATCH],
}

/// One extent of a file: `length` bytes at `logical` in the file, at `physical` on disk.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Extent {
    logical: u64,
    physical: u64,
    length: u64,
}

/// The file's extents within `[start, start + len)` whose physical address identifies
/// their bytes and that `keep` accepts by their flags, in file order; its dirty pages are
/// written back first where `sync`.
fn extents(
    file: &File,
    (start, len): (u64, u64),
    sync: bool,
    keep: impl Fn(u32) -> bool,
) -> io::Result<Vec<Extent>> {
    let end = start.saturating_add(len);
    let mut out = Vec::new();
    let mut map = Box::new(Fiemap {
        start: 0,
        length: 0,
        flags: 0,
        mapped_extents: 0,
        extent_count: 0,
        reserved: 0,
        extents: [FiemapExtent::default(); BATCH],
    });
    let mut from = start;
    while from < end {
        map.start = from;
        map.length = end - from;
        map.flags = if sync { FIEMAP_FLAG_SYNC } else { 0 };
        map.mapped_extents = 0;
        map.extent_count = BATCH as u32;
        // SAFETY: `map` is a `struct fiemap` followed by room for `extent_count` extents,
        // as linux/fiemap.h lays it out, and lives through the call.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP as _, &mut *map) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let got = &map.extents[..(map.mapped_extents as usize).min(BATCH)];
        let Some(last) = got.last() else {
            break;
        };
        out.extend(
            got.iter()
                .filter(|e| e.flags & EXTENT_UNCERTAIN == 0 && keep(e.flags))
                .map(|e| Extent {
                    logical: e.logical,
                    physical: e.physical,
                    length: e.length,
                }),
        );
        let next = last.logical.saturating_add(last.length);
        if last.flags & EXTENT_LAST != 0 || next <= from {
            break;
        }
        from = next;
    }
    Ok(out)
}

/// The file's extents that are shared with another file (or snapshot), in file order.
fn shared_extents(file: &File) -> io::Result<Vec<Extent>> {
    extents(file, (0, u64::MAX), true, |flags| {
        flags & EXTENT_SHARED != 0
    })
}

/// The byte ranges `[start, end)`, in order and merged, where `a` and `b` map the same
/// offsets to the same shared extents: there, their content is the same. Both must be on
/// one filesystem (physical addresses of two filesystems say nothing about each other);
/// the caller checks that. Empty where the filesystem shares nothing or has no FIEMAP.
pub fn same_ranges(a: &File, b: &File) -> Vec<(u64, u64)> {
    match (shared_extents(a), shared_extents(b)) {
        (Ok(a), Ok(b)) => common(&a, &b),
        _ => Vec::new(),
    }
}

/// The ranges where two extent lists (each in file order) map an offset to the same
/// physical byte, merged.
fn common(a: &[Extent], b: &[Extent]) -> Vec<(u64, u64)> {
    merged(
        common_extents(a, b)
            .iter()
            .map(|e| (e.logical, e.logical + e.length)),
    )
}

/// The pieces where two extent lists (each in file order) map an offset to the same
/// physical byte, in order: each its offset, that byte, its length.
fn common_extents(a: &[Extent], b: &[Extent]) -> Vec<Extent> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (x, y) = (a[i], b[j]);
        let (x_end, y_end) = (x.logical + x.length, y.logical + y.length);
        let (start, end) = (x.logical.max(y.logical), x_end.min(y_end));
        // The same offset lands on the same disk byte in both.
        let aligned = i128::from(x.physical) - i128::from(x.logical)
            == i128::from(y.physical) - i128::from(y.logical);
        if start < end && aligned {
            out.push(Extent {
                logical: start,
                physical: x.physical + (start - x.logical),
                length: end - start,
            });
        }
        if x_end <= y_end {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// Ranges (in order) with the touching ones joined.
fn merged(ranges: impl Iterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => out.push((start, end)),
        }
    }
    out
}

/// [`same_ranges`] for two files on two image trees ([`super::image`]) whose images
/// (`a_image`, `b_image`) are on one filesystem with reflinks, as a copy of an image tree
/// and its source are: where `a` and `b` map an offset to the same offset of their
/// filesystems (as a file does in a clone of its filesystem until it is written), and the
/// two images share their extents there, the bytes are the same. A write to either file
/// moves it (inside its filesystem) or writes its image in place, which gives the image a
/// new extent there (outside): either way that range is no longer found. Each file's
/// pages are written back before its image's, so that a write still in its page cache
/// reaches the image first. (An image is written back once, at its first look: it is a
/// large file, and what reaches it after that is a change made after the files' own
/// looks, which their version checks around the scan see.)
pub fn same_ranges_through_images(
    a: &File,
    a_image: &File,
    b: &File,
    b_image: &File,
) -> Vec<(u64, u64)> {
    let all = |f: &File| extents(f, (0, u64::MAX), true, |_| true);
    let (Ok(inner_a), Ok(inner_b)) = (all(a), all(b)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, inner) in common_extents(&inner_a, &inner_b).into_iter().enumerate() {
        let shared = |image: &File| {
            extents(image, (inner.physical, inner.length), i == 0, |flags| {
                flags & EXTENT_SHARED != 0
            })
        };
        let (Ok(outer_a), Ok(outer_b)) = (shared(a_image), shared(b_image)) else {
            return Vec::new();
        };
        // Offsets in the images, back to offsets in the files.
        let (lo, hi) = (inner.physical, inner.physical + inner.length);
        out.extend(common(&outer_a, &outer_b).into_iter().filter_map(|(s, e)| {
            let (s, e) = (s.max(lo), e.min(hi));
            (s < e).then(|| (s - lo + inner.logical, e - lo + inner.logical))
        }));
    }
    merged(out.into_iter())
}

/// Whether `[start, end)` lies within one of `ranges` (in order, merged).
pub fn covers(ranges: &[(u64, u64)], start: u64, end: u64) -> bool {
    let i = ranges.partition_point(|r| r.1 < end);
    ranges.get(i).is_some_and(|r| r.0 <= start && end <= r.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(logical: u64, physical: u64, length: u64) -> Extent {
        Extent {
            logical,
            physical,
            length,
        }
    }

    #[test]
    fn common_ranges_need_the_same_disk_byte_at_the_same_offset() {
        // a: [0,100) at 1000, [100,200) at 5000 (rewritten), [200,300) at 1200.
        let a = [ext(0, 1000, 100), ext(100, 5000, 100), ext(200, 1200, 100)];
        // b: one extent [0,300) at 1000 (the original).
        let b = [ext(0, 1000, 300)];
        assert_eq!(common(&a, &b), vec![(0, 100), (200, 300)]);
        // The same disk bytes at another offset are not the same content at this one.
        assert_eq!(common(&[ext(0, 1010, 100)], &[ext(0, 1000, 100)]), vec![]);
        // Split differently in each, contiguous: merged into one range.
        let a = [ext(0, 1000, 50), ext(50, 1050, 250)];
        assert_eq!(common(&a, &b), vec![(0, 300)]);
        assert_eq!(common(&[], &b), vec![]);
    }

    #[test]
    fn covers_means_wholly_inside_one_range() {
        let r = [(0, 100), (200, 300)];
        assert!(covers(&r, 0, 100));
        assert!(covers(&r, 210, 300));
        assert!(!covers(&r, 90, 110));
        assert!(!covers(&r, 100, 200));
        assert!(!covers(&r, 250, 301));
        assert!(!covers(&[], 0, 1));
    }
}
