//! The stock ledger: per SKU (optionally per warehouse) how many are on hand and how many are
//! reserved by paid orders the warehouse has not taken yet; what can still be sold is the
//! difference. It lives in the journal's database and changes only on the journal writer's
//! thread, inside the transaction that records the order's request and its answer — one
//! writer, one transaction per batch: reservations are serialised, so the last units go to
//! exactly as many orders as there are units, and a crash keeps the ledger and the journal in
//! step.
//!
//! The arithmetic is `Ledger`, plain data (property-tested); the SQL loads the rows one
//! request touches into a `Ledger`, and writes them back if the request was recorded.

use orderhub_actors::order::{ShortLine, StockLine, StockOp, StockOutcome};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::BTreeMap;

/// One stock record's counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Level {
    /// Units the warehouse holds for sale (reserved ones included).
    pub on_hand: i64,
    /// Units reserved by paid orders not taken by the warehouse yet.
    pub reserved: i64,
}

impl Level {
    /// What can still be sold.
    pub fn available(&self) -> i64 {
        self.on_hand - self.reserved
    }
}

/// Units an order holds on one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Held {
    pub(crate) sku: String,
    pub(crate) warehouse: String,
    pub(crate) qty: i64,
    /// Taken by the warehouse: no longer reserved, gone from `on_hand`.
    pub(crate) committed: bool,
}

type Key = (String, String);

/// Stock records and what orders hold on them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Ledger {
    pub(crate) levels: BTreeMap<Key, Level>,
    pub(crate) holds: BTreeMap<String, Vec<Held>>,
}

impl Ledger {
    /// The record a line draws on: its warehouse's, else the SKU's without a warehouse; `None`
    /// for an untracked SKU.
    fn record_for(&self, line: &StockLine) -> Option<Key> {
        let exact = (line.sku.clone(), line.warehouse.clone());
        if self.levels.contains_key(&exact) {
            return Some(exact);
        }
        let any = (line.sku.clone(), String::new());
        self.levels.contains_key(&any).then_some(any)
    }

    /// Answers `order`'s request.
    pub(crate) fn apply(&mut self, order: &str, op: &StockOp) -> StockOutcome {
        match op {
            StockOp::Reserve { lines } => self.reserve(order, lines),
            StockOp::Release { .. } => self.release(order),
            StockOp::Commit => self.commit(order),
            StockOp::Restock => self.restock(order),
        }
    }

    fn lines(held: &[Held], committed: bool) -> Vec<StockLine> {
        held.iter()
            .filter(|h| h.committed == committed)
            .map(|h| StockLine {
                sku: h.sku.clone(),
                warehouse: h.warehouse.clone(),
                qty: h.qty,
            })
            .collect()
    }

    /// All tracked lines, or none.
    fn reserve(&mut self, order: &str, lines: &[StockLine]) -> StockOutcome {
        if let Some(held) = self.holds.get(order)
            && held.iter().any(|h| !h.committed)
        {
            // Reserved already (asked twice): the same answer.
            return StockOutcome::Reserved {
                lines: Self::lines(held, false),
            };
        }
        let mut wanted: BTreeMap<Key, i64> = BTreeMap::new();
        for line in lines.iter().filter(|l| l.qty > 0) {
            if let Some(key) = self.record_for(line) {
                let total = wanted.entry(key).or_default();
                *total = total.saturating_add(line.qty);
            }
        }
        if wanted.is_empty() {
            return StockOutcome::Untracked;
        }
        let short: Vec<ShortLine> = wanted
            .iter()
            .filter_map(|(key, &qty)| {
                let available = self.levels.get(key).map_or(0, Level::available);
                (available < qty).then(|| ShortLine {
                    sku: key.0.clone(),
                    warehouse: key.1.clone(),
                    wanted: qty,
                    available,
                })
            })
            .collect();
        if !short.is_empty() {
            return StockOutcome::Short { lines: short };
        }
        let held = self.holds.entry(order.to_owned()).or_default();
        for ((sku, warehouse), qty) in wanted {
            if let Some(level) = self.levels.get_mut(&(sku.clone(), warehouse.clone())) {
                level.reserved += qty;
            }
            held.push(Held {
                sku,
                warehouse,
                qty,
                committed: false,
            });
        }
        StockOutcome::Reserved {
            lines: Self::lines(held, false),
        }
    }

