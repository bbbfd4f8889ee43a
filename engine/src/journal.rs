//! The journal: the durable, append-only record of every accepted event, in embedded SQLite
//! (WAL, `synchronous = FULL`). Appends are group-committed by one writer thread fed by a
//! bounded crossbeam channel; a full channel is answered at once with [`JournalError::Full`]
//! (ingest turns it into 429), never by dropping.
//!
//! Beside the events it keeps the order index (`orders`): a write-behind summary of every
//! order, used by list queries and to re-arm SLA timers at start-up, complete below a
//! watermark so recovery only re-folds orders with events past it.

mod body;
pub mod export;
mod index;
mod loader;
mod outbox;
mod reader;
pub mod reconcile;
mod recovery;
pub mod retention;
mod schema;
pub mod stock;
mod writer;

pub use outbox::SyncView;
pub use reader::{OrderFilter, OrderSummary, UnmappedStatus};
pub use recovery::Recovered;

use crate::config::JournalConfig;
use crossbeam_channel::{Sender, TrySendError, bounded, unbounded};
use orderhub_actors::dispatch::{PendingSync, SyncStatus, SyncUpdate};
use orderhub_actors::order::{
    Approval, ApprovalState, JournaledEvent, Millis, OrderEvent, OrderPolicy, OrderState,
    SharedEvent, SlaRule,
};
use orderhub_actors::store::{
    LoadReply, OrderStore, OrderUpdate, StoreError, StoredOrder, SyncStore,
};
use reader::ReadPool;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::oneshot;

/// What the journal could not do.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The writer's queue is full: the sender should retry later.
    #[error("journal queue is full")]
    Full,
    /// The journal is shutting down or its writer stopped.
    #[error("journal is closed")]
    Closed,
    /// A commit failed; nothing of the batch was stored.
    #[error("journal commit failed: {0}")]
    CommitFailed(String),
    /// A stored event could not be decoded.
    #[error("journal entry {seq} is unreadable: {reason}")]
    Corrupt {
        /// Sequence number (0 when not known).
        seq: u64,
        /// What was wrong.
        reason: String,
    },
    /// SQLite reported an error.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Another process uses the data directory.
    #[error(
        "data directory {path} is in use by another orderhub process ({holder}); stop it first, or give this one its own --data-dir"
    )]
    Locked {
        /// The directory.
        path: String,
        /// What the lock file says of its holder.
        holder: String,
    },
    /// The data directory could not be prepared.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

impl JournalError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            JournalError::Full => "full",
            JournalError::Closed => "closed",
            JournalError::CommitFailed(_) => "commit_failed",
            JournalError::Corrupt { .. } => "corrupt",
            JournalError::Sqlite(_) => "sqlite",
            JournalError::DataDir { .. } => "data_dir",
            JournalError::Locked { .. } => "locked",
        }
    }
}

/// The data directory's lock: one process at a time uses a journal (the engine, or an offline
/// `orderhub compact`). Held until dropped; the kernel releases it when the process dies.
pub struct DataDirLock {
    _file: std::fs::File,
}

impl DataDirLock {
    /// Takes the lock of `dir` (created if needed), or says who holds it.
    pub fn acquire(dir: &Path, holder: &str) -> Result<DataDirLock, JournalError> {
        use std::io::{Read, Seek, Write};
        let io = |source| JournalError::DataDir {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("LOCK"))
            .map_err(io)?;
        if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            let mut held_by = String::new();
            let _ = file.read_to_string(&mut held_by);
            return Err(JournalError::Locked {
                path: dir.display().to_string(),
                holder: held_by.trim().to_owned(),
            });
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        write!(file, "{holder}, pid {}", std::process::id()).map_err(io)?;
        Ok(DataDirLock { _file: file })
    }
}

/// The result of appending one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored under this sequence number.
    Appended(u64),
    /// Already stored (same source and source event id): nothing changed.
    Duplicate,
    /// A courier scan for a waybill no order has reported yet: stored durably and applied to
    /// the order that later reports the waybill.
    Parked,
}

pub(crate) struct AppendRequest {
    events: Vec<OrderEvent>,
    /// A meta value committed with the events (a cluster partition's stream position).
    position: Option<(String, i64)>,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Vec<AppendOutcome>, JournalError>>,
}

pub(crate) enum SideCmd {
    Internal(OrderEvent),
    Update(OrderUpdate),
    Attempt(SyncUpdate),
    Revive(i64, oneshot::Sender<Option<PendingSync>>),
    /// Sets a named value of the meta table (a poller's cursor).
    Meta(String, i64),
    Flush(oneshot::Sender<()>),
    Stop(oneshot::Sender<()>),
    /// A step of compaction (see `retention`), committed with the next batch.
    Archive(ArchiveCmd, oneshot::Sender<ArchiveOutcome>),
    /// Sets stock records (an operator's `PUT /v1/stock…`), answering their counts after.
    SetStock(Vec<stock::StockSetting>, oneshot::Sender<Vec<stock::Level>>),
    /// An order whose actor was given up on (see `OrderStore::unfolded`).
    Unfolded(String),
}

/// An order compaction removes: its key, the last event sequence the archive holds, and the
/// waybill numbers its events carried (their index rows go with it).
#[derive(Clone, Debug)]
pub(crate) struct Removal {
    pub(crate) key: String,
    pub(crate) last_seq: u64,
    pub(crate) waybills: Vec<String>,
}

/// The journal side of compaction's archive protocol: the intent is committed before the
/// archive file is written, and cleared in the transaction that removes what was archived, so
/// a crash in between is undone (the file cut back to `len`) rather than archived twice.
#[derive(Debug)]
pub(crate) enum ArchiveCmd {
    /// A batch is about to be appended to the archive file of `day` (`YYYYMMDD`; of parked
    /// courier scans when `parked`), now `len` bytes long.
    Begin { day: i64, len: u64, parked: bool },
    /// Removes parked courier scans `rows` (archived) unless one of them was applied to its
    /// order meanwhile; clears the intent.
    RemoveParked { rows: Vec<i64> },
    /// Removes `orders` (events, syncs, waybills, index row) and records where each went,
    /// unless one of them changed since it was read. The intent's length moves to
    /// `valid_len` (the end of their gzip member: more of the batch follows), or, with `None`,
    /// the intent is cleared.
    Remove {
        orders: Vec<Removal>,
        archive: Option<String>,
        archived_at: Millis,
        valid_len: Option<u64>,
    },
    /// Clears the intent (the file was cut back).
    Abandon,
    /// Hands up to `pages` free pages (all, with `None`) back to the file system;
    /// `Done.events` says how many free pages are left.
    Vacuum { pages: Option<u32> },
    /// Drops up to `limit` records of orders archived before `before` (their `410` becomes a
    /// `404`); `Done.events` says how many went.
    ForgetArchived { before: Millis, limit: i64 },
}

/// What an [`ArchiveCmd`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ArchiveOutcome {
    /// Committed; for `Remove`, the events and syncs removed.
    Done { events: u64, syncs: u64 },
    /// Nothing removed: these orders got an event or a pending sync since they were read.
    Changed(Vec<String>),
}

