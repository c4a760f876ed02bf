//! Settings shared by every subcommand: where the data lives.

use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct DataConfig {
    pub data_dir: PathBuf,
    /// `None`: a SQLite file in the data dir.
    pub database_url: Option<String>,
}

impl DataConfig {
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("doppel.db").display()),
        }
    }

    /// This process's certificate and key (mutual TLS with agents or the control plane).
    pub fn identity_dir(&self) -> PathBuf {
        self.data_dir.join("identity")
    }

    /// Where the storage roots of the embedded servers live.
    pub fn servers_dir(&self) -> PathBuf {
        self.data_dir.join("servers")
    }
}

/// The directory of a server's storage root that holds container trees.
pub fn containers_dir(storage_root: &Path) -> PathBuf {
    storage_root.join("containers")
}

/// A container's root directory on its server.
pub fn container_root(storage_root: &Path, container_id: &str) -> PathBuf {
    containers_dir(storage_root).join(container_id)
}

/// The directory of a server's storage root that holds snapshot trees, one directory per
/// container.
pub fn snapshots_dir(storage_root: &Path) -> PathBuf {
    storage_root.join("snapshots")
}

/// A snapshot's frozen tree on the container's server.
pub fn snapshot_root(storage_root: &Path, container_id: &str, snapshot_id: &str) -> PathBuf {
    snapshots_dir(storage_root)
        .join(container_id)
        .join(snapshot_id)
}

/// A size as doppel's flags and fields take one: a number of bytes with an optional K, M
/// or G (powers of 1024, as rsync counts), e.g. `50M`, or with a unit a decimal one, as
/// rsync takes (`1.5M`: 1.5 MiB, whole bytes rounded down); beyond `u64`, the largest
/// there is. `None`: not a size.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c.to_ascii_uppercase()),
        _ => (text, 'B'),
    };
    let factor: u64 = match unit {
        'B' => 1,
        'K' => 1 << 10,
        'M' => 1 << 20,
        'G' => 1 << 30,
        _ => return None,
    };
    let (whole, fraction) = match digits.split_once('.') {
        // A fraction of a byte is no size.
        Some((w, f)) if unit != 'B' && !f.is_empty() => (w, f),
        Some(_) => return None,
        None => (digits, ""),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) {
        return None;
    }
    // The fraction's bytes: its first digits (nine are finer than a byte of a G) over their
    // power of ten.
    let fraction = &fraction[..fraction.len().min(9)];
    let part = match fraction.parse::<u64>() {
        Ok(f) => f * factor / 10u64.pow(fraction.len() as u32),
        Err(_) => 0,
    };
    // A whole part too long for u64 is beyond any size: the largest there is.
    let whole = whole.parse::<u64>().unwrap_or(u64::MAX);
    Some(whole.saturating_mul(factor).saturating_add(part))
}

/// `--image-trees SIZE`: this process lays the trees it makes down as image trees of
/// SIZE bytes where their filesystem can hold them (XFS with reflinks), so that copies of
/// them are clones of one file. A setting of the process (its servers' storage roots are
/// all on its host), set once at start; unset: directories.
static IMAGE_TREES: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Sets `--image-trees` for this process (the first call wins).
pub fn lay_trees_down_as_images(size: u64) {
    let _ = IMAGE_TREES.set(size);
}

/// The size of the image trees this process lays down, if it does.
pub fn image_tree_size() -> Option<u64> {
    IMAGE_TREES.get().copied()
}

/// A data dir held by the one `doppel serve` or `doppel agent` that uses it: while this
/// lives, no other can. Two on one data dir would each resume the same interrupted jobs
/// into the same trees and each run the same containers. The lock is `flock` on
/// `<data dir>/doppel.lock`, so it goes with the process however that ends (a `kill -9`
/// too); the file says who holds it, for the error another one gets. Its descriptor is
/// close-on-exec: the containers' shims, which outlive doppel, do not keep it.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

