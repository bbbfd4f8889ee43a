//! The sync outbox (`syncs` table): inserts of decided syncs, attempt results, dead-letter
//! replay, and the reads the dispatchers and the API make.

use super::JournalError;
use orderhub_actors::dispatch::{PendingSync, SyncIntent, SyncStatus, SyncUpdate};
use orderhub_actors::order::{Fields, Millis};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::Value;

/// A sync as the API shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SyncView {
    /// Outbox row (the dead-letter id of the admin API).
    pub row: i64,
    /// Idempotency key.
    pub id: String,
    /// Sink.
    pub sink: String,
    /// Order.
    pub order: String,
    /// Rule that decided it.
    pub rule: String,
    /// pending, delivered or dead.
    pub status: String,
    /// Attempts made.
    pub attempts: u32,
    /// Last error (status and response excerpt, or transport error).
    pub last_error: Option<String>,
    /// When it was decided.
    pub created_at: Millis,
    /// When it last changed.
    pub updated_at: Millis,
    /// What is sent.
    pub payload: serde_json::Value,
}

/// A payload as the `syncs` row keeps it: without its `fields` when the event at
/// `contents` holds them (they are read back from there), whole otherwise.
struct Stored<'a>(&'a SyncIntent);

impl serde::Serialize for Stored<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match (&self.0.payload, self.0.contents) {
            (Value::Object(payload), Some(_)) => {
                let mut map = serializer.serialize_map(None)?;
                for (name, value) in payload.iter().filter(|(name, _)| *name != "fields") {
                    map.serialize_entry(name, value)?;
                }
                map.end()
            }
            _ => self.0.payload_json().serialize(serializer),
        }
    }
}

/// Inserts `sync` unless a sync with its id exists; returns its row when inserted (see
/// [`pending`]).
pub(crate) fn insert(
    conn: &Connection,
    sync: &SyncIntent,
    now: Millis,
) -> Result<Option<i64>, JournalError> {
    let payload = serde_json::to_string(&Stored(sync)).map_err(|e| JournalError::Corrupt {
        seq: sync.seq,
        reason: e.to_string(),
    })?;
    let contents = sync.contents.map(|seq| seq as i64);
    // The new row from `last_insert_rowid`, not `RETURNING row` (a temporary b-tree per
    // statement; see the journal writer's event insert).
    let inserted = conn
        .prepare_cached(
            "INSERT INTO syncs (id, sink, order_key, seq, rule, payload, contents, status, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', ?8, ?8)
             ON CONFLICT (id) DO NOTHING",
        )?
        .execute(params![
            sync.id,
            sync.sink,
            sync.order,
            sync.seq as i64,
            sync.rule,
            payload,
            contents,
            now
        ])?;
    Ok((inserted == 1).then(|| conn.last_insert_rowid()))
}

/// A sync just inserted at `row` (at `now`), as the dispatchers take it.
pub(crate) fn pending(row: i64, intent: SyncIntent, now: Millis) -> PendingSync {
    PendingSync {
        row,
        intent: intent.into(),
        attempts: 0,
        not_before: 0,
        created_at: now,
        unreadable: None,
    }
}

/// Records an attempt's result.
pub(crate) fn update(conn: &Connection, update: &SyncUpdate) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE syncs SET status = ?2, attempts = ?3, not_before = ?4, last_error = ?5, updated_at = ?6
         WHERE row = ?1 AND status = 'pending'",
    )?
    .execute(params![
        update.row,
        update.status.as_str(),
        update.attempts,
        update.not_before,
        update.last_error,
        update.at,
    ])?;
    Ok(())
}

/// Makes a dead sync pending again; returns it, or `None` if `row` is not a dead sync.
pub(crate) fn revive(
    conn: &Connection,
    row: i64,
    now: Millis,
) -> Result<Option<PendingSync>, JournalError> {
    let changed = conn
        .prepare_cached(
            "UPDATE syncs SET status = 'pending', attempts = 0, not_before = 0, updated_at = ?2
             WHERE row = ?1 AND status = 'dead'",
        )?
        .execute(params![row, now])?;
    if changed == 0 {
        return Ok(None);
    }
    let sync = conn
        .prepare_cached(&format!(
            "SELECT {} FROM syncs WHERE row = ?1",
            pending_columns()
        ))?
        .query_row([row], pending_from_row)
        .optional()?;
    Ok(sync)
}

