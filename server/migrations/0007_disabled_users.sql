-- A disabled user cannot log in, and their sessions and tokens stop working; their jobs
-- and memberships stay (enable them again and all is as it was).
ALTER TABLE users ADD COLUMN disabled_at BIGINT;
