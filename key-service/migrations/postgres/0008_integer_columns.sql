-- PostgreSQL's twin of sqlite/0008_integer_columns.sql. Its BIGINT columns cannot hold a
-- REAL (an overflowing `used_quota + $1` fails instead), so what is left to refuse is a
-- negative count or cost. Balances may go negative (billing takes what a request cost):
-- no check on accounts.balance.

-- Repair first, or adding a check would fail the migration and the service's start; the
-- SQLite side makes the same values 0.
UPDATE keys SET quota = 0 WHERE quota < 0;
UPDATE keys SET used_quota = 0 WHERE used_quota < 0;
UPDATE usage_log SET input_tokens = 0 WHERE input_tokens < 0;
UPDATE usage_log SET cached_input_tokens = 0 WHERE cached_input_tokens < 0;
UPDATE usage_log SET output_tokens = 0 WHERE output_tokens < 0;
UPDATE usage_log SET cost = 0 WHERE cost < 0;

ALTER TABLE keys
    ADD CONSTRAINT keys_quota_not_negative CHECK (quota >= 0),
    ADD CONSTRAINT keys_used_quota_not_negative CHECK (used_quota >= 0);

ALTER TABLE usage_log
    ADD CONSTRAINT usage_log_input_tokens_not_negative CHECK (input_tokens >= 0),
    ADD CONSTRAINT usage_log_cached_input_tokens_not_negative CHECK (cached_input_tokens >= 0),
    ADD CONSTRAINT usage_log_output_tokens_not_negative CHECK (output_tokens >= 0),
    ADD CONSTRAINT usage_log_cost_not_negative CHECK (cost >= 0);
