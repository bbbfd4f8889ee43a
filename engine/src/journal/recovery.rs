//! Start-up recovery: folds the orders whose events lie past the index watermark (those in
//! flight at the last stop or crash) so the index is complete, and reads what the shards need
//! (armed timers, orders per state).

use super::JournalError;
use super::{index, outbox, reader};
use orderhub_actors::order::{Millis, Order, OrderPolicy, OrderState};
use orderhub_actors::store::OrderIndexEntry;
use orderhub_actors::telemetry::ACTORS_FAILURES;
use rusqlite::Connection;
use std::collections::HashSet;

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
    /// Orders recovery could not fold (their events could not be read, or their fold
    /// panicked), with their last event: the `unfolded` table after recovery. Each is folded
    /// again at its next event and at the next start.
    pub unfolded: Vec<(String, u64)>,
}

/// Leaves `key` unfolded at start-up: logged, counted and kept in the `unfolded` table.
fn leave_unfolded(
    tx: &Connection,
    key: &str,
    why: &str,
    through: u64,
    now: Millis,
) -> rusqlite::Result<()> {
    tracing::error!(
        order = %key,
        reason = %why,
        "recovery could not fold this order; it is left unfolded (its events stay journaled) and tried again at its next event and at the next start"
    );
    metrics::counter!(ACTORS_FAILURES, "kind" => "recovery").increment(1);
    tx.execute(
        "INSERT INTO unfolded (order_key, since, through_seq) VALUES (?1, ?2, ?3)
         ON CONFLICT (order_key) DO UPDATE SET through_seq = max(through_seq, excluded.through_seq)",
        rusqlite::params![key, now, through as i64],
    )?;
    Ok(())
}

/// What a panic said, for the log.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

pub(crate) fn recover(
    conn: &mut Connection,
    policy: &OrderPolicy,
) -> Result<Recovered, JournalError> {
    recover_with(conn, policy, &|key, events, policy, indexed_seq| {
        Order::replay_collecting(key, events, policy, indexed_seq)
    })
}

/// How recovery folds one order (the real fold, or one that fails in tests).
type Fold = dyn Fn(
    &str,
    &[orderhub_actors::order::JournaledEvent],
    &OrderPolicy,
    u64,
) -> (Order, Vec<orderhub_actors::dispatch::SyncIntent>);

