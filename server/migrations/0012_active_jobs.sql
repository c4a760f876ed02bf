-- The jobs each user and each project has queued or running, counted on every copy and
-- sync request (the caps). These partial indexes hold only active jobs, status included,
-- so a count reads index entries alone: it had read every active job's row, which made
-- each request of a burst slower than the one before it (`make load`).
CREATE INDEX jobs_active_by_user ON jobs(requested_by, status)
    WHERE status IN ('queued', 'running');
CREATE INDEX jobs_active_in_project ON jobs(project_id, status)
    WHERE status IN ('queued', 'running');
