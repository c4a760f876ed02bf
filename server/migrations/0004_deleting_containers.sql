-- Deleting containers. A deleted container's row stays (its jobs and its copies name it)
-- with deleted_at set; every read of containers leaves it out, and its name and SSH key
-- are freed for others.
ALTER TABLE containers ADD COLUMN deleted_at BIGINT;

-- A delete is a job, and a start, stop or restart is recorded as one (done at once, shown
-- live and in the history): jobs.kind gains them. SQLite cannot change a CHECK
-- constraint, so the table is made again (no table references jobs).
CREATE TABLE jobs_new (
    id                  TEXT PRIMARY KEY,
    kind                TEXT NOT NULL CHECK (kind IN
                          ('copy', 'sync', 'delete', 'start', 'stop', 'restart')),
    status              TEXT NOT NULL CHECK (status IN
                          ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    phase               TEXT,
    project_id          TEXT NOT NULL REFERENCES projects(id),
    container_id        TEXT NOT NULL REFERENCES containers(id),
    source_container_id TEXT NOT NULL REFERENCES containers(id),
    requested_by        TEXT REFERENCES users(id),
    params              TEXT NOT NULL DEFAULT '{}',
    progress            TEXT,
    summary             TEXT,
    error               TEXT,
    idempotency_key     TEXT,
    created_at          BIGINT NOT NULL,
    started_at          BIGINT,
    finished_at         BIGINT,
    request_fingerprint TEXT,
    UNIQUE (requested_by, idempotency_key)
);
INSERT INTO jobs_new (id, kind, status, phase, project_id, container_id, source_container_id,
        requested_by, params, progress, summary, error, idempotency_key, created_at,
        started_at, finished_at, request_fingerprint)
    SELECT id, kind, status, phase, project_id, container_id, source_container_id,
        requested_by, params, progress, summary, error, idempotency_key, created_at,
        started_at, finished_at, request_fingerprint
    FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;
CREATE INDEX jobs_container ON jobs(container_id);
CREATE INDEX jobs_status ON jobs(status);