/// The journal handle. Cheap to clone.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    appends: Sender<AppendRequest>,
    side: Sender<SideCmd>,
    progress: Arc<writer::Progress>,
    reader: Arc<ReadPool>,
    loaders: loader::Loaders,
    pending_writer: Mutex<Option<writer::Writer>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir` and recovers the order index. The writer
    /// starts with [`Journal::start`], once the router that receives its events exists.
    pub fn open(
        dir: &Path,
        config: &JournalConfig,
        policy: &OrderPolicy,
    ) -> Result<(Journal, Recovered), JournalError> {
        std::fs::create_dir_all(dir).map_err(|source| JournalError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        let mut conn = schema::open_writer(dir)?;
        let recovered = recovery::recover(&mut conn, policy)?;
        let (appends, append_rx) = bounded(config.queue_capacity);
        let (side, side_rx) = unbounded();
        let watermark = recovered.last_seq + 1;
        // Recovery folded every journaled event into the index.
        let progress = Arc::new(writer::Progress {
            appended: recovered.last_seq.into(),
            indexed_below: watermark.into(),
        });
        let writer = writer::Writer {
            conn,
            appends: append_rx,
            side: side_rx,
            route: Box::new(|_, _| {}),
            notify: Box::new(|_| {}),
            batch_max_events: config.batch_max_events,
            batch_max_wait: config.batch_max_wait.0,
            side_wait: writer::SIDE_WAIT,
            last_commit_end: std::time::Instant::now(),
            last_seq: recovered.last_seq,
            persisted_watermark: watermark,
            progress: progress.clone(),
            archived_recently: HashMap::new(),
            shared_fields: writer::SharedFields::default(),
            unfolded: recovered.unfolded.iter().cloned().collect(),
        };
        let reader = Arc::new(ReadPool::new(dir.to_path_buf()));
        let loaders = loader::Loaders::start(reader.clone(), loader::LOADERS)?;
        let journal = Journal {
            inner: Arc::new(Inner {
                appends,
                side,
                progress,
                reader,
                loaders,
                pending_writer: Mutex::new(Some(writer)),
                thread: Mutex::new(None),
            }),
        };
        Ok((journal, recovered))
    }

    /// Starts the writer thread; every committed event is passed to `route` in journal order
    /// (with `true` when the journal held no earlier event of its order), and every newly
    /// committed sync to `notify`.
    pub fn start(
        &self,
        route: impl Fn(SharedEvent, bool) + Send + 'static,
        notify: impl Fn(Vec<PendingSync>) + Send + 'static,
    ) -> Result<(), JournalError> {
        let mut writer = self
            .inner
            .pending_writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or(JournalError::Closed)?;
        writer.route = Box::new(route);
        writer.notify = Box::new(notify);
        let thread = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer.run())
            .map_err(|source| JournalError::DataDir {
                path: "journal-writer thread".into(),
                source,
            })?;
        *self.inner.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
        Ok(())
    }

    /// Durably appends `events` (one transaction with whatever else is queued). Returns when
    /// they are fsync'd, one outcome per event; [`JournalError::Full`] at once when the queue
    /// is full.
    pub async fn append(
        &self,
        events: Vec<OrderEvent>,
    ) -> Result<Vec<AppendOutcome>, JournalError> {
        self.submit(events, None).await
    }

    /// Like [`Journal::append`], and sets meta value `name` to `value` in the same commit: a
    /// cluster partition's applier records how far into the stream its events are.
    pub async fn append_at(
        &self,
        events: Vec<OrderEvent>,
        name: &str,
        value: i64,
    ) -> Result<Vec<AppendOutcome>, JournalError> {
        self.submit(events, Some((name.to_owned(), value))).await
    }

    async fn submit(
        &self,
        events: Vec<OrderEvent>,
        position: Option<(String, i64)>,
    ) -> Result<Vec<AppendOutcome>, JournalError> {
        let (reply, answer) = oneshot::channel();
        let request = AppendRequest {
            events,
            position,
            enqueued: Instant::now(),
            reply,
        };
        match self.inner.appends.try_send(request) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(JournalError::Full),
            Err(TrySendError::Disconnected(_)) => return Err(JournalError::Closed),
        }
        answer.await.map_err(|_| JournalError::Closed)?
    }

    /// Waits until everything queued before this call was committed, or its commit failed
    /// (appends are then told so; order summaries, syncs and sync attempts stay with the writer
    /// for its next commit).
    pub async fn flush(&self) {
        let (reply, done) = oneshot::channel();
        if self.inner.side.send(SideCmd::Flush(reply)).is_ok() {
            let _ = done.await;
        }
    }

    /// Commits what is queued and stops the writer thread.
    pub async fn close(&self) {
        let journal = self.clone();
        let _ = tokio::task::spawn_blocking(move || journal.close_blocking()).await;
    }

    /// [`Journal::close`] from a thread outside the async runtime.
    pub fn close_blocking(&self) {
        let (reply, done) = oneshot::channel();
        if self.inner.side.send(SideCmd::Stop(reply)).is_ok() {
            let _ = done.blocking_recv();
        }
        let thread = self
            .inner
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }

    /// Every event of `order`, in journal order.
    pub fn events_of(&self, order: &str) -> Result<Vec<JournaledEvent>, JournalError> {
        self.inner.reader.events_of(order)
    }

    /// Whether anything about `order` was journaled.
    pub fn knows(&self, order: &str) -> Result<bool, JournalError> {
        self.inner.reader.known(order)
    }

    /// The last journal sequence committed.
    pub fn last_seq(&self) -> u64 {
        self.inner
            .progress
            .appended
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Every event below this journal sequence is folded into the order index that lists and
    /// counts read (order actors fold them a commit or so after they are journaled).
    pub fn indexed_below(&self) -> u64 {
        self.inner
            .progress
            .indexed_below
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Orders from the index matching `filter`, oldest state entry first.
    pub fn list(&self, filter: &OrderFilter) -> Result<Vec<OrderSummary>, JournalError> {
        Ok(self.inner.reader.list(filter, None)?.0)
    }

    /// Like [`Journal::list`], of the orders `keep` accepts (a cluster node's own, among those
    /// of partitions it gave away): up to `filter.limit` of them, read past the others a page
    /// at a time for a bounded number of pages. The bool says whether the list is whole
    /// rather than cut at that bound.
    pub fn list_kept(
        &self,
        filter: &OrderFilter,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<(Vec<OrderSummary>, bool), JournalError> {
        self.inner.reader.list(filter, Some(keep))
    }

    /// Approvals in `state` (any when `None`), of `order` when given, soonest deadline first.
    pub fn approvals(
        &self,
        state: Option<ApprovalState>,
        order: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Approval>, JournalError> {
        self.inner.reader.approvals(state, order, limit)
    }

    /// The order approval `id` belongs to.
    pub fn order_of_approval(&self, id: &str) -> Result<Option<String>, JournalError> {
        self.inner.reader.order_of_approval(id)
    }

    /// Sets stock records `(sku, warehouse, available)` — what can still be sold — on the
    /// writer's thread (serialised with reservations); answers each record's counts after.
    pub async fn set_stock(
        &self,
        settings: Vec<stock::StockSetting>,
    ) -> Result<Vec<stock::Level>, JournalError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .side
            .send(SideCmd::SetStock(settings, reply))
            .map_err(|_| JournalError::Closed)?;
        answer.await.map_err(|_| JournalError::Closed)
    }

    /// Stock records of `sku` (every SKU's when `None`), at most `limit`.
    pub fn stock_records(
        &self,
        sku: Option<&str>,
        limit: usize,
    ) -> Result<Vec<stock::StockRecord>, JournalError> {
        self.inner
            .reader
            .with(|conn| Ok(stock::records(conn, sku, limit)?))
    }

    /// The reconciliation of `day` (see `reconcile`).
    pub fn reconcile(
        &self,
        policy: &OrderPolicy,
        day: reconcile::Day,
    ) -> Result<reconcile::Report, JournalError> {
        self.inner
            .reader
            .with(|conn| reconcile::reconcile(conn, policy, day))
    }

    /// Orders first seen since `since`, per channel (the order key's prefix) and hour
    /// (`(channel, hour start ms, count)`), for the ops board.
    pub fn new_orders_by_channel(
        &self,
        since: Millis,
    ) -> Result<Vec<(String, Millis, u64)>, JournalError> {
        self.inner.reader.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT CASE WHEN instr(order_key, ':') > 0
                            THEN substr(order_key, 1, instr(order_key, ':') - 1) ELSE order_key END,
                        (first_seen / 3600000) * 3600000, COUNT(*)
                 FROM orders WHERE first_seen >= ?1 GROUP BY 1, 2 ORDER BY 1, 2",
            )?;
            let rows = stmt.query_map([since], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Orders with an open disagreement of `kind`.
    pub fn disagreeing(&self, kind: &str) -> Result<u64, JournalError> {
        self.inner.reader.with(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM orders WHERE disagreement IS NOT NULL
                     AND EXISTS (SELECT 1 FROM json_each(disagreement) WHERE value = ?1)",
                )?
                .query_row([kind], |r| r.get::<_, i64>(0))? as u64)
        })
    }

    /// How many approvals are in each state.
    pub fn approvals_by_state(&self) -> Result<Vec<(String, u64)>, JournalError> {
        self.inner.reader.approvals_by_state()
    }

    /// Per SLA rule, how many orders are past its deadline at `now` (see the index).
    pub fn overdue(&self, rules: &[SlaRule], now: Millis) -> Result<Vec<u64>, JournalError> {
        self.inner.reader.overdue(rules, now, None)
    }

    /// Like [`Journal::overdue`], of the orders `keep` accepts (a cluster node's own).
    pub fn overdue_kept(
        &self,
        rules: &[SlaRule],
        now: Millis,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<u64>, JournalError> {
        self.inner.reader.overdue(rules, now, Some(keep))
    }

    /// How many of the orders `keep` accepts are in each state, every state listed (zero
    /// included): the orders-by-state gauges of a cluster node whose partitions changed.
    pub fn count_by_state(
        &self,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<(OrderState, u64)>, JournalError> {
        self.inner.reader.count_by_state(keep)
    }

    /// The order a waybill number belongs to: the one whose event last carried it in
    /// `fields.waybill_no`.
    pub fn order_of_waybill(&self, waybill: &str) -> Result<Option<String>, JournalError> {
        self.inner.reader.order_of_waybill(waybill)
    }

    /// Every armed SLA timer in the index, as `(order, rule, deadline)` (a cluster node re-arms
    /// those of a partition it takes back).
    pub fn armed_timers(&self) -> Result<Vec<(String, String, Millis)>, JournalError> {
        self.inner.reader.with(index::armed)
    }

    /// Every raw status a source sent that its mapping did not know, most recent first.
    pub fn unmapped_statuses(&self) -> Result<Vec<UnmappedStatus>, JournalError> {
        self.inner.reader.unmapped_statuses()
    }

    /// Courier scans waiting for an order to report their waybill: `(source, count, oldest
    /// received_at)`.
    pub fn parked_scans(&self) -> Result<Vec<(String, u64, Millis)>, JournalError> {
        self.inner.reader.parked_scans()
    }

    /// The journal's data directory.
    pub fn dir(&self) -> &Path {
        self.inner.reader.dir()
    }

    /// In one read transaction: the meta values `names`, then every event in journal order as
    /// (order key, body JSON) — what a cluster partition's snapshot is made of. Blocking.
    pub fn scan_events(
        &self,
        names: &[String],
        visit: &mut dyn FnMut(&str, &str) -> Result<(), JournalError>,
    ) -> Result<Vec<Option<i64>>, JournalError> {
        self.inner.reader.scan_events(names, visit)
    }

    /// A named value of the meta table (a poller's cursor), if set.
    pub fn meta(&self, name: &str) -> Result<Option<i64>, JournalError> {
        self.inner.reader.meta(name)
    }

    /// Sets a named value of the meta table; written with the writer's next commit. Losing
    /// it in a crash only makes the next poll re-read a window (deduplicated).
    pub fn set_meta(&self, name: &str, value: i64) -> Result<(), JournalError> {
        self.inner
            .side
            .send(SideCmd::Meta(name.to_owned(), value))
            .map_err(|_| JournalError::Closed)
    }

    /// The canonical state of `order` in the index (written behind, so it may lag a little).
    pub fn indexed_state(&self, order: &str) -> Result<Option<OrderState>, JournalError> {
        self.inner.reader.indexed_state(order)
    }

    /// Every sync of `order`, oldest first.
    pub fn syncs_of(&self, order: &str) -> Result<Vec<SyncView>, JournalError> {
        self.inner.reader.with(|conn| outbox::of_order(conn, order))
    }

    /// Dead-lettered syncs, oldest first.
    pub fn dead_letters(
        &self,
        sink: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SyncView>, JournalError> {
        self.inner
            .reader
            .with(|conn| outbox::dead_letters(conn, sink, limit))
    }

    /// Number of syncs in `status`.
    pub fn count_syncs(&self, status: SyncStatus) -> Result<u64, JournalError> {
        self.inner
            .reader
            .with(|conn| outbox::count_by_status(conn, status))
    }

    /// Makes dead-lettered sync `row` pending again (committed before it returns); `None` if
    /// `row` is not a dead letter.
    pub async fn revive(&self, row: i64) -> Result<Option<PendingSync>, JournalError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .side
            .send(SideCmd::Revive(row, reply))
            .map_err(|_| JournalError::Closed)?;
        answer.await.map_err(|_| JournalError::Closed)
    }

    /// Runs one step of compaction's archive protocol; blocks until it is committed (call
    /// from a blocking thread).
    pub(crate) fn archive_step(&self, cmd: ArchiveCmd) -> Result<ArchiveOutcome, JournalError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .side
            .send(SideCmd::Archive(cmd, reply))
            .map_err(|_| JournalError::Closed)?;
        answer.blocking_recv().map_err(|_| JournalError::Closed)
    }

    /// Append requests waiting for the writer.
    pub fn queue_depth(&self) -> usize {
        self.inner.appends.len()
    }
}

