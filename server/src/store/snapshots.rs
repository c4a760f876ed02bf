//! Snapshots: a container's tree frozen under a name.

use app::model::Snapshot;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::{Arg, Db, DbError};

const SNAPSHOT_SELECT: &str = "SELECT id, name, created_at, file_count, size_bytes FROM snapshots";

fn snapshot(r: &SqliteRow) -> Snapshot {
    Snapshot {
        id: r.get("id"),
        name: r.get("name"),
        created_at: r.get("created_at"),
        file_count: r.get("file_count"),
        size_bytes: r.get("size_bytes"),
    }
}

/// A snapshot's row, for `Db::insert_snapshot`.
pub(crate) struct NewSnapshot<'a> {
    pub(crate) id: &'a str,
    pub(crate) container_id: &'a str,
    pub(crate) name: &'a str,
    pub(crate) file_count: i64,
    pub(crate) size_bytes: i64,
    pub(crate) created_at: i64,
}

impl Db {
    /// A container's snapshots, newest first.
    pub(crate) async fn snapshots_of(&self, container_id: &str) -> Result<Vec<Snapshot>, DbError> {
        let rows = sqlx::query(&format!(
            "{SNAPSHOT_SELECT} WHERE container_id = $1 ORDER BY created_at DESC, name"
        ))
        .bind(container_id)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.iter().map(snapshot).collect())
    }

    /// The ids of every snapshot recorded (to find trees nobody recorded).
    pub(crate) async fn snapshot_ids(&self) -> Result<std::collections::HashSet<String>, DbError> {
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM snapshots")
            .fetch_all(&self.read)
            .await?;
        Ok(ids.into_iter().collect())
    }

    pub(crate) async fn snapshot(&self, id: &str) -> Result<Option<Snapshot>, DbError> {
        let row = sqlx::query(&format!("{SNAPSHOT_SELECT} WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.as_ref().map(snapshot))
    }

    /// The id of a container's snapshot, named by its name or its id.
    pub(crate) async fn snapshot_id(
        &self,
        container_id: &str,
        name_or_id: &str,
    ) -> Result<Option<String>, DbError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM snapshots WHERE container_id = $1 AND (name = $2 OR id = $2)",
        )
        .bind(container_id)
        .bind(name_or_id)
        .fetch_optional(&self.read)
        .await?)
    }

    pub(crate) async fn insert_snapshot(&self, s: NewSnapshot<'_>) -> Result<(), DbError> {
        self.write(
            "INSERT INTO snapshots (id, container_id, name, file_count, size_bytes, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            vec![
                Arg::arg(s.id),
                Arg::arg(s.container_id),
                Arg::arg(s.name),
                Arg::arg(s.file_count),
                Arg::arg(s.size_bytes),
                Arg::arg(s.created_at),
            ],
        )
        .await?;
        Ok(())
    }
}
