//! The journal writer thread: group commit. It takes every append request that queued while the
//! previous batch was being fsync'd (up to a limit), writes them in one transaction with the
//! order summaries and internal events that queued beside them, commits (fsync), then routes
//! the new events to the order actors in journal order and answers every waiting request. A
//! batch of only what nobody waits on (summaries, syncs, delivery attempts) waits briefly for an
//! append to ride with ([`SIDE_WAIT`]).

use super::{
    AppendOutcome, AppendRequest, ArchiveCmd, ArchiveOutcome, JournalError, SideCmd, index, outbox,
};
use crossbeam_channel::{Receiver, select};
use orderhub_actors::dispatch::{PendingSync, SyncIntent, SyncUpdate};
use orderhub_actors::order::{EventAction, JournaledEvent, Millis, OrderEvent, SharedEvent};
use orderhub_actors::store::OrderIndexEntry;
use orderhub_actors::telemetry as t;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Routes a committed event to its order actor.
/// `true` when the journal held no earlier event of the order (see
/// [`OrderRouter::route_first`](orderhub_actors::shard::OrderRouter::route_first)).
pub(crate) type RouteFn = Box<dyn Fn(SharedEvent, bool) + Send>;
/// Hands newly committed syncs to the dispatchers.
pub(crate) type NotifyFn = Box<dyn Fn(Vec<PendingSync>) + Send>;

pub(crate) fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// A courier scan as stored in `parked_scans.body` (whole: its order is not known yet).
fn encode(event: &OrderEvent) -> Result<String, JournalError> {
    serde_json::to_string(event).map_err(|e| JournalError::Corrupt {
        seq: 0,
        reason: e.to_string(),
    })
}

/// `fields` shorter than this (as JSON) are always stored whole: a reference saves too little.
const SHARED_FIELDS_MIN: usize = 64;

/// Orders whose last whole `fields` [`SharedFields`] keeps, and the bytes of `fields` it keeps
/// at most; past either it starts again from none (an order it forgot stores its next event
/// whole: nothing else changes). `fields` longer than `SHARED_FIELDS_MAX` are not kept.
const SHARED_FIELDS_ORDERS: usize = 16_384;
const SHARED_FIELDS_BYTES: usize = 32 << 20;
const SHARED_FIELDS_MAX: usize = 16 << 10;

/// The `fields` of each order's last event stored whole, with that event's sequence. Platforms
/// and enrichment repeat an order's contents (items, address, amounts) in every status report:
/// in the lifecycle benchmark each order's five events carry the same ~550 bytes. An event
/// whose `fields` are byte for byte those of its order's remembered event stores a reference to
/// it (`events.fields_from`) and a body without them, so the journal writes them once per order
/// instead of once per event (and once more at the checkpoint). Readers put them back
/// (`reader::load_events`, the `events_whole` view).
///
/// A reference always points at an event of the same order that holds its fields whole and is
/// committed: entries are made only for rows the current transaction inserted, all are dropped
/// when a commit fails, and an order's entry when compaction removes its events.
///
/// For the same reasons an order it holds has an earlier event in the journal, so the writer
/// asks the journal whether an event is its order's first only for orders it does not hold. It
/// holds orders whose events carry no `fields` to share too (with empty `fields`).
#[derive(Default)]
pub(crate) struct SharedFields {
    by_order: HashMap<String, (i64, String)>,
    /// The bytes of `fields` held.
    bytes: usize,
}

impl SharedFields {
    /// The event whose `fields` (as JSON) are `fields`, if `order`'s remembered one.
    fn holder(&self, order: &str, fields: &str) -> Option<i64> {
        self.by_order
            .get(order)
            .filter(|(_, held)| !held.is_empty() && held == fields)
            .map(|(seq, _)| *seq)
    }

    /// Remembers that event `seq` of `order` holds `fields` whole.
    fn remember(&mut self, order: &str, seq: i64, fields: String) {
        if !(SHARED_FIELDS_MIN..=SHARED_FIELDS_MAX).contains(&fields.len()) {
            return;
        }
        if let Some(entry) = self.by_order.get_mut(order) {
            self.bytes = self.bytes - entry.1.len() + fields.len();
            *entry = (seq, fields);
        } else {
            if self.by_order.len() >= SHARED_FIELDS_ORDERS {
                self.clear();
            }
            self.bytes += fields.len();
            self.by_order.insert(order.to_owned(), (seq, fields));
        }
        if self.bytes > SHARED_FIELDS_BYTES {
            self.clear();
        }
    }

    /// Whether it holds `order` (which then has an event in the journal or this transaction).
    fn knows(&self, order: &str) -> bool {
        self.by_order.contains_key(order)
    }

    /// Holds `order`, whose event `seq` was just inserted, if it does not yet.
    fn note(&mut self, order: &str, seq: i64) {
        if !self.knows(order) {
            if self.by_order.len() >= SHARED_FIELDS_ORDERS {
                self.clear();
            }
            self.by_order.insert(order.to_owned(), (seq, String::new()));
        }
    }

    fn forget(&mut self, order: &str) {
        if let Some((_, fields)) = self.by_order.remove(order) {
            self.bytes -= fields.len();
        }
    }

    fn clear(&mut self) {
        self.by_order.clear();
        self.bytes = 0;
    }
}

pub(crate) struct Writer {
    pub(crate) conn: Connection,
    pub(crate) appends: Receiver<AppendRequest>,
    pub(crate) side: Receiver<SideCmd>,
    pub(crate) route: RouteFn,
    pub(crate) notify: NotifyFn,
    pub(crate) batch_max_events: usize,
    pub(crate) batch_max_wait: Duration,
    /// See [`SIDE_WAIT`] (longer in tests).
    pub(crate) side_wait: Duration,
    /// When the last commit ended: a batch whose oldest request was already waiting then, and
    /// which holds at least [`LOADED_BATCH`] events, is under load, and only such a batch waits
    /// `batch_max_wait` to fill (see [`Writer::fill`]).
    pub(crate) last_commit_end: Instant,
    pub(crate) last_seq: u64,
    pub(crate) persisted_watermark: u64,
    /// What readers may know of the writer's progress.
    pub(crate) progress: Arc<Progress>,
    /// Orders compaction removed lately, with the last sequence archived: a summary an order
    /// actor still writes for one of them (it was active, or passivating) is dropped rather than
    /// leaving an index row with no events.
    pub(crate) archived_recently: HashMap<String, (u64, Instant)>,
    /// Orders whose actors were given up on, with the last of their events that no summary had
    /// folded then: until a summary folds that far, the order stays in the `unfolded` table
    /// and start-up recovery folds it again.
    pub(crate) unfolded: HashMap<String, u64>,
    /// See [`SharedFields`].
    pub(crate) shared_fields: SharedFields,
}

