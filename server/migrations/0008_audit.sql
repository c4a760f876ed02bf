-- The audit log: every write through the API or the console (and every login), who did
-- it, when, from where, and how it ended. Only ever appended to.
CREATE TABLE audit (
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
    result     TEXT NOT NULL CHECK (result IN ('ok', 'refused', 'failed')),
    detail     TEXT
);
CREATE INDEX audit_at ON audit(at, id);
CREATE INDEX audit_project ON audit(project_id, at);
