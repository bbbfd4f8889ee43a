//! Start-up recovery: folds the orders whose events lie past the index watermark (those in
//! flight at the last stop or crash) so the index is complete, and reads what the shards need
//! (armed timers, orders per state).

use super::JournalError;
use super::{index, outbox, reader};
use orderhub_actors::order::{Millis, Order, OrderPolicy, OrderState};
use orderhub_actors::store::OrderIndexEntry;
use rusqlite::Connection;

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Orders re-folded from the journal.
    pub orders_refolded: usize,
    /// Syncs decided by re-folded events that were missing from the outbox.
    pub syncs_recovered: usize,
    /// The highest journal sequence number.
    pub last_seq: u64,
    /// Armed SLA timers of every order: `(order, rule, deadline)`.
    pub armed: Vec<(String, String, Millis)>,
    /// Orders per canonical state.
    pub by_state: Vec<(OrderState, u64)>,
}

pub(crate) fn recover(
    conn: &mut Connection,
    policy: &OrderPolicy,
) -> Result<Recovered, JournalError> {
    let mut recovered = Recovered::default();
    let watermark = index::watermark(conn)?;
    recovered.last_seq = conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| {
        r.get::<_, i64>(0)
    })? as u64;
    let dirty: Vec<String> = conn
        .prepare("SELECT DISTINCT order_key FROM events WHERE seq >= ?1")?
        .query_map([watermark as i64], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis);
    let tx = conn.transaction()?;
    for key in &dirty {
        let events = reader::load_events(&tx, key)?;
        let indexed_seq = reader::indexed_seq(&tx, key)?;
        // Events past the stored summary may have decided syncs that never reached the outbox.
        let (order, syncs) = Order::replay_collecting(key.as_str(), &events, policy, indexed_seq);
        index::upsert(&tx, &OrderIndexEntry::of(&order))?;
        for sync in &syncs {
            if outbox::insert(&tx, sync, now)?.is_some() {
                recovered.syncs_recovered += 1;
            }
        }
    }
    index::set_watermark(&tx, recovered.last_seq + 1)?;
    tx.commit()?;
    recovered.orders_refolded = dirty.len();

    let mut stmt =
        conn.prepare("SELECT state, COUNT(*) FROM orders WHERE state IS NOT NULL GROUP BY state")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (state, count) = row?;
        if let Ok(state) = state.parse() {
            recovered.by_state.push((state, count as u64));
        }
    }
    recovered.armed = index::armed(conn)?;
    Ok(recovered)
}
