//! The port through which a dispatcher reaches its sink. The engine implements one connector
//! per sink kind (webhook, Kingdee, WangDianTong, SF, WeCom, DingTalk).

use crate::order::sync::SyncIntent;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// The result of one delivery attempt, classified for the retry policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The sink acknowledged it.
    Delivered,
    /// The sink asked us to slow down (HTTP 429): retried; it shows the sink is
    /// up, so it closes the circuit breaker like a success.
    Throttled {
        /// The sink's `Retry-After`, if it gave one.
        retry_after: Option<Duration>,
        /// What it said.
        detail: String,
    },
    /// A transient failure (5xx, timeout, connection error): retried with backoff and counted
    /// by the circuit breaker.
    Failed {
        /// The sink's `Retry-After`, if it gave one.
        retry_after: Option<Duration>,
        /// What went wrong.
        detail: String,
    },
    /// The sink refused it for good (a 4xx other than 408/429): dead-lettered at once, with the
    /// response kept.
    Rejected {
        /// Status and response excerpt.
        detail: String,
    },
    /// Nothing was sent: another node of the cluster had already delivered (or given up on)
    /// this sync, with the same idempotency key. Recorded delivered; no quota was used.
    Settled,
}

impl Delivery {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Delivery::Delivered => "delivered",
            Delivery::Throttled { .. } => "throttled",
            Delivery::Failed { .. } => "failed",
            Delivery::Rejected { .. } => "rejected",
            Delivery::Settled => "settled",
        }
    }
}

/// A future a connector returns.
pub type DeliveryFuture = Pin<Box<dyn Future<Output = Delivery> + Send + 'static>>;

/// A future answering whether a sync is already settled elsewhere.
pub type SettledFuture = Pin<Box<dyn Future<Output = bool> + Send + 'static>>;

/// Sends syncs to one sink in its own protocol.
pub trait SinkConnector: Send + Sync + 'static {
    /// Sends `sync` (attempt number `attempt`, from 1). Must carry `sync.id` as the
    /// idempotency key in whatever form the sink understands, and give up after its timeout.
    fn deliver(&self, sync: std::sync::Arc<SyncIntent>, attempt: u32) -> DeliveryFuture;

    /// Whether `sync` was already settled by another node (cluster mode: a partition's new
    /// owner re-decides the syncs its predecessor sent). Asked before a send waits for the
    /// sink's quota, so a settled sync costs none. `None` (the default): never.
    fn settled(&self, _sync: &SyncIntent) -> Option<SettledFuture> {
        None
    }

    /// Whether `order`'s syncs are another node's to send now (cluster mode: its partition's
    /// lease is held elsewhere, or by nobody yet). The dispatcher then sends none of them —
    /// the partition's owner re-decides them with the same keys — and only asks
    /// [`SinkConnector::settled`] now and then, to let go of those the owner settled; they go
    /// out from here again only if the partition comes back. `false` (the default): never.
    fn defers(&self, _order: &str) -> bool {
        false
    }
}
