//! Counts journaled events that were routed but not applied yet. The guard travels with the
//! event through the mailboxes and decrements when dropped — applied, or lost with a crashed
//! actor's mailbox (the journal still has it: the restarted actor replays it).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// One routed, not yet applied event.
#[derive(Debug)]
pub(crate) struct PendingGuard(Arc<AtomicI64>);

impl PendingGuard {
    pub(crate) fn new(counter: &Arc<AtomicI64>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        PendingGuard(counter.clone())
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
