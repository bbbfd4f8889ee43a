//! Stock reservation as the order sees it. Once an order is paid and its lines are known
//! (`fields.items[] {sku, qty}`), it asks the stock ledger to reserve them; the reservation is
//! committed when the warehouse allocates the order, given back when it is cancelled or when
//! `reserve_ttl` passes first, and an order that cannot reserve goes on hold `oversell`.
//!
//! The order never touches the ledger itself: it decides a request, journaled as an event of
//! source `orderhub` with action [`EventAction::Stock`] and no outcome; the journal answers it
//! in the transaction that records it (so the ledger and the journal never disagree, and one
//! writer serialises every reservation: nothing is oversold under concurrency), and the answer
//! comes back to the order as that event. A request whose answer has not come back is asked
//! again by a timer (same id: the journal keeps the first).

use super::event::{EventAction, Millis, OrderEvent};
use super::state::OrderState;
use serde::{Deserialize, Serialize};

/// The name of the timer of an order's stock (a request's retry, a reservation's expiry).
pub const STOCK_TIMER: &str = "stock:reservation";

/// How long a request may wait for its answer before it is asked again.
pub const STOCK_RETRY_MS: Millis = 5_000;

/// A line of an order as stock sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLine {
    /// The SKU (the seller's code).
    pub sku: String,
    /// The warehouse, when the line or the order names one (`""`: none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub warehouse: String,
    /// How many.
    pub qty: i64,
}

/// A line that could not be reserved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShortLine {
    /// The SKU.
    pub sku: String,
    /// The stock record's warehouse (`""`: the SKU's record without one).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub warehouse: String,
    /// How many the order wanted.
    pub wanted: i64,
    /// How many could still be sold.
    pub available: i64,
}

/// What an order asks of the stock ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum StockOp {
    /// Reserve these lines: all tracked ones, or none.
    Reserve {
        /// The order's lines.
        lines: Vec<StockLine>,
    },
    /// Give the order's reservation back.
    Release {
        /// Why: `cancelled`, `expired`.
        reason: String,
    },
    /// The warehouse took the goods: the reservation leaves the stock.
    Commit,
    /// The order was cancelled after its goods left the stock: they come back.
    Restock,
}

impl StockOp {
    /// A short name (`reserve`, `release`, `commit`, `restock`).
    pub fn name(&self) -> &'static str {
        match self {
            StockOp::Reserve { .. } => "reserve",
            StockOp::Release { .. } => "release",
            StockOp::Commit => "commit",
            StockOp::Restock => "restock",
        }
    }
}

/// What the ledger answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum StockOutcome {
    /// Every tracked line is reserved (lines of SKUs without a stock record are not listed).
    Reserved {
        /// The reserved lines, per stock record.
        lines: Vec<StockLine>,
    },
    /// A tracked line could not be reserved, so none was.
    Short {
        /// The lines short.
        lines: Vec<ShortLine>,
    },
    /// No line's SKU has a stock record: nothing to reserve.
    Untracked,
    /// Released, committed or restocked: these lines.
    Done {
        /// The lines concerned.
        lines: Vec<StockLine>,
    },
    /// Nothing to do (the order holds no reservation of that kind).
    Nothing,
}

/// Where an order's stock stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StockState {
    /// A request waits for the ledger's answer.
    Requested,
    /// Reserved until the warehouse allocates the order (or `deadline`).
    Reserved,
    /// Could not reserve: on hold `oversell`.
    Short,
    /// None of its SKUs is tracked.
    Untracked,
    /// Given back (cancelled, or the reservation expired).
    Released,
    /// The warehouse took the goods.
    Committed,
    /// Cancelled after the goods were taken: back in stock.
    Restocked,
}

/// An order's stock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockStatus {
    /// Where it stands.
    pub state: StockState,
    /// The reserved (committed, released…) lines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<StockLine>,
    /// The lines short (`short`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub short: Vec<ShortLine>,
    /// Hub time of the last change.
    pub since: Millis,
    /// A reservation's expiry, or when an unanswered request is asked again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Millis>,
    /// The request waiting for its answer (`requested`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Request>,
    /// Why it was released (`cancelled`, `expired`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A request as journaled, to ask it again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Its id (the journal keeps one event per id).
    pub id: String,
    /// What it asks.
    pub op: StockOp,
    /// The state to come back to once answered (`requested` is set over it).
    pub previous: Option<StockState>,
}

impl StockStatus {
    /// The timer to keep armed, as `(name, deadline)`.
    pub fn timer(&self) -> Option<(&'static str, Millis)> {
        match self.state {
            StockState::Requested | StockState::Reserved => {
                self.deadline.map(|deadline| (STOCK_TIMER, deadline))
            }
            _ => None,
        }
    }
}

/// The order's lines as stock sees them: `fields.items[]` with a `sku` and a positive `qty`
/// (numbers or numeric strings), the warehouse from the line or `fields.warehouse`. `None`
/// when the order has no such line.
pub fn lines_of(fields: &super::Fields) -> Option<Vec<StockLine>> {
    let items = fields.value(super::machine::ITEMS_FIELD)?;
    let items = items.as_array()?;
    let text = |value: Option<&serde_json::Value>| match value {
        Some(serde_json::Value::String(s)) => Some(s.trim().to_owned()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let order_warehouse = text(fields.value("warehouse").as_ref()).unwrap_or_default();
    let mut lines: Vec<StockLine> = Vec::new();
    for item in items {
        let Some(sku) = text(item.get("sku")).filter(|s| !s.is_empty()) else {
            continue;
        };
        let qty = match item.get("qty") {
            Some(serde_json::Value::Number(n)) => n.as_i64(),
            Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        let Some(qty) = qty.filter(|q| *q > 0) else {
            continue;
        };
        let warehouse = text(item.get("warehouse")).unwrap_or_else(|| order_warehouse.clone());
        match lines
            .iter_mut()
            .find(|l| l.sku == sku && l.warehouse == warehouse)
        {
            Some(line) => line.qty = line.qty.saturating_add(qty),
            None => lines.push(StockLine {
                sku,
                warehouse,
                qty,
            }),
        }
    }
    (!lines.is_empty()).then_some(lines)
}

/// The id of the request for `op` caused by `cause` (the triggering event's sequence, or a
/// deadline).
pub(crate) fn request_id(op: &StockOp, cause: &str) -> String {
    format!("stock:{}:{cause}", op.name())
}

/// The request event `id` for `op` of `order`, stamped `at`.
pub(crate) fn request(order: &str, op: StockOp, id: String, at: Millis) -> OrderEvent {
    let raw_status = format!("stock_{}", op.name());
    let mut event = OrderEvent::internal(order, id, EventAction::Stock { op, outcome: None }, at);
    event.raw_status = raw_status;
    event
}

/// The states in which an order has been taken by the warehouse (its reservation commits).
pub(crate) fn taken(state: OrderState) -> bool {
    matches!(
        state,
        OrderState::Allocated
            | OrderState::Picked
            | OrderState::Packed
            | OrderState::Shipped
            | OrderState::InTransit
            | OrderState::Delivered
            | OrderState::Completed
    )
}
