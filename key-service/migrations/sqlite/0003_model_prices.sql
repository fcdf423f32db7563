-- Prices in credits per 1,000,000 tokens. (PostgreSQL: DOUBLE PRECISION.)
CREATE TABLE model_prices (
    name         TEXT PRIMARY KEY,
    input        REAL NOT NULL,
    output       REAL NOT NULL,
    -- NULL = the input price.
    cached_input REAL
);
