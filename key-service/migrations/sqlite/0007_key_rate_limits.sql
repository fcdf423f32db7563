-- A key's own rate limits: requests and tokens per minute, and requests in flight at once;
-- NULL = none of its own (its group's rpm and tpm may still apply; the stricter wins).
ALTER TABLE keys ADD COLUMN rpm BIGINT;
ALTER TABLE keys ADD COLUMN tpm BIGINT;
ALTER TABLE keys ADD COLUMN max_parallel BIGINT;
