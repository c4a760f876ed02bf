//! `doppel convert-trees`: the directory trees of this host's containers made image trees
//! ([`crate::engine::convert`]), so that their copies on their server are clones of one
//! file. Runs while doppel is stopped (its caller holds the data dir) and skips the
//! containers whose process runs (they outlive doppel): nothing else reads or writes a
//! tree while it is converted. At start, doppel puts right what an interrupted conversion
//! left before anything uses the trees ([`recover_conversions`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{container_place, snapshot_place};
use crate::engine::convert::{self, Converted};
use crate::engine::{Control, Place, Progress, Summary};
use crate::store::{Db, DbError, HostTree};

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("no container {0:?} on this host (give its id or its name)")]
    Unknown(String),
    #[error("cannot tell which containers run: {0}")]
    Runtime(String),
    #[error("database: {0}")]
    Db(#[from] DbError),
}

/// What became of one tree: a container's, or one of its snapshots'.
pub struct TreeConverted {
    /// The container's id and name.
    pub id: String,
    pub name: String,
    /// The snapshot's name, for a snapshot's tree.
    pub snapshot: Option<String>,
    pub root: PathBuf,
    pub outcome: Outcome,
}

pub enum Outcome {
    /// An image tree now; what its copy did.
    Converted(Box<Summary>),
    /// It was one already.
    Already,
    /// Left a directory, unchanged, for this reason.
    Left(String),
    /// The conversion failed: the tree is the directory it was, or what the failure left
    /// is put right by the next conversion or doppel's next start ([`convert::recover`]).
    Failed(String),
}

/// How a conversion goes: the container's name and the engine's report (at most every
/// 50 ms, and at each phase).
pub type ConvertProgress = Arc<dyn Fn(&str, &Progress) + Send + Sync>;

/// Converts the trees of the containers on this host and of their snapshots (or only
/// those of the containers `only` names, by id or name) to image trees of `size` bytes,
/// one at a time; `each` hears of every tree as it is done, `progress` of each one's copy
/// as it goes. A container whose process runs keeps its tree (said so); its snapshots are
/// converted.
pub async fn convert_trees(
    db: &Db,
    data_dir: &Path,
    size: u64,
    only: &[String],
    progress: ConvertProgress,
    mut each: impl FnMut(&TreeConverted),
) -> Result<Vec<TreeConverted>, ConvertError> {
    let mut trees = db.trees_on_this_host().await?;
    if !only.is_empty() {
        if let Some(unknown) = only
            .iter()
            .find(|o| !trees.iter().any(|t| &t.id == *o || &t.name == *o))
        {
            return Err(ConvertError::Unknown(unknown.clone()));
        }
        trees.retain(|t| only.iter().any(|o| o == &t.id || o == &t.name));
    }
    let running = crate::runtime::with_processes(data_dir)
        .await
        .map_err(|e| ConvertError::Runtime(e.to_string()))?;
    let mut done = Vec::with_capacity(trees.len());
    for tree in trees {
        let place = place_of(&tree);
        let HostTree {
            id, name, snapshot, ..
        } = tree;
        // (A snapshot is no running process's.)
        let outcome = if snapshot.is_none() && running.contains(&id) {
            Outcome::Left(
                "its process is running: stop the container in doppel first, then stop doppel \
                 and convert"
                    .into(),
            )
        } else {
            let place = place.clone();
            let of = match &snapshot {
                Some((_, s)) => format!("{name} snapshot {s}"),
                None => name.clone(),
            };
            let progress = progress.clone();
            let ctl = Control::new().with_progress(move |p| progress(&of, p));
            let converted =
                tokio::task::spawn_blocking(move || convert::to_image_tree(&place, size, &ctl))
                    .await;
            match converted {
                Ok(Ok(Converted::Done(summary))) => Outcome::Converted(summary),
                Ok(Ok(Converted::Already)) => Outcome::Already,
                Ok(Ok(Converted::NotConverted(why))) => Outcome::Left(why),
                Ok(Err(e)) => Outcome::Failed(e.to_string()),
                Err(e) => Outcome::Failed(e.to_string()),
            }
        };
        let tree = TreeConverted {
            id,
            name,
            snapshot: snapshot.map(|(_, name)| name),
            root: place.root,
            outcome,
        };
        each(&tree);
        done.push(tree);
    }
    Ok(done)
}

/// At start, before anything uses the trees: what an interrupted conversion left is put
/// right (see [`convert::recover`]); one that cannot be is logged, its tree left as it is.
pub async fn recover_conversions(db: &Db) -> Result<(), DbError> {
    let places: Vec<_> = db
        .trees_on_this_host()
        .await?
        .into_iter()
        .map(|t| place_of(&t))
        .collect();
    let _ = tokio::task::spawn_blocking(move || {
        for place in places {
            if let Err(e) = convert::recover(&place) {
                tracing::error!(tree = %place.root.display(), error = %e, "cannot put right an interrupted conversion to an image tree");
            }
        }
    })
    .await;
    Ok(())
}

/// Where a tree on this host is, with its engine state.
fn place_of(tree: &HostTree) -> Place {
    let root = Path::new(&tree.storage_root);
    match &tree.snapshot {
        Some((snapshot, _)) => snapshot_place(root, &tree.id, snapshot),
        None => container_place(root, &tree.id),
    }
}
