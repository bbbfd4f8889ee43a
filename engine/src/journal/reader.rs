//! Reads: a small pool of read-only connections (WAL lets them run beside the writer).

use super::JournalError;
use super::schema;
use orderhub_actors::order::{
    Approval, ApprovalState, JournaledEvent, Millis, OrderState, SlaRule,
};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::PathBuf;
use std::sync::Mutex;

/// Connections kept for reuse; more are opened under load and closed past this.
const POOL_KEEP: usize = 8;

pub(crate) struct ReadPool {
    dir: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

/// One row of the order index, as the list API returns it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct OrderSummary {
    /// The order key.
    pub key: String,
    /// Canonical state.
    pub state: Option<String>,
    /// When it entered that state (ms since the epoch).
    pub state_since: Millis,
    /// Hub time of its last report.
    pub updated_at: Millis,
    /// Whether an SLA was breached.
    pub sla_breached: bool,
    /// Armed SLA timers as `[rule, deadline]`.
    pub sla_armed: serde_json::Value,
    /// The kinds of its open disagreements (absent: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disagreements: Option<serde_json::Value>,
}

/// A raw status a source sent that its mapping did not know, as `GET /v1/sources` lists it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct UnmappedStatus {
    /// The source.
    #[serde(skip)]
    pub source: String,
    /// The raw status (or tag, event, type) as received.
    pub raw_status: String,
    /// Events journaled with it.
    pub count: u64,
    /// Hub time it was first received.
    pub first_seen: Millis,
    /// Hub time it was last received.
    pub last_seen: Millis,
    /// The order of the last such event.
    pub last_order: String,
}

/// Pages a list with a predicate reads at most (each sorts the matching orders once).
pub(crate) const KEPT_PAGES: usize = 8;
/// Rows a page of a list with a predicate reads at least (two in unit tests, to page).
const KEPT_PAGE_MIN: usize = if cfg!(test) { 2 } else { 1000 };

/// Filters of `GET /v1/orders`.
#[derive(Clone, Debug, Default)]
pub struct OrderFilter {
    /// Only orders in this state.
    pub state: Option<OrderState>,
    /// Only orders that entered their state at or before this instant.
    pub state_since_at_most: Option<Millis>,
    /// Only orders with a breached SLA.
    pub sla_breached: bool,
    /// Only orders with an armed SLA timer.
    pub sla_armed: bool,
    /// Only orders whose systems disagree.
    pub disagreement: bool,
    /// At most this many.
    pub limit: usize,
}

