//! A copy is a new machine. The files that make a tree a particular host (its name, its
//! machine id, its SSH host keys, who may log in as root) are made new in a copy, and a
//! sync leaves the copy's own in place: they are neither overwritten nor counted as drift.
//!
//! Everything is done beneath the root with the no-follow primitives of [`fsx`]: a tenant's
//! `/etc` that is a symlink to somewhere else is left alone, not written through.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rand::RngCore;

use super::fsx;
use super::manifest::Kind;
use super::{scan, Control, EngineError, Place};

/// What the new machine is.
pub struct Identity<'a> {
    /// Its host name (the container's name).
    pub hostname: &'a str,
    /// The one key root's `authorized_keys` holds; none: the file is removed.
    pub ssh_public_key: Option<&'a str>,
}

/// Whether `path` (relative to a tree's root) is one of the machine's own files, which a
/// sync keeps as the copy has them.
pub fn is_identity_path(path: &[u8]) -> bool {
    matches!(
        path,
        b"etc/hostname" | b"etc/machine-id" | b"root/.ssh/authorized_keys"
    ) || (path.starts_with(b"etc/ssh/ssh_host_")
        && !path[b"etc/ssh/".len()..].contains(&b'/')
        && (path.ends_with(b"_key") || path.ends_with(b"_key.pub")))
}

/// Host key types doppel makes new, by the name of their file.
const HOST_KEYS: [(&str, ssh_key::Algorithm); 3] = [
    ("ed25519", ssh_key::Algorithm::Ed25519),
    (
        "ecdsa",
        ssh_key::Algorithm::Ecdsa {
            curve: ssh_key::EcdsaCurve::NistP256,
        },
    ),
    ("rsa", ssh_key::Algorithm::Rsa { hash: None }),
];

/// What [`make_new_machine`] did.
pub struct NewMachine {
    /// The paths written or removed.
    pub written: Vec<String>,
    /// What of the machine could not be made new, and why (for the summary's notes).
    pub notes: Vec<String>,
    /// The tree's manifest root now (BLAKE3, hex): its source's, but for these files.
    pub root_hash: String,
}

impl NewMachine {
    /// Into a copy's summary: its identity files, and its tree's root hash with them.
    pub fn record_in(self, summary: &mut super::Summary) {
        summary.identity_files = self.written;
        summary.root_hash = self.root_hash;
        summary.notes.extend(self.notes);
    }
}

/// Gives the tree at `place` its own identity, then records the tree's state (so the
/// next sync sees no drift there).
///
/// - `etc/hostname`, where the tree has one: the host name.
/// - `etc/machine-id`, where the tree has one: a new random id.
/// - `etc/ssh/ssh_host_{ed25519,ecdsa,rsa}_key` (and `.pub`), where the tree has them: new
///   keys of those types, private ones mode 0600.
/// - `root/.ssh/authorized_keys`: exactly the given key (made, with `root/.ssh`, when the
///   tree has `root/`), or removed: the source's keys are never inherited.
///
/// One of these files that is a symlink (to another file of the tree, say) is replaced by
/// the new file, never written through: the copy's identity is its own either way. Where
/// a directory on their way is a symlink (`etc/ssh`, `root/.ssh`), what it leads to is
/// left alone and a note says so; a key asked for there is refused (a sync would bring
/// the source's file back where the link leads).
pub fn make_new_machine(place: &Place, id: &Identity<'_>) -> Result<NewMachine, EngineError> {
    let root = fsx::open_dir(&place.root).map_err(EngineError::io("opening the copy"))?;
    let mut written = Vec::new();
    let mut notes = Vec::new();
    if kind_at(root.as_fd(), b"etc")? == Some(Kind::Symlink) {
        notes.push(
            "etc is a symlink: the host name, machine id and SSH host keys where it leads are \
             the source's, not made new"
                .to_string(),
        );
    }
    if let Some(etc) = dir(root.as_fd(), b"etc")? {
        if is_present(etc.as_fd(), b"hostname")? {
            replace(
                etc.as_fd(),
                b"hostname",
                format!("{}\n", id.hostname).as_bytes(),
                0o644,
            )?;
            written.push("etc/hostname".to_string());
        }
        if is_present(etc.as_fd(), b"machine-id")? {
            let mut raw = [0u8; 16];
            rand::rng().fill_bytes(&mut raw);
            replace(
                etc.as_fd(),
                b"machine-id",
                format!("{}\n", hex::encode(raw)).as_bytes(),
                0o444,
            )?;
            written.push("etc/machine-id".to_string());
        }
        if kind_at(etc.as_fd(), b"ssh")? == Some(Kind::Symlink) {
            notes.push(
                "etc/ssh is a symlink: the SSH host keys where it leads are the source's, not \
                 made new"
                    .to_string(),
            );
        }
        if let Some(ssh) = dir(etc.as_fd(), b"ssh")? {
            for (kind, algorithm) in HOST_KEYS {
                let name = format!("ssh_host_{kind}_key");
                if !is_present(ssh.as_fd(), name.as_bytes())? {
                    continue;
                }
                let mut key =
                    ssh_key::PrivateKey::random(&mut ssh_key::rand_core::OsRng, algorithm)
                        .map_err(|e| {
                            EngineError::Refused(format!("making a {kind} host key: {e}"))
                        })?;
                key.set_comment(format!("root@{}", id.hostname));
                let private = key
                    .to_openssh(ssh_key::LineEnding::LF)
                    .map_err(|e| EngineError::Refused(format!("writing a {kind} host key: {e}")))?;
                let public = key
                    .public_key()
                    .to_openssh()
                    .map_err(|e| EngineError::Refused(format!("writing a {kind} host key: {e}")))?;
                replace(ssh.as_fd(), name.as_bytes(), private.as_bytes(), 0o600)?;
                replace(
                    ssh.as_fd(),
                    format!("{name}.pub").as_bytes(),
                    format!("{public}\n").as_bytes(),
                    0o644,
                )?;
                written.push(format!("etc/ssh/{name}"));
                written.push(format!("etc/ssh/{name}.pub"));
            }
        }
    }
    if let Some(home) = dir(root.as_fd(), b"root")? {
        if kind_at(home.as_fd(), b".ssh")? == Some(Kind::Symlink) {
            if id.ssh_public_key.is_some() {
                return Err(EngineError::Refused(
                    "the source's root/.ssh is a symlink, so the copy's own authorized_keys \
                     has no place of its own (a sync would bring back the source's file \
                     where it leads): make root/.ssh a directory in the source, or copy \
                     without ssh_public_key"
                        .into(),
                ));
            }
            notes.push(
                "root/.ssh is a symlink: the authorized_keys where it leads are the source's"
                    .to_string(),
            );
        }
        let ssh = match (dir(home.as_fd(), b".ssh")?, id.ssh_public_key) {
            (Some(ssh), _) => Some(ssh),
            (None, Some(_)) => {
                fsx::mkdir_at(home.as_fd(), b".ssh")
                    .map_err(EngineError::io("making root/.ssh"))?;
                dir(home.as_fd(), b".ssh")?
            }
            (None, None) => None,
        };
        if let Some(ssh) = ssh {
            match id.ssh_public_key {
                Some(key) => {
                    replace(
                        ssh.as_fd(),
                        b"authorized_keys",
                        format!("{}\n", key.trim()).as_bytes(),
                        0o600,
                    )?;
                    written.push("root/.ssh/authorized_keys".to_string());
                }
                None if kind_at(ssh.as_fd(), b"authorized_keys")?.is_some() => {
                    fsx::remove_at(ssh.as_fd(), b"authorized_keys")
                        .map_err(EngineError::io("removing root's authorized_keys"))?;
                    written.push("root/.ssh/authorized_keys".to_string());
                }
                None => {}
            }
        }
    }
    // The tree's state as it is now, for the next sync's drift check.
    let cache = place
        .load_manifest()
        .map_err(EngineError::io("reading the manifest"))?;
    let (m, _) = scan::scan(&place.root, cache.as_ref(), true, &Control::new())?;
    let root_hash = m.root_hex();
    // (Kept decoded: the copy's first sync loads it.)
    m.store_keeping(&place.manifest_path())
        .map_err(EngineError::io("writing the manifest"))?;
    Ok(NewMachine {
        written,
        notes,
        root_hash,
    })
}

