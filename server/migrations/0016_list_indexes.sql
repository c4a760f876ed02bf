-- Lists read newest first from an index range, however many rows have piled up.

-- The ended jobs by status, newest first: `GET /jobs?status=failed` (or succeeded,
-- cancelled) reads its page here instead of walking every job, newest first, until the
-- page is full (49 ms at 200,000 jobs with none failed). A job enters it once, when it
-- ends: a copy request's insert (queued) does not write it.
CREATE INDEX jobs_ended ON jobs(status, created_at, id)
    WHERE status = 'succeeded' OR status = 'failed' OR status = 'cancelled';

-- A project's jobs, newest first: what a member who sees some projects reads, one project
-- at a time (walking every job for theirs read all 200,000 for a quiet project), and
-- `?project_id=`. A kind's, for `?kind=` (the copies among many syncs).
CREATE INDEX jobs_project ON jobs(project_id, created_at, id);
CREATE INDEX jobs_kind ON jobs(kind, created_at, id);

-- The audit log is read newest first, which is the order of its ids (they grow with time),
-- narrowed by project (a project admin's view), actor or action: each has an index ordered
-- by id within it, so a page is an index range read backwards, not a walk of every entry
-- (a project with few entries among 200,000: 25 ms) or a sort of all of a project's.
-- `audit_at` was read by nothing.
DROP INDEX audit_at;
DROP INDEX audit_project;
CREATE INDEX audit_project ON audit(project_id, id);
CREATE INDEX audit_actor ON audit(actor_name, id);
CREATE INDEX audit_action ON audit(action, id);
