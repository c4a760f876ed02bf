//! The reference tree of `make bench` and `make bench-remote`, and its "1 %" change.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use doppel::rng::Rng;

pub fn scaled(n: f64, scale: f64) -> usize {
    ((n * scale).round() as usize).max(1)
}

/// The paths of the reference tree's small files, in the order they are made.
pub fn small_files(root: &Path, scale: f64) -> Vec<PathBuf> {
    let dirs = scaled(2000.0, scale);
    (0..scaled(40_000.0, scale))
        .map(|i| {
            root.join(format!(
                "d{:02}/s{:04}/f{i:05}.dat",
                (i % dirs) % 50,
                i % dirs
            ))
        })
        .collect()
}

pub fn build_tree(root: &Path, scale: f64) -> (usize, Vec<PathBuf>) {
    let mut rng = Rng(0x5eed);
    let dirs = scaled(2000.0, scale);
    let mut buf = vec![0u8; 64 * 1024];
    let paths = small_files(root, scale);
    let files = paths.len();
    for d in 0..dirs {
        fs::create_dir_all(root.join(format!("d{:02}/s{d:04}", d % 50))).unwrap();
    }
    for p in &paths {
        let len = 1024 + (rng.next_u64() % (63 * 1024)) as usize;
        rng.fill(&mut buf[..len]);
        fs::write(p, &buf[..len]).unwrap();
    }
    let big = scaled(100.0 * 1024.0 * 1024.0, scale);
    let mut chunk = vec![0u8; 1 << 20];
    for b in 0..4 {
        let mut f = fs::File::create(root.join(format!("big{b}.img"))).unwrap();
        let mut left = big;
        while left > 0 {
            let n = left.min(chunk.len());
            rng.fill(&mut chunk[..n]);
            f.write_all(&chunk[..n]).unwrap();
            left -= n;
        }
    }
    for s in 0..scaled(400.0, scale) {
        symlink(
            format!("../s{:04}/f{s:05}.dat", s % dirs),
            root.join(format!("d{:02}/link{s:04}", s % 50)),
        )
        .unwrap();
    }
    for h in 0..scaled(40.0, scale) {
        fs::hard_link(
            &paths[h * 7],
            root.join(format!("d{:02}/hard{h:03}", h % 50)),
        )
        .unwrap();
    }
    (files, paths)
}

/// The "1 %" change: rewrites, additions, deletions, chmods, and four 1 MiB overwrites
/// inside the big files.
/// The seed of [`change_tree`]'s bytes.
pub const SEED: u64 = 0xc0ffee;

pub fn change_tree(root: &Path, paths: &[PathBuf], scale: f64) {
    change_tree_with(root, paths, scale, SEED)
}

/// [`change_tree`], with new bytes for each `seed`.
pub fn change_tree_with(root: &Path, paths: &[PathBuf], scale: f64, seed: u64) {
    let mut rng = Rng(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let n = paths.len();
    for i in 0..scaled(400.0, scale) {
        let p = &paths[(i * 97 + 13) % n];
        let len = 1024 + (rng.next_u64() % (63 * 1024)) as usize;
        rng.fill(&mut buf[..len]);
        fs::write(p, &buf[..len]).unwrap();
    }
    for i in 0..scaled(50.0, scale) {
        rng.fill(&mut buf[..8192]);
        fs::write(
            root.join(format!("d{:02}/added{i:03}.dat", i % 50)),
            &buf[..8192],
        )
        .unwrap();
    }
    for i in 0..scaled(50.0, scale) {
        let _ = fs::remove_file(&paths[(i * 131 + 7) % n]);
    }
    for i in 0..scaled(50.0, scale) {
        let p = &paths[(i * 61 + 3) % n];
        if p.exists() {
            fs::set_permissions(p, fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
    let mut mib = vec![0u8; 1 << 20];
    for b in 0..4 {
        rng.fill(&mut mib);
        let f = fs::OpenOptions::new()
            .write(true)
            .open(root.join(format!("big{b}.img")))
            .unwrap();
        let len = f.metadata().unwrap().len();
        f.write_all_at(&mib[..(len as usize / 2).min(mib.len())], len / 3)
            .unwrap();
    }
}

pub fn rsync_sent_bytes(stats: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix("Total bytes sent: "))
        .map(|v| v.replace(',', "").trim().parse().unwrap_or(0))
        .unwrap_or(0)
}

/// A tree that compresses, as source code, logs and configuration do: `scale` x 2,000
/// files of 8 to 120 KB of log-like lines (about 125 MB at scale 1). Its bytes.
pub fn build_text_tree(root: &Path, scale: f64) -> u64 {
    let mut rng = Rng(0x7e47);
    let words = [
        "GET",
        "POST",
        "/api/v1/containers",
        "/healthz",
        "200",
        "404",
        "copy",
        "sync",
        "server",
        "project",
        "started",
        "finished",
        "in",
        "ms",
        "user",
        "alice",
        "bob",
        "web-app",
        "db-primary",
        "INFO",
        "WARN",
        "request",
        "bytes",
    ];
    let mut total = 0u64;
    for i in 0..scaled(2000.0, scale) {
        let dir = root.join(format!("logs{:02}", i % 40));
        fs::create_dir_all(&dir).unwrap();
        let len = 8_000 + (rng.next_u64() % 112_000) as usize;
        let mut text = String::with_capacity(len + 200);
        while text.len() < len {
            text.push_str(&format!(
                "2026-12-01T{:02}:{:02}:{:02}Z",
                rng.next_u64() % 24,
                rng.next_u64() % 60,
                rng.next_u64() % 60
            ));
            for _ in 0..(4 + rng.next_u64() % 8) {
                text.push(' ');
                text.push_str(words[(rng.next_u64() % words.len() as u64) as usize]);
            }
            text.push_str(&format!(" id={:06x}\n", rng.next_u64() % 0xffffff));
        }
        fs::write(dir.join(format!("app{i:04}.log")), &text).unwrap();
        total += text.len() as u64;
    }
    total
}
