//! The sync outbox (`syncs` table): inserts of decided syncs, attempt results, dead-letter
//! replay, and the reads the dispatchers and the API make.

use super::JournalError;
use orderhub_actors::dispatch::{PendingSync, SyncIntent, SyncStatus, SyncUpdate};
use orderhub_actors::order::Millis;
use rusqlite::{Connection, OptionalExtension, Row, params};

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

/// Inserts `sync` unless a sync with its id exists; returns it as pending when inserted.
pub(crate) fn insert(
    conn: &Connection,
    sync: &SyncIntent,
    now: Millis,
) -> Result<Option<PendingSync>, JournalError> {
    let payload = serde_json::to_string(&sync.payload).map_err(|e| JournalError::Corrupt {
        seq: sync.seq,
        reason: e.to_string(),
    })?;
    let row: Option<i64> = conn
        .prepare_cached(
            "INSERT INTO syncs (id, sink, order_key, seq, rule, payload, status, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?7)
             ON CONFLICT (id) DO NOTHING RETURNING row",
        )?
        .query_row(
            params![sync.id, sync.sink, sync.order, sync.seq as i64, sync.rule, payload, now],
            |r| r.get(0),
        )
        .optional()?;
    Ok(row.map(|row| PendingSync {
        row,
        intent: sync.clone(),
        attempts: 0,
        not_before: 0,
        created_at: now,
    }))
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
            "SELECT {PENDING_COLUMNS} FROM syncs WHERE row = ?1"
        ))?
        .query_row([row], pending_from_row)
        .optional()?;
    sync.transpose()
        .map_err(|reason| JournalError::Corrupt { seq: 0, reason })
}

const PENDING_COLUMNS: &str =
    "row, id, sink, order_key, seq, rule, payload, attempts, not_before, created_at";

fn pending_from_row(r: &Row<'_>) -> rusqlite::Result<Result<PendingSync, String>> {
    let payload: String = r.get(6)?;
    let payload = match serde_json::from_str(&payload) {
        Ok(payload) => payload,
        Err(e) => return Ok(Err(format!("sync row {}: {e}", r.get::<_, i64>(0)?))),
    };
    Ok(Ok(PendingSync {
        row: r.get(0)?,
        intent: SyncIntent {
            id: r.get(1)?,
            sink: r.get(2)?,
            order: r.get(3)?,
            seq: r.get::<_, i64>(4)? as u64,
            rule: r.get(5)?,
            payload,
        },
        attempts: r.get(7)?,
        not_before: r.get(8)?,
        created_at: r.get(9)?,
    }))
}

/// Pending syncs of `sink` after `after_row`, in row order.
pub(crate) fn pending_page(
    conn: &Connection,
    sink: &str,
    after_row: i64,
    limit: usize,
) -> Result<Vec<PendingSync>, JournalError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {PENDING_COLUMNS} FROM syncs WHERE sink = ?1 AND status = 'pending' AND row > ?2
         ORDER BY row LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![sink, after_row, limit as i64], pending_from_row)?;
    let mut page = Vec::new();
    for row in rows {
        page.push(row?.map_err(|reason| JournalError::Corrupt { seq: 0, reason })?);
    }
    Ok(page)
}

pub(crate) fn pending_count(conn: &Connection, sink: &str) -> Result<u64, JournalError> {
    Ok(conn
        .prepare_cached("SELECT COUNT(*) FROM syncs WHERE sink = ?1 AND status = 'pending'")?
        .query_row([sink], |r| r.get::<_, i64>(0))? as u64)
}

const VIEW_COLUMNS: &str =
    "row, id, sink, order_key, rule, status, attempts, last_error, created_at, updated_at, payload";

fn view_from_row(r: &Row<'_>) -> rusqlite::Result<SyncView> {
    let payload: String = r.get(10)?;
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
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
    })
}

/// Every sync of `order`, oldest first.
pub(crate) fn of_order(conn: &Connection, order: &str) -> Result<Vec<SyncView>, JournalError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {VIEW_COLUMNS} FROM syncs WHERE order_key = ?1 ORDER BY row"
    ))?;
    let rows = stmt.query_map([order], view_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Dead syncs, oldest first, optionally of one sink.
pub(crate) fn dead_letters(
    conn: &Connection,
    sink: Option<&str>,
    limit: usize,
) -> Result<Vec<SyncView>, JournalError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {VIEW_COLUMNS} FROM syncs WHERE status = 'dead' AND (?1 IS NULL OR sink = ?1)
         ORDER BY row LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![sink, limit as i64], view_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Counts syncs by status (for tests and operators).
pub(crate) fn count_by_status(conn: &Connection, status: SyncStatus) -> Result<u64, JournalError> {
    Ok(conn
        .prepare_cached("SELECT COUNT(*) FROM syncs WHERE status = ?1")?
        .query_row([status.as_str()], |r| r.get::<_, i64>(0))? as u64)
}