    /// Gives the order's reservation back.
    fn release(&mut self, order: &str) -> StockOutcome {
        let Some(held) = self.holds.get_mut(order) else {
            return StockOutcome::Nothing;
        };
        let released: Vec<Held> = held.iter().filter(|h| !h.committed).cloned().collect();
        if released.is_empty() {
            return StockOutcome::Nothing;
        }
        held.retain(|h| h.committed);
        for h in &released {
            if let Some(level) = self.levels.get_mut(&(h.sku.clone(), h.warehouse.clone())) {
                level.reserved -= h.qty;
            }
        }
        StockOutcome::Done {
            lines: Self::lines(&released, false),
        }
    }

    /// The warehouse took the goods: reserved → gone.
    fn commit(&mut self, order: &str) -> StockOutcome {
        let Some(held) = self.holds.get_mut(order) else {
            return StockOutcome::Nothing;
        };
        let mut lines = Vec::new();
        for h in held.iter_mut().filter(|h| !h.committed) {
            h.committed = true;
            if let Some(level) = self.levels.get_mut(&(h.sku.clone(), h.warehouse.clone())) {
                level.reserved -= h.qty;
                level.on_hand -= h.qty;
            }
            lines.push(StockLine {
                sku: h.sku.clone(),
                warehouse: h.warehouse.clone(),
                qty: h.qty,
            });
        }
        if lines.is_empty() {
            StockOutcome::Nothing
        } else {
            StockOutcome::Done { lines }
        }
    }

    /// A cancel after the commit: the goods come back.
    fn restock(&mut self, order: &str) -> StockOutcome {
        let Some(held) = self.holds.get_mut(order) else {
            return StockOutcome::Nothing;
        };
        let back: Vec<Held> = held.iter().filter(|h| h.committed).cloned().collect();
        if back.is_empty() {
            return StockOutcome::Nothing;
        }
        held.retain(|h| !h.committed);
        for h in &back {
            if let Some(level) = self.levels.get_mut(&(h.sku.clone(), h.warehouse.clone())) {
                level.on_hand += h.qty;
            }
        }
        StockOutcome::Done {
            lines: Self::lines(&back, true),
        }
    }

    /// Sets what can still be sold of a record (creating it): `on_hand` becomes `available`
    /// plus what is reserved.
    pub(crate) fn set(&mut self, sku: &str, warehouse: &str, available: i64) -> Level {
        let level = self
            .levels
            .entry((sku.to_owned(), warehouse.to_owned()))
            .or_default();
        level.on_hand = available + level.reserved;
        *level
    }
}