fn store_error(order: &str, err: JournalError) -> StoreError {
    match err {
        JournalError::Corrupt { seq, reason } => StoreError::Corrupt {
            order: order.to_owned(),
            seq,
            reason,
        },
        other => StoreError::Unavailable(other.to_string()),
    }
}

impl OrderStore for Journal {
    fn load(&self, order: &str) -> Result<StoredOrder, StoreError> {
        loader::load(&self.inner.reader, order)
    }

    fn load_later(&self, order: &str, reply: LoadReply) {
        let request = loader::LoadRequest {
            order: order.to_owned(),
            reply,
        };
        if let Err(request) = self.inner.loaders.submit(request) {
            // No loader thread left (each survives a panic, so this is not expected): read here.
            let _ = request.reply.send(self.load(&request.order));
        }
    }

    fn append_internal(&self, event: OrderEvent) -> Result<(), StoreError> {
        self.inner
            .side
            .send(SideCmd::Internal(event))
            .map_err(|_| StoreError::Unavailable("journal is closed".into()))
    }

    fn record(&self, update: OrderUpdate) {
        // After close there is no writer; the update is rebuilt from the journal at start-up.
        let _ = self.inner.side.send(SideCmd::Update(update));
    }

    fn unfolded(&self, order: &str) {
        // After close there is no writer; recovery refolds the order anyway (its events are
        // past the watermark the writer last persisted).
        let _ = self.inner.side.send(SideCmd::Unfolded(order.to_owned()));
    }
}