impl ReadPool {
    pub(crate) fn new(dir: PathBuf) -> Self {
        ReadPool {
            dir,
            idle: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, JournalError>,
    ) -> Result<T, JournalError> {
        let conn = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match conn {
            Some(conn) => conn,
            None => schema::open_reader(&self.dir)?,
        };
        let result = f(&conn);
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < POOL_KEEP {
            idle.push(conn);
        }
        result
    }

    /// The journal's data directory.
    pub(crate) fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// In one read transaction: the meta values `names`, then every event in journal order,
    /// each passed to `visit` as (order key, body). An event committed before a value it was
    /// committed with is therefore always visited (a partition snapshot's events cover its
    /// position).
    pub(crate) fn scan_events(
        &self,
        names: &[String],
        visit: &mut dyn FnMut(&str, &str) -> Result<(), JournalError>,
    ) -> Result<Vec<Option<i64>>, JournalError> {
        self.with(|conn| {
            let tx = conn.unchecked_transaction()?;
            let mut values = Vec::with_capacity(names.len());
            for name in names {
                values.push(
                    tx.prepare_cached("SELECT value FROM meta WHERE name = ?1")?
                        .query_row([name], |row| row.get(0))
                        .optional()?,
                );
            }
            {
                // Bodies whole: see `writer::SharedFields`.
                let mut stmt = tx.prepare(&format!(
                    "SELECT order_key, {}, seq FROM events ORDER BY seq",
                    super::schema::whole_body(&tx)?
                ))?;
                let mut rows = stmt.query([])?;
                while let Some(row) = rows.next()? {
                    let order = row.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?;
                    let body = row
                        .get_ref(1)?
                        .as_str_or_null()
                        .map_err(rusqlite::Error::from)?;
                    let body = super::schema::whole_or_named(row.get(2)?, body)?;
                    visit(order, body)?;
                }
            }
            tx.commit()?;
            Ok(values)
        })
    }

    /// Every event of `order` in journal order.
    pub(crate) fn events_of(&self, order: &str) -> Result<Vec<JournaledEvent>, JournalError> {
        self.with(|conn| load_events(conn, order))
    }

    /// Orders matching `filter`, oldest state entry first.
    /// Orders matching `filter`, oldest state entry first; with `keep`, only those it accepts,
    /// read a page at a time past those it skips, for at most [`KEPT_PAGES`] pages: the bool
    /// says whether the answer is whole (it reached `limit` or the end of the matching
    /// orders) rather than cut at that bound.
    pub(crate) fn list(
        &self,
        filter: &OrderFilter,
        keep: Option<&dyn Fn(&str) -> bool>,
    ) -> Result<(Vec<OrderSummary>, bool), JournalError> {
        self.with(|conn| {
            let mut sql = String::from(
                "SELECT order_key, state, state_since, updated_at, sla_breached, armed, disagreement FROM orders WHERE 1=1",
            );
            if filter.state.is_some() {
                sql.push_str(" AND state = ?1");
            }
            if filter.state_since_at_most.is_some() {
                sql.push_str(" AND state_since <= ?2");
            }
            if filter.sla_breached {
                sql.push_str(" AND sla_breached = 1");
            }
            if filter.sla_armed {
                sql.push_str(" AND armed IS NOT NULL");
            }
            if filter.disagreement {
                sql.push_str(" AND disagreement IS NOT NULL");
            }
            // Pages after the first start past the last row read.
            sql.push_str(
                " AND (?4 IS NULL OR (state_since, order_key) > (?4, ?5)) ORDER BY state_since, order_key LIMIT ?3",
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let state = filter.state.map(|s| s.as_str());
            let page = match keep {
                Some(_) => filter.limit.max(KEPT_PAGE_MIN),
                None => filter.limit,
            };
            let mut kept = Vec::new();
            let mut after: Option<(Millis, String)> = None;
            for _ in 0..KEPT_PAGES {
                let rows = stmt.query_map(
                    params![
                        state,
                        filter.state_since_at_most,
                        page as i64,
                        after.as_ref().map(|(since, _)| *since),
                        after.as_ref().map(|(_, key)| key.as_str()),
                    ],
                    |row| {
                        let armed: Option<String> = row.get(5)?;
                        Ok(OrderSummary {
                            key: row.get(0)?,
                            state: row.get(1)?,
                            state_since: row.get(2)?,
                            updated_at: row.get(3)?,
                            sla_breached: row.get::<_, i64>(4)? != 0,
                            sla_armed: armed
                                .and_then(|a| serde_json::from_str(&a).ok())
                                .unwrap_or(serde_json::Value::Array(Vec::new())),
                            disagreements: row
                                .get::<_, Option<String>>(6)?
                                .and_then(|d| serde_json::from_str(&d).ok()),
                        })
                    },
                )?;
                let mut read = 0;
                for row in rows {
                    let summary = row?;
                    read += 1;
                    after = Some((summary.state_since, summary.key.clone()));
                    if kept.len() < filter.limit && keep.is_none_or(|keep| keep(&summary.key)) {
                        kept.push(summary);
                    }
                }
                if kept.len() >= filter.limit || read < page || keep.is_none() {
                    return Ok((kept, true));
                }
            }
            Ok((kept, false))
        })
    }

    /// Approvals in `state` (any when `None`), of `order` when given, the soonest deadline
    /// first; at most `limit`.
    pub(crate) fn approvals(
        &self,
        state: Option<ApprovalState>,
        order: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Approval>, JournalError> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, body FROM approvals
                 WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR order_key = ?2)
                 ORDER BY deadline, id LIMIT ?3",
            )?;
            let rows = stmt.query_map(
                params![state.map(ApprovalState::as_str), order, limit as i64],
                |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)),
            )?;
            let mut approvals = Vec::new();
            for row in rows {
                let (id, body) = row?;
                approvals.push(
                    serde_json::from_str(&body).map_err(|e| JournalError::Corrupt {
                        seq: 0,
                        reason: format!("approval {id}: {e}"),
                    })?,
                );
            }
            Ok(approvals)
        })
    }

    /// The order approval `id` belongs to, if it is known.
    pub(crate) fn order_of_approval(&self, id: &str) -> Result<Option<String>, JournalError> {
        self.with(|conn| {
            Ok(conn
                .prepare_cached("SELECT order_key FROM approvals WHERE id = ?1")?
                .query_row([id], |row| row.get(0))
                .optional()?)
        })
    }

    /// Approvals by state, for the gauge.
    pub(crate) fn approvals_by_state(&self) -> Result<Vec<(String, u64)>, JournalError> {
        self.with(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT state, COUNT(*) FROM approvals GROUP BY state")?;
            let rows = stmt.query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Per SLA rule, the orders still in its state past its deadline at `now`: in `from` since
    /// before `now - within`, or for a rule reset on every report, not updated since then.
    pub(crate) fn overdue(
        &self,
        rules: &[SlaRule],
        now: Millis,
        keep: Option<&dyn Fn(&str) -> bool>,
    ) -> Result<Vec<u64>, JournalError> {
        self.with(|conn| {
            let mut counts = Vec::with_capacity(rules.len());
            for rule in rules {
                let since = if rule.reset_on_event {
                    "updated_at"
                } else {
                    "state_since"
                };
                let args = params![rule.from.as_str(), now - rule.within_ms];
                let count = match keep {
                    None => {
                        let sql = format!(
                            "SELECT COUNT(*) FROM orders WHERE state = ?1 AND {since} <= ?2"
                        );
                        conn.prepare_cached(&sql)?
                            .query_row(args, |row| row.get::<_, i64>(0))?
                            as u64
                    }
                    Some(keep) => {
                        let sql = format!(
                            "SELECT order_key FROM orders WHERE state = ?1 AND {since} <= ?2"
                        );
                        let mut stmt = conn.prepare_cached(&sql)?;
                        let mut rows = stmt.query(args)?;
                        let mut count = 0;
                        while let Some(row) = rows.next()? {
                            if keep(row.get_ref(0)?.as_str().unwrap_or_default()) {
                                count += 1;
                            }
                        }
                        count
                    }
                };
                counts.push(count);
            }
            Ok(counts)
        })
    }

    /// How many orders of the index are in each state (every state, zero included), of those
    /// `keep` accepts: a full read of `orders`, for when the set kept changes (a cluster node's
    /// partitions).
    pub(crate) fn count_by_state(
        &self,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<(OrderState, u64)>, JournalError> {
        self.with(|conn| {
            let mut counts = vec![0u64; OrderState::ALL.len()];
            let mut stmt =
                conn.prepare_cached("SELECT order_key, state FROM orders WHERE state IS NOT NULL")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                if !keep(row.get_ref(0)?.as_str().unwrap_or_default()) {
                    continue;
                }
                if let Ok(state) = row
                    .get_ref(1)?
                    .as_str()
                    .unwrap_or_default()
                    .parse::<OrderState>()
                {
                    counts[state as usize] += 1;
                }
            }
            Ok(OrderState::ALL
                .iter()
                .map(|state| (*state, counts[*state as usize]))
                .collect())
        })
    }

    /// A named value of the meta table.
    pub(crate) fn meta(&self, name: &str) -> Result<Option<i64>, JournalError> {
        self.with(|conn| {
            Ok(conn
                .prepare_cached("SELECT value FROM meta WHERE name = ?1")?
                .query_row([name], |row| row.get(0))
                .optional()?)
        })
    }

    /// The indexed canonical state of `order`.
    pub(crate) fn indexed_state(&self, order: &str) -> Result<Option<OrderState>, JournalError> {
        let state: Option<Option<String>> = self.with(|conn| {
            Ok(conn
                .prepare_cached("SELECT state FROM orders WHERE order_key = ?1")?
                .query_row([order], |row| row.get(0))
                .optional()?)
        })?;
        Ok(state.flatten().and_then(|s| s.parse().ok()))
    }

    /// The order whose events carried `waybill` in `fields.waybill_no` (the latest one).
    pub(crate) fn order_of_waybill(&self, waybill: &str) -> Result<Option<String>, JournalError> {
        self.with(|conn| {
            Ok(conn
                .prepare_cached("SELECT order_key FROM waybills WHERE waybill_no = ?1")?
                .query_row([waybill], |row| row.get(0))
                .optional()?)
        })
    }

    /// Every unmapped raw status seen, per source, most recent first.
    pub(crate) fn unmapped_statuses(&self) -> Result<Vec<UnmappedStatus>, JournalError> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT source, raw_status, count, first_seen, last_seen, last_order
                 FROM unmapped_statuses ORDER BY last_seen DESC",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(UnmappedStatus {
                    source: r.get(0)?,
                    raw_status: r.get(1)?,
                    count: r.get::<_, i64>(2)? as u64,
                    first_seen: r.get(3)?,
                    last_seen: r.get(4)?,
                    last_order: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Courier scans waiting for their waybill's order, per source: `(source, count, oldest
    /// received_at)`.
    pub(crate) fn parked_scans(&self) -> Result<Vec<(String, u64, Millis)>, JournalError> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT source, count(*), min(received_at) FROM parked_scans GROUP BY source",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Whether any event of `order` is journaled.
    pub(crate) fn known(&self, order: &str) -> Result<bool, JournalError> {
        self.with(|conn| {
            Ok(conn
                .prepare_cached("SELECT 1 FROM events WHERE order_key = ?1 LIMIT 1")?
                .query_row([order], |_| Ok(()))
                .optional()?
                .is_some())
        })
    }
}

/// An order's rows, for [`load_events`].
pub(crate) const LOAD_EVENTS: &str = "SELECT seq, source, source_event_id, received_at, body,
    fields_from FROM events WHERE order_key = ?1 ORDER BY seq";

/// Every event of `order` in journal order, on any connection.
pub(crate) fn load_events(
    conn: &Connection,
    order: &str,
) -> Result<Vec<JournaledEvent>, JournalError> {
    let mut stmt = match conn.prepare_cached(LOAD_EVENTS) {
        Ok(stmt) => stmt,
        // A journal from before `fields_from`, read as it is (see `schema::has_column`).
        Err(e) if !super::schema::has_column(conn, "events", "fields_from")? => {
            drop(e);
            conn.prepare_cached(
                "SELECT seq, source, source_event_id, received_at, body, NULL FROM events
                 WHERE order_key = ?1 ORDER BY seq",
            )?
        }
        Err(e) => return Err(e.into()),
    };
    let mut rows = stmt.query([order])?;
    let mut events: Vec<JournaledEvent> = Vec::new();
    while let Some(row) = rows.next()? {
        let text = |at| row.get_ref(at)?.as_str().map_err(rusqlite::Error::from);
        let seq: i64 = row.get(0)?;
        let fields = match row.get::<_, Option<i64>>(5)? {
            // An earlier event of this order holds the fields (`writer::SharedFields`).
            Some(from) => {
                let holder = events
                    .binary_search_by_key(&(from as u64), |e| e.seq)
                    .map_err(|_| JournalError::Corrupt {
                        seq: seq as u64,
                        reason: format!(
                            "its fields are those of event {from}, which is not an earlier event of order {order}"
                        ),
                    })?;
                Some(events[holder].event.fields.clone())
            }
            None => None,
        };
        let event = super::body::decode(
            &super::body::Row {
                seq,
                order,
                source: text(1)?,
                source_event_id: text(2)?,
                received_at: row.get(3)?,
                body: text(4)?,
            },
            fields,
        )?;
        events.push(JournaledEvent {
            seq: seq as u64,
            event,
        });
    }
    Ok(events)
}

/// `applied_seq` of the order's stored summary (0 if none).
pub(crate) fn indexed_seq(conn: &Connection, order: &str) -> Result<u64, JournalError> {
    Ok(conn
        .prepare_cached("SELECT applied_seq FROM orders WHERE order_key = ?1")?
        .query_row([order], |r| r.get::<_, i64>(0))
        .optional()?
        .unwrap_or(0) as u64)
}