/// The rows `order`'s request touches, as a ledger: the order's holds and the records its
/// lines (or holds) draw on.
pub(crate) fn load(conn: &Connection, order: &str, op: &StockOp) -> rusqlite::Result<Ledger> {
    let mut ledger = Ledger::default();
    let mut holds = conn.prepare_cached(
        "SELECT sku, warehouse, qty, committed FROM stock_reservations WHERE order_key = ?1",
    )?;
    let held: Vec<Held> = holds
        .query_map([order], |r| {
            Ok(Held {
                sku: r.get(0)?,
                warehouse: r.get(1)?,
                qty: r.get(2)?,
                committed: r.get::<_, i64>(3)? != 0,
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut keys: Vec<Key> = held
        .iter()
        .map(|h| (h.sku.clone(), h.warehouse.clone()))
        .collect();
    if let StockOp::Reserve { lines } = op {
        for line in lines {
            keys.push((line.sku.clone(), line.warehouse.clone()));
            keys.push((line.sku.clone(), String::new()));
        }
    }
    for key in keys {
        if let Some(level) = level(conn, &key.0, &key.1)? {
            ledger.levels.insert(key, level);
        }
    }
    if !held.is_empty() {
        ledger.holds.insert(order.to_owned(), held);
    }
    Ok(ledger)
}

/// One record's counts.
pub(crate) fn level(
    conn: &Connection,
    sku: &str,
    warehouse: &str,
) -> rusqlite::Result<Option<Level>> {
    conn.prepare_cached("SELECT on_hand, reserved FROM stock WHERE sku = ?1 AND warehouse = ?2")?
        .query_row([sku, warehouse], |r| {
            Ok(Level {
                on_hand: r.get(0)?,
                reserved: r.get(1)?,
            })
        })
        .optional()
}

/// Writes back what [`load`] read and the request changed: its records and `order`'s holds.
pub(crate) fn store(
    conn: &Connection,
    order: &str,
    ledger: &Ledger,
    now: i64,
) -> rusqlite::Result<()> {
    for ((sku, warehouse), level) in &ledger.levels {
        write_level(conn, sku, warehouse, level, now)?;
    }
    conn.prepare_cached("DELETE FROM stock_reservations WHERE order_key = ?1")?
        .execute([order])?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO stock_reservations (order_key, sku, warehouse, qty, committed)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for held in ledger.holds.get(order).into_iter().flatten() {
        insert.execute(params![
            order,
            held.sku,
            held.warehouse,
            held.qty,
            held.committed as i64
        ])?;
    }
    Ok(())
}

fn write_level(
    conn: &Connection,
    sku: &str,
    warehouse: &str,
    level: &Level,
    now: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO stock (sku, warehouse, on_hand, reserved, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (sku, warehouse) DO UPDATE SET on_hand = excluded.on_hand,
            reserved = excluded.reserved, updated_at = excluded.updated_at",
    )?
    .execute(params![sku, warehouse, level.on_hand, level.reserved, now])?;
    Ok(())
}

/// One record set by an operator: `(sku, warehouse, available)`.
pub type StockSetting = (String, String, i64);

/// Sets records (`PUT /v1/stock…`), answering each one's counts after.
pub(crate) fn set(
    conn: &Connection,
    settings: &[StockSetting],
    now: i64,
) -> rusqlite::Result<Vec<Level>> {
    let mut levels = Vec::with_capacity(settings.len());
    for (sku, warehouse, available) in settings {
        let mut ledger = Ledger::default();
        if let Some(level) = level(conn, sku, warehouse)? {
            ledger
                .levels
                .insert((sku.clone(), warehouse.clone()), level);
        }
        let level = ledger.set(sku, warehouse, *available);
        write_level(conn, sku, warehouse, &level, now)?;
        levels.push(level);
    }
    Ok(levels)
}

/// A stock record as the API answers it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StockRecord {
    /// The SKU.
    pub sku: String,
    /// The warehouse (`""`: none).
    pub warehouse: String,
    /// What can still be sold.
    pub available: i64,
    /// Reserved by paid orders the warehouse has not taken yet.
    pub reserved: i64,
    /// Hub time of the last change.
    pub updated_at: i64,
}

/// Records of `sku` (every SKU's when `None`), at most `limit`.
pub(crate) fn records(
    conn: &Connection,
    sku: Option<&str>,
    limit: usize,
) -> rusqlite::Result<Vec<StockRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT sku, warehouse, on_hand, reserved, updated_at FROM stock
         WHERE ?1 IS NULL OR sku = ?1 ORDER BY sku, warehouse LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![sku, limit as i64], |r| {
        let level = Level {
            on_hand: r.get(2)?,
            reserved: r.get(3)?,
        };
        Ok(StockRecord {
            sku: r.get(0)?,
            warehouse: r.get(1)?,
            available: level.available(),
            reserved: level.reserved,
            updated_at: r.get(4)?,
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn line(sku: &str, qty: i64) -> StockLine {
        StockLine {
            sku: sku.into(),
            warehouse: String::new(),
            qty,
        }
    }

    #[test]
    fn all_or_nothing_and_idempotent_per_order() {
        let mut ledger = Ledger::default();
        ledger.set("A", "", 3);
        ledger.set("B", "", 1);
        let reserve = |lines| StockOp::Reserve { lines };
        assert!(matches!(
            ledger.apply("o1", &reserve(vec![line("A", 2), line("B", 2), line("C", 5)])),
            StockOutcome::Short { ref lines } if lines.len() == 1 && lines[0].sku == "B" && lines[0].available == 1
        ));
        assert_eq!(
            ledger.levels[&("A".into(), String::new())].reserved,
            0,
            "none reserved"
        );
        let reserved = ledger.apply("o1", &reserve(vec![line("A", 2), line("C", 5)]));
        assert!(matches!(reserved, StockOutcome::Reserved { ref lines } if lines.len() == 1));
        assert_eq!(
            ledger.apply("o1", &reserve(vec![line("A", 2)])),
            reserved,
            "asked twice, reserved once"
        );
        assert_eq!(ledger.levels[&("A".into(), String::new())].available(), 1);
        assert_eq!(
            ledger.apply("o2", &reserve(vec![line("C", 1)])),
            StockOutcome::Untracked
        );
        // Commit takes them out of the stock; a cancel after brings them back.
        assert!(matches!(
            ledger.apply("o1", &StockOp::Commit),
            StockOutcome::Done { .. }
        ));
        let a = ledger.levels[&("A".into(), String::new())];
        assert_eq!((a.on_hand, a.reserved), (1, 0));
        assert_eq!(
            ledger.apply(
                "o1",
                &StockOp::Release {
                    reason: "cancelled".into()
                }
            ),
            StockOutcome::Nothing
        );
        assert!(matches!(
            ledger.apply("o1", &StockOp::Restock),
            StockOutcome::Done { .. }
        ));
        assert_eq!(ledger.levels[&("A".into(), String::new())].on_hand, 3);
    }

    #[test]
    fn a_line_draws_on_its_warehouse_else_on_the_sku_without_one() {
        let mut ledger = Ledger::default();
        ledger.set("A", "hz", 1);
        ledger.set("A", "", 5);
        let hz = StockLine {
            sku: "A".into(),
            warehouse: "hz".into(),
            qty: 1,
        };
        let sh = StockLine {
            warehouse: "sh".into(),
            ..hz.clone()
        };
        ledger.apply(
            "o1",
            &StockOp::Reserve {
                lines: vec![hz, sh],
            },
        );
        assert_eq!(ledger.levels[&("A".into(), "hz".into())].reserved, 1);
        assert_eq!(ledger.levels[&("A".into(), String::new())].reserved, 1);
    }

    #[derive(Clone, Debug)]
    enum Step {
        Set(usize, i64),
        Reserve(usize, Vec<(usize, i64)>),
        Release(usize),
        Commit(usize),
        Restock(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..3usize, 0..6i64).prop_map(|(s, n)| Step::Set(s, n)),
            (0..6usize, prop::collection::vec((0..4usize, 1..4i64), 1..3))
                .prop_map(|(o, l)| Step::Reserve(o, l)),
            (0..6usize).prop_map(Step::Release),
            (0..6usize).prop_map(Step::Commit),
            (0..6usize).prop_map(Step::Restock),
        ]
    }

    proptest! {
        /// Whatever happens, nothing is oversold: reserved never exceeds what is on hand, the
        /// reserved count is exactly what orders hold, and a record never goes negative except
        /// by an operator setting less than what is reserved (which `set` cannot: it sets what
        /// can still be sold).
        #[test]
        fn the_ledger_never_oversells(steps in prop::collection::vec(step(), 1..60)) {
            let skus = ["A", "B", "C", "untracked"];
            let mut ledger = Ledger::default();
            let mut sold_out_of_stock = 0i64;
            for step in steps {
                match step {
                    Step::Set(s, n) => { ledger.set(skus[s], "", n); }
                    Step::Reserve(o, lines) => {
                        let lines = lines.into_iter().map(|(s, q)| line(skus[s], q)).collect();
                        let before = ledger.clone();
                        match ledger.apply(&format!("o{o}"), &StockOp::Reserve { lines }) {
                            StockOutcome::Short { .. } | StockOutcome::Untracked => {
                                prop_assert_eq!(&ledger, &before, "a refused reservation changes nothing");
                            }
                            _ => {}
                        }
                    }
                    Step::Release(o) => { ledger.apply(&format!("o{o}"), &StockOp::Release { reason: "x".into() }); }
                    Step::Commit(o) => {
                        if let StockOutcome::Done { lines } = ledger.apply(&format!("o{o}"), &StockOp::Commit) {
                            sold_out_of_stock += lines.iter().map(|l| l.qty).sum::<i64>();
                        }
                    }
                    Step::Restock(o) => { ledger.apply(&format!("o{o}"), &StockOp::Restock); }
                }
                for ((sku, warehouse), level) in &ledger.levels {
                    prop_assert!(level.reserved >= 0 && level.available() >= 0, "{sku}: {level:?}");
                    let held: i64 = ledger.holds.values().flatten()
                        .filter(|h| !h.committed && &h.sku == sku && &h.warehouse == warehouse)
                        .map(|h| h.qty).sum();
                    prop_assert_eq!(held, level.reserved);
                }
            }
            prop_assert!(sold_out_of_stock >= 0);
        }
    }
}
