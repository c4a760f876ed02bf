-- Containers that really run (runc): what runs, when it started and ended, and the
-- interfaces of its network namespace.

-- The container's process: {"args": [...], "env": ["K=V", ...], "cwd": "/"}. No args: the
-- container has nothing to run and does not start.
ALTER TABLE containers ADD COLUMN command TEXT NOT NULL DEFAULT '{"args":[],"env":[],"cwd":"/"}';
ALTER TABLE containers ADD COLUMN started_at BIGINT;
ALTER TABLE containers ADD COLUMN stopped_at BIGINT;
-- How its last process ended (128 + n for signal n); NULL while it runs or before a first run.
ALTER TABLE containers ADD COLUMN exit_code BIGINT;
-- Its interfaces as first set up: [{"interface", "network", "ipv4" (address/prefix), "mac"}].
-- An address, once given, stays the container's; a copy gets its own.
ALTER TABLE containers ADD COLUMN interfaces TEXT NOT NULL DEFAULT '[]';

-- The networks of each server: a bridge on its host (numbered across the data dir) and an
-- IPv4 subnet, made on first use.
CREATE TABLE networks (
    server_id  TEXT NOT NULL REFERENCES servers(id),
    name       TEXT NOT NULL,
    cidr       TEXT NOT NULL,
    number     BIGINT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (server_id, name)
);
