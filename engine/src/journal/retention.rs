//! Retention: finished orders older than `journal.retain` are archived, then removed.
//!
//! One pass walks the index for orders in a finished state (completed, cancelled, refunded,
//! returned) whose last event was received before the cutoff, in batches. Each batch is
//! written to the day's archive file (`{archive_dir}/YYYY-MM-DD.jsonl.gz`, one JSON line per
//! order, one gzip member per removal: 8 orders in the engine, 128 offline) and fsync'd, and
//! only then removed from the journal:
//!
//! 1. the writer commits an *intent* (the file's day and its length before the batch);
//! 2. the batch is appended to the file and fsync'd;
//! 3. the writer removes the orders of one member per transaction, moving the intent's length
//!    past that member (clearing it with the last) — unless an order got an event or a pending
//!    sync since it was read: then nothing of that member is removed, the file is cut back to
//!    the intent's length and the rest of the batch is written again without that order.
//!
//! A crash anywhere leaves the intent at the end of what was removed: the next pass cuts the
//! file back to it first, so every order is in the archive once or, still in the journal, not
//! at all, and is archived exactly once. Removed orders leave a small
//! record (`archived`: key, file, time) so `GET /v1/orders/{key}` can answer `410 archived`.
//!
//! Orders that are not finished are never touched, however old; nor is an order with a
//! pending sync.

use super::writer::{INTENT_DAY, INTENT_LEN, INTENT_PARKED};
use super::{ArchiveCmd, ArchiveOutcome, Journal, JournalError, Removal, outbox, reader, schema};
use flate2::Compression;
use flate2::write::GzEncoder;
use orderhub_actors::order::{JournaledEvent, Millis, Order, OrderPolicy, OrderState};
use rusqlite::{Connection, params};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Finished states: an order in one of them is archived once it is old enough.
pub const FINISHED: [OrderState; 4] = [
    OrderState::Completed,
    OrderState::Cancelled,
    OrderState::Refunded,
    OrderState::Returned,
];

/// Orders read, written to the archive and fsync'd at a time.
const BATCH_ORDERS: usize = 512;

/// Orders the engine removes per writer transaction (one gzip member each): few, so a removal
/// adds a fraction of a millisecond to the group commit it joins (BENCHMARKS.md).
pub const REMOVE_ORDERS: usize = 8;

/// Orders `orderhub compact` removes per transaction: no ingest to make room for.
const REMOVE_ORDERS_OFFLINE: usize = 128;

/// Bytes of free pages the engine hands back per writer transaction.
const VACUUM_BYTES: u32 = 1 << 20;

/// How long the record of an archived order (its key, file and time: ~60 bytes) is kept, so
/// `GET /v1/orders/{key}` answers `410` naming the file rather than `404`.
pub const ARCHIVED_RECORDS_KEPT: Duration = Duration::from_secs(400 * 86_400);

/// Records of archived orders dropped per transaction.
const FORGET_BATCH: i64 = 10_000;

/// What a compaction is told to do.
#[derive(Clone, Debug)]
pub struct Retention {
    /// Finished orders whose last event was received longer ago than this go.
    pub retain: Duration,
    /// Where archive files are written (absolute); `None`: removed without archiving.
    pub archive_dir: Option<PathBuf>,
    /// After each batch, pause this many times as long as the batch took (0: run flat out),
    /// so the journal writer and the disk keep most of their time for ingest.
    pub pace: u32,
    /// Orders removed per writer transaction.
    pub remove_orders: usize,
    /// Bytes of free pages handed back to the file system per writer transaction at the end
    /// of a pass (`None`: all at once).
    pub vacuum_bytes: Option<u32>,
}

impl Retention {
    /// From `[journal]`, for the journal in `data_dir`.
    pub fn from_config(config: &crate::config::JournalConfig, data_dir: &Path) -> Self {
        Retention {
            retain: config.retain.0,
            archive_dir: (!config.archive_dir.is_empty())
                .then(|| data_dir.join(&config.archive_dir)),
            pace: 1,
            remove_orders: REMOVE_ORDERS,
            vacuum_bytes: Some(VACUUM_BYTES),
        }
    }
}

/// What one compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Orders archived (or removed, without an archive) and removed.
    pub orders: u64,
    /// Their events removed from the journal.
    pub events: u64,
    /// Their syncs removed from the journal.
    pub syncs: u64,
    /// Archive files written to.
    pub files: Vec<PathBuf>,
    /// A batch an earlier, interrupted compaction had begun, cut back from its file.
    pub undone_bytes: u64,
    /// Records of orders archived longer ago than [`ARCHIVED_RECORDS_KEPT`], dropped.
    pub records_dropped: u64,
    /// Courier scans parked longer than `retain` for a waybill no order reported, archived
    /// (to `YYYY-MM-DD.parked.jsonl.gz`) and removed.
    pub parked: u64,
    /// Journal bytes on disk (database and WAL) before and after.
    pub disk_before: u64,
    /// See `disk_before`.
    pub disk_after: u64,
}

impl Compacted {
    /// Bytes the journal gave back (0 when it grew meanwhile).
    pub fn reclaimed(&self) -> u64 {
        self.disk_before.saturating_sub(self.disk_after)
    }
}

/// The journal's bytes on disk: the database and its WAL.
pub fn disk_bytes(data_dir: &Path) -> u64 {
    let db = data_dir.join(schema::DB_FILE);
    let wal = data_dir.join(format!("{}-wal", schema::DB_FILE));
    [db, wal]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// The archive file of a day (`YYYYMMDD`).
fn day_file(dir: &Path, day: i64) -> PathBuf {
    dir.join(format!(
        "{:04}-{:02}-{:02}.jsonl.gz",
        day / 10_000,
        day / 100 % 100,
        day % 100
    ))
}

/// The archive file of a day's parked courier scans (not an order archive: export skips it).
fn parked_file(dir: &Path, day: i64) -> PathBuf {
    dir.join(format!(
        "{:04}-{:02}-{:02}.parked.jsonl.gz",
        day / 10_000,
        day / 100 % 100,
        day % 100
    ))
}

/// `YYYYMMDD` of a hub time (UTC).
fn day_of(at: Millis) -> i64 {
    let date = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at) * 1_000_000)
        .map_or(time::OffsetDateTime::UNIX_EPOCH, |t| t)
        .date();
    i64::from(date.year()) * 10_000
        + i64::from(u8::from(date.month())) * 100
        + i64::from(date.day())
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::DataDir {
        path: path.display().to_string(),
        source,
    }
}

