//! What runs: a container's process record, its command and rules, its interfaces, and
//! the networks of servers.

use app::model::ContainerStatus;
use sqlx::Row;

use super::{Arg, ContainerRow, Db, DbError, CONTAINER_SELECT};

/// A container's process state, as the lifecycle records it.
pub(crate) struct RunRecord {
    pub(crate) status: ContainerStatus,
    pub(crate) reason: Option<String>,
    pub(crate) started_at: Option<i64>,
    pub(crate) stopped_at: Option<i64>,
    pub(crate) exit_code: Option<i64>,
}

/// A network of a server: its bridge's number and its subnet.
#[derive(Clone, Debug)]
pub(crate) struct NetworkRow {
    pub(crate) server_id: String,
    pub(crate) name: String,
    pub(crate) cidr: String,
    pub(crate) number: i64,
}

impl Db {
    /// Records a container's process state when its status is one of `from` (at most
    /// three); says whether it did. A job's status (copying, syncing) is never overwritten.
    pub(crate) async fn record_run(
        &self,
        id: &str,
        rec: RunRecord,
        from: &[ContainerStatus],
    ) -> Result<bool, DbError> {
        let from = |i: usize| from.get(i).or(from.first()).map(|s| s.as_str());
        let changed = self
            .write(
                "UPDATE containers SET status = $2, status_reason = $3, started_at = $4,
                    stopped_at = $5, exit_code = $6, updated_at = $7
                 WHERE id = $1 AND status IN ($8, $9, $10)",
                vec![
                    Arg::arg(id),
                    Arg::arg(rec.status.as_str()),
                    Arg::arg(&rec.reason),
                    Arg::arg(rec.started_at),
                    Arg::arg(rec.stopped_at),
                    Arg::arg(rec.exit_code),
                    Arg::arg(crate::ids::now_ms()),
                    Arg::arg(from(0)),
                    Arg::arg(from(1)),
                    Arg::arg(from(2)),
                ],
            )
            .await?;
        Ok(changed > 0)
    }

    /// Forgets a container's status reason if it is still `reason` (one its owner has
    /// just made untrue).
    pub(crate) async fn clear_status_reason(&self, id: &str, reason: &str) -> Result<(), DbError> {
        self.write(
            "UPDATE containers SET status_reason = NULL, updated_at = $3
             WHERE id = $1 AND status_reason = $2",
            vec![
                Arg::arg(id),
                Arg::arg(reason),
                Arg::arg(crate::ids::now_ms()),
            ],
        )
        .await?;
        Ok(())
    }

    /// Every container of this status, by server.
    pub(crate) async fn containers_in(
        &self,
        status: ContainerStatus,
    ) -> Result<Vec<ContainerRow>, DbError> {
        Ok(sqlx::query_as(&format!(
            "{CONTAINER_SELECT} WHERE c.status = $1 ORDER BY c.server_id, c.id"
        ))
        .bind(status.as_str())
        .fetch_all(&self.read)
        .await?)
    }

    /// Sets one of a container's JSON settings: `command`, `firewall_rules`,
    /// `network_rules` or `interfaces`.
    pub(crate) async fn set_container_json(
        &self,
        id: &str,
        column: JsonColumn,
        json: String,
    ) -> Result<bool, DbError> {
        let sql = match column {
            JsonColumn::Command => {
                "UPDATE containers SET command = $2, updated_at = $3 WHERE id = $1"
            }
            JsonColumn::FirewallRules => {
                "UPDATE containers SET firewall_rules = $2, updated_at = $3 WHERE id = $1"
            }
            // The interfaces stay what runs (and their addresses its) until the next start
            // plans them from the new rules.
            JsonColumn::NetworkRules => {
                "UPDATE containers SET network_rules = $2, updated_at = $3 WHERE id = $1"
            }
            JsonColumn::Interfaces => {
                "UPDATE containers SET interfaces = $2, updated_at = $3 WHERE id = $1"
            }
        };
        let changed = self
            .write(
                sql,
                vec![
                    Arg::arg(id),
                    Arg::arg(&json),
                    Arg::arg(crate::ids::now_ms()),
                ],
            )
            .await?;
        Ok(changed > 0)
    }

    /// The interfaces (JSON) of every other container of a server's networks.
    pub(crate) async fn interfaces_on_server(
        &self,
        server_id: &str,
        except: &str,
    ) -> Result<Vec<String>, DbError> {
        Ok(sqlx::query_scalar(
            "SELECT interfaces FROM containers WHERE server_id = $1 AND id <> $2
                AND interfaces <> '[]' AND deleted_at IS NULL",
        )
        .bind(server_id)
        .bind(except)
        .fetch_all(&self.read)
        .await?)
    }

    /// Every network of every server (they share this host's address space).
    pub(crate) async fn networks(&self) -> Result<Vec<NetworkRow>, DbError> {
        let rows =
            sqlx::query("SELECT server_id, name, cidr, number FROM networks ORDER BY number")
                .fetch_all(&self.read)
                .await?;
        Ok(rows
            .iter()
            .map(|r| NetworkRow {
                server_id: r.get("server_id"),
                name: r.get("name"),
                cidr: r.get("cidr"),
                number: r.get("number"),
            })
            .collect())
    }

    pub(crate) async fn insert_network(&self, n: &NetworkRow) -> Result<(), DbError> {
        self.write(
            "INSERT INTO networks (server_id, name, cidr, number, created_at)
             VALUES ($1, $2, $3, $4, $5)",
            vec![
                Arg::arg(&n.server_id),
                Arg::arg(&n.name),
                Arg::arg(&n.cidr),
                Arg::arg(n.number),
                Arg::arg(crate::ids::now_ms()),
            ],
        )
        .await?;
        Ok(())
    }
}

/// The JSON settings of a container that are changed on their own.
#[derive(Clone, Copy, Debug)]
pub(crate) enum JsonColumn {
    Command,
    FirewallRules,
    NetworkRules,
    Interfaces,
}