/// The writer's progress, readable from other threads.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// The last journal sequence committed.
    pub(crate) appended: AtomicU64,
    /// Every event below this sequence is folded into the committed order index.
    pub(crate) indexed_below: AtomicU64,
}

/// How long a removed order's late summaries are watched for.
const ARCHIVED_WATCH: Duration = Duration::from_secs(120);

/// After a failed commit, how long the writer waits for something new before it commits what
/// the failed batch kept on its own.
const RETRY_KEPT_AFTER: Duration = Duration::from_millis(100);

/// How long a batch that nobody waits on — order summaries, the syncs they decided, sync
/// attempts, orders given up on, a poller's cursor — waits for an append to commit with before
/// it commits alone. Under load appends arrive within microseconds, so such a batch rides in the
/// next append's commit instead of paying a commit (its pages, its fsync) of its own: in the
/// lifecycle benchmark a third to a half of the commits carried no event (BENCHMARKS.md,
/// "2026-12-01"). An idle journal writes them (and hands new syncs to the dispatchers) this much
/// later; no acknowledgement waits for it, and a request someone waits on (a flush, a revive,
/// a stock setting, a compaction step, the stop) ends the wait when it arrives.
pub(crate) const SIDE_WAIT: Duration = Duration::from_millis(2);

/// Events a batch must hold before it waits `batch_max_wait` to fill: fewer queued during a
/// commit is light or moderate load, where the wait would only add to each answer for commits
/// that stay small. At the README example's 690 requests/s (one event each), with a 1 ms wait,
/// a bar of two requests added 0.7 ms to the median acknowledgement; with a 3 ms wait a bar of
/// four added ~2 ms to the 90th percentile against a bar of 16 (its bursts queue four now and
/// then). Events, not requests: a client sending 50 events a request keeps only a few requests
/// in flight. Under the lifecycle benchmark's load ~100 events queue behind each commit.
const LOADED_BATCH: usize = 16;

struct Metrics {
    batch_size: metrics::Histogram,
    commit_latency: metrics::Histogram,
    appended: metrics::Counter,
    errors: metrics::Counter,
    queue_depth: metrics::Gauge,
    queue_oldest: metrics::Gauge,
    side_backlog: metrics::Gauge,
    unfolded: metrics::Gauge,
}

/// Which journaled events are not yet folded into the index, so the watermark is known.
#[derive(Default)]
struct Coverage {
    uncovered: BTreeSet<u64>,
    by_order: HashMap<String, Vec<u64>>,
}

impl Coverage {
    fn appended(&mut self, order: &str, seq: u64) {
        self.uncovered.insert(seq);
        self.by_order.entry(order.to_owned()).or_default().push(seq);
    }

    fn indexed(&mut self, order: &str, applied_seq: u64) {
        if let Some(seqs) = self.by_order.get_mut(order) {
            seqs.retain(|seq| {
                let covered = *seq <= applied_seq;
                if covered {
                    self.uncovered.remove(seq);
                }
                !covered
            });
            if seqs.is_empty() {
                self.by_order.remove(order);
            }
        }
    }

    /// The last of `order`'s events past `folded` that no summary has folded yet.
    fn uncovered_after(&self, order: &str, folded: u64) -> Option<u64> {
        self.by_order
            .get(order)
            .and_then(|seqs| seqs.iter().copied().filter(|seq| *seq > folded).max())
    }

    /// Stops waiting for `order`'s events to be folded.
    fn forget(&mut self, order: &str) {
        if let Some(seqs) = self.by_order.remove(order) {
            for seq in seqs {
                self.uncovered.remove(&seq);
            }
        }
    }

    fn watermark(&self, last_seq: u64) -> u64 {
        self.uncovered.first().copied().unwrap_or(last_seq + 1)
    }
}

/// What a commit produced.
struct Committed {
    /// Each append request's outcomes.
    outcomes: Vec<Vec<AppendOutcome>>,
    /// Appended events, in journal order, to route, each `true` when it is its order's first.
    routed: Vec<(SharedEvent, bool)>,
    /// Syncs inserted, to hand to the dispatchers.
    new_syncs: Vec<PendingSync>,
    /// Each revive request's sync (None if it was not a dead letter).
    revived: Vec<Option<PendingSync>>,
    /// Each archive step's outcome.
    archived: Vec<ArchiveOutcome>,
    /// Each stock setting's counts after.
    stocked: Vec<Vec<super::stock::Level>>,
}

#[derive(Default)]
struct Batch {
    appends: Vec<AppendRequest>,
    events: usize,
    internal: Vec<OrderEvent>,
    index: HashMap<String, OrderIndexEntry>,
    syncs: Vec<SyncIntent>,
    attempts: HashMap<i64, SyncUpdate>,
    revives: Vec<(i64, tokio::sync::oneshot::Sender<Option<PendingSync>>)>,
    meta: HashMap<String, i64>,
    flushes: Vec<tokio::sync::oneshot::Sender<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    archive: Vec<(ArchiveCmd, tokio::sync::oneshot::Sender<ArchiveOutcome>)>,
    stock: Vec<(
        Vec<super::stock::StockSetting>,
        tokio::sync::oneshot::Sender<Vec<super::stock::Level>>,
    )>,
    /// Orders whose actors were given up on.
    unfolded: Vec<String>,
}

impl Batch {
    /// Empties the batch for the next commit, keeping what its collections allocated: a fresh
    /// batch per commit grew its maps from nothing each time (~3% of the engine's CPU under
    /// load, BENCHMARKS.md). Whatever is still in it is dropped, as a dropped batch was: a reply
    /// dropped unanswered tells its sender the request failed.
    fn reset(&mut self) {
        self.reset_after_failure();
        self.internal.clear();
        self.index.clear();
        self.syncs.clear();
        self.attempts.clear();
        self.unfolded.clear();
    }

    /// Empties the batch after a commit that failed, keeping what the next commit can still
    /// write: internal events, summaries, syncs, sync attempts and orders given up on (each is
    /// about what is already journaled, so none waits for a reply). Appends were told to retry,
    /// and a `meta` value goes with them: an applier's position must never be written without
    /// the events it follows (a poller's cursor, dropped, makes it poll again).
    fn reset_after_failure(&mut self) {
        self.appends.clear();
        self.events = 0;
        self.revives.clear();
        self.meta.clear();
        self.flushes.clear();
        self.stop = None;
        self.archive.clear();
        self.stock.clear();
    }