/// Makes a directory entry (a new file) durable.
fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// One archive line: an order, what happened to it and what orderhub did about it.
#[derive(serde::Serialize)]
struct ArchiveRecord<'a> {
    order: &'a str,
    state: &'static str,
    archived_at: Millis,
    last_event_at: Millis,
    events: Vec<serde_json::Value>,
    syncs: Vec<super::SyncView>,
    timeline: &'a [orderhub_actors::order::TimelineEntry],
}

/// One order as the archive holds it.
struct Archived {
    key: String,
    state: OrderState,
    last_seq: u64,
    waybills: Vec<String>,
    line: Vec<u8>,
}

/// Reads an order that may go; `None` when it must stay (not finished after all, index behind
/// its events, a pending sync).
fn read_order(
    conn: &Connection,
    key: &str,
    applied_seq: u64,
    policy: &OrderPolicy,
    archived_at: Millis,
) -> Result<Option<Archived>, JournalError> {
    let events: Vec<JournaledEvent> = reader::load_events(conn, key)?;
    let Some(last) = events.last() else {
        return Ok(None);
    };
    if last.seq != applied_seq {
        return Ok(None);
    }
    let syncs = outbox::of_order(conn, key)?;
    if syncs.iter().any(|s| s.status == "pending") {
        return Ok(None);
    }
    let order = Order::replay(key, &events, policy);
    let Some(state) = order.state.filter(|s| FINISHED.contains(s)) else {
        return Ok(None);
    };
    let mut waybills = Vec::new();
    let mut archived_events = Vec::with_capacity(events.len());
    for journaled in &events {
        if let Some(waybill) = journaled.event.fields.str("waybill_no")
            && !waybills.iter().any(|known| *known == *waybill)
        {
            waybills.push(waybill.into_owned());
        }
        let mut event = serde_json::to_value(&journaled.event).map_err(|e| corrupt(key, &e))?;
        event["seq"] = journaled.seq.into();
        archived_events.push(event);
    }
    let line = ArchiveRecord {
        order: key,
        state: state.as_str(),
        archived_at,
        last_event_at: order.updated_at,
        events: archived_events,
        syncs,
        timeline: &order.timeline,
    };
    let mut line = serde_json::to_vec(&line).map_err(|e| corrupt(key, &e))?;
    line.push(b'\n');
    Ok(Some(Archived {
        key: key.to_owned(),
        state,
        last_seq: last.seq,
        waybills,
        line,
    }))
}

fn corrupt(key: &str, err: &serde_json::Error) -> JournalError {
    JournalError::Corrupt {
        seq: 0,
        reason: format!("order {key}: {err}"),
    }
}

/// Candidates of one finished state after `(state_since, key)`, oldest first.
fn candidates(
    conn: &Connection,
    state: OrderState,
    cutoff: Millis,
    after: &(Millis, String),
) -> Result<Vec<(String, Millis, u64, Millis)>, JournalError> {
    let mut stmt = conn.prepare_cached(
        "SELECT order_key, state_since, applied_seq, updated_at FROM orders
         WHERE state = ?1 AND state_since < ?2 AND (state_since, order_key) > (?3, ?4)
         ORDER BY state_since, order_key LIMIT ?5",
    )?;
    let rows = stmt.query_map(
        params![
            state.as_str(),
            cutoff,
            after.0,
            after.1,
            BATCH_ORDERS as i64
        ],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Millis>(1)?,
                r.get::<_, i64>(2)? as u64,
                r.get::<_, Millis>(3)?,
            ))
        },
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Undoes a batch an interrupted compaction began: cuts its archive file back to the length it
/// had, then clears the intent. Returns the bytes cut.
fn undo_interrupted(journal: &Journal, retention: &Retention) -> Result<u64, JournalError> {
    let (Some(day), Some(len)) = (journal.meta(INTENT_DAY)?, journal.meta(INTENT_LEN)?) else {
        return Ok(0);
    };
    let mut cut = 0;
    if let Some(dir) = &retention.archive_dir {
        let path = match journal.meta(INTENT_PARKED)? {
            Some(1) => parked_file(dir, day),
            _ => day_file(dir, day),
        };
        if let Ok(meta) = std::fs::metadata(&path) {
            let len = len.max(0) as u64;
            if meta.len() > len {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_error(&path))?;
                file.set_len(len).map_err(io_error(&path))?;
                file.sync_all().map_err(io_error(&path))?;
                cut = meta.len() - len;
                tracing::warn!(
                    file = %path.display(),
                    bytes = cut,
                    "an interrupted compaction's batch was cut from its archive file; its orders are still in the journal and are archived again"
                );
            }
        }
    }
    journal.archive_step(ArchiveCmd::Abandon)?;
    Ok(cut)
}

/// Appends `lines` to `file` as one gzip member; the file's length after it.
fn write_member<'a>(
    file: &std::fs::File,
    path: &Path,
    lines: impl IntoIterator<Item = &'a [u8]>,
) -> Result<u64, JournalError> {
    let mut gz = GzEncoder::new(std::io::BufWriter::new(file), Compression::fast());
    for line in lines {
        gz.write_all(line).map_err(io_error(path))?;
    }
    gz.finish()
        .map_err(io_error(path))?
        .into_inner()
        .map_err(|e| io_error(path)(e.into_error()))?;
    Ok(file.metadata().map_err(io_error(path))?.len())
}

