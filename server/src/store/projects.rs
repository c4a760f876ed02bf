//! Projects, their members, and servers.

use app::model::{Member, Project, Role, ServerKind};
use sqlx::Row;

use super::{execute, query_first, Arg, Db, DbError};

/// A server's row.
pub(crate) struct ServerRow {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) description: String,
    /// An embedded server's storage root; empty for an agent (its root is on its host).
    pub(crate) storage_root: String,
    pub(crate) created_at: i64,
    pub(crate) kind: ServerKind,
    pub(crate) agent_address: Option<String>,
    pub(crate) agent_fingerprint: Option<String>,
    pub(crate) join_expires_at: Option<i64>,
    pub(crate) joined_at: Option<i64>,
    /// Bytes a second for transfers to and from it, if limited.
    pub(crate) bwlimit: Option<i64>,
}

impl ServerRow {
    pub(crate) fn embedded(id: String, name: String, storage_root: String, now: i64) -> ServerRow {
        ServerRow {
            id,
            name,
            description: String::new(),
            storage_root,
            created_at: now,
            kind: ServerKind::Embedded,
            agent_address: None,
            agent_fingerprint: None,
            join_expires_at: None,
            joined_at: None,
            bwlimit: None,
        }
    }
}

/// What a join changed: the server the agent now is.
pub(crate) struct JoinedAgent {
    pub(crate) id: String,
    pub(crate) name: String,
}

pub(super) fn kind_str(kind: ServerKind) -> &'static str {
    match kind {
        ServerKind::Embedded => "embedded",
        ServerKind::Agent => "agent",
    }
}

const SERVER_COLUMNS: &str = "id, name, description, storage_root, created_at, kind, \
    agent_address, agent_fingerprint, join_expires_at, joined_at, bwlimit";

fn server_row(r: &sqlx::sqlite::SqliteRow) -> ServerRow {
    ServerRow {
        id: r.get("id"),
        name: r.get("name"),
        description: r.get("description"),
        storage_root: r.get("storage_root"),
        created_at: r.get("created_at"),
        kind: if r.get::<String, _>("kind") == "agent" {
            ServerKind::Agent
        } else {
            ServerKind::Embedded
        },
        agent_address: r.get("agent_address"),
        agent_fingerprint: r.get("agent_fingerprint"),
        join_expires_at: r.get("join_expires_at"),
        joined_at: r.get("joined_at"),
        bwlimit: r.get("bwlimit"),
    }
}

