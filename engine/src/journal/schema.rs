//! The SQLite schema and connection settings.

use rusqlite::Connection;
use std::path::Path;

/// The journal database's file name inside the data directory.
pub(crate) const DB_FILE: &str = "orderhub.db";

/// A new journal's tables. One index serves both what `events` is looked up by: an order's
/// events (load, retention) and a redelivery of one of them (a platform's message names the
/// same order each time it is delivered), so each appended event writes one leaf of one
/// order-keyed b-tree. Journals made before that keep `UNIQUE (source, source_event_id)` and
/// `events_by_order (order_key, seq)` (see [`OLD_EVENTS`]); every query works on both.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    order_key TEXT NOT NULL,
    source TEXT NOT NULL,
    source_event_id TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    body TEXT NOT NULL,
    fields_from INTEGER,
    UNIQUE (order_key, source, source_event_id)
);
CREATE TABLE IF NOT EXISTS orders (
    order_key TEXT PRIMARY KEY,
    state TEXT,
    state_since INTEGER NOT NULL,
    first_seen INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    applied_seq INTEGER NOT NULL,
    sla_breached INTEGER NOT NULL,
    armed TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS orders_by_state ON orders (state, state_since);
CREATE INDEX IF NOT EXISTS orders_breached ON orders (state_since) WHERE sla_breached = 1;
CREATE INDEX IF NOT EXISTS orders_armed ON orders (order_key) WHERE armed IS NOT NULL;
CREATE INDEX IF NOT EXISTS orders_by_first_seen ON orders (first_seen);
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY,
    order_key TEXT NOT NULL,
    state TEXT NOT NULL,
    deadline INTEGER NOT NULL,
    applied_seq INTEGER NOT NULL,
    body TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS approvals_by_state ON approvals (state, deadline);
CREATE INDEX IF NOT EXISTS approvals_by_order ON approvals (order_key);
CREATE TABLE IF NOT EXISTS stock (
    sku TEXT NOT NULL,
    warehouse TEXT NOT NULL,
    on_hand INTEGER NOT NULL,
    reserved INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (sku, warehouse)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stock_reservations (
    order_key TEXT NOT NULL,
    sku TEXT NOT NULL,
    warehouse TEXT NOT NULL,
    qty INTEGER NOT NULL,
    committed INTEGER NOT NULL,
    PRIMARY KEY (order_key, sku, warehouse)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS waybills (
    waybill_no TEXT PRIMARY KEY,
    order_key TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS parked_scans (
    row INTEGER PRIMARY KEY,
    waybill_no TEXT NOT NULL,
    source TEXT NOT NULL,
    source_event_id TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (source, source_event_id)
);
CREATE INDEX IF NOT EXISTS parked_by_waybill ON parked_scans (waybill_no, row);
CREATE TABLE IF NOT EXISTS unmapped_statuses (
    source TEXT NOT NULL,
    raw_status TEXT NOT NULL,
    count INTEGER NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    last_order TEXT NOT NULL,
    PRIMARY KEY (source, raw_status)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS syncs (
    row INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    sink TEXT NOT NULL,
    order_key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    rule TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS syncs_pending ON syncs (sink, row) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS syncs_dead ON syncs (row) WHERE status = 'dead';
CREATE TABLE IF NOT EXISTS unfolded (
    order_key TEXT PRIMARY KEY,
    since INTEGER NOT NULL,
    through_seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS archived (
    order_key TEXT PRIMARY KEY,
    archive TEXT,
    archived_at INTEGER NOT NULL,
    last_seq INTEGER NOT NULL
) WITHOUT ROWID;
";

/// The `events` table and its order index as journals made before the two shared one index
/// (for tests of reading and writing one).
#[cfg(test)]
pub(crate) const OLD_EVENTS: &str = "
CREATE TABLE events (seq INTEGER PRIMARY KEY, order_key TEXT NOT NULL, source TEXT NOT NULL,
    source_event_id TEXT NOT NULL, received_at INTEGER NOT NULL, body TEXT NOT NULL,
    UNIQUE (source, source_event_id));
CREATE INDEX events_by_order ON events (order_key, seq);";

/// Bytes the WAL is truncated to after a checkpoint.
const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// A new journal's page size. Most pages a commit writes are b-tree leaves that one random key
/// landed in (an event's order, a sync's id, an order's state); the WAL takes each whole, so a
/// smaller page writes fewer bytes for the same change: with 1 KiB pages (and the checkpoint
/// counted in bytes, below) the lifecycle benchmark writes 15–22% fewer bytes per event than
/// with SQLite's 4 KiB default, and a million-order journal fills and recovers as fast
/// (BENCHMARKS.md, "1 KiB pages with the checkpoint counted in bytes"). The page size of a
/// journal is fixed when its first table is made: older journals keep theirs.
const PAGE_SIZE: i64 = 1024;

/// WAL bytes after which a commit checkpoints them into the database file (SQLite's default
/// is 1,000 pages). A longer WAL lets the checkpoint write a page changed by many commits once;
/// it stays well inside [`WAL_SIZE_LIMIT`].
const CHECKPOINT_BYTES: i64 = 8 << 20;

/// The meta key that says the waybill index covers every event journaled before it existed.
const WAYBILLS_BACKFILLED: &str = "waybills_backfilled";

/// Fills the waybill index from the events of a journal written before the index existed
/// (once; later events are indexed as they are appended).
fn backfill_waybills(conn: &Connection) -> rusqlite::Result<()> {
    if meta_value(conn, WAYBILLS_BACKFILLED).is_some() {
        return Ok(());
    }
    conn.execute_batch(&format!(
        "BEGIN;
         INSERT INTO waybills (waybill_no, order_key)
             SELECT json_extract(body, '$.fields.waybill_no'), order_key FROM events
             WHERE json_type(body, '$.fields.waybill_no') = 'text' ORDER BY seq
         ON CONFLICT (waybill_no) DO UPDATE SET order_key = excluded.order_key;
         INSERT INTO meta (name, value) VALUES ('{WAYBILLS_BACKFILLED}', 1);
         COMMIT;"
    ))
}

/// Whether `table` has `column`. A journal an older build wrote lacks the newer columns until
/// the engine opens it for writing; `orderhub export` and `orderhub reconcile` read it as it is.
pub(crate) fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2",
        [table, column],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// A [`WHOLE_BODY`] that came back NULL (the event holding the row's fields is gone), named.
pub(crate) fn whole_or_named(seq: i64, body: Option<&str>) -> Result<&str, super::JournalError> {
    body.ok_or_else(|| super::JournalError::Corrupt {
        seq: seq as u64,
        reason: "the event whose fields it shares is missing".into(),
    })
}

/// [`WHOLE_BODY`] for this journal: a journal from before `events.fields_from` (see
/// [`has_column`]) holds every event whole in its body.
pub(crate) fn whole_body(conn: &Connection) -> rusqlite::Result<&'static str> {
    Ok(if has_column(conn, "events", "fields_from")? {
        WHOLE_BODY
    } else {
        "events.body"
    })
}

/// Adds `column` (with its type) to `table` of a journal made before the column existed.
fn add_column(conn: &Connection, table: &str, column: &str, kind: &str) -> rusqlite::Result<()> {
    if !has_column(conn, table, column)? {
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind};"))?;
    }
    Ok(())
}

/// Journals made before disagreements were flagged lack the `orders.disagreement` column (the
/// kinds of an order's open disagreements, JSON; NULL when none): it is added.
fn add_disagreement_column(conn: &Connection) -> rusqlite::Result<()> {
    add_column(conn, "orders", "disagreement", "TEXT")?;
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS orders_disagreeing ON orders (state_since) WHERE disagreement IS NOT NULL;",
    )
}

/// Journals made before syncs could point at their contents lack the `syncs.contents` column
/// (the journal sequence of an event whose `fields` are the payload's `fields`, which the row's
/// payload then leaves out; NULL when the payload is whole): it is added.
fn add_contents_column(conn: &Connection) -> rusqlite::Result<()> {
    add_column(conn, "syncs", "contents", "INTEGER")
}

/// Journals made before events could share their `fields` lack the `events.fields_from`
/// column: the sequence of an earlier event of the same order whose `fields` are byte for byte
/// this event's, which the body then leaves out (NULL when the body has its own; see
/// `writer::SharedFields` and `body`). It is added, with the `events_whole` view that shows
/// every event whole to anyone reading the journal with `sqlite3`.
fn add_fields_from_column(conn: &Connection) -> rusqlite::Result<()> {
    add_column(conn, "events", "fields_from", "INTEGER")?;
    // Made anew at every start, so it is always this build's assembly of a row.
    conn.execute_batch(&format!(
        "DROP VIEW IF EXISTS events_whole;
         CREATE VIEW events_whole AS
             SELECT seq, order_key, source, source_event_id, received_at, {WHOLE_BODY} AS body
             FROM events;"
    ))
}

/// An `events` row's event whole as JSON: its body with what the row's columns hold put back,
/// and its `fields` when it shares them with an earlier event (NULL if that event is missing,
/// which the writer never lets happen). `body::decode` is the same in Rust. A body that is not
/// JSON — the row's own, or that of the event holding its fields — leaves the row's body as it
/// is (never an event by itself), for the reader to name: SQLite's JSON functions would fail the
/// whole statement, and every other event with it.
pub(crate) const WHOLE_BODY: &str = "CASE WHEN NOT json_valid(events.body) THEN events.body
    WHEN events.fields_from IS NULL THEN
    json_set(events.body, '$.order', events.order_key, '$.source', events.source,
        '$.source_event_id', events.source_event_id, '$.received_at', events.received_at)
    ELSE (SELECT CASE WHEN NOT json_valid(shared.body) THEN events.body ELSE
        json_set(events.body, '$.order', events.order_key, '$.source', events.source,
        '$.source_event_id', events.source_event_id, '$.received_at', events.received_at,
        '$.fields', json_extract(shared.body, '$.fields')) END
    FROM events AS shared WHERE shared.seq = events.fields_from) END";

/// The meta key of the index watermark: every event below it is folded into `orders`.
pub(crate) const WATERMARK: &str = "index_watermark";

/// Prepared statements a connection keeps (rusqlite keeps 16 by default): a commit of the
/// writer prepares about as many, and one past the cache would be parsed again every commit.
const STATEMENTS_CACHED: usize = 64;

/// Opens the writer's connection: WAL, and `synchronous = FULL` so that a commit is fsync'd
/// before it returns (a 2xx means durable, DESIGN.md §3).
pub(crate) fn open_writer(dir: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(dir.join(DB_FILE))?;
    // A new journal returns the pages compaction frees to the file system (`PRAGMA
    // incremental_vacuum`); the mode can only be chosen before the first table exists, so an
    // older journal keeps reusing its free pages until `orderhub compact` converts it.
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
    if tables == 0 {
        // Before anything else: auto_vacuum writes the header, which fixes the page size.
        conn.pragma_update(None, "page_size", PAGE_SIZE)?;
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    }
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    conn.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_BYTES / page_size)?;
    // A measurement aid (BENCHMARKS.md, scripts/walstat.py): `0` keeps every WAL frame so the
    // pages a run wrote can be attributed to tables and indexes. Never in production: the WAL
    // then grows without bound.
    if let Ok(pages) = std::env::var("ORDERHUB_DEBUG_WAL_AUTOCHECKPOINT") {
        match pages.parse::<i64>() {
            Ok(pages) => {
                tracing::warn!(
                    pages,
                    "ORDERHUB_DEBUG_WAL_AUTOCHECKPOINT is set: SQLite checkpoints only after this many WAL pages (0: never)"
                );
                conn.pragma_update(None, "wal_autocheckpoint", pages)?;
            }
            Err(_) => {
                tracing::warn!(value = %pages, "ORDERHUB_DEBUG_WAL_AUTOCHECKPOINT is not a number of pages: ignored")
            }
        }
    }
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(STATEMENTS_CACHED);
    // After a checkpoint the WAL is cut back to this size, so a burst of deletes during
    // compaction does not leave a large WAL file behind.
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    check_layout(&conn)?;
    conn.execute_batch(SCHEMA)?;
    add_disagreement_column(&conn)?;
    add_contents_column(&conn)?;
    add_fields_from_column(&conn)?;
    // One order's syncs are found through their ids (`outbox::OF_ORDER`); the order index the
    // journal had before cost a b-tree leaf per sync written.
    conn.execute_batch("DROP INDEX IF EXISTS syncs_by_order;")?;
    backfill_waybills(&conn)?;
    conn.execute(
        "INSERT INTO meta (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        rusqlite::params![LAYOUT_KEY, LAYOUT],
    )?;
    Ok(conn)
}

/// The journal layout this build writes, recorded in `meta` so that a build can tell a journal
/// written in a layout it does not know: 2 is events sharing their `fields` and bodies without
/// what their row's columns hold (2026-12-01, `body`). Journals without the record are older;
/// this build upgrades them. A build from before the record cannot read layout 2 at all (it
/// would read shared events without their fields, and send pending syncs pointing at one with
/// empty contents): going back to one is not possible.
pub(crate) const LAYOUT: i64 = 2;
const LAYOUT_KEY: &str = "journal_layout";

/// A `meta` value (`None` if it, or the table, is not there yet).
fn meta_value(conn: &Connection, name: &str) -> Option<i64> {
    conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
        r.get(0)
    })
    .ok()
}

/// Refuses a journal written in a later layout than [`LAYOUT`].
fn check_layout(conn: &Connection) -> rusqlite::Result<()> {
    match meta_value(conn, LAYOUT_KEY) {
        Some(layout) if layout > LAYOUT => Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISMATCH),
            Some(format!(
                "the journal was written by a newer orderhub (layout {layout}; this build reads up to {LAYOUT}): run that build, or a newer one"
            )),
        )),
        _ => Ok(()),
    }
}