/// Writes `batch` to the archive and removes it from the journal (see the module docs);
/// returns the orders removed. The batch is written at once (one gzip member per
/// `remove_orders` orders, one fsync) and removed a member at a time, each removal moving the
/// intent's length past its member, so each of the writer's transactions stays short.
fn archive_batch(
    journal: &Journal,
    retention: &Retention,
    batch: Vec<Archived>,
    archived_at: Millis,
    report: &mut Compacted,
) -> Result<Vec<(String, OrderState)>, JournalError> {
    let mut chunks: std::collections::VecDeque<Vec<Archived>> = std::collections::VecDeque::new();
    for order in batch {
        match chunks.back_mut() {
            Some(chunk) if chunk.len() < retention.remove_orders.max(1) => chunk.push(order),
            _ => chunks.push_back(vec![order]),
        }
    }
    if chunks.is_empty() {
        return Ok(Vec::new());
    }
    let target = match &retention.archive_dir {
        Some(dir) => {
            let day = day_of(archived_at);
            let path = day_file(dir, day);
            let (file, len) = open_archive(dir, &path)?;
            journal.archive_step(ArchiveCmd::Begin {
                day,
                len,
                parked: false,
            })?;
            if !report.files.contains(&path) {
                report.files.push(path.clone());
            }
            Some((path, file, len))
        }
        None => None,
    };
    let archive = target
        .as_ref()
        .and_then(|(path, _, _)| path.file_name())
        .map(|name| name.to_string_lossy().into_owned());
    let mut gone = Vec::new();
    // The file up to `committed` holds only orders already removed from the journal.
    let mut committed = target.as_ref().map_or(0, |(_, _, len)| *len);
    'write: while !chunks.is_empty() {
        let mut ends = Vec::with_capacity(chunks.len());
        if let Some((path, file, _)) = &target {
            for chunk in &chunks {
                ends.push(write_member(file, path, chunk.iter().map(|o| &o.line[..]))?);
            }
            file.sync_all().map_err(io_error(path))?;
        }
        let mut member = 0;
        while let Some(chunk) = chunks.front() {
            let last = chunks.len() == 1;
            let removals = chunk
                .iter()
                .map(|o| Removal {
                    key: o.key.clone(),
                    last_seq: o.last_seq,
                    waybills: o.waybills.clone(),
                })
                .collect();
            let valid_len = match (last, ends.get(member)) {
                (false, Some(end)) => Some(*end),
                _ => None,
            };
            match journal.archive_step(ArchiveCmd::Remove {
                orders: removals,
                archive: archive.clone(),
                archived_at,
                valid_len,
            })? {
                ArchiveOutcome::Done { events, syncs } => {
                    report.orders += chunk.len() as u64;
                    report.events += events;
                    report.syncs += syncs;
                    committed = ends.get(member).copied().unwrap_or(committed);
                    member += 1;
                    if let Some(chunk) = chunks.pop_front() {
                        gone.extend(chunk.into_iter().map(|o| (o.key, o.state)));
                    }
                }
                ArchiveOutcome::Changed(changed) => {
                    // They got news while being archived: they stay, and what is not removed
                    // yet is written again without them (the file cut back to `committed`).
                    if let Some((path, file, _)) = &target {
                        file.set_len(committed).map_err(io_error(path))?;
                        file.sync_all().map_err(io_error(path))?;
                    }
                    if let Some(chunk) = chunks.front_mut() {
                        chunk.retain(|o| !changed.contains(&o.key));
                        if chunk.is_empty() {
                            chunks.pop_front();
                        }
                    }
                    if chunks.is_empty() && target.is_some() {
                        journal.archive_step(ArchiveCmd::Abandon)?;
                    }
                    continue 'write;
                }
            }
        }
    }
    Ok(gone)
}

/// Lowers the calling thread's CPU priority (nice 10): the engine's compaction thread yields
/// the cores to ingest, the actors and the journal writer whenever they want them.
pub fn lower_priority() {
    if let Err(err) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 10) {
        tracing::debug!(error = %err, "cannot lower the compaction thread's priority");
    }
}

/// Opens (creating, durably) the archive file `path` in `dir` for appending; with its length.
fn open_archive(dir: &Path, path: &Path) -> Result<(std::fs::File, u64), JournalError> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
    }
    let created = !path.exists();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_error(path))?;
    if created {
        file.sync_all().map_err(io_error(path))?;
        sync_dir(dir)?;
    }
    let len = file.metadata().map_err(io_error(path))?.len();
    Ok((file, len))
}

/// Courier scans parked longer than `retain` for a waybill no order ever reported (parcels of
/// orders orderhub does not know) are archived to the day's `.parked.jsonl.gz` file and
/// removed, by the same intent protocol as orders; a scan applied to its order meanwhile stays
/// out of the file.
fn archive_parked(
    journal: &Journal,
    retention: &Retention,
    cutoff: Millis,
    now: Millis,
    stop: &AtomicBool,
    report: &mut Compacted,
) -> Result<(), JournalError> {
    let mut after = 0i64;
    while !stop.load(Ordering::Relaxed) {
        let page: Vec<(i64, Millis, Vec<u8>)> = journal.inner.reader.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT row, waybill_no, source, source_event_id, received_at, body
                 FROM parked_scans WHERE row > ?1 ORDER BY row LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, BATCH_ORDERS as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Millis>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })?;
            let mut page = Vec::new();
            for row in rows {
                let (row, waybill, source, id, received_at, body) = row?;
                let event: serde_json::Value =
                    serde_json::from_str(&body).map_err(|e| JournalError::Corrupt {
                        seq: 0,
                        reason: format!("parked scan {row}: {e}"),
                    })?;
                let mut line = serde_json::to_vec(&serde_json::json!({
                    "parked_scan": row,
                    "waybill_no": waybill,
                    "source": source,
                    "source_event_id": id,
                    "received_at": received_at,
                    "archived_at": now,
                    "event": event,
                }))
                .map_err(|e| JournalError::Corrupt {
                    seq: 0,
                    reason: format!("parked scan {row}: {e}"),
                })?;
                line.push(b'\n');
                page.push((row, received_at, line));
            }
            Ok(page)
        })?;
        let Some((last, _, _)) = page.last() else {
            break;
        };
        after = *last;
        let full = page.len() == BATCH_ORDERS;
        let mut old: Vec<(i64, Vec<u8>)> = page
            .into_iter()
            .filter(|(_, received_at, _)| *received_at < cutoff)
            .map(|(row, _, line)| (row, line))
            .collect();
        let target = match &retention.archive_dir {
            Some(dir) if !old.is_empty() => {
                let day = day_of(now);
                let path = parked_file(dir, day);
                let (file, len) = open_archive(dir, &path)?;
                journal.archive_step(ArchiveCmd::Begin {
                    day,
                    len,
                    parked: true,
                })?;
                Some((path, file, len))
            }
            _ => None,
        };
        while !old.is_empty() {
            if let Some((path, file, _)) = &target {
                write_member(file, path, old.iter().map(|(_, line)| &line[..]))?;
                file.sync_all().map_err(io_error(path))?;
            }
            let rows = old.iter().map(|(row, _)| *row).collect();
            match journal.archive_step(ArchiveCmd::RemoveParked { rows })? {
                ArchiveOutcome::Done { events, .. } => {
                    report.parked += events;
                    if let Some((path, _, _)) = &target
                        && !report.files.contains(path)
                    {
                        report.files.push(path.clone());
                    }
                    break;
                }
                ArchiveOutcome::Changed(applied) => {
                    if let Some((path, file, len)) = &target {
                        file.set_len(*len).map_err(io_error(path))?;
                        file.sync_all().map_err(io_error(path))?;
                    }
                    old.retain(|(row, _)| !applied.contains(&row.to_string()));
                    if old.is_empty() && target.is_some() {
                        journal.archive_step(ArchiveCmd::Abandon)?;
                    }
                }
            }
        }
        if !full {
            break;
        }
    }
    Ok(())
}