/// The columns a row's whole payload is read from: the stored payload, the event its contents
/// point at, and the body of the event that holds that event's `fields` (itself, or the one it
/// shares them with, `events.fields_from`; NULL when the payload is whole).
const PAYLOAD_COLUMNS: &str = "payload, contents, (SELECT body FROM events WHERE seq =
    (SELECT coalesce(fields_from, seq) FROM events WHERE seq = syncs.contents))";

/// The part of a journaled event a sync's payload takes its `fields` from.
#[derive(serde::Deserialize)]
struct Contents {
    #[serde(default)]
    fields: Fields,
}

/// A row's payload, its `fields` kept apart, and the event they come from.
type Payload = (Value, Option<Fields>, Option<u64>);

/// The payload of a row from its three [`PAYLOAD_COLUMNS`] starting at `at`: the stored
/// payload, and `fields` read back from the event it points at (if it points at one).
fn payload_at(r: &Row<'_>, at: usize) -> rusqlite::Result<Result<Payload, String>> {
    let stored: String = r.get(at)?;
    let contents: Option<i64> = r.get(at + 1)?;
    let payload: Value = match serde_json::from_str(&stored) {
        Ok(payload) => payload,
        Err(e) => {
            return Ok(Err(format!(
                "sync row {}: payload: {e}",
                r.get::<_, i64>(0)?
            )));
        }
    };
    let Some(seq) = contents else {
        return Ok(Ok((payload, None, None)));
    };
    let body: Option<String> = r.get(at + 2)?;
    let fields = match body.as_deref().map(serde_json::from_str::<Contents>) {
        Some(Ok(event)) => event.fields,
        Some(Err(e)) => {
            return Ok(Err(format!(
                "sync row {}: its contents' event {seq}: {e}",
                r.get::<_, i64>(0)?
            )));
        }
        None => {
            return Ok(Err(format!(
                "sync row {}: its contents' event {seq}, or the event whose fields it shares, is not in the journal",
                r.get::<_, i64>(0)?
            )));
        }
    };
    if !payload.is_object() {
        return Ok(Err(format!(
            "sync row {}: a payload with contents elsewhere is not an object",
            r.get::<_, i64>(0)?
        )));
    }
    Ok(Ok((payload, Some(fields), Some(seq as u64))))
}

fn pending_columns() -> String {
    format!(
        "row, id, sink, order_key, seq, rule, attempts, not_before, created_at, {PAYLOAD_COLUMNS}"
    )
}

/// A pending row; one whose payload cannot be put together again comes back marked
/// `unreadable` (the dispatcher dead-letters it with the reason) rather than failing the page,
/// which would hold up every later sync of its sink.
fn pending_from_row(r: &Row<'_>) -> rusqlite::Result<PendingSync> {
    let ((payload, fields, contents), unreadable) = match payload_at(r, 9)? {
        Ok(payload) => (payload, None),
        Err(why) => ((Value::Null, None, None), Some(why)),
    };
    Ok(PendingSync {
        row: r.get(0)?,
        intent: std::sync::Arc::new(SyncIntent {
            id: r.get(1)?,
            sink: r.get(2)?,
            order: r.get(3)?,
            seq: r.get::<_, i64>(4)? as u64,
            rule: r.get(5)?,
            payload,
            fields,
            contents,
        }),
        attempts: r.get(6)?,
        not_before: r.get(7)?,
        created_at: r.get(8)?,
        unreadable,
    })
}