/// What `name` in `dir` is, without following it (`None`: nothing there).
fn kind_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<Option<Kind>, EngineError> {
    match fsx::stat_at(dir, name) {
        Ok(st) => Ok(Some(fsx::kind_of(&st))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EngineError::io("reading the copy")(e)),
    }
}

/// The directory `name` in `parent`, if it is one (a symlink is not followed: `None`).
fn dir(parent: BorrowedFd<'_>, name: &[u8]) -> Result<Option<OwnedFd>, EngineError> {
    if kind_at(parent, name)? != Some(Kind::Dir) {
        return Ok(None);
    }
    fsx::open_dir_at(parent, name)
        .map(Some)
        .map_err(EngineError::io("opening a directory of the copy"))
}

/// Whether the tree has `name` in `dir` as one of its identity files: a file, or a symlink
/// (replaced by [`replace`], not followed).
fn is_present(dir: BorrowedFd<'_>, name: &[u8]) -> Result<bool, EngineError> {
    Ok(matches!(
        kind_at(dir, name)?,
        Some(Kind::File | Kind::Symlink)
    ))
}

/// Replaces `name` in `dir` with `content` (mode `mode`, owned by the directory's owner),
/// through a new file renamed over it: never written through a link.
fn replace(dir: BorrowedFd<'_>, name: &[u8], content: &[u8], mode: u32) -> Result<(), EngineError> {
    let tmp = [b".doppel-identity-".as_slice(), name].concat();
    fsx::remove_at(dir, &tmp).map_err(EngineError::io("writing the copy's identity"))?;
    let mut f =
        fsx::create_file_at(dir, &tmp).map_err(EngineError::io("writing the copy's identity"))?;
    f.write_all(content)
        .and_then(|()| f.sync_all())
        .map_err(EngineError::io("writing the copy's identity"))?;
    let owner =
        rustix::fs::fstat(dir).map_err(|e| EngineError::io("reading the copy")(e.into()))?;
    // Owned like its directory (a tree copied by root keeps its owners); not allowed as
    // an unprivileged user, where the file stays the writer's.
    let _ = rustix::fs::fchown(
        &f,
        Some(rustix::fs::Uid::from_raw(owner.st_uid)),
        Some(rustix::fs::Gid::from_raw(owner.st_gid)),
    );
    rustix::fs::fchmod(&f, rustix::fs::Mode::from_raw_mode(mode))
        .map_err(|e| EngineError::io("writing the copy's identity")(e.into()))?;
    fsx::rename_at(dir, &tmp, dir, name).map_err(EngineError::io("writing the copy's identity"))
}