impl SyncStore for Journal {
    fn pending_page(
        &self,
        sink: &str,
        after_row: i64,
        limit: usize,
    ) -> Result<Vec<PendingSync>, StoreError> {
        self.inner
            .reader
            .with(|conn| outbox::pending_page(conn, sink, after_row, limit))
            .map_err(|e| store_error(sink, e))
    }

    fn pending_count(&self, sink: &str) -> Result<u64, StoreError> {
        self.inner
            .reader
            .with(|conn| outbox::pending_count(conn, sink))
            .map_err(|e| store_error(sink, e))
    }

    fn record_attempt(&self, update: SyncUpdate) {
        // Lost only if the writer is gone; the sync is then sent again at the next start.
        let _ = self.inner.side.send(SideCmd::Attempt(update));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use orderhub_actors::order::EventAction;

    /// An informational report `id` of order `shop:1` (for the writer's tests too).
    pub(super) fn event(id: &str) -> OrderEvent {
        OrderEvent {
            order: "shop:1".into(),
            source: "wms".into(),
            source_event_id: id.into(),
            supersedes: None,
            log_seq: None,
            raw_status: "none".into(),
            action: EventAction::Inform,
            occurred_at: 1,
            received_at: 1,
            fields: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_at_once_never_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::embedded().unwrap().journal;
        config.queue_capacity = 1;
        let (journal, _) = Journal::open(dir.path(), &config, &OrderPolicy::permissive()).unwrap();
        // The writer is not started yet: the first request waits in the queue…
        let first = tokio::spawn({
            let journal = journal.clone();
            async move { journal.append(vec![event("a")]).await }
        });
        while journal.queue_depth() == 0 {
            tokio::task::yield_now().await;
        }
        // …so the second finds it full and is told so at once.
        assert!(matches!(
            journal.append(vec![event("b")]).await,
            Err(JournalError::Full)
        ));
        // Once the writer runs, the queued request is committed, not lost.
        journal.start(|_, _| {}, |_| {}).unwrap();
        let outcome = first.await.unwrap().unwrap();
        assert_eq!(outcome, vec![AppendOutcome::Appended(1)]);
        assert_eq!(journal.events_of("shop:1").unwrap().len(), 1);
        journal.close().await;
    }

    /// Actors starting on cold orders are answered by the loader threads: the same events and
    /// summary position a load on the caller's thread reads, more loads at once than there are
    /// loaders, and an order the journal does not know is an empty one.
    #[tokio::test]
    async fn loads_for_starting_actors_answer_from_the_loader_threads() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::embedded().unwrap().journal;
        let (journal, _) = Journal::open(dir.path(), &config, &OrderPolicy::permissive()).unwrap();
        journal.start(|_, _| {}, |_| {}).unwrap();
        journal
            .append(vec![event("a"), event("b"), event("c")])
            .await
            .unwrap();
        let answers: Vec<_> = (0..3 * loader::LOADERS)
            .map(|n| {
                let (reply, answer) = oneshot::channel();
                let order = if n % 3 == 2 { "shop:none" } else { "shop:1" };
                journal.load_later(order, reply);
                (order, answer)
            })
            .collect();
        for (order, answer) in answers {
            let loaded = answer.await.expect("answered").unwrap();
            assert_eq!(loaded, journal.load(order).unwrap());
            let expected = if order == "shop:1" { 3 } else { 0 };
            assert_eq!(loaded.events.len(), expected, "{order}");
        }
        journal.close().await;
    }

    /// A journal in a new directory, its writer started (routing nowhere).
    fn started() -> (tempfile::TempDir, Journal) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::embedded().unwrap().journal;
        let (journal, _) = Journal::open(dir.path(), &config, &OrderPolicy::permissive()).unwrap();
        journal.start(|_, _| {}, |_| {}).unwrap();
        (dir, journal)
    }