    /// Whether nothing in the batch is waited on: no append, no reply, no event orderhub raised
    /// itself (see [`SIDE_WAIT`]).
    fn nobody_waits(&self) -> bool {
        self.appends.is_empty()
            && self.internal.is_empty()
            && self.revives.is_empty()
            && self.flushes.is_empty()
            && self.stop.is_none()
            && self.archive.is_empty()
            && self.stock.is_empty()
    }

    fn side(&mut self, cmd: SideCmd) {
        match cmd {
            SideCmd::Internal(event) => self.internal.push(event),
            SideCmd::Update(update) => {
                self.syncs.extend(update.syncs);
                let entry = update.index;
                match self.index.get(&entry.key) {
                    Some(old) if old.applied_seq > entry.applied_seq => {}
                    _ => {
                        self.index.insert(entry.key.clone(), entry);
                    }
                }
            }
            SideCmd::Attempt(update) => {
                self.attempts.insert(update.row, update);
            }
            SideCmd::Revive(row, reply) => self.revives.push((row, reply)),
            SideCmd::Meta(name, value) => {
                self.meta.insert(name, value);
            }
            SideCmd::Flush(reply) => self.flushes.push(reply),
            SideCmd::Stop(reply) => self.stop = Some(reply),
            SideCmd::Archive(cmd, reply) => self.archive.push((cmd, reply)),
            SideCmd::SetStock(settings, reply) => self.stock.push((settings, reply)),
            SideCmd::Unfolded(order) => self.unfolded.push(order),
        }
    }

    fn append(&mut self, mut request: AppendRequest) {
        self.events += request.events.len();
        if let Some((name, value)) = request.position.take() {
            // Requests of one name queue in order (one applier per partition awaits each).
            self.meta.insert(name, value);
        }
        self.appends.push(request);
    }
}

