-- Servers on other hosts: a `doppel agent` joins with a one-time token and from then on
-- the control plane calls it over mutual TLS, pinning its certificate. An embedded server
-- is a storage root of this process (the default); an agent's storage root is its own.
ALTER TABLE servers ADD COLUMN kind TEXT NOT NULL DEFAULT 'embedded'
    CHECK (kind IN ('embedded', 'agent'));
-- host:port where the control plane reaches the agent (what it said when it joined).
ALTER TABLE servers ADD COLUMN agent_address TEXT;
-- SHA-256 of the agent's certificate (64 hex digits), pinned when it joined.
ALTER TABLE servers ADD COLUMN agent_fingerprint TEXT;
-- While it waits for its agent: the BLAKE3 of the one-time join token and its expiry.
ALTER TABLE servers ADD COLUMN join_token_hash TEXT;
ALTER TABLE servers ADD COLUMN join_expires_at BIGINT;
ALTER TABLE servers ADD COLUMN joined_at BIGINT;
CREATE UNIQUE INDEX servers_join_token ON servers (join_token_hash);
