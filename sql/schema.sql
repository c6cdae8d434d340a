-- The example site's tables. Run by the database proxy at every start, so every
-- statement must be idempotent (IF NOT EXISTS).
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    text TEXT NOT NULL,
    created TIMESTAMP NOT NULL
);
