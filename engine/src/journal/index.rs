//! Writes of the order index (`orders` table) and the watermark below which it is complete.

use super::JournalError;
use super::schema::WATERMARK;
use orderhub_actors::order::Millis;
use orderhub_actors::store::OrderIndexEntry;
use rusqlite::{Connection, params};

/// Every armed SLA timer in the index, as `(order, rule, deadline)`.
pub(crate) fn armed(conn: &Connection) -> Result<Vec<(String, String, Millis)>, JournalError> {
    let mut armed = Vec::new();
    let mut stmt = conn.prepare("SELECT order_key, armed FROM orders WHERE armed IS NOT NULL")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
        let (key, timers) = row?;
        let timers: Vec<(String, Millis)> =
            serde_json::from_str(&timers).map_err(|e| JournalError::Corrupt {
                seq: 0,
                reason: format!("armed timers of {key}: {e}"),
            })?;
        for (rule, deadline) in timers {
            armed.push((key.clone(), rule, deadline));
        }
    }
    Ok(armed)
}

/// Upserts `entry`, never replacing a summary that folded in more of the journal. An order's
/// `first_seen` is written once, when its row is made: it never changes, and leaving it out of
/// the update spares the `orders_by_first_seen` index a write on every later summary.
pub(crate) fn upsert(conn: &Connection, entry: &OrderIndexEntry) -> rusqlite::Result<()> {
    let armed = if entry.armed.is_empty() {
        None
    } else {
        Some(serde_json::to_string(&entry.armed).unwrap_or_else(|_| "[]".into()))
    };
    let disagreement = (!entry.disagreements.is_empty())
        .then(|| serde_json::to_string(&entry.disagreements).unwrap_or_else(|_| "[]".into()));
    conn.prepare_cached(
        "INSERT INTO orders (order_key, state, state_since, first_seen, updated_at, applied_seq, sla_breached, armed, disagreement)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (order_key) DO UPDATE SET
            state = excluded.state, state_since = excluded.state_since,
            updated_at = excluded.updated_at,
            applied_seq = excluded.applied_seq, sla_breached = excluded.sla_breached,
            armed = excluded.armed, disagreement = excluded.disagreement
         WHERE excluded.applied_seq >= orders.applied_seq",
    )?
    .execute(params![
        entry.key,
        entry.state.map(|s| s.as_str()),
        entry.state_since,
        entry.first_seen,
        entry.updated_at,
        entry.applied_seq as i64,
        entry.sla_breached as i64,
        armed,
        disagreement,
    ])?;
    // Approvals are rare: only orders that have some write any.
    for approval in &entry.approvals {
        conn.prepare_cached(
            "INSERT INTO approvals (id, order_key, state, deadline, applied_seq, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (id) DO UPDATE SET
                state = excluded.state, deadline = excluded.deadline,
                applied_seq = excluded.applied_seq, body = excluded.body
             WHERE excluded.applied_seq >= approvals.applied_seq",
        )?
        .execute(params![
            approval.id,
            approval.order,
            approval.state.as_str(),
            approval.deadline,
            entry.applied_seq as i64,
            serde_json::to_string(approval).unwrap_or_default(),
        ])?;
    }
    Ok(())
}

/// The journal sequence number below which every event is folded into the index.
pub(crate) fn watermark(conn: &Connection) -> rusqlite::Result<u64> {
    use rusqlite::OptionalExtension;
    Ok(conn
        .query_row("SELECT value FROM meta WHERE name = ?1", [WATERMARK], |r| {
            r.get::<_, i64>(0)
        })
        .optional()?
        .unwrap_or(0) as u64)
}

pub(crate) fn set_watermark(conn: &Connection, value: u64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![WATERMARK, value as i64])?;
    Ok(())
}
