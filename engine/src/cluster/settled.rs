//! Syncs settled anywhere in the cluster. A partition's new owner replays the partition and
//! re-decides its syncs with the same idempotency keys; those its predecessor already
//! delivered are recorded in the `orderhub_syncs` KV bucket, so the new owner marks them
//! delivered without sending them or spending the sink's quota. Refusals are not recorded: a
//! dead letter stays one, on whichever node, until an operator retries it.
//! A sync delivered just before its node died, and not yet recorded, is sent again with the
//! same key. A node sends no sync of a partition it does not hold: one it gave away keeps that
//! partition's pending syncs back (the new owner re-decides and sends them) and lets each go as
//! delivered once the bucket says the owner delivered it; they are sent from here only if the
//! partition comes back.

use super::scans::token;
use async_nats::jetstream::kv;
use orderhub_actors::dispatch::{
    Delivery, DeliveryFuture, SettledFuture, SinkConnector, SyncIntent,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Settled syncs: key = the sync's idempotency key (as a KV token), value = how it ended.
pub const SYNCS_BUCKET: &str = "orderhub_syncs";

/// A sink connector that records what it settles and skips what another node settled.
pub(crate) struct Remembering {
    pub(crate) inner: Arc<dyn SinkConnector>,
    pub(crate) settled: kv::Store,
    /// Whether this node holds the lease of an order's partition.
    pub(crate) owns: Arc<dyn Fn(&str) -> bool + Send + Sync>,
}

impl SinkConnector for Remembering {
    fn deliver(&self, sync: std::sync::Arc<SyncIntent>, attempt: u32) -> DeliveryFuture {
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
        let id = sync.id.clone();
        let settled = self.settled.clone();
        // Not known, or NATS unreachable: not settled (the owner sends it, at worst twice with
        // the same key).
        Some(Box::pin(async move {
            match settled.get(&key).await {
                Ok(found) => found.is_some(),
                Err(err) => {
                    note_failed_lookup(&id, &err);
                    false
                }
            }
        }))
    }

    fn defers(&self, order: &str) -> bool {
        !(self.owns)(order)
    }
}

/// Lookups that failed since the last warning, and when that was (ms since the epoch).
static FAILED_LOOKUPS: AtomicU64 = AtomicU64::new(0);
static LAST_LOOKUP_WARNING: AtomicI64 = AtomicI64::new(0);

/// Warns that the settled bucket could not be asked (the sync then counts as not settled: sent,
/// or kept back if its partition moved), at most once per [`LOOKUP_WARNING_EVERY_MS`]: in a
/// NATS outage every send and every recheck of a kept-back order asks.
fn note_failed_lookup(sync: &str, err: &dyn std::fmt::Display) {
    let failed = FAILED_LOOKUPS.fetch_add(1, Ordering::Relaxed) + 1;
    let now = crate::sinks::unix_ms();
    let last = LAST_LOOKUP_WARNING.load(Ordering::Relaxed);
    if now - last >= LOOKUP_WARNING_EVERY_MS
        && LAST_LOOKUP_WARNING
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        FAILED_LOOKUPS.store(0, Ordering::Relaxed);
        tracing::warn!(sync = %sync, failed, error = %err, "could not ask NATS whether syncs were settled elsewhere; they count as not settled (a send goes out again with the same idempotency key)");
    }
}

/// See [`note_failed_lookup`].
const LOOKUP_WARNING_EVERY_MS: i64 = 10_000;
