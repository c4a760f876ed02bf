//! The shim (`doppel shim`): one small process per running container, in its own session,
//! so containers keep running while doppel stops or restarts (conmon's role for podman).
//! It runs `runc run` in the foreground (runc stays the container's parent and answers with
//! its exit status), keeps the process's output in a bounded log, and records how the
//! process ended in `exit`, the file doppel reads to tell a stopped container's exit code.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A log file grows to this size, then becomes `output.log.1` (the one before is dropped).
pub const LOG_LIMIT: u64 = 256 * 1024;

pub const LOG: &str = "output.log";
pub const LOG_OLD: &str = "output.log.1";
pub const EXIT: &str = "exit";

/// What `doppel shim` is told.
pub struct ShimArgs {
    pub runc: PathBuf,
    /// runc's state directory (`--root`).
    pub state: PathBuf,
    pub bundle: PathBuf,
    pub id: String,
}

/// How the process ended, as the shim records it (JSON in `<bundle>/exit`).
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// The exit status; 128 + n when the process was killed by signal n (as a shell says).
    pub code: i32,
    /// Unix ms.
    pub at: i64,
}

/// Runs the container until its process ends; records the end. The shim's own failures
/// go to the log, where the console shows them.
pub fn run(args: &ShimArgs) -> i32 {
    let dir = &args.bundle;
    let code = match supervise(args) {
        Ok(code) => code,
        Err(e) => {
            let _ = append(dir, format!("doppel shim: {e}\n").as_bytes());
            127
        }
    };
    let exit = Exit {
        code,
        at: crate::ids::now_ms(),
    };
    // Written whole, then renamed: a reader sees no exit or the whole of it.
    let tmp = dir.join("exit.tmp");
    let written = fs::write(&tmp, serde_json::to_vec(&exit).unwrap_or_default())
        .and_then(|()| fs::rename(&tmp, dir.join(EXIT)));
    if let Err(e) = written {
        let _ = append(
            dir,
            format!("doppel shim: cannot record the exit: {e}\n").as_bytes(),
        );
    }
    0
}

fn supervise(args: &ShimArgs) -> std::io::Result<i32> {
    let (mut reader, writer) = std::io::pipe()?;
    let mut child = {
        let mut cmd = Command::new(&args.runc);
        cmd.arg("--root")
            .arg(&args.state)
            .arg("run")
            .arg("--bundle")
            .arg(&args.bundle)
            .arg(&args.id)
            .stdin(Stdio::null())
            .stdout(writer.try_clone()?)
            .stderr(writer);
        cmd.spawn()?
        // `cmd` and its copies of the pipe's writing end are dropped here: the pipe ends
        // when runc and the container's processes have closed theirs.
    };
    // The pipe is drained to its end whatever happens to the log (a full disk loses
    // output, never the process: a container that cannot write would block on its pipe).
    let mut buf = vec![0u8; 16 * 1024];
    let mut lost = false;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if append(&args.bundle, &buf[..n]).is_err() {
                    lost = true;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // Cannot read the pipe any more: still wait for runc, the end is what counts.
            Err(_) => break,
        }
    }
    if lost {
        let _ = append(
            &args.bundle,
            b"doppel shim: some output was lost (the log could not be written)\n",
        );
    }
    let status = child.wait()?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255))
}

/// Appends to the log, starting a new one when it is full.
fn append(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let path = dir.join(LOG);
    if fs::metadata(&path).map(|m| m.len()).unwrap_or(0) + bytes.len() as u64 > LOG_LIMIT {
        fs::rename(&path, dir.join(LOG_OLD))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?
        .write_all(bytes)
}

/// Where the log ends now: what a run adds comes after it ([`output_since`]).
pub fn log_end(dir: &Path) -> u64 {
    fs::metadata(dir.join(LOG)).map_or(0, |m| m.len())
}

/// What the log holds after `end` (a [`log_end`]), lossily decoded; empty when the log was
/// started again since.
pub fn output_since(dir: &Path, end: u64) -> String {
    use std::io::{Seek, SeekFrom};
    let mut bytes = Vec::new();
    if let Ok(mut f) = File::open(dir.join(LOG)) {
        if f.metadata().is_ok_and(|m| m.len() >= end) && f.seek(SeekFrom::Start(end)).is_ok() {
            let _ = f.take(LOG_LIMIT).read_to_end(&mut bytes);
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// How the last run ended, when it has.
pub fn read_exit(dir: &Path) -> Option<Exit> {
    serde_json::from_slice(&fs::read(dir.join(EXIT)).ok()?).ok()
}

/// The last `lines` lines of the process's output (both log files), lossily decoded.
pub fn tail(dir: &Path, lines: usize) -> Vec<String> {
    let mut bytes = Vec::new();
    for name in [LOG_OLD, LOG] {
        if let Ok(mut f) = File::open(dir.join(name)) {
            let _ = f.read_to_end(&mut bytes);
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}
