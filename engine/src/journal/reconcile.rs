//! The daily reconciliation: for the orders first seen on one calendar day (in the reports'
//! time zone, of hub time), per channel, how many are in each canonical state, what each system
//! last said, the amounts; and every order where systems disagree or a sync it needed was not
//! delivered. Read from the journal (each order folded as the engine folds it), so it is the
//! same on the API (`GET /v1/reports/reconciliation`) and offline (`orderhub reconcile`).
//!
//! Orders compaction archived are not in the journal any more; the report counts only the
//! journal's (a day older than `journal.retain` is mostly archived).

use super::{JournalError, outbox, reader};
use orderhub_actors::order::{Millis, Order, OrderPolicy};
use rusqlite::Connection;
use std::collections::BTreeMap;

/// A calendar day in a fixed UTC offset: its first and last instant (ms, end exclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Day {
    /// The date.
    pub date: time::Date,
    /// The offset its hours are counted in.
    pub offset: time::UtcOffset,
}

impl Day {
    /// Parses `YYYY-MM-DD` and an offset such as `+08:00` (or `Z`).
    pub fn parse(date: &str, offset: &str) -> Result<Day, String> {
        let format = time::macros::format_description!("[year]-[month]-[day]");
        let date = time::Date::parse(date.trim(), &format)
            .map_err(|e| format!("date {date:?}: {e} (expected YYYY-MM-DD)"))?;
        Ok(Day {
            date,
            offset: parse_offset(offset)?,
        })
    }

    /// `[from, to)` in ms since the epoch.
    pub fn bounds(&self) -> (Millis, Millis) {
        let start = self.date.midnight().assume_offset(self.offset);
        let from = start.unix_timestamp() * 1000;
        (from, from + 24 * 3_600_000)
    }
}

/// Parses a UTC offset: `+08:00`, `-05:30`, `Z`.
pub fn parse_offset(offset: &str) -> Result<time::UtcOffset, String> {
    let offset = offset.trim();
    if offset == "Z" || offset == "+00:00" {
        return Ok(time::UtcOffset::UTC);
    }
    let format = time::macros::format_description!("[offset_hour sign:mandatory]:[offset_minute]");
    time::UtcOffset::parse(offset, &format)
        .map_err(|e| format!("time zone {offset:?}: {e} (expected an offset like +08:00)"))
}

/// One channel's orders of the day.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ChannelReport {
    /// The channel (the order key's prefix).
    pub channel: String,
    /// Orders first seen that day.
    pub orders: u64,
    /// Orders per canonical state.
    pub by_state: BTreeMap<String, u64>,
    /// Per system, orders per last raw status.
    pub systems: BTreeMap<String, BTreeMap<String, u64>>,
    /// The sum of the orders' `fields.amount` (orders without one are counted apart).
    pub amount: f64,
    /// Orders without a numeric `fields.amount`.
    pub without_amount: u64,
}

/// A sync the order needed that was not delivered.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Undelivered {
    /// The sink.
    pub sink: String,
    /// `pending` (still being tried) or `dead` (given up on).
    pub status: String,
    /// Its idempotency key.
    pub id: String,
}

/// An order that needs a look.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Exception {
    /// The order.
    pub order: String,
    /// Its channel.
    pub channel: String,
    /// Its canonical state.
    pub state: String,
    /// `fields.amount`.
    pub amount: Option<f64>,
    /// What each system last said.
    pub systems: BTreeMap<String, String>,
    /// Open disagreements (kinds).
    pub disagreements: Vec<String>,
    /// Syncs not delivered.
    pub undelivered: Vec<Undelivered>,
}

/// One order as the report reads it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Row {
    /// Its channel.
    pub channel: String,
    /// The order's line in the exceptions' shape (empty lists when all is well).
    #[serde(flatten)]
    pub order: Exception,
}

/// The reconciliation of one day.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Report {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// The offset days are counted in.
    pub timezone: String,
    /// First instant (ms).
    pub from: Millis,
    /// End (ms, exclusive).
    pub to: Millis,
    /// Orders first seen that day.
    pub orders: u64,
    /// Per channel.
    pub channels: Vec<ChannelReport>,
    /// Orders where systems disagree or a sync was not delivered.
    pub exceptions: Vec<Exception>,
    /// Every order (for the CSV).
    #[serde(skip)]
    pub rows: Vec<Exception>,
}

/// The channel of an order key (`douyin:123` → `douyin`).
fn channel_of(key: &str) -> &str {
    key.split_once(':').map_or(key, |(channel, _)| channel)
}

