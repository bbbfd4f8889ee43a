//! The ports through which order actors reach durable storage. The engine implements them over
//! its journal (SQLite by default); tests implement them in memory.

use crate::dispatch::{PendingSync, SyncIntent, SyncUpdate};
use crate::order::{Approval, JournaledEvent, Millis, Order, OrderEvent, OrderState};

/// Why the store could not serve a request.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or has shut down.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored event could not be decoded.
    #[error("stored event {seq} of order {order} is unreadable: {reason}")]
    Corrupt {
        /// The order's key.
        order: String,
        /// The journal sequence number.
        seq: u64,
        /// What was wrong.
        reason: String,
    },
}

impl StoreError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Corrupt { .. } => "corrupt",
        }
    }
}

/// The queryable summary of an order, written behind every change so that lists, stuck-order
/// queries and timer re-arming at start-up never need every order in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct OrderIndexEntry {
    /// The order key.
    pub key: String,
    /// Canonical state.
    pub state: Option<OrderState>,
    /// When it entered that state.
    pub state_since: Millis,
    /// Hub time of its first report.
    pub first_seen: Millis,
    /// Hub time of its last report.
    pub updated_at: Millis,
    /// The last journal sequence number folded into this summary.
    pub applied_seq: u64,
    /// Whether any SLA timer was breached.
    pub sla_breached: bool,
    /// Armed timers as `(name, deadline)`: SLA rules and open approvals' deadlines.
    pub armed: Vec<(String, Millis)>,
    /// The order's approvals (listed by `GET /v1/approvals`).
    pub approvals: Vec<Approval>,
    /// The kinds of the order's open disagreements (`GET /v1/orders?disagreement=true`).
    pub disagreements: Vec<String>,
}

impl OrderIndexEntry {
    /// The summary of `order`.
    pub fn of(order: &Order) -> Self {
        OrderIndexEntry {
            key: order.key.clone(),
            state: order.state,
            state_since: order.state_since,
            first_seen: order.first_seen,
            updated_at: order.updated_at,
            applied_seq: order.applied_seq,
            sla_breached: order.sla_breached(),
            armed: order
                .armed_timers()
                .map(|(rule, deadline)| (rule.to_owned(), deadline))
                .collect(),
            approvals: order.approvals.clone(),
            disagreements: order.disagreeing().map(str::to_owned).collect(),
        }
    }
}

/// An order as stored: its events and how far its summary (and the syncs that go with it) is
/// known to be written.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoredOrder {
    /// Every journaled event of the order, in journal order.
    pub events: Vec<JournaledEvent>,
    /// `applied_seq` of the stored summary (0 if none): the syncs of every event up to it are in
    /// the outbox.
    pub indexed_seq: u64,
}

/// Where [`OrderStore::load_later`] answers.
pub type LoadReply = tokio::sync::oneshot::Sender<Result<StoredOrder, StoreError>>;

/// A change of one order to write behind: its new summary and the syncs decided since the
/// last one, written in one transaction so a summary never covers an event whose syncs are
/// missing.
#[derive(Clone, Debug, PartialEq)]
pub struct OrderUpdate {
    /// The summary.
    pub index: OrderIndexEntry,
    /// New syncs (inserting one that exists already is a no-op).
    pub syncs: Vec<SyncIntent>,
}

/// Durable storage as the order actors see it.
pub trait OrderStore: Send + Sync + 'static {
    /// The order's journaled events and stored summary position. Called when an actor starts,
    /// so it must be fast (indexed reads).
    fn load(&self, order: &str) -> Result<StoredOrder, StoreError>;

    /// [`OrderStore::load`] answered on `reply`, for an actor starting on a cold order: a store
    /// that reads from disk does it on threads of its own, so the read holds up neither the
    /// actor's shard (which starts other orders meanwhile) nor a runtime worker. The default
    /// loads at once on the caller's thread (stores in memory).
    fn load_later(&self, order: &str, reply: LoadReply) {
        let _ = reply.send(self.load(order));
    }

    /// Journals an event orderhub raises itself (an SLA breach). It must not block: the journal
    /// queues it, commits it, and then routes it back to the order like any other event.
    fn append_internal(&self, event: OrderEvent) -> Result<(), StoreError>;

    /// Records the order's summary and new syncs. Write-behind: summaries may be coalesced with
    /// later ones of the same order (syncs never are), and an update lost in a crash is rebuilt
    /// from the journal.
    fn record(&self, update: OrderUpdate);

    /// The order's actor was given up on (it could not start, or kept crashing): its journaled
    /// events may not be folded into its summary. The store must stop waiting for that summary
    /// (what is folded so far is not held back by it) and remember the order, so start-up
    /// recovery tries it again. Must not block.
    fn unfolded(&self, order: &str);
}

/// The outbox as the dispatchers see it.
pub trait SyncStore: Send + Sync + 'static {
    /// Up to `limit` pending syncs of `sink` with a row above `after_row`, in row order.
    fn pending_page(
        &self,
        sink: &str,
        after_row: i64,
        limit: usize,
    ) -> Result<Vec<PendingSync>, StoreError>;

    /// Number of pending syncs of `sink`.
    fn pending_count(&self, sink: &str) -> Result<u64, StoreError>;

    /// Records the result of an attempt. Write-behind: an update lost in a crash means the sync
    /// is sent again, with the same idempotency key.
    fn record_attempt(&self, update: SyncUpdate);
}
