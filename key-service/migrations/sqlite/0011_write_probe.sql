-- One row that /readyz rewrites (at most once a second) to learn whether the database
-- still takes writes: a full disk or a read-only file fails writes while reads go on.
CREATE TABLE write_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at BIGINT NOT NULL
);
