-- Why a queued job has not started: the server it needs is offline ("waiting for server
-- b"); cleared when it starts.
ALTER TABLE jobs ADD COLUMN waiting_for TEXT;