    /// Every row `sql` selects, each read by `row`.
    fn rows_of<T>(
        journal: &Journal,
        sql: &str,
        row: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Vec<T> {
        journal
            .inner
            .reader
            .with(|conn| {
                let mut stmt = conn.prepare(sql)?;
                let rows = stmt.query_map([], row)?.collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .unwrap()
    }

    /// The orders in the `unfolded` table.
    fn unfolded_orders(journal: &Journal) -> Vec<String> {
        rows_of(
            journal,
            "SELECT order_key FROM unfolded ORDER BY order_key",
            |r| r.get(0),
        )
    }

    /// An order's summary, folded from its journaled events up to `through`.
    fn summary_of(journal: &Journal, order: &str, through: u64) -> OrderUpdate {
        let mut events = journal.events_of(order).unwrap();
        events.retain(|e| e.seq <= through);
        let (folded, _) = orderhub_actors::order::Order::replay_collecting(
            order,
            &events,
            &OrderPolicy::permissive(),
            0,
        );
        OrderUpdate {
            index: orderhub_actors::store::OrderIndexEntry::of(&folded),
            syncs: Vec::new(),
        }
    }

    /// An order whose actor was given up on no longer holds the index watermark back (lists in
    /// cluster mode and start-up recovery would otherwise wait for it forever); it is
    /// remembered for recovery until a summary folds it as far as it had been journaled.
    #[tokio::test]
    async fn an_order_given_up_on_stops_holding_the_watermark_back() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::embedded().unwrap().journal;
        let (journal, _) = Journal::open(dir.path(), &config, &OrderPolicy::permissive()).unwrap();
        journal.start(|_, _| {}, |_| {}).unwrap();
        let of = |order: &str, id: &str| OrderEvent {
            order: order.into(),
            ..event(id)
        };
        journal
            .append(vec![of("shop:1", "a"), of("shop:2", "b")])
            .await
            .unwrap();
        journal.record(summary_of(&journal, "shop:2", 2));
        journal.append(vec![of("shop:1", "c")]).await.unwrap();
        journal.flush().await;
        assert_eq!(journal.indexed_below(), 1, "shop:1 is not folded yet");

        journal.unfolded("shop:1");
        journal.flush().await;
        assert_eq!(journal.indexed_below(), 4);
        assert_eq!(unfolded_orders(&journal), ["shop:1"]);

        // A summary from before the event its actor could not fold does not make it folded…
        journal.record(summary_of(&journal, "shop:1", 1));
        journal.flush().await;
        assert_eq!(unfolded_orders(&journal), ["shop:1"]);
        // …one of a fresh actor that folds all of it does. Its next event waits for that fold.
        journal.append(vec![of("shop:1", "d")]).await.unwrap();
        journal.flush().await;
        assert_eq!(
            journal.indexed_below(),
            4,
            "the new event waits for its fold"
        );
        journal.record(summary_of(&journal, "shop:1", 4));
        journal.flush().await;
        assert_eq!(journal.indexed_below(), 5);
        assert!(unfolded_orders(&journal).is_empty());
        journal.close().await;
    }

    /// A commit that fails keeps what the next one can still write: an order summary whose
    /// write failed is written by a later commit (the watermark then moves on), on its own if
    /// nothing else comes.
    #[tokio::test]
    async fn a_failed_commit_keeps_its_summaries_for_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::embedded().unwrap().journal;
        let (journal, _) = Journal::open(dir.path(), &config, &OrderPolicy::permissive()).unwrap();
        journal.start(|_, _| {}, |_| {}).unwrap();
        journal.append(vec![event("a")]).await.unwrap();
        journal.flush().await;
        assert_eq!(journal.indexed_below(), 1, "shop:1 is not folded yet");
        let summaries = |journal: &Journal| -> i64 {
            journal
                .inner
                .reader
                .with(|conn| Ok(conn.query_row("SELECT count(*) FROM orders", [], |r| r.get(0))?))
                .unwrap()
        };

        let other = rusqlite::Connection::open(dir.path().join(schema::DB_FILE)).unwrap();
        other
            .execute_batch(
                "CREATE TRIGGER boom BEFORE INSERT ON orders
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
            )
            .unwrap();
        journal.record(summary_of(&journal, "shop:1", 1));
        journal.flush().await; // answered once the commit that carried the summary failed
        assert_eq!(summaries(&journal), 0);
        assert_eq!(journal.indexed_below(), 1);

        // Nothing else arrives: the writer commits the kept summary on its own once it can.
        other.execute_batch("DROP TRIGGER boom;").unwrap();
        for _ in 0..200 {
            if journal.indexed_below() == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(journal.indexed_below(), 2);
        assert_eq!(summaries(&journal), 1);
        journal.close().await;
    }

    /// An event of `order` with `fields` (a JSON object).
    fn with_fields(order: &str, id: &str, fields: serde_json::Value) -> OrderEvent {
        OrderEvent {
            order: order.into(),
            fields: fields.as_object().unwrap().into(),
            ..event(id)
        }
    }

    /// Each stored event's `fields_from` and whether its body has `fields`, in journal order.
    fn stored_bodies(journal: &Journal) -> Vec<(Option<i64>, bool)> {
        rows_of(
            journal,
            "SELECT fields_from, json_type(body, '$.fields') IS NOT NULL FROM events ORDER BY seq",
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// Every body the cluster snapshot scan hands on, in journal order.
    fn scanned_bodies(journal: &Journal) -> Vec<String> {
        let mut scanned = Vec::new();
        journal
            .scan_events(&[], &mut |_, body| {
                scanned.push(body.to_owned());
                Ok(())
            })
            .unwrap();
        scanned
    }

    /// Every body as the `events_whole` view shows it, in journal order.
    fn viewed_bodies(journal: &Journal) -> Vec<String> {
        rows_of(journal, "SELECT body FROM events_whole ORDER BY seq", |r| {
            r.get(0)
        })
    }

    /// An event whose `fields` repeat those of its order's last event stored whole keeps a
    /// reference instead of a copy; every reader gets them back whole (an order's load, the
    /// `events_whole` view, the scan a cluster snapshot takes).
    #[tokio::test]
    async fn an_orders_repeated_fields_are_stored_once_and_read_back_whole() {
        let (_dir, journal) = started();
        let items = serde_json::json!({"items": [{"sku": "SKU-1", "name": "面霜 50ml", "qty": 1, "price": 129.0}], "address": {"city": "Hangzhou"}});
        let other = serde_json::json!({"items": [{"sku": "SKU-2", "name": "Cleansing foam", "qty": 3, "price": 59.9}], "address": {"city": "Hangzhou"}});
        let small = serde_json::json!({"waybill_no": "SF1"});
        let appended = [
            vec![
                with_fields("shop:1", "a", items.clone()), // 1 whole
                with_fields("shop:1", "b", items.clone()), // 2 shares 1
                with_fields("shop:2", "c", items.clone()), // 3 whole: another order
            ],
            vec![
                with_fields("shop:1", "d", items.clone()), // 4 shares 1, a commit later
                with_fields("shop:1", "e", other.clone()), // 5 whole: other fields
                with_fields("shop:1", "f", serde_json::json!({})), // 6 no fields
                with_fields("shop:1", "g", other.clone()), // 7 shares 5
                with_fields("shop:1", "h", items.clone()), // 8 whole again
                with_fields("shop:1", "i", small.clone()), // 9 whole: too small to share
                with_fields("shop:1", "j", small.clone()), // 10 whole
                with_fields("shop:1", "k", items.clone()), // 11 shares 8
            ],
        ];
        for events in &appended {
            journal.append(events.clone()).await.unwrap();
        }
        assert_eq!(
            stored_bodies(&journal),
            [
                (None, true),
                (Some(1), false),
                (None, true),
                (Some(1), false),
                (None, true),
                (None, false),
                (Some(5), false),
                (None, true),
                (None, true),
                (None, true),
                (Some(8), false),
            ]
        );
        let expected: Vec<OrderEvent> = appended.concat();
        let mut loaded: Vec<OrderEvent> = journal
            .events_of("shop:1")
            .unwrap()
            .into_iter()
            .chain(journal.events_of("shop:2").unwrap())
            .map(|e| e.event)
            .collect();
        let mut wanted = expected.clone();
        wanted.sort_by_key(|e| e.order.clone());
        loaded.sort_by_key(|e| e.order.clone());
        assert_eq!(loaded, wanted);
        assert_eq!(journal.load("shop:1").unwrap().events.len(), 10);

        // The view shows every body as it would be stored whole; the scan reads it.
        let viewed = viewed_bodies(&journal);
        let scanned = scanned_bodies(&journal);
        assert_eq!(scanned, viewed);
        for (body, event) in viewed.iter().zip(&expected) {
            assert_eq!(&serde_json::from_str::<OrderEvent>(body).unwrap(), event);
        }

        // A sync pointing at an event that shares its fields goes out with them.
        let payload = serde_json::json!({"order": "shop:1", "state": "paid", "fields": items});
        journal.record(OrderUpdate {
            index: orderhub_actors::store::OrderIndexEntry::of(
                &orderhub_actors::order::Order::replay(
                    "shop:1",
                    &journal.events_of("shop:1").unwrap(),
                    &OrderPolicy::permissive(),
                ),
            ),
            syncs: vec![orderhub_actors::dispatch::SyncIntent {
                id: "shop:1:11:erp".into(),
                sink: "erp".into(),
                order: "shop:1".into(),
                seq: 11,
                rule: "r".into(),
                payload: payload.clone(),
                fields: None,
                contents: Some(11),
            }],
        });
        journal.flush().await;
        let stored: (String, Option<i64>) = journal
            .inner
            .reader
            .with(|conn| {
                Ok(
                    conn.query_row("SELECT payload, contents FROM syncs", [], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?,
                )
            })
            .unwrap();
        assert!(!stored.0.contains("SKU-1"), "{stored:?}");
        assert_eq!(stored.1, Some(11));
        assert_eq!(journal.syncs_of("shop:1").unwrap()[0].payload, payload);
        journal.close().await;
    }

    /// A second connection to the journal in `dir`, with a trigger that fails the insert of
    /// any event whose source event id is `boom` (a commit that fails); `DROP TRIGGER boom`
    /// on it ends that.
    fn failing_on_boom(dir: &std::path::Path) -> rusqlite::Connection {
        let other = rusqlite::Connection::open(dir.join(schema::DB_FILE)).unwrap();
        other
            .execute_batch(
                "CREATE TRIGGER boom BEFORE INSERT ON events WHEN new.source_event_id = 'boom'
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
            )
            .unwrap();
        other
    }

    /// A commit that fails forgets which events hold which fields: the rollback took back the
    /// event that held them (and its sequence is handed out again), so the next event with the
    /// same fields holds them itself.
    #[tokio::test]
    async fn a_failed_commit_forgets_the_fields_its_events_held() {
        let (dir, journal) = started();
        let items = serde_json::json!({"items": [{"sku": "SKU-1", "name": "Hydrating face cream 50ml", "qty": 1}]});
        let other = failing_on_boom(dir.path());
        let failed = journal
            .append(vec![
                with_fields("shop:1", "a", items.clone()),
                with_fields("shop:1", "boom", items.clone()),
            ])
            .await;
        assert!(failed.is_err(), "{failed:?}");
        other.execute_batch("DROP TRIGGER boom;").unwrap();

        let again = with_fields("shop:1", "b", items.clone());
        journal.append(vec![again.clone()]).await.unwrap();
        assert_eq!(stored_bodies(&journal), [(None, true)]);
        let events = journal.events_of("shop:1").unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event, again);
        journal.close().await;
    }

    /// The writer routes each event with whether the journal held an earlier event of its order
    /// (an actor started by a first event loads nothing). Within a batch, with or without
    /// contents, and after the journal is reopened (the writer remembers nothing then and asks
    /// the journal) a later event is never taken for a first; a redelivery is not routed; a
    /// rolled-back first leaves the next one first.
    #[tokio::test]
    async fn each_event_is_routed_as_its_orders_first_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::embedded().unwrap().journal;
        let routed = Arc::new(Mutex::new(Vec::new()));
        let open = || {
            let (journal, _) =
                Journal::open(dir.path(), &config, &OrderPolicy::permissive()).unwrap();
            let routed = routed.clone();
            journal
                .start(
                    move |event, first| {
                        routed
                            .lock()
                            .unwrap()
                            .push((event.event.source_event_id.clone(), first))
                    },
                    |_| {},
                )
                .unwrap();
            journal
        };
        let routed_now = || std::mem::take(&mut *routed.lock().unwrap());
        let contents = serde_json::json!({"items": [{"sku": "SKU-1", "name": "Hydrating face cream 50ml", "qty": 1}]});
        let plain = |order: &str, id: &str| OrderEvent {
            order: order.into(),
            ..event(id)
        };

        let journal = open();
        journal
            .append(vec![
                with_fields("shop:1", "1a", contents.clone()),
                with_fields("shop:1", "1b", contents.clone()),
                plain("shop:2", "2a"),
                plain("shop:2", "2b"),
            ])
            .await
            .unwrap();
        // A redelivery is not appended, so not routed.
        journal
            .append(vec![
                plain("shop:2", "2a"),
                plain("shop:2", "2c"),
                plain("shop:3", "3a"),
            ])
            .await
            .unwrap();
        let other = failing_on_boom(dir.path());
        let failed = journal
            .append(vec![plain("shop:4", "4a"), plain("shop:4", "boom")])
            .await;
        assert!(failed.is_err(), "{failed:?}");
        other.execute_batch("DROP TRIGGER boom;").unwrap();
        journal.append(vec![plain("shop:4", "4b")]).await.unwrap();
        journal.close().await;
        let first = |id: &str| (id.to_owned(), true);
        let later = |id: &str| (id.to_owned(), false);
        assert_eq!(
            routed_now(),
            [
                first("1a"),
                later("1b"),
                first("2a"),
                later("2b"),
                later("2c"),
                first("3a"),
                first("4b")
            ]
        );

        let journal = open();
        journal
            .append(vec![
                with_fields("shop:1", "1c", contents.clone()),
                plain("shop:3", "3b"),
                plain("shop:5", "5a"),
            ])
            .await
            .unwrap();
        journal.close().await;
        assert_eq!(routed_now(), [later("1c"), later("3b"), first("5a")]);
    }

    /// `orderhub export` and `orderhub reconcile` read a journal as it is, without opening it for
    /// writing: one the previous build wrote (syncs pointing at their contents, every event
    /// whole in its body, no `events.fields_from`) reads whole.
    #[test]
    fn the_read_only_tools_read_a_journal_from_before_shared_fields() {
        let dir = tempfile::tempdir().unwrap();
        let day = reconcile::Day::parse("2026-11-30", "+08:00").unwrap();
        let at = day.bounds().0 + 1000;
        let event = OrderEvent {
            order: "shop:1".into(),
            source: "shop".into(),
            received_at: at,
            occurred_at: at,
            fields: serde_json::json!({"items": [{"sku": "SKU-1", "qty": 2}]})
                .as_object()
                .unwrap()
                .into(),
            ..event("shop:1:paid")
        };
        {
            let conn = schema::open_writer(dir.path()).unwrap();
            conn.execute_batch(
                "DROP VIEW events_whole; ALTER TABLE events DROP COLUMN fields_from;",
            )
            .unwrap();
            conn.execute(
                "INSERT INTO events (order_key, source, source_event_id, received_at, body)
                 VALUES ('shop:1', 'shop', 'shop:1:paid', ?1, ?2)",
                rusqlite::params![at, serde_json::to_string(&event).unwrap()],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO orders (order_key, state, state_since, first_seen, updated_at, applied_seq, sla_breached)
                 VALUES ('shop:1', 'paid', ?1, ?1, ?1, 1, 0)",
                [at],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO syncs (id, sink, order_key, seq, rule, payload, status, created_at, updated_at, contents)
                 VALUES ('shop:1:1:erp', 'erp', 'shop:1', 1, 'r', '{\"order\":\"shop:1\"}', 'delivered', ?1, ?1, 1)",
                [at],
            )
            .unwrap();
        }
        let conn = schema::open_reader(dir.path()).unwrap();
        assert!(!schema::has_column(&conn, "events", "fields_from").unwrap());
        let loaded = reader::load_events(&conn, "shop:1").unwrap();
        assert_eq!(loaded[0].event, event);
        let syncs = outbox::of_order(&conn, "shop:1").unwrap();
        assert_eq!(syncs[0].payload["fields"]["items"][0]["sku"], "SKU-1");
        let report = reconcile::reconcile_dir(dir.path(), &OrderPolicy::permissive(), day).unwrap();
        assert_eq!(report.orders, 1);
        let out = dir.path().join("export.jsonl.gz");
        let written = export::export(dir.path(), None, at - 1, at + 1, &out).unwrap();
        assert_eq!(written, 1);
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(std::fs::File::open(&out).unwrap()),
            &mut text,
        )
        .unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["fields"]["items"][0]["qty"], 2);
    }

    /// The SQL assembly of whole events (`schema::WHOLE_BODY`: the `events_whole` view, the
    /// cluster snapshot scan, exports) gives back every member of an event written in this
    /// layout or the one before (a whole body, whose keys the columns' values replace), and
    /// leaves a body that is not JSON as it is for the reader to name, rather than failing
    /// every other event with it.
    #[tokio::test]
    async fn the_sql_readers_put_either_layout_back_whole_and_name_a_corrupt_body() {
        use orderhub_actors::order::Superseding;
        let (dir, journal) = started();
        let rich = |id: &str, at: Millis| {
            OrderEvent {
            order: "youzan:E2026\"1\u{2028}张".into(),
            source: "youzan".into(),
            supersedes: Some(Superseding {
                stream: "trade_TradeBuyerPay".into(),
                version: 1_700_000_000_123,
            }),
            log_seq: Some(u64::MAX / 3),
            raw_status: "WAIT_SELLER_SEND_GOODS".into(),
            action: EventAction::Move {
                state: orderhub_actors::order::OrderState::Paid,
            },
            occurred_at: at - 5,
            received_at: at,
            fields: serde_json::json!({"items": [{"sku": "A\"B", "price": 0.1, "qty": 3}], "buyer": "李四", "note": "gift"})
                .as_object()
                .unwrap()
                .into(),
            ..event(id)
        }
        };
        // One in the layout before (its body whole), then two in this one (the second shares).
        let before = rich("before", 1_796_000_000_001);
        {
            let conn = rusqlite::Connection::open(dir.path().join(schema::DB_FILE)).unwrap();
            conn.execute(
                "INSERT INTO events (order_key, source, source_event_id, received_at, body)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![
                    before.order,
                    before.source,
                    before.source_event_id,
                    before.received_at,
                    serde_json::to_string(&before).unwrap()
                ],
            )
            .unwrap();
        }
        let now = [rich("a", 1_796_000_000_002), rich("b", 1_796_000_000_003)];
        journal.append(now.to_vec()).await.unwrap();
        let expected = [before, now[0].clone(), now[1].clone()];
        let viewed = viewed_bodies(&journal);
        assert_eq!(viewed.len(), 3);
        for (body, event) in viewed.iter().zip(&expected) {
            assert_eq!(
                &serde_json::from_str::<OrderEvent>(body).unwrap(),
                event,
                "{body}"
            );
        }
        assert_eq!(journal.events_of(&expected[0].order).unwrap().len(), 3);
        assert_eq!(
            stored_bodies(&journal),
            [(None, true), (None, true), (Some(2), false)],
            "the third shares the second's fields"
        );
        let out = dir.path().join("export.jsonl.gz");
        assert_eq!(
            export::export(dir.path(), None, 0, Millis::MAX, &out).unwrap(),
            3
        );

        // A body that is not an event: the scan hands it on as it is (the snapshot's reader
        // names it), the export names its sequence.
        {
            let conn = rusqlite::Connection::open(dir.path().join(schema::DB_FILE)).unwrap();
            conn.execute("UPDATE events SET body = 'not an event' WHERE seq = 2", [])
                .unwrap();
        }
        let scanned = scanned_bodies(&journal);
        assert_eq!(scanned[1], "not an event");
        assert_eq!(scanned[0], viewed[0]);
        // The event sharing the corrupt one's fields: its own body, which is not an event.
        assert!(
            serde_json::from_str::<OrderEvent>(&scanned[2]).is_err(),
            "{}",
            scanned[2]
        );
        match export::export(dir.path(), None, 0, Millis::MAX, &out) {
            Err(JournalError::Corrupt { seq: 2, .. }) => {}
            other => panic!("{other:?}"),
        }
        let third = expected[2].received_at;
        match export::export(dir.path(), None, third, third + 1, &out) {
            Err(JournalError::Corrupt { seq: 3, .. }) => {}
            other => panic!("{other:?}"),
        }
        journal.close().await;
    }