impl Writer {
    pub(crate) fn run(mut self) {
        let metrics = Metrics {
            batch_size: metrics::histogram!(t::JOURNAL_BATCH_SIZE),
            commit_latency: metrics::histogram!(t::JOURNAL_COMMIT_LATENCY),
            appended: metrics::counter!(t::JOURNAL_APPENDED),
            errors: metrics::counter!(t::JOURNAL_ERRORS, "kind" => "commit"),
            queue_depth: metrics::gauge!(t::JOURNAL_QUEUE_DEPTH),
            queue_oldest: metrics::gauge!(t::JOURNAL_QUEUE_OLDEST),
            side_backlog: metrics::gauge!(t::JOURNAL_INDEX_BACKLOG),
            unfolded: metrics::gauge!(t::JOURNAL_UNFOLDED),
        };
        let mut coverage = Coverage::default();
        metrics.unfolded.set(self.unfolded.len() as f64);
        let mut watermark = coverage.watermark(self.last_seq);
        let mut batch = Batch::default();
        let mut failed = false;
        loop {
            if failed {
                batch.reset_after_failure();
            } else {
                batch.reset();
            }
            // After a failed commit, what the batch kept is committed on its own if nothing
            // else arrives first.
            let retry_after = if failed {
                RETRY_KEPT_AFTER
            } else {
                Duration::MAX
            };
            select! {
                recv(self.appends) -> request => match request {
                    Ok(request) => batch.append(request),
                    Err(_) => return, // every handle dropped without a stop: nothing left to answer
                },
                recv(self.side) -> cmd => match cmd {
                    Ok(cmd) => batch.side(cmd),
                    Err(_) => return,
                },
                default(retry_after) => {}
            }
            self.fill(&mut batch);
            let oldest = batch.appends.iter().map(|r| r.enqueued).min();
            metrics.queue_depth.set(self.appends.len() as f64);
            metrics.side_backlog.set(self.side.len() as f64);
            metrics
                .queue_oldest
                .set(oldest.map_or(0.0, |at| at.elapsed().as_secs_f64()));

            let started = Instant::now();
            let committed = self.commit(&mut batch, &mut coverage, &mut watermark);
            self.last_commit_end = Instant::now();
            match committed {
                Ok(Committed {
                    outcomes,
                    routed,
                    new_syncs,
                    revived,
                    archived,
                    stocked,
                }) => {
                    metrics
                        .commit_latency
                        .record(started.elapsed().as_secs_f64());
                    metrics.batch_size.record(batch.events as f64);
                    metrics.appended.increment(routed.len() as u64);
                    metrics.unfolded.set(self.unfolded.len() as f64);
                    for (event, first) in routed {
                        (self.route)(event, first);
                    }
                    if !new_syncs.is_empty() {
                        (self.notify)(new_syncs);
                    }
                    for (request, outcome) in batch.appends.drain(..).zip(outcomes) {
                        let _ = request.reply.send(Ok(outcome));
                    }
                    for ((_, reply), sync) in batch.revives.drain(..).zip(revived) {
                        let _ = reply.send(sync);
                    }
                    for ((_, reply), outcome) in batch.archive.drain(..).zip(archived) {
                        let _ = reply.send(outcome);
                    }
                    for ((_, reply), levels) in batch.stock.drain(..).zip(stocked) {
                        let _ = reply.send(levels);
                    }
                    failed = false;
                }
                Err(err) => {
                    metrics.errors.increment(1);
                    tracing::error!(error = %err, events = batch.events, "journal commit failed; the senders are told to retry");
                    for request in batch.appends.drain(..) {
                        let _ = request
                            .reply
                            .send(Err(JournalError::CommitFailed(err.to_string())));
                    }
                    // Revive, archive and stock requests are answered by dropping their replies
                    // (their callers get an error). What the next commit can still write stays
                    // in the batch (`Batch::reset_after_failure`).
                    failed = true;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            for reply in batch.flushes.drain(..) {
                let _ = reply.send(());
            }
            if let Some(stop) = batch.stop.take() {
                // Stop comes after the router drained: take whatever is still queued, then exit.
                if failed {
                    batch.reset_after_failure();
                } else {
                    batch.reset();
                }
                while let Ok(cmd) = self.side.try_recv() {
                    batch.side(cmd);
                }
                while let Ok(request) = self.appends.try_recv() {
                    batch.append(request);
                }
                if let Ok(committed) = self.commit(&mut batch, &mut coverage, &mut watermark) {
                    for (request, outcome) in batch.appends.drain(..).zip(committed.outcomes) {
                        let _ = request.reply.send(Ok(outcome));
                    }
                }
                let _ = stop.send(());
                return;
            }
        }
    }

    /// Takes what else is queued, up to the batch limit. Under load — at least
    /// [`LOADED_BATCH`] events queued, the oldest request already waiting when the last commit
    /// ended — a batch first waits `batch_max_wait` for a fuller one: each commit rewrites the
    /// b-tree pages it touches, so half as many commits write ~11–14% fewer bytes per event at
    /// the same CPU (BENCHMARKS.md, "2026-12-01, later"). Under load the wait also spaces
    /// commits (one per commit time plus `batch_max_wait`), whose count otherwise follows how
    /// fast the rest of the engine hands requests over: when new orders stopped reading the
    /// journal the same 100,000 events took 1,833–1,856 commits instead of 1,215–1,750 at 1 ms,
    /// and 978–1,080 at 3 ms ("2026-12-01, evening"). On a slower host (or disk) the rest of
    /// the engine hands over fewer events per commit, so 3 ms left 1,600–1,700 commits and
    /// 3.2 KB per event; 6 ms, the default since, 906–995 commits and 2.6 KB at the same ack
    /// latency ("2026-12-02, evening"). A request that finds the journal idle or lightly loaded
    /// (or a client that waits for each answer before it sends again) is committed at once. A
    /// batch nobody waits on waits for an append ([`SIDE_WAIT`]).
    fn fill(&self, batch: &mut Batch) {
        self.take_queued(batch);
        // One sleep, then whatever queued meanwhile: waiting request by request would wake this
        // thread once per arriving request, which costs more CPU than the fuller batch saves.
        if !self.batch_max_wait.is_zero()
            && batch.events >= LOADED_BATCH
            && batch.events < self.batch_max_events
            && batch
                .appends
                .iter()
                .map(|r| r.enqueued)
                .min()
                .is_some_and(|oldest| oldest < self.last_commit_end)
        {
            std::thread::sleep(self.batch_max_wait);
            self.take_queued(batch);
        }
        // Only what nobody waits on, and no backlog behind it: wait for an append to commit
        // with (see `SIDE_WAIT`), until one comes, something arrives that someone waits on, or
        // the wait is over.
        if batch.nobody_waits() && self.side.is_empty() {
            let until = Instant::now() + self.side_wait;
            while batch.nobody_waits() {
                select! {
                    recv(self.appends) -> request => match request {
                        Ok(request) => batch.append(request),
                        Err(_) => break,
                    },
                    recv(self.side) -> cmd => match cmd {
                        Ok(cmd) => batch.side(cmd),
                        Err(_) => break,
                    },
                    default(until.saturating_duration_since(Instant::now())) => break,
                }
            }
            self.take_queued(batch);
        }
    }

    /// Adds what is queued (up to the batch's limits) to `batch`.
    fn take_queued(&self, batch: &mut Batch) {
        while batch.events < self.batch_max_events {
            match self.appends.try_recv() {
                Ok(request) => batch.append(request),
                Err(_) => break,
            }
        }
        for cmd in self.side.try_iter().take(self.batch_max_events * 4) {
            batch.side(cmd);
        }
    }

    /// Writes the batch in one transaction.
    fn commit(
        &mut self,
        batch: &mut Batch,
        coverage: &mut Coverage,
        watermark: &mut u64,
    ) -> Result<Committed, JournalError> {
        let committed = self.write_batch(batch, coverage, watermark);
        if committed.is_err() {
            // It may remember events the rollback took back.
            self.shared_fields.clear();
        }
        committed
    }

    fn write_batch(
        &mut self,
        batch: &mut Batch,
        coverage: &mut Coverage,
        watermark: &mut u64,
    ) -> Result<Committed, JournalError> {
        let shared_fields = &mut self.shared_fields;
        let tx = self.conn.transaction()?;
        let mut outcomes = Vec::with_capacity(batch.appends.len());
        let mut routed = Vec::with_capacity(batch.events + batch.internal.len());
        let mut last_seq = self.last_seq;
        let mut appended_here: Vec<(String, u64)> = Vec::new();
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO events (order_key, source, source_event_id, received_at, body, fields_from)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT DO NOTHING",
            )?;
            let mut earlier = tx.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM events WHERE order_key = ?1 AND seq < ?2)",
            )?;
            // A courier finds its order through the waybill number an earlier event carried.
            let mut index_waybill = tx.prepare_cached(
                "INSERT INTO waybills (waybill_no, order_key) VALUES (?1, ?2)
                 ON CONFLICT (waybill_no) DO UPDATE SET order_key = excluded.order_key",
            )?;
            let mut order_of_waybill =
                tx.prepare_cached("SELECT order_key FROM waybills WHERE waybill_no = ?1")?;
            let mut park = tx.prepare_cached(
                "INSERT INTO parked_scans (waybill_no, source, source_event_id, received_at, body)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (source, source_event_id) DO NOTHING",
            )?;
            let mut unpark = tx.prepare_cached(
                "DELETE FROM parked_scans WHERE waybill_no = ?1 RETURNING row, body",
            )?;
            let mut count_unmapped = tx.prepare_cached(
                "INSERT INTO unmapped_statuses (source, raw_status, count, first_seen, last_seen, last_order)
                 VALUES (?1, ?2, 1, ?3, ?3, ?4)
                 ON CONFLICT (source, raw_status) DO UPDATE SET count = count + 1,
                    last_seen = max(last_seen, excluded.last_seen), last_order = excluded.last_order",
            )?;
            // Appends one event; scans that waited for a waybill it reports go to `unparked`.
            let mut append = |mut event: OrderEvent,
                              unparked: &mut Vec<OrderEvent>|
             -> Result<AppendOutcome, JournalError> {
                let waybill = event
                    .fields
                    .str("waybill_no")
                    .filter(|waybill| !waybill.is_empty())
                    .map(|waybill| waybill.into_owned());
                if event.order.is_empty() {
                    // A courier scan: its order is the one that reported the waybill, or it
                    // waits (durably) for that report.
                    let waybill = waybill.clone().unwrap_or_default();
                    match order_of_waybill
                        .query_row([&waybill], |r| r.get::<_, String>(0))
                        .optional()?
                    {
                        Some(order) => event.order = order,
                        None => {
                            let body = encode(&event)?;
                            let parked = park.execute(params![
                                waybill,
                                event.source,
                                event.source_event_id,
                                event.received_at,
                                body
                            ])?;
                            return Ok(if parked == 0 {
                                AppendOutcome::Duplicate
                            } else {
                                AppendOutcome::Parked
                            });
                        }
                    }
                }
                // A stock request is answered here, in the transaction that records it: the
                // ledger changes only if the request is new (a request asked again is a
                // duplicate and changes nothing).
                let mut ledger = None;
                if let EventAction::Stock { op, outcome: None } = &event.action {
                    let mut loaded = super::stock::load(&tx, &event.order, op)?;
                    let answer = loaded.apply(&event.order, op);
                    event.action = EventAction::Stock {
                        op: op.clone(),
                        outcome: Some(answer),
                    };
                    ledger = Some(loaded);
                }
                let (body, fields) = super::body::encode(&event)?;
                let holder = fields
                    .as_deref()
                    .and_then(|fields| shared_fields.holder(&event.order, fields));
                let body = match (&fields, holder) {
                    (Some(fields), None) => super::body::whole(body, fields),
                    _ => body,
                };
                // Not `RETURNING seq`: SQLite gathers a RETURNING clause's rows in a temporary
                // b-tree it opens and drops per statement (callgrind: ~4% of the engine's
                // instructions in the lifecycle benchmark for it and the outbox's insert).
                let inserted = insert.execute(params![
                    event.order,
                    event.source,
                    event.source_event_id,
                    event.received_at,
                    body,
                    holder
                ])?;
                if inserted == 0 {
                    return Ok(AppendOutcome::Duplicate);
                }
                let seq = tx.last_insert_rowid();
                // The journal held no earlier event of the order: an actor this event starts
                // has nothing to load. Asked of the journal only for orders `shared_fields`
                // does not hold (one it holds has an earlier event).
                let first = !shared_fields.knows(&event.order)
                    && !earlier.query_row(params![event.order, seq], |r| r.get::<_, bool>(0))?;
                if let (Some(fields), None) = (fields, holder) {
                    shared_fields.remember(&event.order, seq, fields);
                }
                shared_fields.note(&event.order, seq);
                if let Some(ledger) = &ledger {
                    super::stock::store(&tx, &event.order, ledger, event.received_at)?;
                }
                if let Some(waybill) = &waybill {
                    index_waybill.execute(params![waybill, event.order])?;
                    let mut waiting: Vec<(i64, String)> = unpark
                        .query_map([waybill], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<Result<_, _>>()?;
                    waiting.sort_unstable_by_key(|(row, _)| *row);
                    for (row, body) in waiting {
                        let mut scan: OrderEvent =
                            serde_json::from_str(&body).map_err(|e| JournalError::Corrupt {
                                seq: 0,
                                reason: format!("parked scan {row}: {e}"),
                            })?;
                        scan.order = event.order.clone();
                        unparked.push(scan);
                    }
                }
                if event.action == EventAction::Unmapped {
                    count_unmapped.execute(params![
                        event.source,
                        event.raw_status,
                        event.received_at,
                        event.order
                    ])?;
                }
                let seq = seq as u64;
                last_seq = last_seq.max(seq);
                appended_here.push((event.order.clone(), seq));
                routed.push((Arc::new(JournaledEvent { seq, event }), first));
                Ok(AppendOutcome::Appended(seq))
            };
            let mut unparked = Vec::new();
            for request in &mut batch.appends {
                let mut these = Vec::with_capacity(request.events.len());
                for event in request.events.drain(..) {
                    these.push(append(event, &mut unparked)?);
                }
                outcomes.push(these);
            }
            for event in batch.internal.clone() {
                append(event, &mut unparked)?;
            }
            while !unparked.is_empty() {
                for event in std::mem::take(&mut unparked) {
                    append(event, &mut unparked)?;
                }
            }
        }
        let mut refolded: Vec<String> = Vec::new();
        for entry in batch.index.values() {
            let removed = self
                .archived_recently
                .get(&entry.key)
                .is_some_and(|(last_seq, _)| entry.applied_seq <= *last_seq);
            if !removed {
                index::upsert(&tx, entry)?;
            }
            if self
                .unfolded
                .get(&entry.key)
                .is_some_and(|through| entry.applied_seq >= *through)
            {
                tx.prepare_cached("DELETE FROM unfolded WHERE order_key = ?1")?
                    .execute([&entry.key])?;
                refolded.push(entry.key.clone());
            }
        }
        // An order given up on is remembered for recovery with the last of its events nothing
        // has folded (this batch's summary of it, if any, may be from before the event its
        // actor could not fold: it counts only as far as it goes).
        let mut gave_up: Vec<(String, u64)> = Vec::new();
        for order in &batch.unfolded {
            let folded = batch.index.get(order).map_or(0, |e| e.applied_seq);
            let appended = appended_here
                .iter()
                .filter(|(of, seq)| of == order && *seq > folded)
                .map(|(_, seq)| *seq)
                .max();
            let Some(through) = coverage.uncovered_after(order, folded).max(appended) else {
                continue; // folded after all: nothing to wait for
            };
            tx.prepare_cached(
                "INSERT INTO unfolded (order_key, since, through_seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (order_key) DO UPDATE
                    SET through_seq = max(through_seq, excluded.through_seq)",
            )?
            .execute(params![order, now_ms(), through as i64])?;
            gave_up.push((order.clone(), through));
        }
        // Syncs go in the same transaction as the summaries that cover their events.
        let now = now_ms();
        // The rows of the syncs inserted (`None`: one with the id exists). The syncs themselves
        // move to the dispatchers once the commit holds: a sync carries the order's contents,
        // and copying them was 2–3% of the engine's CPU; a failed commit keeps them for the next.
        let mut inserted = Vec::with_capacity(batch.syncs.len());
        for sync in &batch.syncs {
            inserted.push(outbox::insert(&tx, sync, now)?);
        }
        for update in batch.attempts.values() {
            outbox::update(&tx, update)?;
        }
        let mut revived = Vec::with_capacity(batch.revives.len());
        for (row, _) in &batch.revives {
            revived.push(outbox::revive(&tx, *row, now)?);
        }
        for (name, value) in &batch.meta {
            tx.prepare_cached(
                "INSERT INTO meta (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![name, value])?;
        }
        let mut stocked = Vec::with_capacity(batch.stock.len());
        for (settings, _) in &batch.stock {
            stocked.push(super::stock::set(&tx, settings, now)?);
        }
        let mut archived = Vec::with_capacity(batch.archive.len());
        let mut removed_now = Vec::new();
        for (cmd, _) in &batch.archive {
            archived.push(archive_step(&tx, cmd, &mut removed_now)?);
        }
        // Persist the watermark as it stood after the previous commit: it lags one batch,
        // which is conservative (recovery re-folds a little more), and never ahead of the index.
        if *watermark != self.persisted_watermark {
            index::set_watermark(&tx, *watermark)?;
        }
        tx.commit()?;
        if !removed_now.is_empty() {
            let now = Instant::now();
            self.archived_recently
                .retain(|_, (_, at)| now.duration_since(*at) < ARCHIVED_WATCH);
            for (key, last_seq) in &removed_now {
                self.archived_recently.insert(key.clone(), (*last_seq, now));
                self.shared_fields.forget(key);
            }
        }
        self.persisted_watermark = *watermark;
        self.last_seq = last_seq;
        self.progress.appended.store(last_seq, Ordering::Release);
        batch.internal.clear();
        let new_syncs: Vec<PendingSync> = batch
            .syncs
            .drain(..)
            .zip(inserted)
            .filter_map(|(sync, row)| Some(outbox::pending(row?, sync, now)))
            .collect();
        for (order, seq) in &appended_here {
            coverage.appended(order, *seq);
        }
        for entry in batch.index.values() {
            coverage.indexed(&entry.key, entry.applied_seq);
        }
        for order in refolded {
            self.unfolded.remove(&order);
        }
        // The watermark no longer waits for an order given up on: what else is folded moves it
        // on, and recovery folds that order again from the `unfolded` table.
        for (order, through) in gave_up {
            coverage.forget(&order);
            let kept = self.unfolded.entry(order).or_insert(through);
            *kept = (*kept).max(through);
        }
        // Compaction removed these orders with their `unfolded` rows (after any report above).
        for (key, _) in &removed_now {
            self.unfolded.remove(key);
        }
        *watermark = coverage.watermark(last_seq);
        self.progress
            .indexed_below
            .store(*watermark, Ordering::Release);
        Ok(Committed {
            outcomes,
            routed,
            new_syncs,
            revived,
            archived,
            stocked,
        })
    }
}

