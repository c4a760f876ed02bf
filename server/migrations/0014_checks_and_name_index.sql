-- A CHECK (column IN (...)) of more than two values makes SQLite build a temporary index of
-- the list on every insert, and on every update of the column: for the three tables a copy
-- request writes (its container, its job, its audit entry) that was about a third of each
-- row's insert (`make load`). The same checks as comparisons, which cost next to nothing.
-- SQLite cannot change a CHECK constraint, so the tables are made again, with the columns
-- and indexes the migrations before gave them (foreign keys are not enforced while
-- migrations run; they are checked before each one commits).
CREATE TABLE containers_new (
    id                  TEXT PRIMARY KEY,
    name                TEXT NOT NULL,
    project_id          TEXT NOT NULL REFERENCES projects(id),
    server_id           TEXT NOT NULL REFERENCES servers(id),
    status              TEXT NOT NULL CHECK (status = 'copying' OR status = 'syncing'
                          OR status = 'running' OR status = 'stopped' OR status = 'failed'
                          OR status = 'deleting'),
    status_reason       TEXT,
    -- Unique across the platform; a copy never inherits its source's key.
    ssh_public_key      TEXT UNIQUE,
    firewall_rules      TEXT NOT NULL DEFAULT '[]',
    network_rules       TEXT NOT NULL DEFAULT '[]',
    -- For a copy: its source, and the source state (manifest root) it last matched.
    source_container_id TEXT REFERENCES containers(id),
    source_state        TEXT,
    last_synced_at      BIGINT,
    file_count          BIGINT NOT NULL DEFAULT 0,
    size_bytes          BIGINT NOT NULL DEFAULT 0,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    command             TEXT NOT NULL DEFAULT '{"args":[],"env":[],"cwd":"/"}',
    started_at          BIGINT,
    stopped_at          BIGINT,
    exit_code           BIGINT,
    interfaces          TEXT NOT NULL DEFAULT '[]',
    deleted_at          BIGINT,
    UNIQUE (project_id, name)
);
INSERT INTO containers_new (id, name, project_id, server_id, status, status_reason,
        ssh_public_key, firewall_rules, network_rules, source_container_id, source_state,
        last_synced_at, file_count, size_bytes, created_at, updated_at, command, started_at,
        stopped_at, exit_code, interfaces, deleted_at)
    SELECT id, name, project_id, server_id, status, status_reason,
        ssh_public_key, firewall_rules, network_rules, source_container_id, source_state,
        last_synced_at, file_count, size_bytes, created_at, updated_at, command, started_at,
        stopped_at, exit_code, interfaces, deleted_at
    FROM containers;
DROP TABLE containers;
ALTER TABLE containers_new RENAME TO containers;
CREATE INDEX containers_source ON containers(source_container_id);
-- A container's name is unique in its project whatever its case, so every check of a name
-- (each copy's admission, a copy request without a name) compares with NOCASE. The
-- UNIQUE (project_id, name) index compares exactly, so those checks used it for the
-- project only and then read every container of the project: a burst of copies into one
-- project got slower with each copy (`make load`). This index answers them by name.
CREATE INDEX containers_name_nocase ON containers(project_id, name COLLATE NOCASE)
    WHERE deleted_at IS NULL;

CREATE TABLE jobs_new (
    id                  TEXT PRIMARY KEY,
    kind                TEXT NOT NULL CHECK (kind = 'copy' OR kind = 'sync' OR kind = 'delete'
                          OR kind = 'start' OR kind = 'stop' OR kind = 'restart'
                          OR kind = 'convert'),
    status              TEXT NOT NULL CHECK (status = 'queued' OR status = 'running'
                          OR status = 'succeeded' OR status = 'failed' OR status = 'cancelled'),
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

CREATE TABLE audit_new (
    id         TEXT PRIMARY KEY,
    at         BIGINT NOT NULL,
    -- The user (NULL for a login of an unknown name) and their name as it was.
    actor_id   TEXT,
    actor_name TEXT NOT NULL,
    -- e.g. container.copy, container.stop, member.set, token.create, login.
    action     TEXT NOT NULL,
    -- The project it concerns, when known (project admins see their project's entries).
    project_id TEXT,
    -- What it was done to: a container, job, token, project or user.
    target     TEXT NOT NULL,
    address    TEXT NOT NULL,
    -- ok, refused (the answer was an error the caller can fix: 4xx) or failed.
    result     TEXT NOT NULL CHECK (result = 'ok' OR result = 'refused' OR result = 'failed'),
    detail     TEXT
);
INSERT INTO audit_new (id, at, actor_id, actor_name, action, project_id, target, address,
        result, detail)
    SELECT id, at, actor_id, actor_name, action, project_id, target, address, result, detail
    FROM audit;
DROP TABLE audit;
ALTER TABLE audit_new RENAME TO audit;
CREATE INDEX audit_at ON audit(at, id);
CREATE INDEX audit_project ON audit(project_id, at);
