-- herald inbox: one row per dedupe key.
-- {table} and {index} are replaced with the quoted, schema-qualified names from
-- PgDedupeConfig; PgDedupe::migrate() runs this under an advisory lock, idempotently.
CREATE TABLE IF NOT EXISTS {table} (
    key          text        PRIMARY KEY,
    token        uuid,
    state        text        NOT NULL CHECK (state IN ('in_progress', 'done')),
    lease_until  timestamptz,
    completed_at timestamptz
);
CREATE INDEX IF NOT EXISTS {index} ON {table} (completed_at) WHERE state = 'done';
