-- Jobs pile up: a copy synced every few minutes leaves hundreds a day. The jobs list, the
-- sync status page and the container pages read them newest first, which sorted every job
-- on every page; they now read an index range instead. At 200,000 jobs (Python sqlite3,
-- the queries as doppel runs them): a page of the jobs list 235 ms -> 0.2 ms, the sync
-- status page's recent runs 877 ms -> 3 ms.
DROP INDEX jobs_container;
CREATE INDEX jobs_container ON jobs(container_id, created_at, id);
CREATE INDEX jobs_source ON jobs(source_container_id, created_at, id);
CREATE INDEX jobs_created ON jobs(created_at, id);
-- Only the live jobs (few, however many ended): what the status look-ups ask for. A job
-- leaves this index when it ends, instead of moving within an index of every status. The
-- queries name the statuses as written here, so SQLite sees they match its condition.
DROP INDEX jobs_status;
CREATE INDEX jobs_live ON jobs(status, container_id)
    WHERE status = 'queued' OR status = 'running';
