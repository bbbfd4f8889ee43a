//! The ports through which order actors reach durable storage. The engine implements them over
//! its journal (SQLite by default); tests implement them in memory.

use crate::order::{JournaledEvent, Millis, Order, OrderEvent, OrderState};

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
    /// Armed SLA timers as `(rule, deadline)`.
    pub armed: Vec<(String, Millis)>,
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
        }
    }
}

/// Durable storage as the order actors see it.
pub trait OrderStore: Send + Sync + 'static {
    /// Every journaled event of `order`, in journal order. Called when an actor starts, so it
    /// must be fast (an indexed read).
    fn load_events(&self, order: &str) -> Result<Vec<JournaledEvent>, StoreError>;

    /// Journals an event orderhub raises itself (an SLA breach). It must not block: the journal
    /// queues it, commits it, and then routes it back to the order like any other event.
    fn append_internal(&self, event: OrderEvent) -> Result<(), StoreError>;

    /// Records the order's summary. Write-behind: it may be coalesced with later summaries of
    /// the same order, and a summary lost in a crash is rebuilt from the journal.
    fn record_index(&self, entry: OrderIndexEntry);
}