/// Takes `data_dir` (made if missing) for this process, as `role` (`serve`, `agent`), or
/// says which process has it.
pub fn hold_data_dir(data_dir: &Path, role: &str) -> Result<DataDirLock, String> {
    use std::io::{Read, Seek, Write};
    let path = data_dir.join("doppel.lock");
    let failed = |what: &str, e: std::io::Error| format!("{what} {}: {e}", path.display());
    std::fs::create_dir_all(data_dir).map_err(|e| failed("creating the directory of", e))?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| failed("opening", e))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() {
                "another doppel".to_string()
            } else {
                format!("another doppel ({holder})")
            };
            return Err(format!(
                "{holder} is using the data dir {}: one doppel serve or agent per data dir \
                 (stop that one first, or give this one a --data-dir of its own)",
                data_dir.display()
            ));
        }
        Err(e) => return Err(failed("locking", e.into())),
    }
    let who = format!("{role}, pid {}\n", std::process::id());
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(who.as_bytes()))
        .map_err(|e| failed("writing", e))?;
    Ok(DataDirLock { _file: file })
}

/// The engine's view of a container: its root and its state (manifest, work dir), both
/// on the server's filesystem so staged files can be renamed into place.
pub fn container_place(storage_root: &Path, container_id: &str) -> crate::engine::Place {
    crate::engine::Place::new(
        container_root(storage_root, container_id),
        storage_root.join("state").join(container_id),
    )
    .with_image_size(image_tree_size())
}

pub fn snapshot_place(
    storage_root: &Path,
    container_id: &str,
    snapshot_id: &str,
) -> crate::engine::Place {
    crate::engine::Place::new(
        snapshot_root(storage_root, container_id, snapshot_id),
        storage_root
            .join("state")
            .join(container_id)
            .join("snapshots")
            .join(snapshot_id),
    )
    .with_image_size(image_tree_size())
}

/// A container's runtime bundle on its server: runc's `config.json`, the process's log and
/// its exit record. Beside the tree, never inside it (a sync would carry it).
pub fn runtime_dir(storage_root: &Path, container_id: &str) -> PathBuf {
    storage_root.join("runtime").join(container_id)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_data_dir_is_held_by_one_process_at_a_time_and_freed_with_it() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let held = super::hold_data_dir(&data, "serve").expect("a free data dir is taken");
        let refused = super::hold_data_dir(&data, "agent").expect_err("it is taken");
        let pid = std::process::id();
        assert!(
            refused.contains(&format!(
                "another doppel (serve, pid {pid}) is using the data dir"
            )),
            "{refused}"
        );
        // Another data dir is free.
        let other = super::hold_data_dir(&tmp.path().join("other"), "agent").unwrap();
        drop(held);
        // Freed with its holder: at once, unless another test's thread is just spawning a
        // process, whose copy of the descriptors (until its exec closes them) shares the
        // lock for that moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let again = loop {
            match super::hold_data_dir(&data, "agent") {
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                taken => break taken.expect("freed with its holder"),
            }
        };
        drop(again);
        drop(other);
        assert_eq!(
            std::fs::read_to_string(data.join("doppel.lock")).unwrap(),
            format!("agent, pid {pid}\n"),
            "the file says who held it last"
        );
    }

    #[test]
    fn sizes_are_bytes_with_an_optional_binary_unit() {
        use super::parse_size;
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size(" 64k "), Some(64 << 10));
        assert_eq!(parse_size("50M"), Some(50 << 20));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("99999999999G"), Some(u64::MAX));
        assert_eq!(parse_size("99999999999999999999999"), Some(u64::MAX));
        assert_eq!(
            parse_size("1.5M"),
            Some(3 << 19),
            "decimals, as rsync takes"
        );
        assert_eq!(parse_size("0.5k"), Some(512));
        assert_eq!(parse_size("2.25G"), Some(9 << 28));
        assert_eq!(
            parse_size("1.0000000001G"),
            Some(1 << 30),
            "bytes rounded down"
        );
        assert_eq!(parse_size("0.1K"), Some(102));
        for bad in [
            "", "G", "1.5", "1.", ".5M", "1.5.5M", "1.-5M", "-1", "1T", "1 G", "ten", "1,5M",
        ] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }
}