/// The end of a pass: the pages removals freed go back to the file system, a bounded number
/// per writer transaction, paced like the removals. New appends reuse free pages first, so a
/// pass that freed little (a quarter of the file or less) leaves them to be reused rather than
/// shrinking a file that grows again; `orderhub compact` always hands back all of them.
fn vacuum(journal: &Journal, retention: &Retention, stop: &AtomicBool) -> Result<(), JournalError> {
    let Some(bytes) = retention.vacuum_bytes else {
        journal.archive_step(ArchiveCmd::Vacuum { pages: None })?;
        return Ok(());
    };
    let (free, total, page_size): (i64, i64, u32) = journal.inner.reader.with(|conn| {
        Ok((
            conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?,
            conn.query_row("PRAGMA page_count", [], |r| r.get(0))?,
            conn.query_row("PRAGMA page_size", [], |r| r.get(0))?,
        ))
    })?;
    let pages = (bytes / page_size.max(1)).max(1);
    if free == 0 || free * 4 < total {
        return Ok(());
    }
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let ArchiveOutcome::Done { events: left, .. } =
            journal.archive_step(ArchiveCmd::Vacuum { pages: Some(pages) })?
        else {
            break;
        };
        if left == 0 {
            break;
        }
        if retention.pace > 0 {
            std::thread::sleep(started.elapsed() * retention.pace);
        }
    }
    Ok(())
}

/// Told each batch of orders compaction removed, with their states.
pub type Removed<'a> = dyn FnMut(&[(String, OrderState)]) + 'a;

/// Runs one compaction of `journal` (in `data_dir`) at hub time `now`. `removed` is told each
/// batch of orders removed, with their states (the engine drops their actors). It stops between
/// batches once `stop` is set. Blocking: call it from a blocking thread.
pub fn compact(
    journal: &Journal,
    data_dir: &Path,
    policy: &OrderPolicy,
    retention: &Retention,
    now: Millis,
    stop: &AtomicBool,
    removed: &mut Removed<'_>,
) -> Result<Compacted, JournalError> {
    let mut report = Compacted {
        disk_before: disk_bytes(data_dir),
        ..Compacted::default()
    };
    report.undone_bytes = undo_interrupted(journal, retention)?;
    let cutoff = now.saturating_sub(retention.retain.as_millis() as Millis);
    for state in FINISHED {
        let mut after: (Millis, String) = (Millis::MIN, String::new());
        loop {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let started = Instant::now();
            let (page, batch) = journal.inner.reader.with(|conn| {
                let page = candidates(conn, state, cutoff, &after)?;
                let mut batch = Vec::new();
                for (key, _, applied_seq, updated_at) in &page {
                    if *updated_at >= cutoff {
                        continue;
                    }
                    if let Some(order) = read_order(conn, key, *applied_seq, policy, now)? {
                        batch.push(order);
                    }
                }
                Ok((page, batch))
            })?;
            let Some((key, state_since, _, _)) = page.last() else {
                break;
            };
            after = (*state_since, key.clone());
            let gone = archive_batch(journal, retention, batch, now, &mut report)?;
            if !gone.is_empty() {
                metrics::counter!(orderhub_actors::telemetry::JOURNAL_ARCHIVED_ORDERS)
                    .increment(gone.len() as u64);
                removed(&gone);
            }
            if retention.pace > 0 {
                std::thread::sleep(started.elapsed() * retention.pace);
            }
            if page.len() < BATCH_ORDERS {
                break;
            }
        }
    }
    archive_parked(journal, retention, cutoff, now, stop, &mut report)?;
    vacuum(journal, retention, stop)?;
    let forget_before = now.saturating_sub(ARCHIVED_RECORDS_KEPT.as_millis() as Millis);
    while !stop.load(Ordering::Relaxed) {
        let ArchiveOutcome::Done {
            events: dropped, ..
        } = journal.archive_step(ArchiveCmd::ForgetArchived {
            before: forget_before,
            limit: FORGET_BATCH,
        })?
        else {
            break;
        };
        report.records_dropped += dropped;
        if dropped < FORGET_BATCH as u64 {
            break;
        }
    }
    report.disk_after = disk_bytes(data_dir);
    Ok(report)
}

/// Where an archived order went: the archive file (relative to the archive directory; `None`
/// when archiving was off) and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedOrder {
    /// The archive file's name.
    pub archive: Option<String>,
    /// Hub time it was archived.
    pub archived_at: Millis,
}

impl Journal {
    /// Where `order` was archived, if compaction removed it.
    pub fn archived(&self, order: &str) -> Result<Option<ArchivedOrder>, JournalError> {
        use rusqlite::OptionalExtension;
        self.inner.reader.with(|conn| {
            Ok(conn
                .prepare_cached("SELECT archive, archived_at FROM archived WHERE order_key = ?1")?
                .query_row([order], |r| {
                    Ok(ArchivedOrder {
                        archive: r.get(0)?,
                        archived_at: r.get(1)?,
                    })
                })
                .optional()?)
        })
    }