    #[tokio::test]
    async fn duplicates_within_and_across_batches_are_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::embedded().unwrap().journal;
        let (journal, _) = Journal::open(dir.path(), &config, &OrderPolicy::permissive()).unwrap();
        journal.start(|_, _| {}, |_| {}).unwrap();
        let outcomes = journal
            .append(vec![event("a"), event("a"), event("b")])
            .await
            .unwrap();
        assert_eq!(
            outcomes,
            vec![
                AppendOutcome::Appended(1),
                AppendOutcome::Duplicate,
                AppendOutcome::Appended(2)
            ]
        );
        let again = journal.append(vec![event("b")]).await.unwrap();
        assert_eq!(again, vec![AppendOutcome::Duplicate]);
        journal.close().await;
    }

    /// What `events` is looked up by (an order's events, a redelivery) on a new journal (one
    /// index for both) and on one made before (two indexes): the same answers on both, and on
    /// a new journal both lookups go through the one index.
    #[tokio::test]
    async fn an_orders_events_and_its_redeliveries_are_found_in_either_layout() {
        for older in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            if older {
                let conn = rusqlite::Connection::open(dir.path().join(schema::DB_FILE)).unwrap();
                conn.execute_batch(schema::OLD_EVENTS).unwrap();
            }
            let config = Config::embedded().unwrap().journal;
            let (journal, _) =
                Journal::open(dir.path(), &config, &OrderPolicy::permissive()).unwrap();
            journal.start(|_, _| {}, |_| {}).unwrap();
            let of = |order: &str, id: &str| OrderEvent {
                order: order.into(),
                ..event(id)
            };
            let outcomes = journal
                .append(vec![
                    of("shop:2", "x"),
                    of("shop:1", "a"),
                    of("shop:2", "y"),
                ])
                .await
                .unwrap();
            assert!(
                outcomes
                    .iter()
                    .all(|o| matches!(o, AppendOutcome::Appended(_))),
                "{outcomes:?}"
            );
            let again = journal
                .append(vec![
                    of("shop:2", "y"),
                    of("shop:1", "a"),
                    of("shop:2", "z"),
                ])
                .await
                .unwrap();
            assert_eq!(
                again,
                vec![
                    AppendOutcome::Duplicate,
                    AppendOutcome::Duplicate,
                    AppendOutcome::Appended(4)
                ],
                "older layout: {older}"
            );
            let ids: Vec<String> = journal
                .events_of("shop:2")
                .unwrap()
                .into_iter()
                .map(|e| e.event.source_event_id)
                .collect();
            assert_eq!(ids, ["x", "y", "z"], "older layout: {older}");
            journal.close().await;
            let conn = rusqlite::Connection::open(dir.path().join(schema::DB_FILE)).unwrap();
            let indexes: Vec<String> = conn
                .prepare("SELECT name FROM pragma_index_list('events') ORDER BY name")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let plan: String = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {}", reader::LOAD_EVENTS))
                .unwrap()
                .query_map(["shop:2"], |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
                .join("; ");
            if older {
                assert_eq!(indexes.len(), 2, "{indexes:?}");
                assert!(plan.contains("events_by_order"), "{plan}");
            } else {
                assert_eq!(indexes.len(), 1, "one index on a new journal: {indexes:?}");
                assert!(
                    plan.contains(&format!("USING INDEX {} (order_key=?)", indexes[0])),
                    "{plan}"
                );
            }
        }
    }

    #[tokio::test]
    async fn overdue_counts_orders_past_each_rule_and_a_kept_list_reads_past_the_skipped() {
        use orderhub_actors::order::{OrderState, SlaRule};
        use orderhub_actors::store::OrderIndexEntry;
        let dir = tempfile::tempdir().unwrap();
        let config = Config::embedded().unwrap().journal;
        let (journal, _) = Journal::open(dir.path(), &config, &OrderPolicy::permissive()).unwrap();
        journal.start(|_, _| {}, |_| {}).unwrap();
        let summary = |key: &str, state, state_since, updated_at| OrderUpdate {
            index: OrderIndexEntry {
                key: key.into(),
                state: Some(state),
                state_since,
                first_seen: 0,
                updated_at,
                applied_seq: 1,
                sla_breached: false,
                armed: Vec::new(),
                approvals: Vec::new(),
                disagreements: Vec::new(),
            },
            syncs: Vec::new(),
        };
        // Paid at 0 and at 9_000; shipped at 0 but updated at 9_500; in transit since 5_000.
        journal.record(summary("a", OrderState::Paid, 0, 0));
        journal.record(summary("b", OrderState::Paid, 9_000, 9_000));
        journal.record(summary("c", OrderState::Shipped, 0, 9_500));
        journal.record(summary("d", OrderState::InTransit, 5_000, 5_000));
        let rule = |name: &str, from, within_ms, reset_on_event| SlaRule {
            name: name.into(),
            from,
            within_ms,
            reset_on_event,
        };
        let rules = [
            rule("allocate", OrderState::Paid, 2_000, false),
            rule("pickup", OrderState::Shipped, 2_000, false),
            rule("transit_update", OrderState::InTransit, 2_000, true),
            rule("transit_quiet", OrderState::Shipped, 2_000, true),
        ];
        // Summaries are written behind: a flush waits for all four.
        journal.flush().await;
        let listed = |limit| {
            journal
                .list(&OrderFilter {
                    limit,
                    ..OrderFilter::default()
                })
                .unwrap()
                .len()
        };
        assert_eq!(listed(10), 4, "summaries never written");
        // At 10_000: a is 10 s in paid (b only 1 s); c is 10 s in shipped but reported 0.5 s
        // ago; d has had no report for 5 s.
        assert_eq!(journal.overdue(&rules, 10_000).unwrap(), vec![1, 1, 1, 0]);
        assert_eq!(journal.overdue(&rules, 1_000).unwrap(), vec![0, 0, 0, 0]);
        // Of the orders a predicate keeps (a cluster node's own partitions): without a.
        assert_eq!(
            journal
                .overdue_kept(&rules, 10_000, &|key| key != "a")
                .unwrap(),
            vec![0, 1, 1, 0]
        );
        let by_state = journal.count_by_state(&|key| key != "d").unwrap();
        assert_eq!(
            by_state.len(),
            OrderState::ALL.len(),
            "every state, zero included"
        );
        let count = |state| by_state.iter().find(|(s, _)| *s == state).unwrap().1;
        assert_eq!(
            (
                count(OrderState::Paid),
                count(OrderState::Shipped),
                count(OrderState::InTransit)
            ),
            (2, 1, 0)
        );
        // A list of the orders a predicate keeps (a cluster node's own partitions) reads past
        // those it skips: the two oldest (a, c) are skipped, and two are still listed.
        let kept = journal
            .list_kept(
                &OrderFilter {
                    limit: 2,
                    ..OrderFilter::default()
                },
                &|key| key != "a" && key != "c",
            )
            .unwrap();
        assert!(kept.1, "whole");
        let keys: Vec<&str> = kept.0.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["d", "b"]);
        // Read to the end, nothing kept: whole (and empty).
        let none = journal
            .list_kept(
                &OrderFilter {
                    limit: 1,
                    ..OrderFilter::default()
                },
                &|_| false,
            )
            .unwrap();
        assert_eq!((none.0.len(), none.1), (0, true));
        // More skipped orders than the pages read: cut, and said so.
        for i in 0..2 * reader::KEPT_PAGES {
            journal.record(summary(
                &format!("z{i:02}"),
                OrderState::Paid,
                100 + i as i64,
                0,
            ));
        }
        journal.flush().await;
        assert_eq!(
            listed(100),
            4 + 2 * reader::KEPT_PAGES,
            "summaries never written"
        );
        let cut = journal
            .list_kept(
                &OrderFilter {
                    limit: 1,
                    ..OrderFilter::default()
                },
                &|key| key == "b",
            )
            .unwrap();
        assert_eq!(
            (cut.0.len(), cut.1),
            (0, false),
            "b comes after the pages read"
        );
        journal.close().await;
    }

    #[tokio::test]
    async fn waybills_are_indexed_on_append_and_backfilled_for_an_older_journal() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::embedded().unwrap().journal;
        let (journal, _) = Journal::open(dir.path(), &config, &OrderPolicy::permissive()).unwrap();
        journal.start(|_, _| {}, |_| {}).unwrap();
        let mut shipped = event("ship");
        shipped
            .fields
            .insert_value("waybill_no", &serde_json::json!("SF1"));
        journal.append(vec![shipped]).await.unwrap();
        assert_eq!(
            journal.order_of_waybill("SF1").unwrap().as_deref(),
            Some("shop:1")
        );
        assert_eq!(journal.order_of_waybill("SF2").unwrap(), None);
        journal.close().await;
        // A journal from before the index: the table and its marker are gone.
        let conn = rusqlite::Connection::open(dir.path().join(schema::DB_FILE)).unwrap();
        conn.execute_batch(
            "DROP TABLE waybills; DELETE FROM meta WHERE name = 'waybills_backfilled';",
        )
        .unwrap();
        drop(conn);
        let (journal, _) = Journal::open(dir.path(), &config, &OrderPolicy::permissive()).unwrap();
        assert_eq!(
            journal.order_of_waybill("SF1").unwrap().as_deref(),
            Some("shop:1")
        );
    }
}
