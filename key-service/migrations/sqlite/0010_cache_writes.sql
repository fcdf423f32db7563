-- Prompt-cache writes (Anthropic's cache_creation_input_tokens), priced at their own
-- rate: the tokens per request, and the price per million (NULL = the input price).
ALTER TABLE usage_log ADD COLUMN cache_write_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE model_prices ADD COLUMN cache_write REAL;