    /// Hub time the oldest event still in the journal was received, if any.
    pub fn oldest_event_at(&self) -> Result<Option<Millis>, JournalError> {
        use rusqlite::OptionalExtension;
        self.inner.reader.with(|conn| {
            Ok(conn
                .prepare_cached("SELECT received_at FROM events ORDER BY seq LIMIT 1")?
                .query_row([], |r| r.get(0))
                .optional()?)
        })
    }
}

/// The archive files in `dir` as `(day, path)`, oldest day first (none if `dir` is missing).
pub fn archive_files(dir: &Path) -> Result<Vec<(i64, PathBuf)>, JournalError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(io_error(dir)(err)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        let Some(day) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".jsonl.gz"))
            .and_then(|d| {
                let mut parts = d.splitn(3, '-').map(|p| p.parse::<i64>().ok());
                Some((parts.next()??, parts.next()??, parts.next()??))
            })
            .map(|(y, m, d)| y * 10_000 + m * 100 + d)
        else {
            continue;
        };
        files.push((day, entry.path()));
    }
    files.sort();
    Ok(files)
}

/// An archive line as export reads it: the order's events (their `seq` is ignored).
#[derive(serde::Deserialize)]
struct ArchiveLine {
    events: Vec<orderhub_actors::order::OrderEvent>,
}

type EventResult = Result<orderhub_actors::order::OrderEvent, JournalError>;

/// Every event of the orders archived in `dir` on or after the day of `from`, each archived
/// order's events together in journal order. `intent` (an unfinished batch: its file's day
/// and the length before it) keeps a batch an interrupted compaction wrote from being read:
/// its orders are still in the journal.
pub(crate) fn archived_events(
    dir: &Path,
    from: Millis,
    intent: Option<(i64, u64)>,
) -> Result<impl Iterator<Item = EventResult>, JournalError> {
    use std::io::{BufRead, Read};
    let from_day = day_of(from);
    let files = archive_files(dir)?
        .into_iter()
        .filter(move |(day, _)| *day >= from_day);
    Ok(files.flat_map(
        move |(day, path)| -> Box<dyn Iterator<Item = EventResult>> {
            let limit = intent
                .filter(|(intent_day, _)| *intent_day == day)
                .map_or(u64::MAX, |(_, len)| len);
            let file = match std::fs::File::open(&path) {
                Ok(file) => file,
                Err(err) => return Box::new(std::iter::once(Err(io_error(&path)(err)))),
            };
            let gz = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file.take(limit)));
            let lines = std::io::BufReader::new(gz).lines();
            Box::new(lines.enumerate().flat_map(move |(n, line)| {
                let parsed = line.map_err(io_error(&path)).and_then(|line| {
                    serde_json::from_str::<ArchiveLine>(&line).map_err(|e| JournalError::Corrupt {
                        seq: 0,
                        reason: format!("{} line {}: {e}", path.display(), n + 1),
                    })
                });
                match parsed {
                    Ok(line) => line.events.into_iter().map(Ok).collect::<Vec<_>>(),
                    Err(err) => vec![Err(err)],
                }
            }))
        },
    ))
}

