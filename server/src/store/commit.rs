//! Group commit: every write queued at one moment runs in one transaction, on the one
//! write connection (see the module above for why).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::types::{ToSql, Value};
use tokio::sync::{mpsc, oneshot};

use super::jobs::forget_counts;
use super::{execute, Db, DbError, SyncConn};

/// Most writes one group commit takes.
const MAX_BATCH: usize = 256;

/// A queued write. It may run twice: first in a pass without savepoints (the usual case,
/// where every write of the batch succeeds), then, if a write of the batch failed, again in
/// a pass where each write has a savepoint of its own (the first pass is rolled back whole).
pub(super) trait Queued: Send {
    /// Runs the write's statements; says whether they succeeded.
    fn run(&mut self, conn: &SyncConn) -> bool;
    /// Answers the caller, given how the transaction ended.
    fn answer(self: Box<Self>, outcome: Result<(), String>);
}

struct Write<F, T, E> {
    write: F,
    /// The outcome of the write's last run (`None`: it never ran, or panicked).
    result: Option<Result<T, E>>,
    caller: oneshot::Sender<Result<T, E>>,
}

/// An error that SQLite did not raise (a failed batch, a panicked write), as rusqlite's.
fn failure(message: String) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
        Some(message),
    )
}

impl<F, T, E> Queued for Write<F, T, E>
where
    F: Fn(&SyncConn) -> Result<T, E> + Send,
    T: Send,
    E: From<rusqlite::Error> + Send,
{
    fn run(&mut self, conn: &SyncConn) -> bool {
        self.result = None;
        let result = (self.write)(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn answer(self: Box<Self>, outcome: Result<(), String>) {
        let failed = |e: String| Err(E::from(failure(e)));
        // Failures are answered after the commit too: a caller told "taken" can then read
        // whatever took it.
        let _ = self.caller.send(match (outcome, self.result) {
            (Err(e), None | Some(Ok(_))) => failed(e),
            (_, Some(result)) => result,
            (Ok(()), None) => failed("the write panicked; it was rolled back".into()),
        });
    }
}

/// Takes every write queued at the moment and runs them in one transaction, on the writer.
pub(super) async fn group_commit(
    writer: Arc<Mutex<SyncConn>>,
    mut queue: mpsc::UnboundedReceiver<Box<dyn Queued>>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Woken by a write, this task would otherwise run next on that worker (tokio's LIFO
        // slot) and commit it alone, while the burst's other requests, already runnable,
        // are about to queue theirs. One yield lets them: every commit writes each page it
        // changed into the WAL, so a burst committed in a few batches writes the same table
        // and index pages a few times instead of once per request (`make load`: the WAL's
        // writes were most of the commit's time).
        tokio::task::yield_now().await;
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        let outcome = commit_batch(&writer.lock(), &mut batch).map_err(|e| e.to_string());
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "a group of database writes failed to commit");
        }
        for write in batch.drain(..) {
            write.answer(outcome.clone());
        }
    }
}

/// Runs a batch on the writer; the batch leaves no transaction open behind it.
fn commit_batch(conn: &SyncConn, batch: &mut [Box<dyn Queued>]) -> rusqlite::Result<()> {
    let result = run_batch(conn, batch);
    if result.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    result
}

/// Runs one write, and says whether it succeeded. A write that panics counts as failed
/// (its caller hears that the writer failed it); the writer carries on for everyone else.
fn run_one(write: &mut Box<dyn Queued>, conn: &SyncConn) -> bool {
    std::panic::catch_unwind(AssertUnwindSafe(|| write.run(conn))).unwrap_or_else(|_| {
        tracing::error!("a database write panicked; it was rolled back");
        false
    })
}

fn run_batch(conn: &SyncConn, batch: &mut [Box<dyn Queued>]) -> rusqlite::Result<()> {
    // (What a transaction's admissions counted holds only within it, and only for what
    // it kept: see `jobs::Counted`.)
    forget_counts();
    let result = run_passes(conn, batch);
    forget_counts();
    result
}

fn run_passes(conn: &SyncConn, batch: &mut [Box<dyn Queued>]) -> rusqlite::Result<()> {
    // First pass, no savepoints: each write costs only its own statements.
    conn.execute_batch("BEGIN")?;
    if batch.iter_mut().all(|write| run_one(write, conn)) {
        return conn.execute_batch("COMMIT");
    }
    conn.execute_batch("ROLLBACK")?;
    forget_counts();
    // A write failed: all of them again, each in a savepoint, so a failed one is undone
    // alone. One savepoint, kept open from write to write: released and taken again after a
    // write that succeeded; rolled back to (which keeps it) after one that failed.
    conn.execute_batch("BEGIN; SAVEPOINT write")?;
    for write in batch.iter_mut() {
        if run_one(write, conn) {
            conn.execute_batch("RELEASE write; SAVEPOINT write")?;
        } else {
            conn.execute_batch("ROLLBACK TO write")?;
            forget_counts();
        }
    }
    conn.execute_batch("RELEASE write; COMMIT")
}