/// Folds the orders past the watermark, and those given up on before (the `unfolded` table).
/// An order whose events cannot be read, or whose fold panics — a bug, which its actor would
/// have hit too — is logged, counted (`orderhub_actors_failures_total{kind="recovery"}`) and
/// left in `unfolded`: one order never keeps the engine from starting.
fn recover_with(
    conn: &mut Connection,
    policy: &OrderPolicy,
    fold: &Fold,
) -> Result<Recovered, JournalError> {
    let mut recovered = Recovered::default();
    let watermark = index::watermark(conn)?;
    recovered.last_seq = conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| {
        r.get::<_, i64>(0)
    })? as u64;
    // The orders to fold: those with events past the watermark and those given up on before,
    // in key order, so that the folds read the events index and write the order index along
    // their keys. Gathered here rather than with a SQL `UNION` (a temporary b-tree of every
    // key); and only an order that was in `unfolded` is deleted from it. With a million orders
    // to fold, a `DELETE` prepared for each of them was a tenth of the start.
    let was_unfolded: HashSet<String> = conn
        .prepare("SELECT order_key FROM unfolded")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut dirty = was_unfolded.clone();
    {
        let mut past = conn.prepare("SELECT order_key FROM events WHERE seq >= ?1")?;
        let mut rows = past.query([watermark as i64])?;
        while let Some(row) = rows.next()? {
            dirty.insert(row.get::<_, String>(0)?);
        }
    }
    let mut dirty: Vec<String> = dirty.into_iter().collect();
    dirty.sort_unstable();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis);
    let tx = conn.transaction()?;
    for key in &dirty {
        let loaded = reader::load_events(&tx, key)
            .and_then(|events| Ok((events, reader::indexed_seq(&tx, key)?)));
        let (events, indexed_seq) = match loaded {
            Ok(loaded) => loaded,
            // An event that does not decode. Any other error (the disk, SQLite) stops the start
            // as before: SQLite may have rolled the transaction back, so nothing more is written.
            Err(err @ JournalError::Corrupt { .. }) => {
                let why = format!("its events could not be read: {err}");
                let through: Option<i64> = tx
                    .prepare_cached("SELECT max(seq) FROM events WHERE order_key = ?1")?
                    .query_row([key], |r| r.get(0))?;
                let through = through.map_or(recovered.last_seq, |seq| seq as u64);
                leave_unfolded(&tx, key, &why, through, now)?;
                continue;
            }
            Err(err) => return Err(err),
        };
        let settle = |tx: &Connection| -> rusqlite::Result<()> {
            if was_unfolded.contains(key) {
                tx.prepare_cached("DELETE FROM unfolded WHERE order_key = ?1")?
                    .execute([key])?;
            }
            Ok(())
        };
        if events.is_empty() {
            // Given up on, then removed by compaction: nothing left to fold.
            settle(&tx)?;
            continue;
        }
        // Events past the stored summary may have decided syncs that never reached the outbox.
        let folded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            fold(key.as_str(), &events, policy, indexed_seq)
        }));
        let (order, syncs) = match folded {
            Ok(folded) => folded,
            Err(panic) => {
                let why = format!("its fold panicked: {}", panic_message(panic.as_ref()));
                let through = events.last().map_or(0, |e| e.seq);
                leave_unfolded(&tx, key, &why, through, now)?;
                continue;
            }
        };
        settle(&tx)?;
        index::upsert(&tx, &OrderIndexEntry::of(&order))?;
        recovered.orders_refolded += 1;
        for sync in &syncs {
            if outbox::insert(&tx, sync, now)?.is_some() {
                recovered.syncs_recovered += 1;
            }
        }
    }
    index::set_watermark(&tx, recovered.last_seq + 1)?;
    tx.commit()?;
    recovered.unfolded = conn
        .prepare("SELECT order_key, through_seq FROM unfolded ORDER BY order_key")?
        .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
        .collect::<Result<_, _>>()?;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::journal::{Journal, schema};
    use orderhub_actors::order::{EventAction, OrderEvent};

    fn paid(order: &str) -> OrderEvent {
        OrderEvent {
            order: order.into(),
            source: "wms".into(),
            source_event_id: format!("{order}:paid"),
            supersedes: None,
            log_seq: None,
            raw_status: "paid".into(),
            action: EventAction::Move {
                state: OrderState::Paid,
            },
            occurred_at: 1,
            received_at: 1,
            fields: Default::default(),
        }
    }

    fn unfolded(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT order_key FROM unfolded ORDER BY order_key")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// An order whose fold panics at start-up, or whose events cannot be read, is left unfolded
    /// and remembered; the others are folded and the engine starts. The next start tries it
    /// again, though its events are below the watermark by then, and a fold that works forgets
    /// it.
    #[tokio::test]
    async fn an_order_whose_fold_panics_does_not_stop_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::embedded().unwrap().journal;
        let policy = OrderPolicy::permissive();
        {
            let (journal, _) = Journal::open(dir.path(), &config, &policy).unwrap();
            journal.start(|_, _| {}, |_| {}).unwrap();
            journal
                .append(vec![
                    paid("shop:1"),
                    paid("shop:bad"),
                    paid("shop:corrupt"),
                    paid("shop:2"),
                ])
                .await
                .unwrap();
            journal.close().await; // no actor folded them: all four are past the watermark
        }
        let mut conn = schema::open_writer(dir.path()).unwrap();
        conn.execute(
            "UPDATE events SET body = 'not an event' WHERE order_key = 'shop:corrupt'",
            [],
        )
        .unwrap();
        let panicking = |key: &str,
                         events: &[orderhub_actors::order::JournaledEvent],
                         policy: &OrderPolicy,
                         indexed: u64| {
            assert_ne!(key, "shop:bad", "a bug in the fold");
            Order::replay_collecting(key, events, policy, indexed)
        };
        let recovered = recover_with(&mut conn, &policy, &panicking).unwrap();
        assert_eq!(
            recovered.unfolded,
            [("shop:bad".to_owned(), 2), ("shop:corrupt".to_owned(), 3)]
        );
        assert_eq!(recovered.orders_refolded, 2);
        assert_eq!(recovered.by_state, [(OrderState::Paid, 2)]);
        assert_eq!(unfolded(&conn), ["shop:bad", "shop:corrupt"]);
        assert_eq!(index::watermark(&conn).unwrap(), 5);

        let recovered = recover(&mut conn, &policy).unwrap();
        assert_eq!(recovered.unfolded, [("shop:corrupt".to_owned(), 3)]);
        assert_eq!(recovered.orders_refolded, 1, "shop:bad only");
        assert_eq!(recovered.by_state, [(OrderState::Paid, 3)]);
        assert_eq!(unfolded(&conn), ["shop:corrupt"]);
    }
}
