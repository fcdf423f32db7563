-- Limits per model on one key (issue 20): a JSON list of caps, each with its model name
-- or pattern, unit ('credits' or 'tokens'), limit, period, and what it has used in its
-- current period [period_start, period_end). It travels to the filter as it is.
ALTER TABLE keys ADD COLUMN model_caps TEXT NOT NULL DEFAULT '[]';
