//! Table layout, identifiers and the SQL the outbox and the relay run.

use super::{OutboxError, OutboxErrorKind};

/// PostgreSQL's identifier limit (NAMEDATALEN - 1).
const MAX_IDENT: usize = 63;

/// Checks an identifier (schema, table, channel): non-empty, at most 63 bytes, no NUL.
pub(crate) fn check_ident(what: &str, name: &str) -> Result<(), OutboxError> {
    if name.is_empty() || name.len() > MAX_IDENT || name.contains('\0') {
        return Err(OutboxError::new(
            OutboxErrorKind::InvalidConfig,
            format!("{what} {name:?} must be 1 to {MAX_IDENT} bytes without NUL"),
        ));
    }
    Ok(())
}

/// `"name"` with embedded quotes doubled.
pub(crate) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// FNV-1a, for short stable suffixes of derived names.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `<base><suffix>`, or a hashed stand-in when that would pass 63 bytes.
pub(crate) fn derived(base: &str, suffix: &str) -> String {
    let name = format!("{base}{suffix}");
    if name.len() <= MAX_IDENT {
        name
    } else {
        format!("herald_outbox_{:016x}{suffix}", fnv(base))
    }
}

/// Every statement for one outbox table, built once.
#[derive(Debug)]
pub(crate) struct Sql {
    pub migrate: String,
    pub insert: String,
    pub claim: String,
    pub gaps: String,
    pub mark_sent: String,
    pub mark_failed: String,
    pub purge: String,
    pub pending: String,
    pub listen: String,
}

impl Sql {
    pub(crate) fn new(schema: &str, table: &str, channel: &str) -> Self {
        let t = format!("{}.{}", quote(schema), quote(table));
        let idx = |suffix: &str| quote(&derived(table, suffix));
        let migrate = format!(
            "SELECT pg_advisory_xact_lock(hashtext('herald_outbox_migrate'));
CREATE SCHEMA IF NOT EXISTS {schema_q};
CREATE TABLE IF NOT EXISTS {t} (
    id              bigserial PRIMARY KEY,
    message_id      text        NOT NULL,
    topic           text        NOT NULL,
    key             bytea       NULL,
    headers         bytea       NOT NULL,
    payload         bytea       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    sent_at         timestamptz NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text        NULL,
    next_attempt_at timestamptz NULL
);
ALTER TABLE {t} ADD COLUMN IF NOT EXISTS next_attempt_at timestamptz NULL;
CREATE INDEX IF NOT EXISTS {unsent} ON {t} (id) WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS {by_key} ON {t} (topic, key, id) WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS {retry} ON {t} (topic, key, id)
    WHERE sent_at IS NULL AND next_attempt_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS {sent} ON {t} (sent_at) WHERE sent_at IS NOT NULL;",
            schema_q = quote(schema),
            unsent = idx("_unsent"),
            by_key = idx("_key"),
            retry = idx("_retry"),
            sent = idx("_sent"),
        );
        // Rows keep the order of the input arrays: `nextval` runs above the sort.
        let insert = format!(
            "WITH ins AS (
    INSERT INTO {t} (message_id, topic, key, headers, payload)
    SELECT u.message_id, $1::text, u.key, u.headers, u.payload
    FROM unnest($2::text[], $3::bytea[], $4::bytea[], $5::bytea[])
        WITH ORDINALITY AS u(message_id, key, headers, payload, ord)
    ORDER BY u.ord
    RETURNING 1
), n AS (
    SELECT pg_notify($6, '')
)
SELECT (SELECT count(*) FROM ins)::bigint, (SELECT count(*) FROM n)::bigint"
        );
        // Claim the oldest ready rows nobody holds, skipping rows queued behind a row of
        // their (topic, key) that waits for a retry. See `ordering.md`.
        let claim = format!(
            "SELECT id, message_id, topic, key, headers, payload FROM {t} r
WHERE r.sent_at IS NULL
  AND (r.next_attempt_at IS NULL OR r.next_attempt_at <= now())
  AND (r.key IS NULL OR NOT EXISTS (
        SELECT 1 FROM {t} o
        WHERE o.topic = r.topic AND o.key = r.key AND o.id < r.id
          AND o.sent_at IS NULL AND o.next_attempt_at IS NOT NULL
          AND o.next_attempt_at > now()))
ORDER BY r.id
LIMIT $1
FOR UPDATE SKIP LOCKED"
        );
        // For each claimed (topic, key): the oldest unsent row of that key older than
        // the newest claimed row of the key that is *not* in the claimed set. Claimed rows
        // younger than it must wait. Runs as its own statement, after the claim locked
        // its rows, so it sees every publish committed in between.
        let gaps = format!(
            "SELECT k.ord, (
    SELECT min(o.id) FROM {t} o
    WHERE o.topic = k.topic AND o.key = k.key AND o.sent_at IS NULL
      AND o.id < k.max_id AND o.id <> ALL($4::bigint[])
)
FROM unnest($1::text[], $2::bytea[], $3::bigint[]) WITH ORDINALITY AS k(topic, key, max_id, ord)"
        );
        let mark_sent = format!(
            "UPDATE {t} SET sent_at = clock_timestamp(), attempts = attempts + 1,
    last_error = NULL, next_attempt_at = NULL
WHERE id = ANY($1::bigint[])
RETURNING extract(epoch FROM sent_at - created_at)::float8"
        );
        let mark_failed = format!(
            "UPDATE {t} AS r SET attempts = r.attempts + 1, last_error = u.err,
    next_attempt_at = clock_timestamp()
        + make_interval(secs => least($4::float8, $3::float8 * power(2::float8, least(r.attempts, 30))))
FROM unnest($1::bigint[], $2::text[]) AS u(id, err)
WHERE r.id = u.id
RETURNING extract(epoch FROM r.next_attempt_at - clock_timestamp())::float8"
        );
        let purge = format!(
            "WITH doomed AS (
    SELECT id FROM {t}
    WHERE sent_at IS NOT NULL AND sent_at < clock_timestamp() - make_interval(secs => $1::float8)
    ORDER BY sent_at
    LIMIT $2
)
DELETE FROM {t} WHERE id IN (SELECT id FROM doomed)"
        );
        let pending = format!("SELECT count(*)::bigint FROM {t} WHERE sent_at IS NULL");
        let listen = format!("LISTEN {}", quote(channel));
        Self {
            migrate,
            insert,
            claim,
            gaps,
            mark_sent,
            mark_failed,
            purge,
            pending,
            listen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_checked_and_quoted() {
        assert!(check_ident("table", "").is_err());
        assert!(check_ident("table", &"x".repeat(64)).is_err());
        assert!(check_ident("table", "a\0b").is_err());
        assert!(check_ident("table", "outbox-1-2").is_ok());
        assert_eq!(quote("we\"ird"), "\"we\"\"ird\"");
    }

    #[test]
    fn derived_names_stay_within_the_limit_and_distinct() {
        assert_eq!(derived("orders", "_unsent"), "orders_unsent");
        let a = derived(&"a".repeat(60), "_unsent");
        let b = derived(&format!("{}b", "a".repeat(59)), "_unsent");
        assert!(a.len() <= 63 && b.len() <= 63);
        assert_ne!(a, b);
    }
}