/// The meta keys of compaction's intent: the archive file's day and its length before the
/// batch being written.
pub(crate) const INTENT_DAY: &str = "archive_intent_day";
pub(crate) const INTENT_LEN: &str = "archive_intent_len";
/// Set to 1 when the intent's file is the day's file of parked courier scans.
pub(crate) const INTENT_PARKED: &str = "archive_intent_parked";

/// The intent of a compaction that has not finished its batch of orders: `(day, length)`.
pub(crate) fn read_intent(conn: &Connection) -> Result<Option<(i64, u64)>, JournalError> {
    let get = |name: &str| -> rusqlite::Result<Option<i64>> {
        conn.prepare_cached("SELECT value FROM meta WHERE name = ?1")?
            .query_row([name], |r| r.get(0))
            .optional()
    };
    if get(INTENT_PARKED)? == Some(1) {
        return Ok(None); // the order archive files are whole
    }
    Ok(match (get(INTENT_DAY)?, get(INTENT_LEN)?) {
        (Some(day), Some(len)) => Some((day, len.max(0) as u64)),
        _ => None,
    })
}

/// `PRAGMA incremental_vacuum`: moves up to `pages` (all, with `None`) free pages to the end of
/// the file and cuts them off (a no-op for a journal created before incremental vacuum, which
/// reuses its free pages instead). It frees one page per step: stepped to the end.
fn incremental_vacuum(tx: &Connection, pages: Option<u32>) -> rusqlite::Result<()> {
    let sql = match pages {
        Some(pages) => format!("PRAGMA incremental_vacuum({pages})"),
        None => "PRAGMA incremental_vacuum".to_owned(),
    };
    let mut vacuum = tx.prepare_cached(&sql)?;
    let mut steps = vacuum.query([])?;
    while steps.next()?.is_some() {}
    Ok(())
}

