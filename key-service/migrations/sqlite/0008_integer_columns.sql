-- No REAL (or TEXT) ever in an integer column. SQLite stores whatever a statement hands
-- it: `used_quota + ?` past i64::MAX once became a REAL, every snapshot record built from
-- that row then carried a number no filter could read, and key sync wedged everywhere.
-- The arithmetic now saturates; these triggers make the schema refuse such values too.
-- (A CHECK constraint would need the tables rebuilt, which is risky for `keys` inside
-- the migration's transaction with foreign keys on; PostgreSQL gets CHECKs instead.)

-- First repair what may already be stored. CAST(... AS INTEGER) clamps a REAL into the
-- i64 range (SQLite documents that a REAL past either end becomes that end) and reads TEXT
-- by its leading digits (0 without any); a negative count or cost becomes 0 (the triggers
-- below would otherwise refuse every later update of such a row, billing included), a
-- rate limit at least 1, as the API allows.
UPDATE keys SET quota = MAX(CAST(quota AS INTEGER), 0)
    WHERE typeof(quota) <> 'integer' OR quota < 0;
UPDATE keys SET used_quota = MAX(CAST(used_quota AS INTEGER), 0)
    WHERE typeof(used_quota) <> 'integer' OR used_quota < 0;
UPDATE keys SET expires_at = CAST(expires_at AS INTEGER)
    WHERE typeof(expires_at) NOT IN ('integer', 'null');
UPDATE keys SET rpm = MAX(CAST(rpm AS INTEGER), 1)
    WHERE typeof(rpm) NOT IN ('integer', 'null');
UPDATE keys SET tpm = MAX(CAST(tpm AS INTEGER), 1)
    WHERE typeof(tpm) NOT IN ('integer', 'null');
UPDATE keys SET max_parallel = MAX(CAST(max_parallel AS INTEGER), 1)
    WHERE typeof(max_parallel) NOT IN ('integer', 'null');
UPDATE accounts SET balance = CAST(balance AS INTEGER)
    WHERE typeof(balance) NOT IN ('integer', 'null');
UPDATE usage_log SET input_tokens = MAX(CAST(input_tokens AS INTEGER), 0)
    WHERE typeof(input_tokens) <> 'integer' OR input_tokens < 0;
UPDATE usage_log SET cached_input_tokens = MAX(CAST(cached_input_tokens AS INTEGER), 0)
    WHERE typeof(cached_input_tokens) <> 'integer' OR cached_input_tokens < 0;
UPDATE usage_log SET output_tokens = MAX(CAST(output_tokens AS INTEGER), 0)
    WHERE typeof(output_tokens) <> 'integer' OR output_tokens < 0;
UPDATE usage_log SET cost = MAX(CAST(cost AS INTEGER), 0)
    WHERE typeof(cost) <> 'integer' OR cost < 0;

-- Then refuse any new one. The column's INTEGER affinity has already turned an integral
-- REAL or numeric TEXT into an integer when the trigger runs, so what is left here is
-- what cannot be one (1.5, 1.5e19, 'abc'). The snapshot's record fields are covered
-- (quota, used_quota, expires_at and the key's rate limits), and what billing writes.
CREATE TRIGGER keys_integers_insert BEFORE INSERT ON keys
WHEN typeof(NEW.quota) <> 'integer' OR NEW.quota < 0
  OR typeof(NEW.used_quota) <> 'integer' OR NEW.used_quota < 0
  OR typeof(NEW.expires_at) NOT IN ('integer', 'null')
  OR typeof(NEW.rpm) NOT IN ('integer', 'null')
  OR typeof(NEW.tpm) NOT IN ('integer', 'null')
  OR typeof(NEW.max_parallel) NOT IN ('integer', 'null')
BEGIN
    SELECT RAISE(ABORT, 'keys: quota, used_quota, expires_at and rate limits must be integers, quota and used_quota >= 0');
END;

CREATE TRIGGER keys_integers_update
BEFORE UPDATE OF quota, used_quota, expires_at, rpm, tpm, max_parallel ON keys
WHEN typeof(NEW.quota) <> 'integer' OR NEW.quota < 0
  OR typeof(NEW.used_quota) <> 'integer' OR NEW.used_quota < 0
  OR typeof(NEW.expires_at) NOT IN ('integer', 'null')
  OR typeof(NEW.rpm) NOT IN ('integer', 'null')
  OR typeof(NEW.tpm) NOT IN ('integer', 'null')
  OR typeof(NEW.max_parallel) NOT IN ('integer', 'null')
BEGIN
    SELECT RAISE(ABORT, 'keys: quota, used_quota, expires_at and rate limits must be integers, quota and used_quota >= 0');
END;

-- A balance may go negative (billing takes what a request cost); NULL = unlimited.
CREATE TRIGGER accounts_integers_insert BEFORE INSERT ON accounts
WHEN typeof(NEW.balance) NOT IN ('integer', 'null')
BEGIN
    SELECT RAISE(ABORT, 'accounts: balance must be an integer or NULL');
END;

CREATE TRIGGER accounts_integers_update BEFORE UPDATE OF balance ON accounts
WHEN typeof(NEW.balance) NOT IN ('integer', 'null')
BEGIN
    SELECT RAISE(ABORT, 'accounts: balance must be an integer or NULL');
END;

CREATE TRIGGER usage_log_integers_insert BEFORE INSERT ON usage_log
WHEN typeof(NEW.input_tokens) <> 'integer' OR NEW.input_tokens < 0
  OR typeof(NEW.cached_input_tokens) <> 'integer' OR NEW.cached_input_tokens < 0
  OR typeof(NEW.output_tokens) <> 'integer' OR NEW.output_tokens < 0
  OR typeof(NEW.cost) <> 'integer' OR NEW.cost < 0
BEGIN
    SELECT RAISE(ABORT, 'usage_log: token counts and cost must be integers >= 0');
END;

CREATE TRIGGER usage_log_integers_update
BEFORE UPDATE OF input_tokens, cached_input_tokens, output_tokens, cost ON usage_log
WHEN typeof(NEW.input_tokens) <> 'integer' OR NEW.input_tokens < 0
  OR typeof(NEW.cached_input_tokens) <> 'integer' OR NEW.cached_input_tokens < 0
  OR typeof(NEW.output_tokens) <> 'integer' OR NEW.output_tokens < 0
  OR typeof(NEW.cost) <> 'integer' OR NEW.cost < 0
BEGIN
    SELECT RAISE(ABORT, 'usage_log: token counts and cost must be integers >= 0');
END;
