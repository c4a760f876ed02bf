//! Container filesystems on disk: whole-tree copies for `import`, demo data and snapshots.
//!
//! No web or database types here. The incremental copy/sync engine (manifests, content
//! hashes, deltas, journal) replaces the transfer part in a later issue; this module
//! already keeps its rules: symlinks are never followed, special files are reported and not
//! silently dropped, and a tree only appears under its final name once it is complete.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What a copy saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TreeStats {
    /// Regular files, each hard-linked inode counted once.
    pub files: u64,
    /// Bytes of content, each hard-linked inode counted once.
    pub bytes: u64,
    /// Paths (relative to the root) of device files, FIFOs and sockets, which are not copied.
    pub skipped: Vec<PathBuf>,
}

/// Copies the directory tree at `src` to `dst`, which must not exist yet, preserving file
/// types, modes, mtimes, ownership (when permitted), symlinks (as links) and hard links.
///
/// The copy is assembled in a hidden staging directory beside `dst` and renamed into place
/// at the end, so `dst` never exists half-copied; on error the staging directory is removed.
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<TreeStats> {
    let meta = fs::symlink_metadata(src)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a directory", src.display()),
        ));
    }
    if fs::symlink_metadata(dst).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} already exists", dst.display()),
        ));
    }
    let parent = dst
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "destination has no parent"))?;
    fs::create_dir_all(parent)?;
    let staging = parent.join(format!(
        ".staging-{}-{}",
        dst.file_name().and_then(|n| n.to_str()).unwrap_or("tree"),
        crate::ids::new_id()
    ));
    let result = (|| {
        fs::create_dir(&staging)?;
        let mut copier = Copier::default();
        copier.copy_dir(src, &staging, Path::new(""))?;
        apply_metadata(&staging, &meta)?;
        fs::rename(&staging, dst)?;
        Ok(copier.stats)
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}

#[derive(Default)]
struct Copier {
    stats: TreeStats,
    /// (dev, inode) of multiply-linked source files -> their first copy, to link again.
    links: HashMap<(u64, u64), PathBuf>,
}

impl Copier {
    fn copy_dir(&mut self, src: &Path, dst: &Path, rel: &Path) -> io::Result<()> {
        let mut entries: Vec<_> = fs::read_dir(src)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            let (from, to, rel) = (src.join(&name), dst.join(&name), rel.join(&name));
            let meta = fs::symlink_metadata(&from)?;
            let ft = meta.file_type();
            if ft.is_dir() {
                fs::create_dir(&to)?;
                self.copy_dir(&from, &to, &rel)?;
                apply_metadata(&to, &meta)?;
            } else if ft.is_symlink() {
                std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
                chown_if_permitted(&to, &meta, true)?;
            } else if ft.is_file() {
                let key = (meta.dev(), meta.ino());
                if meta.nlink() > 1 {
                    if let Some(first) = self.links.get(&key) {
                        fs::hard_link(first, &to)?;
                        continue;
                    }
                    self.links.insert(key, to.clone());
                }
                copy_file(&from, &to, &meta)?;
                self.stats.files += 1;
                self.stats.bytes += meta.len();
            } else {
                self.stats.skipped.push(rel);
            }
        }
        Ok(())
    }
}

fn copy_file(from: &Path, to: &Path, meta: &fs::Metadata) -> io::Result<()> {
    let mut src = File::open(from)?;
    let mut dst = File::options().write(true).create_new(true).open(to)?;
    io::copy(&mut src, &mut dst)?;
    drop(dst);
    apply_metadata(to, meta)
}

/// Mode, ownership and mtime of a file or directory (not a symlink).
fn apply_metadata(path: &Path, meta: &fs::Metadata) -> io::Result<()> {
    chown_if_permitted(path, meta, false)?;
    fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    if let Ok(mtime) = meta.modified() {
        // A read-only handle is enough for futimens, and works for directories too.
        File::open(path)?.set_modified(mtime)?;
    }
    Ok(())
}

/// Ownership is kept when doppel runs as root; otherwise files belong to doppel's user.
fn chown_if_permitted(path: &Path, meta: &fs::Metadata, symlink: bool) -> io::Result<()> {
    let result = if symlink {
        std::os::unix::fs::lchown(path, Some(meta.uid()), Some(meta.gid()))
    } else {
        std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid()))
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(()),
        other => other,
    }
}

/// Counts the regular files and content bytes of a tree (hard links once), without
/// following symlinks.
pub fn tree_stats(root: &Path) -> io::Result<TreeStats> {
    fn walk(
        dir: &Path,
        rel: &Path,
        seen: &mut HashSet<(u64, u64)>,
        stats: &mut TreeStats,
    ) -> io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let meta = fs::symlink_metadata(entry.path())?;
            let ft = meta.file_type();
            let rel = rel.join(entry.file_name());
            if ft.is_dir() {
                walk(&entry.path(), &rel, seen, stats)?;
            } else if ft.is_file() {
                if seen.insert((meta.dev(), meta.ino())) {
                    stats.files += 1;
                    stats.bytes += meta.len();
                }
            } else if !ft.is_symlink() {
                stats.skipped.push(rel);
            }
        }
        Ok(())
    }
    let mut stats = TreeStats::default();
    walk(root, Path::new(""), &mut HashSet::new(), &mut stats)?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::time::{Duration, SystemTime};

    fn sample(root: &Path) {
        fs::create_dir_all(root.join("etc/app")).unwrap();
        fs::write(root.join("etc/app/config.toml"), b"port = 80\n").unwrap();
        fs::write(root.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(root.join("secret"), b"k").unwrap();
        fs::set_permissions(root.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::hard_link(root.join("run.sh"), root.join("run-again.sh")).unwrap();
        symlink("etc/app/config.toml", root.join("config")).unwrap();
        symlink("/etc/passwd", root.join("escape")).unwrap();
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
        File::open(root.join("secret"))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }

    #[test]
    fn copy_preserves_types_modes_links_and_mtimes() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("out/dst"));
        fs::create_dir(&src).unwrap();
        sample(&src);
        let stats = copy_tree(&src, &dst).unwrap();
        assert_eq!(stats.files, 3, "hard link counted once");
        assert_eq!(stats.bytes, 10 + 18 + 1);
        assert_eq!(
            fs::read(dst.join("etc/app/config.toml")).unwrap(),
            b"port = 80\n"
        );
        let mode = |p: &str| fs::metadata(dst.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("run.sh"), 0o755);
        assert_eq!(mode("secret"), 0o600);
        let a = fs::metadata(dst.join("run.sh")).unwrap();
        let b = fs::metadata(dst.join("run-again.sh")).unwrap();
        assert_eq!(a.ino(), b.ino(), "hard link kept");
        assert_eq!(
            fs::read_link(dst.join("config")).unwrap(),
            Path::new("etc/app/config.toml")
        );
        // The absolute symlink is copied as a link, never followed.
        assert_eq!(
            fs::read_link(dst.join("escape")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(
            fs::metadata(dst.join("secret"))
                .unwrap()
                .modified()
                .unwrap(),
            fs::metadata(src.join("secret"))
                .unwrap()
                .modified()
                .unwrap()
        );
        // Nothing left behind but the finished tree.
        let leftovers: Vec<_> = fs::read_dir(tmp.path().join("out")).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
        assert_eq!(tree_stats(&dst).unwrap(), stats);
    }

    #[test]
    fn copy_refuses_an_existing_destination_and_a_file_source() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        let err = copy_tree(&src, tmp.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        fs::write(tmp.path().join("f"), b"x").unwrap();
        let err = copy_tree(&tmp.path().join("f"), &tmp.path().join("g")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