/// Reconciles `day` from the journal behind `conn`, folding each order with `policy`.
pub fn reconcile(
    conn: &Connection,
    policy: &OrderPolicy,
    day: Day,
) -> Result<Report, JournalError> {
    let (from, to) = day.bounds();
    let keys: Vec<String> = conn
        .prepare_cached(
            "SELECT order_key FROM orders WHERE first_seen >= ?1 AND first_seen < ?2 ORDER BY order_key",
        )?
        .query_map([from, to], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut channels: BTreeMap<String, ChannelReport> = BTreeMap::new();
    let mut rows = Vec::with_capacity(keys.len());
    for key in &keys {
        let events = reader::load_events(conn, key)?;
        let order = Order::replay(key.as_str(), &events, policy);
        let syncs = outbox::of_order(conn, key)?;
        let channel = channel_of(key).to_owned();
        let state = order
            .state
            .map_or("none".to_owned(), |s| s.as_str().to_owned());
        let amount = order
            .fields
            .value("amount")
            .and_then(|amount| amount.as_f64());
        let report = channels
            .entry(channel.clone())
            .or_insert_with(|| ChannelReport {
                channel: channel.clone(),
                ..ChannelReport::default()
            });
        report.orders += 1;
        *report.by_state.entry(state.clone()).or_default() += 1;
        for (source, status) in &order.systems {
            *report
                .systems
                .entry(source.clone())
                .or_default()
                .entry(status.raw_status.clone())
                .or_default() += 1;
        }
        match amount {
            Some(amount) => report.amount += amount,
            None => report.without_amount += 1,
        }
        rows.push(Exception {
            order: key.clone(),
            channel,
            state,
            amount,
            systems: order
                .systems
                .iter()
                .map(|(source, status)| (source.clone(), status.raw_status.clone()))
                .collect(),
            disagreements: order.disagreeing().map(str::to_owned).collect(),
            undelivered: syncs
                .iter()
                // A detail fetch not answered is enrichment, not something the order needed.
                .filter(|s| {
                    s.status != "delivered" && s.rule != orderhub_actors::order::DETAILS_RULE
                })
                .map(|s| Undelivered {
                    sink: s.sink.clone(),
                    status: s.status.clone(),
                    id: s.id.clone(),
                })
                .collect(),
        });
    }
    for report in channels.values_mut() {
        // Sums of money in floating point: keep them to the cent.
        report.amount = (report.amount * 100.0).round() / 100.0;
    }
    Ok(Report {
        date: day.date.to_string(),
        timezone: format_offset(day.offset),
        from,
        to,
        orders: keys.len() as u64,
        channels: channels.into_values().collect(),
        exceptions: rows
            .iter()
            .filter(|r| !r.disagreements.is_empty() || !r.undelivered.is_empty())
            .cloned()
            .collect(),
        rows,
    })
}

/// Reconciles `day` from the journal in `data_dir` (the engine may be running: this only reads).
pub fn reconcile_dir(
    data_dir: &std::path::Path,
    policy: &OrderPolicy,
    day: Day,
) -> Result<Report, JournalError> {
    let conn = super::schema::open_reader(data_dir)?;
    reconcile(&conn, policy, day)
}

/// `+08:00`.
pub fn format_offset(offset: time::UtcOffset) -> String {
    let (h, m, _) = offset.as_hms();
    let sign = if h < 0 || m < 0 { '-' } else { '+' };
    format!("{sign}{:02}:{:02}", h.abs(), m.abs())
}

impl Report {
    /// One line per order of the day: `date,channel,order,state,amount,systems,disagreements,
    /// undelivered` (lists `;`-separated, `source=status`, `sink:status`), RFC 4180 quoting.
    pub fn csv(&self) -> String {
        let mut out = String::from(
            "date,channel,order,state,amount,systems,disagreements,undelivered_syncs\r\n",
        );
        for row in &self.rows {
            let systems = row
                .systems
                .iter()
                .map(|(source, status)| format!("{source}={status}"))
                .collect::<Vec<_>>()
                .join(";");
            let undelivered = row
                .undelivered
                .iter()
                .map(|u| format!("{}:{}", u.sink, u.status))
                .collect::<Vec<_>>()
                .join(";");
            let cells = [
                self.date.clone(),
                row.channel.clone(),
                row.order.clone(),
                row.state.clone(),
                row.amount.map_or_else(String::new, |a| format!("{a:.2}")),
                systems,
                row.disagreements.join(";"),
                undelivered,
            ];
            let line: Vec<String> = cells.iter().map(|c| quote(c)).collect();
            out.push_str(&line.join(","));
            out.push_str("\r\n");
        }
        out
    }
}

/// A CSV cell, quoted when it must be (and never read as a formula by a spreadsheet).
fn quote(cell: &str) -> String {
    let cell = if cell.starts_with(['=', '+', '-', '@']) && cell.parse::<f64>().is_err() {
        format!("'{cell}")
    } else {
        cell.to_owned()
    };
    if cell.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_is_counted_in_its_offset() {
        let day = Day::parse("2026-11-29", "+08:00").unwrap();
        let (from, to) = day.bounds();
        // 2026-11-29T00:00+08:00 is 2026-11-28T16:00Z.
        assert_eq!(from, 1_795_881_600_000);
        assert_eq!(to - from, 86_400_000);
        let utc = Day::parse("2026-11-29", "Z").unwrap().bounds().0;
        assert_eq!(utc - from, 8 * 3_600_000);
        assert!(Day::parse("2026-13-01", "+08:00").is_err());
        assert!(Day::parse("2026-11-29", "Asia/Shanghai").is_err());
        assert_eq!(format_offset(parse_offset("-05:30").unwrap()), "-05:30");
        assert_eq!(format_offset(parse_offset("+08:00").unwrap()), "+08:00");
    }

    #[test]
    fn csv_cells_are_quoted_and_never_formulas() {
        assert_eq!(quote("a,b"), "\"a,b\"");
        assert_eq!(quote("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(quote("=SUM(A1)"), "'=SUM(A1)");
        assert_eq!(quote("-12.5"), "-12.5");
    }
}
