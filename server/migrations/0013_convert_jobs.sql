-- A container's directory tree made an image tree while doppel runs is a job (queued,
-- shown live, resumed after a restart): jobs.kind gains 'convert'. SQLite cannot change
-- a CHECK constraint, so the table is made again (no table references jobs), with the
-- columns and indexes the migrations since 0004 gave it.
CREATE TABLE jobs_new (
    id                  TEXT PRIMARY KEY,
    kind                TEXT NOT NULL CHECK (kind IN
                          ('copy', 'sync', 'delete', 'start', 'stop', 'restart', 'convert')),
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
    waiting_for         TEXT,
    UNIQUE (requested_by, idempotency_key)
);
INSERT INTO jobs_new (id, kind, status, phase, project_id, container_id, source_container_id,
        requested_by, params, progress, summary, error, idempotency_key, created_at,
        started_at, finished_at, request_fingerprint, waiting_for)
    SELECT id, kind, status, phase, project_id, container_id, source_container_id,
        requested_by, params, progress, summary, error, idempotency_key, created_at,
        started_at, finished_at, request_fingerprint, waiting_for
    FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;
CREATE INDEX jobs_container ON jobs(container_id);
CREATE INDEX jobs_status ON jobs(status);
CREATE INDEX jobs_active_by_user ON jobs(requested_by, status)
    WHERE status IN ('queued', 'running');
CREATE INDEX jobs_active_in_project ON jobs(project_id, status)
    WHERE status IN ('queued', 'running');
