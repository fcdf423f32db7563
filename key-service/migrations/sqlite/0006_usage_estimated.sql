-- TRUE: the filter estimated the tokens (the response ended without its usage: the
-- client went away mid-stream, or before any answer).
ALTER TABLE usage_log ADD COLUMN estimated BOOLEAN NOT NULL DEFAULT FALSE;
