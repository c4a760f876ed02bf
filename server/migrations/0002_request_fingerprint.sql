-- The request an Idempotency-Key was first used for (a hash of its method, target and
-- body): a retry with the same key must be the same request.
ALTER TABLE jobs ADD COLUMN request_fingerprint TEXT;
