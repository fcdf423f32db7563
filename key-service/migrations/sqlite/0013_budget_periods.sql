-- Budget periods (issue 20). A key's quota counts over its whole life ('total') or afresh
-- each 'day', 'week', 'month' or fixed span ('72h'); `used_quota` is what the current
-- period has used, and [period_start, period_end) is that period in Unix seconds (NULL
-- for 'total'). The store rolls a key over once `period_end` has passed.
ALTER TABLE keys ADD COLUMN quota_period TEXT NOT NULL DEFAULT 'total';
ALTER TABLE keys ADD COLUMN period_start BIGINT;
ALTER TABLE keys ADD COLUMN period_end BIGINT;
CREATE INDEX keys_period_end ON keys (period_end) WHERE period_end IS NOT NULL;

-- An account may also have a spending limit per period, next to its balance: what its
-- keys may spend in the period is the lesser of the two. NULL = no such limit.
ALTER TABLE accounts ADD COLUMN spend_limit BIGINT;
ALTER TABLE accounts ADD COLUMN quota_period TEXT NOT NULL DEFAULT 'total';
ALTER TABLE accounts ADD COLUMN period_used BIGINT NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN period_start BIGINT;
ALTER TABLE accounts ADD COLUMN period_end BIGINT;
