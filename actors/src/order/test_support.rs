//! What the fold's tests share: a journaled report built from its parts.

use super::{EventAction, JournaledEvent, Millis, OrderEvent};

/// Report `seq` about `order` from `source` (raw status `raw`, id `e{seq}`) at `at`.
pub(crate) fn journaled(
    seq: u64,
    order: &str,
    source: &str,
    raw: &str,
    action: EventAction,
    at: Millis,
) -> JournaledEvent {
    JournaledEvent {
        seq,
        event: OrderEvent {
            order: order.into(),
            source: source.into(),
            source_event_id: format!("e{seq}"),
            supersedes: None,
            log_seq: None,
            raw_status: raw.into(),
            action,
            occurred_at: at,
            received_at: at,
            fields: Default::default(),
        },
    }
}
