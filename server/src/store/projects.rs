//! Projects, their members, and servers.

use app::model::{Member, Project, Role, Server};
use sqlx::Row;

use super::{execute, Arg, Db, DbError};

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
             WHERE ($2 OR m.user_id IS NOT NULL) AND p.deleted_at IS NULL",
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
        let rows = sqlx::query(
            "SELECT id, name, description, created_at FROM projects WHERE deleted_at IS NULL
                 ORDER BY name",
        )
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
        let found: Option<String> =
            sqlx::query_scalar("SELECT id FROM projects WHERE id = $1 AND deleted_at IS NULL")
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

    /// Changes a project's name and description; `false`: no such project.
    pub(crate) async fn update_project(
        &self,
        id: &str,
        name: &str,
        description: &str,
    ) -> Result<bool, DbError> {
        let n = self
            .write(
                "UPDATE projects SET name = $2, description = $3
                 WHERE id = $1 AND deleted_at IS NULL",
                vec![Arg::arg(id), Arg::arg(name), Arg::arg(description)],
            )
            .await?;
        Ok(n > 0)
    }

    /// Deletes a project that holds no container, in one statement: `false` when it holds
    /// one (or is gone). Its row stays for its jobs, out of every read, its name freed; its
    /// memberships go.
    pub(crate) async fn delete_empty_project(&self, id: &str) -> Result<bool, DbError> {
        let id = id.to_string();
        let now = crate::ids::now_ms();
        self.transact(move |c| {
            let n = execute(
                c,
                "UPDATE projects SET deleted_at = $2, name = name || '~deleted~' || id
                 WHERE id = $1 AND deleted_at IS NULL AND NOT EXISTS
                    (SELECT 1 FROM containers WHERE project_id = $1 AND deleted_at IS NULL)",
                &[&id, &now],
            )?;
            if n > 0 {
                execute(c, "DELETE FROM memberships WHERE project_id = $1", &[&id])?;
            }
            Ok::<_, rusqlite::Error>(n > 0)
        })
        .await
        .map_err(DbError::from)
    }

    /// A project's members by name.
    pub(crate) async fn members_of(&self, project_id: &str) -> Result<Vec<Member>, DbError> {
        let rows = sqlx::query(
            "SELECT u.id, u.name, m.role FROM memberships m JOIN users u ON u.id = m.user_id
             WHERE m.project_id = $1 ORDER BY u.name",
        )
        .bind(project_id)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .iter()
            .map(|r| Member {
                user_id: r.get("id"),
                user_name: r.get("name"),
                role: Role::parse(&r.get::<String, _>("role")).unwrap_or(Role::Viewer),
            })
            .collect())
    }

    /// Gives a user a role in a project (a member already: the new role).
    pub(crate) async fn set_membership(
        &self,
        project_id: &str,
        user_id: &str,
        role: Role,
    ) -> Result<(), DbError> {
        self.write(
            "INSERT INTO memberships (project_id, user_id, role) VALUES ($1, $2, $3)
             ON CONFLICT (project_id, user_id) DO UPDATE SET role = excluded.role",
            vec![
                Arg::arg(project_id),
                Arg::arg(user_id),
                Arg::arg(role.as_str()),
            ],
        )
        .await?;
        Ok(())
    }

    /// Takes a user out of a project; whether they were in it.
    pub(crate) async fn delete_membership(
        &self,
        project_id: &str,
        user_id: &str,
    ) -> Result<bool, DbError> {
        let n = self
            .write(
                "DELETE FROM memberships WHERE project_id = $1 AND user_id = $2",
                vec![Arg::arg(project_id), Arg::arg(user_id)],
            )
            .await?;
        Ok(n > 0)
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