/// Pending syncs of `sink` after `after_row`, in row order.
pub(crate) fn pending_page(
    conn: &Connection,
    sink: &str,
    after_row: i64,
    limit: usize,
) -> Result<Vec<PendingSync>, JournalError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {} FROM syncs WHERE sink = ?1 AND status = 'pending' AND row > ?2
         ORDER BY row LIMIT ?3",
        pending_columns()
    ))?;
    let rows = stmt.query_map(params![sink, after_row, limit as i64], pending_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn pending_count(conn: &Connection, sink: &str) -> Result<u64, JournalError> {
    Ok(conn
        .prepare_cached("SELECT COUNT(*) FROM syncs WHERE sink = ?1 AND status = 'pending'")?
        .query_row([sink], |r| r.get::<_, i64>(0))? as u64)
}

/// [`PAYLOAD_COLUMNS`] of a journal an older build wrote, read by this one without opening it
/// for writing (`orderhub reconcile` before the engine was restarted): one without a `contents`
/// column holds every payload whole; one without `events.fields_from`, every event's fields in
/// its own body.
const WHOLE_PAYLOAD_COLUMNS: &str = "payload, NULL, NULL";
const PAYLOAD_COLUMNS_BEFORE_SHARING: &str =
    "payload, contents, (SELECT body FROM events WHERE events.seq = syncs.contents)";

fn view_columns(payload: &str) -> String {
    format!(
        "row, id, sink, order_key, rule, status, attempts, last_error, created_at, updated_at, {payload}"
    )
}

/// The syncs a view query selects (`{}` in `sql` stands for the columns).
fn views(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params + Clone,
) -> Result<Vec<SyncView>, JournalError> {
    let mut stmt = match conn.prepare_cached(&sql.replace("{}", &view_columns(PAYLOAD_COLUMNS))) {
        Ok(stmt) => stmt,
        Err(e) => {
            use super::schema::has_column;
            let older = if !has_column(conn, "syncs", "contents")? {
                WHOLE_PAYLOAD_COLUMNS
            } else if !has_column(conn, "events", "fields_from")? {
                PAYLOAD_COLUMNS_BEFORE_SHARING
            } else {
                return Err(e.into());
            };
            conn.prepare_cached(&sql.replace("{}", &view_columns(older)))?
        }
    };
    let rows = stmt.query_map(params, view_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A row as the API shows it; a payload that cannot be put together again is shown as what is
/// stored, with why (it is still the outbox's record of the sync).
fn view_from_row(r: &Row<'_>) -> rusqlite::Result<SyncView> {
    let payload = match payload_at(r, 10)? {
        Ok((Value::Object(mut payload), Some(fields), _)) => {
            payload.insert("fields".into(), Value::Object(fields.to_json()));
            Value::Object(payload)
        }
        Ok((payload, _, _)) => payload,
        Err(why) => serde_json::json!({ "stored": r.get::<_, String>(10)?, "error": why }),
    };
    Ok(SyncView {
        row: r.get(0)?,
        id: r.get(1)?,
        sink: r.get(2)?,
        order: r.get(3)?,
        rule: r.get(4)?,
        status: r.get(5)?,
        attempts: r.get(6)?,
        last_error: r.get(7)?,
        created_at: r.get(8)?,
        updated_at: r.get(9)?,
        payload,
    })
}

/// The condition that selects one order's syncs, with its parameters from [`of_order_params`]:
/// every sync id starts `{order}:` (`{order}:{seq}:{sink}`, DESIGN.md §3), so the id's unique
/// index finds them, and no index on `order_key` has to be written with every sync.
pub(crate) const OF_ORDER: &str = "id >= ?1 AND id < ?2 AND order_key = ?3";

/// The parameters of [`OF_ORDER`]: ids from `{order}:` up to `{order};` (`;` follows `:`).
pub(crate) fn of_order_params(order: &str) -> (String, String, &str) {
    (format!("{order}:"), format!("{order};"), order)
}

/// Every sync of `order`, oldest first.
pub(crate) fn of_order(conn: &Connection, order: &str) -> Result<Vec<SyncView>, JournalError> {
    views(
        conn,
        &format!("SELECT {{}} FROM syncs WHERE {OF_ORDER} ORDER BY row"),
        of_order_params(order),
    )
}

/// Dead syncs, oldest first, optionally of one sink.
pub(crate) fn dead_letters(
    conn: &Connection,
    sink: Option<&str>,
    limit: usize,
) -> Result<Vec<SyncView>, JournalError> {
    views(
        conn,
        "SELECT {} FROM syncs WHERE status = 'dead' AND (?1 IS NULL OR sink = ?1)
         ORDER BY row LIMIT ?2",
        (sink, limit as i64),
    )
}

/// Counts syncs by status (for tests and operators).
pub(crate) fn count_by_status(conn: &Connection, status: SyncStatus) -> Result<u64, JournalError> {
    Ok(conn
        .prepare_cached("SELECT COUNT(*) FROM syncs WHERE status = ?1")?
        .query_row([status.as_str()], |r| r.get::<_, i64>(0))? as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderhub_actors::order::{EventAction, OrderEvent};

    /// A journal connection with one event of `shop:1` carrying `fields`; returns its seq.
    fn journal_with_event(dir: &std::path::Path, fields: &Value) -> (Connection, u64) {
        let conn = super::super::schema::open_writer(dir).unwrap();
        let event = OrderEvent {
            order: "shop:1".into(),
            source: "shop".into(),
            source_event_id: "e1".into(),
            supersedes: None,
            log_seq: None,
            raw_status: "paid".into(),
            action: EventAction::Inform,
            occurred_at: 1,
            received_at: 1,
            fields: fields.as_object().unwrap().into(),
        };
        let seq: i64 = conn
            .query_row(
                "INSERT INTO events (order_key, source, source_event_id, received_at, body)
                 VALUES ('shop:1', 'shop', 'e1', 1, ?1) RETURNING seq",
                [serde_json::to_string(&event).unwrap()],
                |r| r.get(0),
            )
            .unwrap();
        (conn, seq as u64)
    }

    fn sync(id: &str, payload: Value, contents: Option<u64>) -> SyncIntent {
        SyncIntent {
            id: id.into(),
            sink: "erp".into(),
            order: "shop:1".into(),
            seq: 1,
            rule: "r".into(),
            payload,
            fields: None,
            contents,
        }
    }

    #[test]
    fn a_payload_pointing_at_its_event_is_stored_without_the_contents_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let fields =
            serde_json::json!({"items": [{"sku": "A", "qty": 2}], "name": "张三", "amount": 99.5});
        let (conn, seq) = journal_with_event(dir.path(), &fields);
        let payload = serde_json::json!({"order": "shop:1", "state": "paid", "fields": fields});
        let pointing = sync("shop:1:1:erp", payload.clone(), Some(seq));
        let whole = sync("shop:1:1:wms", payload.clone(), None);
        insert(&conn, &pointing, 5).unwrap().unwrap();
        insert(&conn, &whole, 5).unwrap().unwrap();

        let stored: Vec<(String, Option<i64>)> = conn
            .prepare("SELECT payload, contents FROM syncs ORDER BY row")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(stored[0].0, r#"{"order":"shop:1","state":"paid"}"#);
        assert_eq!(stored[0].1, Some(seq as i64));
        assert!(stored[1].0.contains("张三"), "{}", stored[1].0);
        assert_eq!(stored[1].1, None);

        let pending = pending_page(&conn, "erp", 0, 10).unwrap();
        assert_eq!(*pending[0].intent.whole_payload(), payload);
        assert_eq!(pending[0].intent.contents, Some(seq));
        let views = of_order(&conn, "shop:1").unwrap();
        assert_eq!(views.len(), 2);
        assert!(views.iter().all(|v| v.payload == payload));
    }

    /// An event that shares its `fields` with an earlier one (`events.fields_from`): a payload
    /// pointing at it takes them from that one; if that one is missing, the row is marked
    /// unreadable with the reason instead of going out without its contents.
    #[test]
    fn a_payload_pointing_at_an_event_that_shares_its_fields_is_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let fields = serde_json::json!({"items": [{"sku": "A", "qty": 2}], "name": "张三"});
        let (conn, first) = journal_with_event(dir.path(), &fields);
        let shares = |id: &str, from: u64| -> u64 {
            conn.query_row(
                "INSERT INTO events (order_key, source, source_event_id, received_at, body, fields_from)
                 VALUES ('shop:1', 'shop', ?1, 2, ?2, ?3) RETURNING seq",
                params![
                    id,
                    format!(r#"{{"order":"shop:1","source":"shop","source_event_id":"{id}","raw_status":"packed","action":{{"kind":"inform"}},"occurred_at":2,"received_at":2}}"#),
                    from as i64
                ],
                |r| r.get::<_, i64>(0),
            )
            .unwrap() as u64
        };
        let second = shares("e2", first);
        let orphan = shares("e3", 999);
        let payload = serde_json::json!({"order": "shop:1", "state": "packed", "fields": fields});
        insert(
            &conn,
            &sync("shop:1:2:erp", payload.clone(), Some(second)),
            5,
        )
        .unwrap()
        .unwrap();
        insert(
            &conn,
            &sync("shop:1:3:erp", payload.clone(), Some(orphan)),
            5,
        )
        .unwrap()
        .unwrap();
        let page = pending_page(&conn, "erp", 0, 10).unwrap();
        assert_eq!(*page[0].intent.whole_payload(), payload);
        assert_eq!(page[0].unreadable, None);
        let why = page[1].unreadable.as_deref().unwrap();
        assert!(
            why.contains(&format!(
                "event {orphan}, or the event whose fields it shares"
            )),
            "{why}"
        );
    }

    #[test]
    fn an_orders_syncs_are_found_through_their_ids_and_only_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, _) = journal_with_event(dir.path(), &serde_json::json!({"amount": 1}));
        // Keys that share a prefix with shop:1, and ids in every sink order.
        for (order, seq, sink) in [
            ("shop:1", 1, "wms"),
            ("shop:10", 1, "erp"),
            ("shop:1:x", 1, "erp"),
            ("shop:1", 2, "erp"),
            ("shop:", 1, "erp"),
        ] {
            let mut sync = sync(&SyncIntent::key(order, seq, sink), Value::Null, None);
            sync.order = order.into();
            sync.sink = sink.into();
            insert(&conn, &sync, 5).unwrap().unwrap();
        }
        let ids: Vec<String> = of_order(&conn, "shop:1")
            .unwrap()
            .into_iter()
            .map(|v| v.id)
            .collect();
        assert_eq!(ids, ["shop:1:1:wms", "shop:1:2:erp"]);
        // Through the id index, not a scan of every sync.
        let plan: String = conn
            .query_row(
                &format!("EXPLAIN QUERY PLAN SELECT row FROM syncs WHERE {OF_ORDER}"),
                of_order_params("shop:1"),
                |r| r.get(3),
            )
            .unwrap();
        assert!(
            plan.contains("USING INDEX sqlite_autoindex_syncs_1 (id>? AND id<?)"),
            "{plan}"
        );
    }

    #[test]
    fn a_journal_an_older_build_wrote_is_read_without_the_contents_column() {
        let dir = tempfile::tempdir().unwrap();
        {
            let old = Connection::open(dir.path().join(super::super::schema::DB_FILE)).unwrap();
            old.execute_batch(super::super::schema::SYNCS_BEFORE_CONTENTS)
                .unwrap();
            old.execute_batch(
                "CREATE TABLE events (seq INTEGER PRIMARY KEY, order_key TEXT NOT NULL, source TEXT NOT NULL,
                    source_event_id TEXT NOT NULL, received_at INTEGER NOT NULL, body TEXT NOT NULL);
                 INSERT INTO syncs (id, sink, order_key, seq, rule, payload, status, created_at, updated_at)
                    VALUES ('shop:1:1:erp', 'erp', 'shop:1', 1, 'r', '{\"fields\":{\"amount\":1}}', 'dead', 1, 1);",
            )
            .unwrap();
        }
        let conn = super::super::schema::open_reader(dir.path()).unwrap();
        let views = of_order(&conn, "shop:1").unwrap();
        assert_eq!(views[0].payload["fields"]["amount"], 1);
        assert_eq!(dead_letters(&conn, Some("erp"), 10).unwrap().len(), 1);
    }

    #[test]
    fn a_sync_whose_contents_event_is_gone_is_named_not_sent_without_them() {
        let dir = tempfile::tempdir().unwrap();
        let fields = serde_json::json!({"amount": 1});
        let (conn, seq) = journal_with_event(dir.path(), &fields);
        let payload = serde_json::json!({"order": "shop:1", "fields": fields});
        insert(&conn, &sync("shop:1:1:erp", payload, Some(seq)), 5)
            .unwrap()
            .unwrap();
        conn.execute("DELETE FROM events", []).unwrap();
        let page = pending_page(&conn, "erp", 0, 10).unwrap();
        let why = page[0].unreadable.as_deref().unwrap();
        assert!(
            why.contains(&format!(
                "its contents' event {seq}, or the event whose fields it shares, is not"
            )),
            "{why}"
        );
        assert_eq!(page[0].intent.payload, Value::Null);
        let view = &of_order(&conn, "shop:1").unwrap()[0];
        assert_eq!(view.payload["stored"], r#"{"order":"shop:1"}"#);
        assert!(
            view.payload["error"]
                .as_str()
                .unwrap()
                .contains("not in the journal")
        );
    }
}
