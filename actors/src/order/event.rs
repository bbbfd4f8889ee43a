//! Canonical order events: what every source's report is translated into before it is journaled.

use super::state::OrderState;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Milliseconds since the Unix epoch. Time enters the pure logic only as data.
pub type Millis = i64;

/// The source name orderhub itself uses for the events it journals (SLA breaches).
pub const INTERNAL_SOURCE: &str = "orderhub";

/// What an event asks of the canonical state machine, after the source's raw status was mapped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventAction {
    /// Move the order to this state (`on_hold` puts it on hold).
    Move {
        /// The target state.
        state: OrderState,
    },
    /// Release a hold: the order goes back to where it was.
    ReleaseHold,
    /// A known status with no canonical effect; kept in the timeline and the system's status.
    Inform,
    /// A status the source's mapping does not know (yet): kept in the timeline with its raw
    /// status, marked `unmapped`, and changes nothing. Never a reason to refuse a message.
    Unmapped,
    /// One part of the order (a sub-order, e.g. Douyin's `s_id`) reached `state`; the whole
    /// order follows once every part the order listed in `fields.sub_orders` has.
    MovePart {
        /// The part's id.
        part: String,
        /// The state the part reached.
        state: OrderState,
    },
    /// An operator's decision on an approval (`fields.operator` names them).
    Decide {
        /// The approval's id.
        approval: String,
        /// Approve or reject.
        decision: super::approval::Verdict,
        /// Why, if they said.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
    },
    /// An approval's deadline passed while it was open (journaled by orderhub itself).
    ApprovalDue {
        /// The approval's id.
        approval: String,
        /// The deadline that passed.
        deadline: Millis,
        /// True when it passed while the engine was down.
        late: bool,
    },
    /// The order's request to the stock ledger and, once the journal answered it in the
    /// transaction that recorded it, the ledger's answer (journaled by orderhub itself).
    Stock {
        /// What the order asks.
        #[serde(flatten)]
        op: super::stock::StockOp,
        /// The ledger's answer (`None` only before the journal answered).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        outcome: Option<super::stock::StockOutcome>,
    },
    /// An SLA deadline passed while its timer was armed (journaled by orderhub itself).
    SlaBreach {
        /// The rule's name.
        rule: String,
        /// The deadline that passed.
        deadline: Millis,
        /// True when the deadline passed while the engine was down.
        late: bool,
    },
}

/// The labels of actions that move to no state (see [`EventAction::label`]).
pub const NON_STATE_LABELS: [&str; 6] = [
    "none",
    "hold_released",
    "sla_breach",
    "approval_decision",
    "approval_due",
    "stock",
];

impl EventAction {
    /// The label used in the timeline's `mapped` field.
    pub fn label(&self) -> &str {
        match self {
            EventAction::Move { state } => state.as_str(),
            EventAction::ReleaseHold => "hold_released",
            EventAction::Inform | EventAction::Unmapped | EventAction::MovePart { .. } => "none",
            EventAction::SlaBreach { .. } => "sla_breach",
            EventAction::Decide { .. } => "approval_decision",
            EventAction::ApprovalDue { .. } => "approval_due",
            EventAction::Stock { .. } => "stock",
        }
    }
}

/// One report from one system about one order, translated to canonical form.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderEvent {
    /// The order key, `{channel}:{channel order id}`.
    pub order: String,
    /// The reporting system (`douyin`, `wms`, `courier`, `orderhub`, …).
    pub source: String,
    /// The source's own id for this delivery; with `source` it deduplicates redeliveries.
    pub source_event_id: String,
    /// Where the source versions its messages (Youzan: within one message type a higher
    /// `version` supersedes a lower one): an event behind the latest version of its stream is
    /// kept in the timeline and changes nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supersedes: Option<Superseding>,
    /// Cluster mode: the event's sequence in the cluster's stream, set by the partition owner
    /// that applies it. It is the same on every node, so idempotency keys derived from it are
    /// too (a single node's journal sequence is local to its disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_seq: Option<u64>,
    /// The status exactly as the source reported it.
    pub raw_status: String,
    /// What the raw status means canonically.
    pub action: EventAction,
    /// When the source says it happened.
    pub occurred_at: Millis,
    /// When orderhub received it.
    pub received_at: Millis,
    /// Business fields the source carried (waybill, amounts, shop id, …).
    #[serde(default, skip_serializing_if = "super::Fields::is_empty")]
    pub fields: super::Fields,
}

/// A message's place in a source's versioned stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Superseding {
    /// The stream (e.g. the message type); versions compare only within one.
    pub stream: String,
    /// The message's version; higher supersedes lower.
    pub version: i64,
}

impl OrderEvent {
    /// An event orderhub journals itself about `order` (an SLA breach, an approval's deadline,
    /// a stock request), stamped `at`. Its id, `{id}@{order}`, is deterministic, so raising it
    /// twice (say by an actor and its successor) journals it once; and it names the order,
    /// because an `id` such as `sla:{rule}:{deadline}` is the same for every order that entered
    /// a state in the same millisecond, and journals made before deduplication was per order
    /// (and JetStream's `Nats-Msg-Id` window) would keep only the first order's.
    pub fn internal(order: &str, id: String, action: EventAction, at: Millis) -> OrderEvent {
        OrderEvent {
            order: order.to_owned(),
            source: INTERNAL_SOURCE.to_owned(),
            source_event_id: format!("{id}@{order}"),
            supersedes: None,
            log_seq: None,
            raw_status: action.label().to_owned(),
            action,
            occurred_at: at,
            received_at: at,
            fields: super::Fields::new(),
        }
    }

    /// The instant the event counts from: the source's time, never later than when orderhub
    /// received it (a source clock running ahead must not push deadlines out).
    pub fn effective_at(&self) -> Millis {
        self.occurred_at.min(self.received_at)
    }
}

/// An event with its journal sequence number: the total order in which events are applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournaledEvent {
    /// Position in the journal, strictly increasing, starting at 1.
    pub seq: u64,
    /// The event.
    pub event: OrderEvent,
}

/// Journaled events are shared between the journal, the router and the order actor.
pub type SharedEvent = Arc<JournaledEvent>;