/// Opens a read-only connection for queries and actor loads.
pub(crate) fn open_reader(dir: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        dir.join(DB_FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(STATEMENTS_CACHED);
    Ok(conn)
}

/// The `syncs` table of a journal from before syncs pointed at their contents (for tests of
/// reading and upgrading one).
#[cfg(test)]
pub(crate) const SYNCS_BEFORE_CONTENTS: &str = "
CREATE TABLE syncs (row INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, sink TEXT NOT NULL,
    order_key TEXT NOT NULL, seq INTEGER NOT NULL, rule TEXT NOT NULL, payload TEXT NOT NULL,
    status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    not_before INTEGER NOT NULL DEFAULT 0, last_error TEXT,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);";

#[cfg(test)]
mod tests {
    use super::*;

    /// The bundled SQLite is built with the options `.cargo/config.toml` sets: per-connection
    /// page caches and no allocation counting, so the writer and the readers do not contend
    /// on SQLite's global mutexes. (A build that lost the file would still work, slower: this
    /// says so.)
    #[test]
    fn sqlite_is_built_without_its_global_mutexes() {
        let conn = Connection::open_in_memory().unwrap();
        let options: Vec<String> = conn
            .prepare("SELECT compile_options FROM pragma_compile_options")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "LIBSQLITE3_FLAGS of .cargo/config.toml not applied: {options:?}"
        );
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "{options:?}"
        );
        assert!(
            options.iter().any(|o| o == "OMIT_SHARED_CACHE"),
            "{options:?}"
        );
    }

    /// A journal records the layout it is written in; one from a later layout is refused with
    /// a message naming both, and left as it was.
    #[test]
    fn a_journal_in_a_later_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_writer(dir.path()).unwrap();
        assert_eq!(meta_value(&conn, LAYOUT_KEY), Some(LAYOUT));
        conn.execute(
            "UPDATE meta SET value = ?1 WHERE name = ?2",
            rusqlite::params![LAYOUT + 1, LAYOUT_KEY],
        )
        .unwrap();
        drop(conn);
        let err = open_writer(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("newer orderhub (layout 3; this build reads up to 2)"),
            "{err}"
        );
        let conn = open_reader(dir.path()).unwrap();
        assert_eq!(
            meta_value(&conn, LAYOUT_KEY),
            Some(LAYOUT + 1),
            "left as it was"
        );
    }

    #[test]
    fn a_journal_from_before_disagreements_gets_their_column() {
        let dir = tempfile::tempdir().unwrap();
        {
            let old = Connection::open(dir.path().join(DB_FILE)).unwrap();
            old.execute_batch(
                "CREATE TABLE orders (order_key TEXT PRIMARY KEY, state TEXT, state_since INTEGER NOT NULL,
                    first_seen INTEGER NOT NULL, updated_at INTEGER NOT NULL, applied_seq INTEGER NOT NULL,
                    sla_breached INTEGER NOT NULL, armed TEXT) WITHOUT ROWID;
                 INSERT INTO orders VALUES ('shop:1', 'paid', 1, 1, 1, 1, 0, NULL);",
            )
            .unwrap();
        }
        let conn = open_writer(dir.path()).unwrap();
        let kept: Option<String> = conn
            .query_row(
                "SELECT disagreement FROM orders WHERE order_key = 'shop:1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(kept, None);
        drop(conn);
        // Opening again finds it there.
        open_writer(dir.path()).unwrap();
    }

    #[test]
    fn a_journal_from_before_syncs_pointed_at_their_contents_gets_the_column() {
        let dir = tempfile::tempdir().unwrap();
        {
            let old = Connection::open(dir.path().join(DB_FILE)).unwrap();
            old.execute_batch(SYNCS_BEFORE_CONTENTS).unwrap();
            old.execute_batch(
                "INSERT INTO syncs (id, sink, order_key, seq, rule, payload, status, created_at, updated_at)
                    VALUES ('shop:1:1:erp', 'erp', 'shop:1', 1, 'r', '{}', 'pending', 1, 1);",
            )
            .unwrap();
        }
        let conn = open_writer(dir.path()).unwrap();
        // The syncs written before keep their whole payloads.
        let contents: Option<i64> = conn
            .query_row("SELECT contents FROM syncs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(contents, None);
        drop(conn);
        open_writer(dir.path()).unwrap();
    }

    fn pragma(conn: &Connection, name: &str) -> i64 {
        conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_new_journal_has_small_pages_and_an_older_one_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_writer(dir.path()).unwrap();
        assert_eq!(pragma(&conn, "page_size"), PAGE_SIZE);
        assert_eq!(pragma(&conn, "auto_vacuum"), 2, "incremental");
        // (Unless the measurement aid overrides it in this shell.)
        let overridden = std::env::var_os("ORDERHUB_DEBUG_WAL_AUTOCHECKPOINT").is_some();
        if !overridden {
            assert_eq!(
                pragma(&conn, "wal_autocheckpoint"),
                CHECKPOINT_BYTES / PAGE_SIZE
            );
        }
        drop(conn);
        // Opened again, the same.
        let conn = open_writer(dir.path()).unwrap();
        assert_eq!(pragma(&conn, "page_size"), PAGE_SIZE);

        let old_dir = tempfile::tempdir().unwrap();
        {
            let old = Connection::open(old_dir.path().join(DB_FILE)).unwrap();
            old.execute_batch("PRAGMA page_size = 4096;").unwrap();
            old.execute_batch(OLD_EVENTS).unwrap();
        }
        let conn = open_writer(old_dir.path()).unwrap();
        assert_eq!(pragma(&conn, "page_size"), 4096);
        // The checkpoint comes after as many bytes, whatever the page size.
        if !overridden {
            assert_eq!(pragma(&conn, "wal_autocheckpoint"), CHECKPOINT_BYTES / 4096);
        }
    }
}
