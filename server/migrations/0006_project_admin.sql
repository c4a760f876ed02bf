-- Projects made and deleted through the API. A deleted project's row stays (its jobs and
-- its deleted containers name it) with deleted_at set; every read leaves it out and its
-- name is free again.
ALTER TABLE projects ADD COLUMN deleted_at BIGINT;
