//! Syncs settled anywhere in the cluster. A partition's new owner replays the partition and
//! re-decides its syncs with the same idempotency keys; those its predecessor already
//! delivered are recorded in the `orderhub_syncs` KV bucket, so the new owner marks them
//! delivered without sending them or spending the sink's quota. Refusals are not recorded: a
//! dead letter stays one, on whichever node, until an operator retries it.
//! A sync delivered just before its node died, and not yet recorded, is sent again with the
//! same key. A node that gave a partition away waits up to `lease_ttl` for the new owner to
//! settle that partition's pending syncs before it sends one itself.

use super::scans::token;
use async_nats::jetstream::kv;
use orderhub_actors::dispatch::{
    Delivery, DeliveryFuture, SettledFuture, SinkConnector, SyncIntent,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Settled syncs: key = the sync's idempotency key (as a KV token), value = how it ended.
pub const SYNCS_BUCKET: &str = "orderhub_syncs";

/// A sink connector that records what it settles and skips what another node settled.
pub(crate) struct Remembering {
    pub(crate) inner: Arc<dyn SinkConnector>,
    pub(crate) settled: kv::Store,
    /// Whether this node holds the lease of an order's partition.
    pub(crate) owns: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    /// How long a sync of a partition this node does not hold waits for its owner.
    pub(crate) wait_for_owner: Duration,
}

impl SinkConnector for Remembering {
    fn deliver(&self, sync: SyncIntent, attempt: u32) -> DeliveryFuture {
        let key = token(&sync.id);
        let id = sync.id.clone();
        let sending = self.inner.deliver(sync, attempt);
        let settled = self.settled.clone();
        Box::pin(async move {
            let delivery = sending.await;
            // Only deliveries: a refusal is a dead letter an operator may retry, which must
            // then be sent, not found "settled".
            if delivery == Delivery::Delivered
                && let Err(err) = settled.put(&key, b"delivered".to_vec().into()).await
            {
                // Only costs a resend (same key) if this partition moves before it is recorded.
                tracing::warn!(sync = %id, error = %err, "could not record a settled sync");
            }
            delivery
        })
    }

    fn settled(&self, sync: &SyncIntent) -> Option<SettledFuture> {
        let key = token(&sync.id);
        let settled = self.settled.clone();
        let owns = self.owns.clone();
        let order = sync.order.clone();
        let wait = self.wait_for_owner;
        Some(Box::pin(async move {
            // A sync of a partition this node gave away (or does not hold yet) is the owner's
            // to send: it re-decides it with the same key. Wait a little for the owner to
            // settle it, so an older sync from here does not reach the sink after the owner's
            // newer one; then send anyway (same key) rather than risk never sending it.
            let until = Instant::now() + wait;
            loop {
                if matches!(settled.get(&key).await, Ok(Some(_))) {
                    return true;
                }
                if owns(&order) || Instant::now() >= until {
                    // Not known (or NATS unreachable): send; the sink sees the key at worst twice.
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }))
    }
}
