-- A server's bandwidth limit (bytes a second) for the transfers to and from it; NULL: none.
ALTER TABLE servers ADD COLUMN bwlimit BIGINT;
