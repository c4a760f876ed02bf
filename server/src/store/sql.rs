//! Running the portable SQL (`$1` parameters) on a synchronous connection, and reading
//! rows of either driver with one mapping.

use rusqlite::types::{FromSql, ToSql, Value};
use rusqlite::CachedStatement;
use sqlx::sqlite::{Sqlite, SqliteRow};

use super::SyncConn;

/// A cached statement with `args` bound to `$1`, `$2` … by number (SQLite numbers named
/// parameters in order of appearance, which need not be theirs). Every argument must be
/// used.
pub fn prepare<'c>(
    conn: &'c SyncConn,
    sql: &str,
    args: &[&dyn ToSql],
) -> rusqlite::Result<CachedStatement<'c>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let count = stmt.parameter_count();
    if count != args.len() {
        return Err(rusqlite::Error::InvalidParameterCount(args.len(), count));
    }
    for index in 1..=count {
        let name = stmt.parameter_name(index).unwrap_or("?");
        let arg = name
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| args.get(n.checked_sub(1)?))
            .ok_or_else(|| rusqlite::Error::InvalidParameterName(name.to_string()))?;
        stmt.raw_bind_parameter(index, arg)?;
    }
    Ok(stmt)
}

/// Runs a statement that returns no rows; says how many rows it changed.
pub fn execute(conn: &SyncConn, sql: &str, args: &[&dyn ToSql]) -> rusqlite::Result<usize> {
    prepare(conn, sql, args)?.raw_execute()
}

/// The first row a statement returns, if any, as `map` makes it.
pub fn query_first<T>(
    conn: &SyncConn,
    sql: &str,
    args: &[&dyn ToSql],
    map: impl FnOnce(&rusqlite::Row) -> T,
) -> rusqlite::Result<Option<T>> {
    let mut stmt = prepare(conn, sql, args)?;
    let mut rows = stmt.raw_query();
    Ok(rows.next()?.map(map))
}

/// A type a column can be read as, by either driver.
pub trait ColumnType: for<'r> sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite> + FromSql {}
impl<T> ColumnType for T where T: for<'r> sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite> + FromSql {}

/// A row of either driver, read by column name: one mapping per type serves both. A column
/// missing or of another type is a bug in the query beside the mapping, and panics (as
/// sqlx's `Row::get` does).
pub trait Cols {
    fn col<T: ColumnType>(&self, name: &str) -> T;
}

impl Cols for SqliteRow {
    fn col<T: ColumnType>(&self, name: &str) -> T {
        sqlx::Row::get(self, name)
    }
}

impl Cols for rusqlite::Row<'_> {
    fn col<T: ColumnType>(&self, name: &str) -> T {
        // Mappings read columns in the order the query selects them: the column after the
        // one read last is looked at first. rusqlite finds a name by comparing it with each
        // column's in turn, which for a container's 27 columns was a tenth of a copy
        // request's reads (`make load`).
        thread_local!(static NEXT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) });
        let stmt = self.as_ref();
        let next = NEXT.get();
        let index = match stmt.column_name(next) {
            Ok(n) if n == name => Ok(next),
            _ => stmt.column_index(name),
        };
        index
            .and_then(|i| {
                NEXT.set(i + 1);
                self.get(i)
            })
            .unwrap_or_else(|e| panic!("column {name}: {e}"))
    }
}

/// `true` when `err` is a violation of a UNIQUE constraint (a name or key already taken).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(e) if e.is_unique_violation())
}

/// The message of a UNIQUE constraint's violation (it names the columns: "UNIQUE
/// constraint failed: containers.project_id, containers.name"), if `err` is one.
pub fn unique_violation(err: &rusqlite::Error) -> Option<&str> {
    match err {
        rusqlite::Error::SqliteFailure(e, message)
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
        {
            Some(message.as_deref().unwrap_or(""))
        }
        _ => None,
    }
}

/// A statement's argument as an owned value: `Db::write` keeps its arguments, since a
/// group-committed write may run twice.
pub(crate) trait Arg {
    fn arg(self) -> Value;
}

impl Arg for &str {
    fn arg(self) -> Value {
        Value::Text(self.to_owned())
    }
}

impl Arg for &String {
    fn arg(self) -> Value {
        Value::Text(self.clone())
    }
}

impl Arg for i64 {
    fn arg(self) -> Value {
        Value::Integer(self)
    }
}

impl<T: Arg> Arg for Option<T> {
    fn arg(self) -> Value {
        self.map_or(Value::Null, Arg::arg)
    }
}

impl Arg for &Option<String> {
    fn arg(self) -> Value {
        self.as_deref().arg()
    }
}

/// What SQLite will do for `sql`, for tests that hold statements to their indexes and
/// away from temporary tables; parameters are left unbound (the plan does not depend on
/// them without `ANALYZE`'s statistics).
#[cfg(test)]
pub(crate) mod explain {
    use super::SyncConn;

    /// Column `column` of each row `<how> <sql>` answers.
    fn column(c: &SyncConn, how: &str, sql: &str, column: usize) -> Vec<String> {
        let read = || -> rusqlite::Result<Vec<String>> {
            let mut st = c.prepare(&format!("{how} {sql}"))?;
            let mut rows = st.raw_query();
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(row.get::<_, String>(column)?);
            }
            Ok(out)
        };
        read().unwrap_or_else(|e| panic!("{how} {sql}: {e}"))
    }

    /// The program's opcodes (`EXPLAIN`).
    pub(crate) fn opcodes(c: &SyncConn, sql: &str) -> Vec<String> {
        column(c, "EXPLAIN", sql, 1)
    }

    /// The query plan's lines (`EXPLAIN QUERY PLAN`), one string.
    pub(crate) fn plan(c: &SyncConn, sql: &str) -> String {
        column(c, "EXPLAIN QUERY PLAN", sql, 3).join("\n")
    }
}
