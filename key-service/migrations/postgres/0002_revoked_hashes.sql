-- The hash a change took out of service: the old hash of a rotated key, the last hash of
-- a deleted one. Deltas (`?since=`) send these so the filter can drop them by hash,
-- which is how it stores keys. NULL for changes that keep the key's hash.
ALTER TABLE key_changes ADD COLUMN revoked_hash TEXT;