/// One step of compaction's archive protocol, inside the batch's transaction.
fn archive_step(
    tx: &Connection,
    cmd: &ArchiveCmd,
    removed: &mut Vec<(String, u64)>,
) -> Result<ArchiveOutcome, JournalError> {
    let set_meta = |name: &str, value: i64| {
        tx.prepare_cached(
            "INSERT INTO meta (name, value) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )?
        .execute(params![name, value])
    };
    let clear_intent = || {
        tx.prepare_cached("DELETE FROM meta WHERE name IN (?1, ?2, ?3)")?
            .execute([INTENT_DAY, INTENT_LEN, INTENT_PARKED])
    };
    match cmd {
        ArchiveCmd::Begin { day, len, parked } => {
            set_meta(INTENT_DAY, *day)?;
            set_meta(INTENT_LEN, *len as i64)?;
            set_meta(INTENT_PARKED, i64::from(*parked))?;
        }
        ArchiveCmd::RemoveParked { rows } => {
            // A scan whose order reported its waybill meanwhile was applied, not archived.
            let mut gone = Vec::new();
            for row in rows {
                let parked = tx
                    .prepare_cached("SELECT 1 FROM parked_scans WHERE row = ?1")?
                    .query_row([row], |_| Ok(()))
                    .optional()?;
                if parked.is_none() {
                    gone.push(row.to_string());
                }
            }
            if !gone.is_empty() {
                return Ok(ArchiveOutcome::Changed(gone));
            }
            for row in rows {
                tx.prepare_cached("DELETE FROM parked_scans WHERE row = ?1")?
                    .execute([row])?;
            }
            clear_intent()?;
            return Ok(ArchiveOutcome::Done {
                events: rows.len() as u64,
                syncs: 0,
            });
        }
        ArchiveCmd::Abandon => {
            clear_intent()?;
        }
        ArchiveCmd::Vacuum { pages } => {
            incremental_vacuum(tx, *pages)?;
            let free: i64 = tx.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
            return Ok(ArchiveOutcome::Done {
                events: free.max(0) as u64,
                syncs: 0,
            });
        }
        ArchiveCmd::ForgetArchived { before, limit } => {
            let forgotten = tx
                .prepare_cached(
                    "DELETE FROM archived WHERE order_key IN
                        (SELECT order_key FROM archived WHERE archived_at < ?1 LIMIT ?2)",
                )?
                .execute(params![before, limit])?;
            return Ok(ArchiveOutcome::Done {
                events: forgotten as u64,
                syncs: 0,
            });
        }
        ArchiveCmd::Remove {
            orders,
            archive,
            archived_at,
            valid_len,
        } => {
            // An order that got an event (or a sync went pending again) after it was read would
            // lose it: remove nothing, and let the caller write the batch again without it.
            let mut changed = Vec::new();
            for order in orders {
                let last: Option<i64> = tx
                    .prepare_cached("SELECT max(seq) FROM events WHERE order_key = ?1")?
                    .query_row([&order.key], |r| r.get(0))?;
                let pending: i64 = tx
                    .prepare_cached(&format!(
                        "SELECT count(*) FROM syncs WHERE {} AND status = 'pending'",
                        outbox::OF_ORDER
                    ))?
                    .query_row(outbox::of_order_params(&order.key), |r| r.get(0))?;
                if last != Some(order.last_seq as i64) || pending > 0 {
                    changed.push(order.key.clone());
                }
            }
            if !changed.is_empty() {
                return Ok(ArchiveOutcome::Changed(changed));
            }
            let (mut events, mut syncs) = (0u64, 0u64);
            for order in orders {
                events += tx
                    .prepare_cached("DELETE FROM events WHERE order_key = ?1")?
                    .execute([&order.key])? as u64;
                syncs += tx
                    .prepare_cached(&format!("DELETE FROM syncs WHERE {}", outbox::OF_ORDER))?
                    .execute(outbox::of_order_params(&order.key))? as u64;
                for waybill in &order.waybills {
                    tx.prepare_cached(
                        "DELETE FROM waybills WHERE waybill_no = ?1 AND order_key = ?2",
                    )?
                    .execute([waybill, &order.key])?;
                }
                tx.prepare_cached("DELETE FROM orders WHERE order_key = ?1")?
                    .execute([&order.key])?;
                tx.prepare_cached("DELETE FROM unfolded WHERE order_key = ?1")?
                    .execute([&order.key])?;
                tx.prepare_cached("DELETE FROM approvals WHERE order_key = ?1")?
                    .execute([&order.key])?;
                tx.prepare_cached("DELETE FROM stock_reservations WHERE order_key = ?1")?
                    .execute([&order.key])?;
                tx.prepare_cached(
                    "INSERT INTO archived (order_key, archive, archived_at, last_seq)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (order_key) DO UPDATE SET archive = excluded.archive,
                        archived_at = excluded.archived_at, last_seq = excluded.last_seq",
                )?
                .execute(params![
                    order.key,
                    archive,
                    archived_at,
                    order.last_seq as i64
                ])?;
                removed.push((order.key.clone(), order.last_seq));
            }
            match valid_len {
                Some(len) => {
                    set_meta(INTENT_LEN, *len as i64)?;
                }
                None => {
                    clear_intent()?;
                }
            }
            // The freed pages stay free: new appends reuse them, and compaction hands what is
            // left back to the file system at the end of its pass (`Vacuum`).
            return Ok(ArchiveOutcome::Done { events, syncs });
        }
    }
    Ok(ArchiveOutcome::Done {
        events: 0,
        syncs: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::event;
    use super::super::{Journal, SideCmd};
    use super::*;
    use crate::config::Config;
    use orderhub_actors::order::{Order, OrderPolicy};
    use orderhub_actors::store::{OrderStore, OrderUpdate};

    fn writer_of(journal: &Journal) -> Writer {
        let mut writer = journal.inner.pending_writer.lock().unwrap().take().unwrap();
        // Long enough that an append sent 50 ms into the wait is always inside it.
        writer.side_wait = Duration::from_secs(30);
        writer
    }

    /// What is remembered stays within its bounds: the bytes held follow replacements and
    /// forgetting, `fields` too short or too long are not kept, and past the number of orders or
    /// the bytes it starts again from none.
    #[test]
    fn shared_fields_stay_within_their_bounds() {
        let mut shared = SharedFields::default();
        let fields = |n: usize| "x".repeat(n);
        shared.remember("a", 1, fields(100));
        shared.remember("a", 2, fields(200));
        shared.remember("b", 3, fields(SHARED_FIELDS_MIN - 1));
        shared.remember("c", 4, fields(SHARED_FIELDS_MAX + 1));
        assert_eq!((shared.by_order.len(), shared.bytes), (1, 200));
        assert_eq!(shared.holder("a", &fields(200)), Some(2));
        assert_eq!(shared.holder("a", &fields(100)), None);
        shared.forget("a");
        assert_eq!((shared.by_order.len(), shared.bytes), (0, 0));

        for n in 0..SHARED_FIELDS_ORDERS {
            shared.remember(&n.to_string(), n as i64, fields(SHARED_FIELDS_MIN));
        }
        assert_eq!(shared.by_order.len(), SHARED_FIELDS_ORDERS);
        shared.remember("one more", 0, fields(SHARED_FIELDS_MIN));
        assert_eq!(
            (shared.by_order.len(), shared.bytes),
            (1, SHARED_FIELDS_MIN)
        );

        shared.clear();
        let per = SHARED_FIELDS_MAX;
        for n in 0..SHARED_FIELDS_BYTES / per {
            shared.remember(&n.to_string(), n as i64, fields(per));
        }
        assert_eq!(shared.bytes, SHARED_FIELDS_BYTES);
        shared.remember("over", 0, fields(per));
        assert_eq!(shared.bytes, 0, "over the bytes: starts again");
    }

    /// How long `fill` took.
    fn fill_timed(writer: &Writer, batch: &mut Batch) -> Duration {
        let started = Instant::now();
        writer.fill(batch);
        started.elapsed()
    }

    /// Drives `append` of one event on a thread of its own (the writer is driven by hand: it is
    /// never answered) after `after`.
    fn append_later(journal: &Journal, id: &str, after: Duration) -> std::thread::JoinHandle<()> {
        append_all_later(journal, vec![event(id)], after)
    }

    /// [`append_later`] of `events` in one request.
    fn append_all_later(
        journal: &Journal,
        events: Vec<OrderEvent>,
        after: Duration,
    ) -> std::thread::JoinHandle<()> {
        let journal = journal.clone();
        std::thread::spawn(move || {
            std::thread::sleep(after);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _ = runtime.block_on(async {
                tokio::time::timeout(Duration::from_millis(300), journal.append(events)).await
            });
        })
    }

    /// Waits until `requests` append requests are queued for the writer (at most 10 s).
    fn wait_queued(writer: &Writer, requests: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while writer.appends.len() < requests {
            assert!(
                Instant::now() < deadline,
                "{requests} requests never queued"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A request that finds the journal idle or lightly loaded is committed at once however long
    /// `batch_max_wait`; under load (LOADED_BATCH events queued, in as many requests or in one,
    /// the oldest already waiting when the last commit ended) a batch waits that long to fill,
    /// also when it starts with a summary; as many events queued after the last commit ended do
    /// not wait.
    #[test]
    fn a_batch_waits_to_fill_only_under_load() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::embedded().unwrap().journal;
        let (journal, _) = Journal::open(dir.path(), &config, &OrderPolicy::permissive()).unwrap();
        let mut writer = writer_of(&journal);

        writer.batch_max_wait = Duration::from_secs(30);
        writer.last_commit_end = Instant::now();
        let lone = append_later(&journal, "a", Duration::ZERO);
        let mut batch = Batch::default();
        batch.append(writer.appends.recv().unwrap());
        let waited = fill_timed(&writer, &mut batch);
        assert!(waited < Duration::from_secs(20), "no wait when idle");
        assert_eq!(batch.appends.len(), 1);
        lone.join().unwrap();

        // Light load: fewer than LOADED_BATCH events queued.
        batch.reset();
        let few: Vec<_> = (1..LOADED_BATCH)
            .map(|n| append_later(&journal, &format!("b{n}"), Duration::ZERO))
            .collect();
        wait_queued(&writer, LOADED_BATCH - 1);
        writer.last_commit_end = Instant::now();
        batch.append(writer.appends.recv().unwrap());
        let waited = fill_timed(&writer, &mut batch);
        assert!(waited < Duration::from_secs(20), "no wait under light load");
        assert_eq!(batch.appends.len(), LOADED_BATCH - 1);
        few.into_iter().for_each(|t| t.join().unwrap());

        // As many events, all queued after the last commit ended: not load, no wait.
        batch.reset();
        writer.last_commit_end = Instant::now();
        let fresh: Vec<OrderEvent> = (0..LOADED_BATCH).map(|n| event(&format!("c{n}"))).collect();
        let fresh = append_all_later(&journal, fresh, Duration::ZERO);
        wait_queued(&writer, 1);
        batch.append(writer.appends.recv().unwrap());
        let waited = fill_timed(&writer, &mut batch);
        assert!(
            waited < Duration::from_secs(20),
            "no wait for what came after the commit"
        );
        fresh.join().unwrap();

        // One request of LOADED_BATCH events (a client batching its events) is load.
        batch.reset();
        let many: Vec<OrderEvent> = (0..LOADED_BATCH).map(|n| event(&format!("m{n}"))).collect();
        let many = append_all_later(&journal, many, Duration::ZERO);
        wait_queued(&writer, 1);
        writer.batch_max_wait = Duration::from_secs(1);
        writer.last_commit_end = Instant::now();
        batch.append(writer.appends.recv().unwrap());
        let waited = fill_timed(&writer, &mut batch);
        assert!(
            waited >= Duration::from_secs(1),
            "a batched request waited to fill"
        );
        many.join().unwrap();

        batch.reset();
        writer.batch_max_wait = Duration::from_secs(2);
        let first: Vec<_> = (0..LOADED_BATCH)
            .map(|n| append_later(&journal, &format!("d{n}"), Duration::ZERO))
            .collect();
        wait_queued(&writer, LOADED_BATCH);
        writer.last_commit_end = Instant::now();
        let second = append_later(&journal, "h", Duration::from_millis(50));
        journal.record(OrderUpdate {
            index: OrderIndexEntry::of(&Order::new("shop:1")),
            syncs: Vec::new(),
        });
        batch.side(writer.side.recv().unwrap());
        let waited = fill_timed(&writer, &mut batch);
        assert!(waited >= Duration::from_secs(2), "waited to fill");
        assert_eq!(
            batch.appends.len(),
            LOADED_BATCH + 1,
            "the later request rides in the same commit"
        );
        first.into_iter().for_each(|t| t.join().unwrap());
        second.join().unwrap();
    }

    /// A batch nobody waits on (a summary) waits for the next append and commits with it; one
    /// a caller waits on (a flush) is committed at once; alone, a summary waits no longer
    /// than the side wait.
    #[test]
    fn summaries_ride_with_the_next_append_and_flushes_do_not_wait() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::embedded().unwrap().journal;
        let (journal, _) = Journal::open(dir.path(), &config, &OrderPolicy::permissive()).unwrap();
        let mut writer = writer_of(&journal);
        let summary = || OrderUpdate {
            index: OrderIndexEntry::of(&Order::new("shop:1")),
            syncs: Vec::new(),
        };

        journal.record(summary());
        let late = append_later(&journal, "a", Duration::from_millis(50));
        let mut batch = Batch::default();
        batch.side(writer.side.recv().unwrap());
        let waited = fill_timed(&writer, &mut batch);
        assert!(waited < Duration::from_secs(20), "woken by the append");
        assert_eq!(
            (batch.events, batch.index.len()),
            (1, 1),
            "one commit for both"
        );
        late.join().unwrap();

        // A flush is answered by the next commit at once.
        batch.reset();
        let (flushed, _answer) = tokio::sync::oneshot::channel();
        journal.inner.side.send(SideCmd::Flush(flushed)).unwrap();
        batch.side(writer.side.recv().unwrap());
        let waited = fill_timed(&writer, &mut batch);
        assert!(waited < Duration::from_secs(20), "no wait");
        assert_eq!((batch.events, batch.flushes.len()), (0, 1));

        // A flush that arrives during the wait ends it.
        batch.reset();
        journal.record(summary());
        let (flushed, _answer) = tokio::sync::oneshot::channel();
        let flush = std::thread::spawn({
            let side = journal.inner.side.clone();
            move || {
                std::thread::sleep(Duration::from_millis(50));
                side.send(SideCmd::Flush(flushed)).unwrap();
            }
        });
        batch.side(writer.side.recv().unwrap());
        let waited = fill_timed(&writer, &mut batch);
        assert!(waited < Duration::from_secs(20), "woken by the flush");
        assert_eq!((batch.index.len(), batch.flushes.len()), (1, 1));
        flush.join().unwrap();

        // Alone, a summary is committed after the side wait.
        batch.reset();
        writer.side_wait = Duration::from_millis(50);
        journal.record(summary());
        batch.side(writer.side.recv().unwrap());
        let waited = fill_timed(&writer, &mut batch);
        assert!(waited >= Duration::from_millis(50));
        assert_eq!((batch.events, batch.index.len()), (0, 1));
    }

    /// What a batch holds that someone waits on (or that is an event) never waits.
    #[test]
    fn only_summaries_syncs_attempts_and_cursors_wait_for_an_append() {
        let summary = OrderUpdate {
            index: OrderIndexEntry::of(&Order::new("shop:1")),
            syncs: Vec::new(),
        };
        let mut batch = Batch::default();
        batch.side(SideCmd::Update(summary));
        batch.side(SideCmd::Meta("poller".into(), 7));
        batch.side(SideCmd::Unfolded("shop:2".into()));
        assert!(batch.nobody_waits());
        fn reply<T>() -> tokio::sync::oneshot::Sender<T> {
            tokio::sync::oneshot::channel().0
        }
        let waited_on = [
            SideCmd::Flush(reply()),
            SideCmd::Stop(reply()),
            SideCmd::Revive(1, reply()),
            SideCmd::Archive(super::super::ArchiveCmd::Abandon, reply()),
            SideCmd::SetStock(Vec::new(), reply()),
            SideCmd::Internal(event("sla:x:1")),
        ];
        for cmd in waited_on {
            let mut batch = Batch::default();
            let kind = format!("{:?}", std::mem::discriminant(&cmd));
            batch.side(cmd);
            assert!(!batch.nobody_waits(), "{kind}");
        }
    }
}
