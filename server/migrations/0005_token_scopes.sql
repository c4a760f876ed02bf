-- API tokens a user manages: an expiry, and a scope (read-only, or some projects only).
ALTER TABLE api_tokens ADD COLUMN expires_at BIGINT;
ALTER TABLE api_tokens ADD COLUMN read_only INTEGER NOT NULL DEFAULT 0;
-- NULL: every project its user may see; else a JSON array of project ids.
ALTER TABLE api_tokens ADD COLUMN projects TEXT;