/// `orderhub compact`: one compaction of the journal in `data_dir` with the engine stopped
/// (the data directory's lock says so). A journal created before incremental vacuum is
/// converted first (a one-off `VACUUM`, which needs free space about the journal's size), so
/// the space compaction frees goes back to the file system. Returns what was done and whether
/// the journal was converted.
pub fn compact_offline(
    config: &crate::config::Config,
    data_dir: &Path,
    now: Millis,
) -> Result<(Compacted, bool), JournalError> {
    let _lock = super::DataDirLock::acquire(data_dir, "orderhub compact")?;
    let converted = {
        let conn = schema::open_writer(data_dir)?;
        let mode: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
        if mode != 2 {
            conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
            conn.execute_batch("VACUUM")?;
        }
        mode != 2
    };
    let policy = config.policy();
    let (journal, _) = Journal::open(data_dir, &config.journal, &policy)?;
    journal.start(|_, _| {}, |_| {})?;
    let retention = Retention {
        pace: 0,
        remove_orders: REMOVE_ORDERS_OFFLINE,
        vacuum_bytes: None,
        ..Retention::from_config(&config.journal, data_dir)
    };
    let stop = AtomicBool::new(false);
    let done = compact(
        &journal,
        data_dir,
        &policy,
        &retention,
        now,
        &stop,
        &mut |_| {},
    );
    journal.close_blocking();
    let mut done = done?;
    // Cut the WAL back now rather than at the next start.
    let conn = schema::open_writer(data_dir)?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    drop(conn);
    done.disk_after = disk_bytes(data_dir);
    Ok((done, converted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use AtomicBool;
    use orderhub_actors::dispatch::{SyncIntent, SyncStatus, SyncUpdate};
    use orderhub_actors::order::{EventAction, OrderEvent};
    use orderhub_actors::store::{OrderIndexEntry, OrderStore, OrderUpdate, SyncStore};
    use std::io::Read;

    const DAY: Millis = 86_400_000;
    /// 2026-11-29T00:00:00Z.
    const NOW: Millis = 1_795_910_400_000;

    fn event(order: &str, id: &str, state: OrderState, at: Millis) -> OrderEvent {
        let mut fields = serde_json::Map::new();
        fields.insert("waybill_no".into(), format!("SF-{order}").into());
        // Long enough that an order's events share them (`writer::SharedFields`): what is
        // archived and exported must have them whole.
        fields.insert(
            "items".into(),
            serde_json::json!([{"sku": "SKU-1", "name": "Hydrating face cream 50ml", "qty": 1}]),
        );
        OrderEvent {
            order: order.into(),
            source: "wms".into(),
            source_event_id: id.into(),
            supersedes: None,
            log_seq: None,
            raw_status: state.as_str().into(),
            action: EventAction::Move { state },
            occurred_at: at,
            received_at: at,
            fields: fields.into(),
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        data_dir: PathBuf,
        journal: Journal,
        policy: OrderPolicy,
        /// Each routed event's source event id and whether it was routed as its order's first.
        routed: std::sync::Arc<std::sync::Mutex<Vec<(String, bool)>>>,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let data_dir = dir.path().to_path_buf();
            let config = Config::embedded().unwrap().journal;
            let policy = OrderPolicy::permissive();
            let (journal, _) = Journal::open(&data_dir, &config, &policy).unwrap();
            let routed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let routing = routed.clone();
            journal
                .start(
                    move |event, first| {
                        routing
                            .lock()
                            .unwrap()
                            .push((event.event.source_event_id.clone(), first))
                    },
                    |_| {},
                )
                .unwrap();
            Fixture {
                _dir: dir,
                data_dir,
                journal,
                policy,
                routed,
            }
        }

        /// A fixture holding `shop:1`, paid and completed 40 days ago (past `retain`), its
        /// summary written; shared, for a blocking task to compact it.
        async fn with_finished_order() -> std::sync::Arc<Fixture> {
            let f = Fixture::new();
            let old = NOW - 40 * DAY;
            f.order("shop:1", &[OrderState::Paid, OrderState::Completed], old)
                .await;
            f.journal.flush().await;
            std::sync::Arc::new(f)
        }

        /// Journals `states` for `order` at `at` and indexes the order as an actor would.
        async fn order(&self, order: &str, states: &[OrderState], at: Millis) -> u64 {
            let events = states
                .iter()
                .enumerate()
                .map(|(i, s)| event(order, &format!("{order}-{i}"), *s, at))
                .collect();
            let outcomes = self.journal.append(events).await.unwrap();
            let Some(crate::journal::AppendOutcome::Appended(last)) = outcomes.last().copied()
            else {
                panic!("not appended: {outcomes:?}");
            };
            self.index(order, *states.last().unwrap(), at, last, Vec::new());
            last
        }

        fn index(
            &self,
            order: &str,
            state: OrderState,
            at: Millis,
            seq: u64,
            syncs: Vec<SyncIntent>,
        ) {
            self.journal.record(OrderUpdate {
                index: OrderIndexEntry {
                    key: order.into(),
                    state: Some(state),
                    state_since: at,
                    first_seen: at,
                    updated_at: at,
                    applied_seq: seq,
                    sla_breached: false,
                    armed: Vec::new(),
                    approvals: Vec::new(),
                    disagreements: Vec::new(),
                },
                syncs,
            });
        }

        fn retention(&self) -> Retention {
            Retention {
                retain: Duration::from_secs(30 * 86_400),
                archive_dir: Some(self.data_dir.join("archive")),
                pace: 0,
                remove_orders: 32,
                vacuum_bytes: Some(64 << 10),
            }
        }

        fn compact(&self) -> Compacted {
            let mut gone = Vec::new();
            let done = compact(
                &self.journal,
                &self.data_dir,
                &self.policy,
                &self.retention(),
                NOW,
                &AtomicBool::new(false),
                &mut |orders| gone.extend(orders.iter().map(|(k, _)| k.clone())),
            )
            .unwrap();
            assert_eq!(gone.len() as u64, done.orders);
            done
        }

        fn archive_lines(&self) -> Vec<serde_json::Value> {
            let path = self.data_dir.join("archive/2026-11-29.jsonl.gz");
            let mut text = String::new();
            flate2::read::MultiGzDecoder::new(std::fs::File::open(path).unwrap())
                .read_to_string(&mut text)
                .unwrap();
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
    }

    fn sync(order: &str, seq: u64) -> SyncIntent {
        SyncIntent {
            id: format!("{order}:{seq}:erp"),
            sink: "erp".into(),
            order: order.into(),
            seq,
            rule: "r".into(),
            payload: serde_json::json!({"order": order}),
            fields: None,
            contents: None,
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn finished_orders_past_retain_are_archived_once_and_removed_the_rest_stay() {
        let f = Fixture::new();
        let old = NOW - 40 * DAY;
        use OrderState::*;
        let done_seq = f.order("shop:done", &[Paid, Shipped, Completed], old).await;
        f.order("shop:refunded", &[Paid, Refunded], old).await;
        f.order("shop:open", &[Paid], old - 100 * DAY).await; // never finished: stays forever
        f.order("shop:recent", &[Paid, Completed], NOW - DAY).await;
        let pending_seq = f.order("shop:owed", &[Paid, Cancelled], old).await;
        f.index(
            "shop:owed",
            Cancelled,
            old,
            pending_seq,
            vec![sync("shop:owed", pending_seq)],
        );
        // A delivered sync of the finished order goes to the archive with it.
        f.index(
            "shop:done",
            Completed,
            old,
            done_seq,
            vec![sync("shop:done", done_seq)],
        );
        f.journal.flush().await;
        let row = f.journal.syncs_of("shop:done").unwrap()[0].row;
        f.journal.record_attempt(SyncUpdate {
            row,
            status: SyncStatus::Delivered,
            attempts: 1,
            not_before: 0,
            last_error: None,
            at: old,
        });
        f.journal.flush().await;

        let done = tokio::task::spawn_blocking({
            let f = std::sync::Arc::new(f);
            let g = f.clone();
            move || (g.compact(), f)
        })
        .await
        .unwrap();
        let (first, f) = done;
        assert_eq!(first.orders, 2, "{first:?}");
        assert_eq!(first.events, 5);
        assert_eq!(first.syncs, 1);
        let lines = f.archive_lines();
        let keys: Vec<&str> = lines.iter().map(|l| l["order"].as_str().unwrap()).collect();
        assert_eq!(keys.len(), 2);
        assert!(keys.contains(&"shop:done") && keys.contains(&"shop:refunded"));
        let archived = lines.iter().find(|l| l["order"] == "shop:done").unwrap();
        assert_eq!(archived["state"], "completed");
        assert_eq!(archived["archived_at"], NOW);
        assert_eq!(archived["events"].as_array().unwrap().len(), 3);
        assert_eq!(archived["events"][2]["seq"], done_seq);
        for event in archived["events"].as_array().unwrap() {
            assert_eq!(event["fields"]["items"][0]["sku"], "SKU-1", "{event}");
        }
        assert_eq!(archived["syncs"][0]["status"], "delivered");
        assert_eq!(archived["timeline"].as_array().unwrap().len(), 3);

        // Gone from the journal (events, syncs, index, waybills), with a record of where.
        assert!(f.journal.events_of("shop:done").unwrap().is_empty());
        assert!(f.journal.syncs_of("shop:done").unwrap().is_empty());
        assert_eq!(f.journal.indexed_state("shop:done").unwrap(), None);
        assert_eq!(f.journal.order_of_waybill("SF-shop:done").unwrap(), None);
        let record = f.journal.archived("shop:done").unwrap().unwrap();
        assert_eq!(record.archive.as_deref(), Some("2026-11-29.jsonl.gz"));
        // The oldest event left is the never-finished order's (the disk gauge reads it).
        assert_eq!(f.journal.oldest_event_at().unwrap(), Some(old - 100 * DAY));
        // The rest stay: not finished, too recent, a sync still owed.
        for kept in ["shop:open", "shop:recent", "shop:owed"] {
            assert!(!f.journal.events_of(kept).unwrap().is_empty(), "{kept}");
            assert_eq!(f.journal.archived(kept).unwrap(), None);
        }
        // A late summary of an archived order (its actor passivating) leaves no index row.
        f.index("shop:done", Completed, old, done_seq, Vec::new());
        f.journal.flush().await;
        assert_eq!(f.journal.indexed_state("shop:done").unwrap(), None);

        // Again: nothing more, nothing twice.
        let (second, f) = tokio::task::spawn_blocking(move || (f.compact(), f))
            .await
            .unwrap();
        assert_eq!(second.orders, 0);
        assert_eq!(f.archive_lines().len(), 2);

        // Export reads the archive as well as the journal.
        let out = f.data_dir.join("export.jsonl.gz");
        let written = crate::journal::export::export(
            &f.data_dir,
            Some(&f.data_dir.join("archive")),
            old - 200 * DAY,
            NOW,
            &out,
        )
        .unwrap();
        assert_eq!(written, 3 + 2 + 1 + 2 + 2);
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(std::fs::File::open(&out).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        for line in text.lines() {
            let line: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(line["fields"]["items"][0]["sku"], "SKU-1", "{line}");
        }

        // Records of archived orders go after ARCHIVED_RECORDS_KEPT, a bounded number at a time.
        let f = std::sync::Arc::new(f);
        let g = f.clone();
        tokio::task::spawn_blocking(move || {
            let forget = |limit| {
                g.journal
                    .archive_step(ArchiveCmd::ForgetArchived {
                        before: NOW + 1,
                        limit,
                    })
                    .unwrap()
            };
            assert_eq!(
                forget(1),
                ArchiveOutcome::Done {
                    events: 1,
                    syncs: 0
                }
            );
            assert_eq!(
                forget(10),
                ArchiveOutcome::Done {
                    events: 1,
                    syncs: 0
                }
            );
            assert_eq!(g.journal.archived("shop:done").unwrap(), None);
        })
        .await
        .unwrap();

        // The order comes back with the same contents: its events that held them are gone, so
        // its new event holds them itself.
        let again = event("shop:done", "shop:done-again", OrderState::Completed, NOW);
        f.journal.append(vec![again.clone()]).await.unwrap();
        let events = f.journal.events_of("shop:done").unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event, again);
        f.journal.close().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_batch_interrupted_before_its_removal_is_cut_back_and_archived_once() {
        let f = Fixture::with_finished_order().await;
        let g = f.clone();
        tokio::task::spawn_blocking(move || {
            // A compaction that committed its intent and wrote part of its batch, then died.
            let dir = g.data_dir.join("archive");
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("2026-11-29.jsonl.gz");
            g.journal
                .archive_step(ArchiveCmd::Begin {
                    day: 20261129,
                    len: 0,
                    parked: false,
                })
                .unwrap();
            let partial = b"\x1f\x8b\x08\x00 half a gzip member";
            std::fs::write(&path, partial).unwrap();
            let done = g.compact();
            assert_eq!(done.orders, 1);
            assert_eq!(done.undone_bytes, partial.len() as u64);
            assert_eq!(g.archive_lines().len(), 1);
            assert_eq!(g.journal.meta(INTENT_DAY).unwrap(), None);
        })
        .await
        .unwrap();
    }

    /// An order compaction removed is new again: its next event is routed as its order's first
    /// (an actor it starts reads nothing, and the journal holds nothing else of it).
    #[tokio::test(flavor = "multi_thread")]
    async fn an_order_removed_by_compaction_is_new_again() {
        let f = Fixture::with_finished_order().await;
        let g = f.clone();
        tokio::task::spawn_blocking(move || assert_eq!(g.compact().orders, 1))
            .await
            .unwrap();
        f.journal
            .append(vec![event("shop:1", "again", OrderState::Paid, NOW)])
            .await
            .unwrap();
        let routed = f.routed.lock().unwrap().clone();
        let first = |id: &str| (id.to_owned(), true);
        let later = |id: &str| (id.to_owned(), false);
        assert_eq!(
            routed,
            [first("shop:1-0"), later("shop:1-1"), first("again")]
        );
        assert_eq!(f.journal.events_of("shop:1").unwrap().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_order_that_gets_an_event_while_being_archived_stays_and_the_file_is_cut_back() {
        let f = Fixture::new();
        let old = NOW - 40 * DAY;
        let seq = f
            .order("shop:1", &[OrderState::Paid, OrderState::Completed], old)
            .await;
        f.journal.flush().await;
        let conn_order = f
            .journal
            .inner
            .reader
            .with(|conn| read_order(conn, "shop:1", seq, &f.policy, NOW))
            .unwrap()
            .unwrap();
        // A refund arrives after the order was read for the archive.
        f.journal
            .append(vec![event("shop:1", "late", OrderState::Refunded, NOW)])
            .await
            .unwrap();
        let f = std::sync::Arc::new(f);
        let g = f.clone();
        tokio::task::spawn_blocking(move || {
            let mut report = Compacted::default();
            let gone = archive_batch(
                &g.journal,
                &g.retention(),
                vec![conn_order],
                NOW,
                &mut report,
            )
            .unwrap();
            assert!(gone.is_empty());
            assert_eq!(report.orders, 0);
            let path = g.data_dir.join("archive/2026-11-29.jsonl.gz");
            assert_eq!(std::fs::metadata(path).unwrap().len(), 0);
            assert_eq!(g.journal.events_of("shop:1").unwrap().len(), 3);
            assert_eq!(g.journal.archived("shop:1").unwrap(), None);
            assert_eq!(g.journal.meta(INTENT_DAY).unwrap(), None);
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_change_in_a_later_member_keeps_what_was_removed_and_rewrites_the_rest() {
        let f = Fixture::new();
        let old = NOW - 40 * DAY;
        let mut seqs = Vec::new();
        for i in 0..100 {
            let states = [OrderState::Paid, OrderState::Completed];
            seqs.push(f.order(&format!("shop:{i:03}"), &states, old).await);
        }
        f.journal.flush().await;
        let batch: Vec<Archived> = f
            .journal
            .inner
            .reader
            .with(|conn| {
                let mut batch = Vec::new();
                for (i, seq) in seqs.iter().enumerate() {
                    let key = format!("shop:{i:03}");
                    batch.extend(read_order(conn, &key, *seq, &f.policy, NOW)?);
                }
                Ok(batch)
            })
            .unwrap();
        assert_eq!(batch.len(), 100);
        // Order 70 (in the third member of 32) is refunded after it was read.
        f.journal
            .append(vec![event("shop:070", "late", OrderState::Refunded, NOW)])
            .await
            .unwrap();
        let f = std::sync::Arc::new(f);
        let g = f.clone();
        tokio::task::spawn_blocking(move || {
            let mut report = Compacted::default();
            let gone = archive_batch(&g.journal, &g.retention(), batch, NOW, &mut report).unwrap();
            assert_eq!(gone.len(), 99);
            assert_eq!(report.orders, 99);
            let mut keys: Vec<String> = g
                .archive_lines()
                .iter()
                .map(|l| l["order"].as_str().unwrap().to_owned())
                .collect();
            keys.sort();
            keys.dedup();
            assert_eq!(keys.len(), 99, "each once");
            assert!(!keys.contains(&"shop:070".to_owned()));
            assert_eq!(g.archive_lines().len(), 99);
            assert_eq!(g.journal.events_of("shop:070").unwrap().len(), 3);
            assert!(g.journal.events_of("shop:071").unwrap().is_empty());
            assert_eq!(g.journal.meta(INTENT_DAY).unwrap(), None);
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn orderhub_compact_converts_an_older_journal_and_gives_the_space_back() {
        let dir = tempfile::tempdir().unwrap();
        // A journal from before incremental vacuum: its first table came before the mode.
        rusqlite::Connection::open(dir.path().join(schema::DB_FILE))
            .unwrap()
            .execute_batch("CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);")
            .unwrap();
        let config = Config::embedded().unwrap();
        let policy = config.policy();
        let (journal, _) = Journal::open(dir.path(), &config.journal, &policy).unwrap();
        journal.start(|_, _| {}, |_| {}).unwrap();
        let old = crate::journal::writer::now_ms() - 40 * DAY;
        for chunk in 0..4 {
            let events = (0..250)
                .flat_map(|i| {
                    let order = format!("shop:{chunk}-{i}");
                    [
                        event(&order, &format!("{order}-p"), OrderState::Paid, old),
                        event(&order, &format!("{order}-c"), OrderState::Completed, old),
                    ]
                })
                .collect();
            journal.append(events).await.unwrap();
        }
        journal.close().await;
        drop(journal);
        let mode = |dir: &Path| -> i64 {
            rusqlite::Connection::open(dir.join(schema::DB_FILE))
                .unwrap()
                .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(mode(dir.path()), 0);
        let path = dir.path().to_path_buf();
        let now = crate::journal::writer::now_ms();
        let (done, converted) =
            tokio::task::spawn_blocking(move || compact_offline(&config, &path, now).unwrap())
                .await
                .unwrap();
        assert!(converted);
        assert_eq!(done.orders, 1_000);
        assert!(done.disk_after * 4 < done.disk_before, "{done:?}");
        assert_eq!(mode(dir.path()), 2);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn scans_parked_past_retain_for_a_waybill_nobody_reported_are_archived_apart() {
        let f = Fixture::new();
        let scan = |id: &str, waybill: &str, at| {
            let mut scan = event("", id, OrderState::InTransit, at);
            scan.fields.insert_value("waybill_no", &waybill.into());
            scan
        };
        let outcomes = f
            .journal
            .append(vec![
                scan("scan-old", "SF-NOBODY", NOW - 40 * DAY),
                scan("scan-new", "SF-LATER", NOW - DAY),
            ])
            .await
            .unwrap();
        use crate::journal::AppendOutcome::Parked;
        assert_eq!(outcomes, vec![Parked, Parked]);
        let (done, f) = tokio::task::spawn_blocking(move || (f.compact(), f))
            .await
            .unwrap();
        assert_eq!((done.parked, done.orders), (1, 0));
        assert_eq!(
            f.journal.parked_scans().unwrap(),
            vec![("wms".to_owned(), 1, NOW - DAY)]
        );
        let mut text = String::new();
        let path = f.data_dir.join("archive/2026-11-29.parked.jsonl.gz");
        flate2::read::MultiGzDecoder::new(std::fs::File::open(path).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["waybill_no"], "SF-NOBODY");
        assert_eq!(lines[0]["event"]["source_event_id"], "scan-old");
        // Not an order archive: export does not read it.
        assert_eq!(
            archive_files(&f.data_dir.join("archive")).unwrap(),
            Vec::<(i64, PathBuf)>::new()
        );
    }

    #[test]
    fn days_name_their_archive_files() {
        assert_eq!(day_of(NOW), 20261129);
        assert_eq!(day_of(NOW - 1), 20261128);
        assert_eq!(
            day_file(Path::new("a"), 20261129),
            Path::new("a/2026-11-29.jsonl.gz")
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_new_journal_gives_the_pages_compaction_frees_back() {
        let f = Fixture::new();
        let pragma = |f: &Fixture, name: &str| -> i64 {
            f.journal
                .inner
                .reader
                .with(|conn| Ok(conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))?))
                .unwrap()
        };
        assert_eq!(pragma(&f, "auto_vacuum"), 2, "incremental");
        for i in 0..600 {
            let states = [OrderState::Paid, OrderState::Completed];
            f.order(&format!("shop:{i}"), &states, NOW - 40 * DAY).await;
        }
        f.journal.flush().await;
        let pages = pragma(&f, "page_count");
        let (done, f) = tokio::task::spawn_blocking(move || (f.compact(), f))
            .await
            .unwrap();
        assert_eq!(done.orders, 600);
        assert_eq!(pragma(&f, "freelist_count"), 0);
        assert!(pragma(&f, "page_count") < pages / 2, "{pages} pages before");
    }
}