impl Db {
    /// Runs one statement as a write of its own (group-committed with the writes queued
    /// beside it); says how many rows it changed.
    pub(crate) async fn write(
        &self,
        sql: &'static str,
        args: Vec<Value>,
    ) -> Result<usize, DbError> {
        self.transact(move |c| {
            let args: Vec<&dyn ToSql> = args.iter().map(|v| v as &dyn ToSql).collect();
            Ok(execute(c, sql, &args)?)
        })
        .await
    }

    /// Runs `write` in a transaction of its own: all of its statements take effect, or
    /// (when it returns an error) none. It shares one commit with the writes queued beside
    /// it, and answers once that commit is done.
    ///
    /// `write` may run twice (see `Queued`): it must do nothing but its statements.
    pub async fn transact<T, E, F>(&self, write: F) -> Result<T, E>
    where
        F: Fn(&SyncConn) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<rusqlite::Error> + Send + 'static,
    {
        let (caller, answered) = oneshot::channel::<Result<T, E>>();
        let queued: Box<dyn Queued> = Box::new(Write {
            write,
            result: None,
            caller,
        });
        let gone = || E::from(failure("the database writer has stopped".into()));
        self.batched.send(queued).map_err(|_| gone())?;
        answered.await.map_err(|_| gone())?
    }
}

#[cfg(test)]
mod tests {
    use super::super::jobs::{Admission, JobCaps};
    use super::*;

    type Seen = Result<(u64, u64), rusqlite::Error>;

    fn queued<F>(write: F) -> (Box<dyn Queued>, oneshot::Receiver<Seen>)
    where
        F: Fn(&SyncConn) -> Seen + Send + 'static,
    {
        let (caller, answer) = oneshot::channel();
        let write = Write {
            write,
            result: None,
            caller,
        };
        (Box::new(write), answer)
    }

    /// A write that counts user u's and project p's active jobs as the caps do (caps of
    /// none: the verdict says the counts), then queues one job, `id` (and then fails, if
    /// `fails`).
    fn admission(id: &'static str, fails: bool) -> (Box<dyn Queued>, oneshot::Receiver<Seen>) {
        queued(move |c| {
            let caps = JobCaps {
                per_user: 0,
                per_project: 0,
            };
            let Some(Admission::TooMany {
                by_user,
                in_project,
            }) = caps.exceeded(c, "u", "p")?
            else {
                unreachable!("a cap of none is always exceeded")
            };
            execute(
                c,
                "INSERT INTO jobs (id, requested_by, project_id, status) VALUES ($1, 'u', 'p', 'queued')",
                &[&id],
            )?;
            if fails {
                return Err(rusqlite::Error::InvalidQuery);
            }
            JobCaps::admitted(c, "u", "p");
            Ok((by_user, in_project))
        })
    }

    /// Admissions of one commit take the counts the one before left only while nothing
    /// else changed: a job that ended between them, and jobs rolled back (a write's own,
    /// and a whole pass's), are seen.
    #[tokio::test]
    async fn the_caps_see_every_change_between_admissions_of_one_commit() {
        let conn = SyncConn::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, requested_by TEXT, project_id TEXT,
                status TEXT);
             INSERT INTO jobs VALUES ('j0', 'u', 'p', 'running');",
        )
        .unwrap();
        let (a1, seen1) = admission("a1", false);
        let (done, _) = queued(|c| {
            execute(
                c,
                "UPDATE jobs SET status = 'succeeded' WHERE id = 'j0'",
                &[],
            )?;
            Ok((0, 0))
        });
        let (a2, seen2) = admission("a2", false);
        // Fails before it changes anything: the first pass is rolled back right after a2
        // counted, and the batch runs again, each write in a savepoint.
        let (refused, _) = queued(|_| Err(rusqlite::Error::InvalidQuery));
        // Fails after its insert.
        let (a3, seen3) = admission("a3", true);
        let (a4, seen4) = admission("a4", false);
        let (a5, seen5) = admission("a5", false);
        let mut batch = vec![a1, done, a2, refused, a3, a4, a5];
        commit_batch(&conn, &mut batch).unwrap();
        for write in batch {
            write.answer(Ok(()));
        }
        assert_eq!(seen1.await.unwrap().unwrap(), (1, 1));
        // j0 ended since a1 counted.
        assert_eq!(seen2.await.unwrap().unwrap(), (1, 1));
        assert!(seen3.await.unwrap().is_err());
        // a3 was rolled back.
        assert_eq!(seen4.await.unwrap().unwrap(), (2, 2));
        assert_eq!(seen5.await.unwrap().unwrap(), (3, 3));
        let active: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(active, 4);
    }
}
