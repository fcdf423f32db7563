-- Prices in credits per 1,000,000 tokens.
CREATE TABLE model_prices (
    name         TEXT PRIMARY KEY,
    input        DOUBLE PRECISION NOT NULL,
    output       DOUBLE PRECISION NOT NULL,
    -- NULL = the input price.
    cached_input DOUBLE PRECISION
);
