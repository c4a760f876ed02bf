-- doppel's schema. Portable SQL (SQLite now, PostgreSQL later): TEXT ids of 24 hex digits,
-- BIGINT unix milliseconds, JSON documents in TEXT, integer booleans.

CREATE TABLE projects (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL
);

CREATE TABLE servers (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    description  TEXT NOT NULL DEFAULT '',
    -- Directory that holds this server's containers and snapshots.
    storage_root TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    -- PHC string (argon2id); never the password itself.
    password_hash TEXT,
    is_admin      INTEGER NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL
);

CREATE TABLE memberships (
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role       TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    PRIMARY KEY (project_id, user_id)
);

CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    -- BLAKE3 of the token; the token itself is shown once and never stored.
    token_hash   TEXT NOT NULL UNIQUE,
    name         TEXT NOT NULL DEFAULT '',
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT
);

CREATE TABLE sessions (
    -- BLAKE3 of the cookie value.
    id_hash    TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE containers (
    id                  TEXT PRIMARY KEY,
    name                TEXT NOT NULL,
    project_id          TEXT NOT NULL REFERENCES projects(id),
    server_id           TEXT NOT NULL REFERENCES servers(id),
    status              TEXT NOT NULL CHECK (status IN
                          ('copying', 'syncing', 'running', 'stopped', 'failed', 'deleting')),
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
    UNIQUE (project_id, name)
);
CREATE INDEX containers_source ON containers(source_container_id);

CREATE TABLE snapshots (
    id           TEXT PRIMARY KEY,
    container_id TEXT NOT NULL REFERENCES containers(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    file_count   BIGINT NOT NULL DEFAULT 0,
    size_bytes   BIGINT NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL,
    UNIQUE (container_id, name)
);

CREATE TABLE jobs (
    id                  TEXT PRIMARY KEY,
    kind                TEXT NOT NULL CHECK (kind IN ('copy', 'sync')),
    status              TEXT NOT NULL CHECK (status IN
                          ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    phase               TEXT,
    project_id          TEXT NOT NULL REFERENCES projects(id),
    container_id        TEXT NOT NULL REFERENCES containers(id),
    source_container_id TEXT NOT NULL REFERENCES containers(id),
    requested_by        TEXT REFERENCES users(id),
    -- The request as accepted (JSON), so a job can be resumed after a restart.
    params              TEXT NOT NULL DEFAULT '{}',
    progress            TEXT,
    summary             TEXT,
    error               TEXT,
    idempotency_key     TEXT,
    created_at          BIGINT NOT NULL,
    started_at          BIGINT,
    finished_at         BIGINT,
    UNIQUE (requested_by, idempotency_key)
);
CREATE INDEX jobs_container ON jobs(container_id);
CREATE INDEX jobs_status ON jobs(status);