/// Whether the user whose id is parameter `$by` may manage the members of project `$1`
/// as the write commits: an enabled platform admin, or an admin (the role in `$admin`) of
/// the project.
macro_rules! may_manage_members {
    ($by:literal, $admin:literal) => {
        concat!(
            "(EXISTS (SELECT 1 FROM users WHERE id = ",
            $by,
            " AND is_admin <> 0 AND disabled_at IS NULL)
              OR EXISTS (SELECT 1 FROM memberships AS maker
                         WHERE maker.project_id = $1 AND maker.user_id = ",
            $by,
            " AND maker.role = ",
            $admin,
            "))"
        )
    };
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
    ) -> Result<bool, DbError> {
        // Names are unique ignoring case (`false`: taken), as users' and containers' are.
        let n = self
            .write(
                "INSERT INTO projects (id, name, description, created_at)
                 SELECT $1, $2, $3, $4
                 WHERE NOT EXISTS (SELECT 1 FROM projects WHERE name = $2 COLLATE NOCASE)",
                vec![
                    Arg::arg(id),
                    Arg::arg(name),
                    Arg::arg(description),
                    Arg::arg(now),
                ],
            )
            .await?;
        Ok(n > 0)
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

    /// Changes a project's name and description; `false`: no such project, or another has
    /// the name (whatever its case).
    pub(crate) async fn update_project(
        &self,
        id: &str,
        name: &str,
        description: &str,
    ) -> Result<bool, DbError> {
        let n = self
            .write(
                "UPDATE projects SET name = $2, description = $3
                 WHERE id = $1 AND deleted_at IS NULL
                   AND NOT EXISTS (SELECT 1 FROM projects AS other
                                   WHERE other.id <> $1 AND other.name = $2 COLLATE NOCASE)",
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
    /// Gives a user a role in a project, as `by` asks: only while `by` still may (an
    /// enabled platform admin, or an admin of the project) when it commits; `false`
    /// otherwise. Two of its admins demoting each other at once would otherwise leave the
    /// project without one.
    pub(crate) async fn set_membership(
        &self,
        project_id: &str,
        user_id: &str,
        role: Role,
        by: &str,
    ) -> Result<bool, DbError> {
        let n = self
            .write(
                concat!(
                    "INSERT INTO memberships (project_id, user_id, role) SELECT $1, $2, $3
                     WHERE ",
                    may_manage_members!("$4", "$5"),
                    " ON CONFLICT (project_id, user_id) DO UPDATE SET role = excluded.role"
                ),
                vec![
                    Arg::arg(project_id),
                    Arg::arg(user_id),
                    Arg::arg(role.as_str()),
                    Arg::arg(by),
                    Arg::arg(Role::Admin.as_str()),
                ],
            )
            .await?;
        Ok(n > 0)
    }

    /// Takes a user out of a project, as `by` asks (see [`Db::set_membership`]); whether
    /// they were in it and `by` still may.
    pub(crate) async fn delete_membership(
        &self,
        project_id: &str,
        user_id: &str,
        by: &str,
    ) -> Result<bool, DbError> {
        let n = self
            .write(
                concat!(
                    "DELETE FROM memberships WHERE project_id = $1 AND user_id = $2 AND ",
                    may_manage_members!("$3", "$4")
                ),
                vec![
                    Arg::arg(project_id),
                    Arg::arg(user_id),
                    Arg::arg(by),
                    Arg::arg(Role::Admin.as_str()),
                ],
            )
            .await?;
        Ok(n > 0)
    }

    /// Every server by name.
    pub(crate) async fn servers(&self) -> Result<Vec<ServerRow>, DbError> {
        let sql = format!("SELECT {SERVER_COLUMNS} FROM servers ORDER BY name");
        let rows = sqlx::query(&sql).fetch_all(&self.read).await?;
        Ok(rows.iter().map(server_row).collect())
    }

    /// Sets or clears a server's bandwidth limit; false if there is no such server.
    pub(crate) async fn set_server_bwlimit(
        &self,
        id: &str,
        bwlimit: Option<i64>,
    ) -> Result<bool, DbError> {
        let n = self
            .write(
                "UPDATE servers SET bwlimit = $1 WHERE id = $2",
                vec![Arg::arg(bwlimit), Arg::arg(id)],
            )
            .await?;
        Ok(n > 0)
    }

    /// The lowest bandwidth limit among these servers (bytes a second), if any has one.
    pub(crate) async fn servers_bwlimit(&self, ids: &[&str]) -> Result<Option<u64>, DbError> {
        let mut lowest: Option<u64> = None;
        for id in ids {
            let limit: Option<Option<i64>> =
                sqlx::query_scalar("SELECT bwlimit FROM servers WHERE id = $1")
                    .bind(*id)
                    .fetch_optional(&self.read)
                    .await?;
            if let Some(l) = limit.flatten().and_then(|l| u64::try_from(l).ok()) {
                lowest = Some(lowest.map_or(l, |x| x.min(l)));
            }
        }
        Ok(lowest)
    }

    /// Containers per server id (deleted ones left out).
    pub(crate) async fn container_counts(&self) -> Result<Vec<(String, i64)>, DbError> {
        let rows = sqlx::query(
            "SELECT server_id, COUNT(*) AS n FROM containers WHERE deleted_at IS NULL
             GROUP BY server_id",
        )
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get("server_id"), r.get("n")))
            .collect())
    }

    /// A server waiting for its agent: its join token's hash and expiry.
    pub(crate) async fn insert_pending_agent(
        &self,
        row: &ServerRow,
        token_hash: &str,
    ) -> Result<(), DbError> {
        self.write(
            "INSERT INTO servers (id, name, description, storage_root, created_at, kind,
                join_token_hash, join_expires_at)
             VALUES ($1, $2, $3, '', $4, $5, $6, $7)",
            vec![
                Arg::arg(&row.id),
                Arg::arg(&row.name),
                Arg::arg(&row.description),
                Arg::arg(row.created_at),
                Arg::arg(kind_str(ServerKind::Agent)),
                Arg::arg(token_hash),
                Arg::arg(row.join_expires_at),
            ],
        )
        .await?;
        Ok(())
    }

    /// Uses a join token: the pending server it belongs to, if it is good (unused, not
    /// expired), now pins `fingerprint` at `address`. The token is gone either way once
    /// used: a second join with it finds nothing.
    pub(crate) async fn join_agent(
        &self,
        token_hash: &str,
        fingerprint: &str,
        address: &str,
        now: i64,
    ) -> Result<Option<JoinedAgent>, DbError> {
        let (token_hash, fingerprint, address) = (
            token_hash.to_string(),
            fingerprint.to_string(),
            address.to_string(),
        );
        self.transact(move |c| {
            let found = query_first(
                c,
                "SELECT id, name FROM servers WHERE join_token_hash = $1 AND kind = $2
                    AND join_expires_at > $3",
                &[&token_hash, &kind_str(ServerKind::Agent), &now],
                |r| -> rusqlite::Result<JoinedAgent> {
                    Ok(JoinedAgent {
                        id: r.get(0)?,
                        name: r.get(1)?,
                    })
                },
            )?
            .transpose()?;
            let Some(found) = found else {
                return Ok(None);
            };
            execute(
                c,
                "UPDATE servers SET agent_fingerprint = $1, agent_address = $2, joined_at = $3,
                    join_token_hash = NULL, join_expires_at = NULL WHERE id = $4",
                &[&fingerprint, &address, &now, &found.id],
            )?;
            Ok::<_, DbError>(Some(found))
        })
        .await
    }

    /// An embedded server's storage root (None for an agent, whose root is on its host).
    pub(crate) async fn server_storage_root(&self, id: &str) -> Result<Option<String>, DbError> {
        Ok(
            sqlx::query_scalar("SELECT storage_root FROM servers WHERE id = $1 AND kind = $2")
                .bind(id)
                .bind(kind_str(ServerKind::Embedded))
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
