//! A page of rows narrowed to the projects a caller may see, read newest first from an
//! index however many rows the others have: the jobs list and the audit log.

/// The most projects whose pages `scoped_page` reads one by one; past that, an `IN` list
/// (SQLite takes at most 500 selects in one statement).
pub(super) const MERGED_PROJECTS: usize = 64;

/// `page`, a statement that takes a term narrowing it (`" AND ..."`), narrowed to the
/// `scope` projects bound from `$first` on (`None`: every project). Each project's page is
/// read on its own (from the table's index on `project_id`, ordered within it) and the
/// pages merged by `newest` (`ORDER BY ... LIMIT ...`): walking the whole table for a
/// quiet project's rows read all of them, and an `IN` list would make SQLite sort every
/// row of the projects.
pub(super) fn scoped_page(
    scope: Option<usize>,
    first: usize,
    page: impl Fn(&str) -> String,
    newest: &str,
) -> String {
    match scope {
        None => page(""),
        Some(n) if n == 0 || n > MERGED_PROJECTS => page(&in_projects("project_id", n, first)),
        Some(n) => {
            let each: Vec<String> = (0..n)
                .map(|i| {
                    let one = page(&format!(" AND project_id = ${}", i + first));
                    format!("SELECT * FROM ({one})")
                })
                .collect();
            format!("{} {newest}", each.join(" UNION ALL "))
        }
    }
}

/// The term narrowing a statement to `n` projects bound from `$first` on, `column` being
/// the project's (none: nothing matches).
pub(super) fn in_projects(column: &str, n: usize, first: usize) -> String {
    if n == 0 {
        return " AND 1 = 0".into();
    }
    let ids: Vec<String> = (first..first + n).map(|i| format!("${i}")).collect();
    format!(" AND {column} IN ({})", ids.join(", "))
}
