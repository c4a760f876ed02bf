//! Projects, their members, and servers.

use app::model::{Project, Role, Server};
use sqlx::Row;

use super::{Arg, Db, DbError};

/// A server's row.
pub(crate) struct ServerRow {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) storage_root: String,
    pub(crate) created_at: i64,
}

impl ServerRow {
    /// The server as `GET /servers` shows it; the storage root to platform admins only.
    pub(crate) fn shown(self, with_root: bool) -> Server {
        Server {
            id: self.id,
            name: self.name,
            description: self.description,
            storage_root: with_root.then_some(self.storage_root),
            created_at: self.created_at,
        }
    }
}

impl Db {
    /// (project id, the user's role there if a member) for every project the user is a
    /// member of, or every project when `all`.
    pub(crate) async fn project_memberships(
        &self,
        user_id: &str,
        all: bool,
    ) -> Result<Vec<(String, Option<String>)>, DbError> {
        let rows = sqlx::query(
            "SELECT p.id, m.role FROM projects p
             LEFT JOIN memberships m ON m.project_id = p.id AND m.user_id = $1
             WHERE $2 OR m.user_id IS NOT NULL",
        )
        .bind(user_id)
        .bind(all)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .iter()
            .map(|row| (row.get("id"), row.get("role")))
            .collect())
    }

    /// Every project by name, with no role filled in.
    pub(crate) async fn projects(&self) -> Result<Vec<Project>, DbError> {
        let rows =
            sqlx::query("SELECT id, name, description, created_at FROM projects ORDER BY name")
                .fetch_all(&self.read)
                .await?;
        Ok(rows
            .iter()
            .map(|r| Project {
                id: r.get("id"),
                name: r.get("name"),
                description: r.get("description"),
                role: None,
                created_at: r.get("created_at"),
            })
            .collect())
    }

    pub(crate) async fn project_exists(&self, id: &str) -> Result<bool, DbError> {
        let found: Option<String> = sqlx::query_scalar("SELECT id FROM projects WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        Ok(found.is_some())
    }

    pub(crate) async fn insert_project(
        &self,
        id: &str,
        name: &str,
        description: &str,
        now: i64,
    ) -> Result<(), DbError> {
        self.write(
            "INSERT INTO projects (id, name, description, created_at) VALUES ($1, $2, $3, $4)",
            vec![
                Arg::arg(id),
                Arg::arg(name),
                Arg::arg(description),
                Arg::arg(now),
            ],
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn insert_membership(
        &self,
        project_id: &str,
        user_id: &str,
        role: Role,
    ) -> Result<(), DbError> {
        self.write(
            "INSERT INTO memberships (project_id, user_id, role) VALUES ($1, $2, $3)",
            vec![
                Arg::arg(project_id),
                Arg::arg(user_id),
                Arg::arg(role.as_str()),
            ],
        )
        .await?;
        Ok(())
    }

    /// Every server by name.
    pub(crate) async fn servers(&self) -> Result<Vec<ServerRow>, DbError> {
        let rows = sqlx::query(
            "SELECT id, name, description, storage_root, created_at FROM servers ORDER BY name",
        )
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .iter()
            .map(|r| ServerRow {
                id: r.get("id"),
                name: r.get("name"),
                description: r.get("description"),
                storage_root: r.get("storage_root"),
                created_at: r.get("created_at"),
            })
            .collect())
    }

    pub(crate) async fn server_storage_root(&self, id: &str) -> Result<Option<String>, DbError> {
        Ok(
            sqlx::query_scalar("SELECT storage_root FROM servers WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.read)
                .await?,
        )
    }

    pub(crate) async fn insert_server(&self, row: &ServerRow) -> Result<(), DbError> {
        self.write(
            "INSERT INTO servers (id, name, description, storage_root, created_at)
             VALUES ($1, $2, $3, $4, $5)",
            vec![
                Arg::arg(&row.id),
                Arg::arg(&row.name),
                Arg::arg(&row.description),
                Arg::arg(&row.storage_root),
                Arg::arg(row.created_at),
            ],
        )
        .await?;
        Ok(())
    }
}
