-- A price per call, in credits, beside the token prices: for models and routes whose
-- usage is not in tokens (image models without usage, speech), or that charge per call.
ALTER TABLE model_prices ADD COLUMN per_request REAL NOT NULL DEFAULT 0;
