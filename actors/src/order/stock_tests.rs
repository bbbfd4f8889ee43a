//! Stock reservation in the fold: what an order asks of the ledger and when, and what it does
//! with the answers (the ledger itself is the journal's; here its answers are written by hand).

use super::*;
use crate::order::rules::{RuleSet, RuleSpec};
use OrderState::*;

const MINUTE: Millis = 60_000;

fn event(seq: u64, source: &str, action: EventAction, at: Millis) -> JournaledEvent {
    let raw = action.label().to_owned();
    super::test_support::journaled(seq, "shop:1", source, &raw, action, at)
}

fn mv(seq: u64, state: OrderState, at: Millis) -> JournaledEvent {
    event(seq, "shop", EventAction::Move { state }, at)
}

fn paid_with_items(seq: u64, at: Millis) -> JournaledEvent {
    let mut paid = mv(seq, Paid, at);
    paid.event.fields.insert_value(
        ITEMS_FIELD,
        &serde_json::json!([
            {"sku": "A", "qty": 2, "name": "tea"},
            {"sku": "B", "qty": "1"},
            {"sku": "A", "qty": 1},
            {"name": "no sku", "qty": 1},
        ]),
    );
    paid
}

/// The journal's answer to `request`.
fn answered(seq: u64, request: &OrderEvent, outcome: StockOutcome, at: Millis) -> JournaledEvent {
    let EventAction::Stock { op, .. } = &request.action else {
        panic!("not a stock request: {request:?}");
    };
    let mut answer = request.clone();
    answer.action = EventAction::Stock {
        op: op.clone(),
        outcome: Some(outcome),
    };
    answer.received_at = at;
    JournaledEvent { seq, event: answer }
}

fn policy() -> OrderPolicy {
    let rules = RuleSet::compile(vec![RuleSpec {
        name: "tell_oversell".into(),
        when: "true".into(),
        on: Some("oversell".into()),
        notify: Some("wecom".into()),
        message: Some(
            "{{ order.key }} oversold: {{ event.oversell.lines[0].sku }} wants {{ event.oversell.lines[0].wanted }}"
                .into(),
        ),
        ..RuleSpec::default()
    }])
    .unwrap();
    OrderPolicy::permissive()
        .with_rules(rules)
        .with_stock(StockSpec {
            reserve_ttl_ms: 15 * MINUTE,
        })
}

fn line(sku: &str, qty: i64) -> StockLine {
    StockLine {
        sku: sku.into(),
        warehouse: String::new(),
        qty,
    }
}

#[test]
fn a_paid_order_with_lines_reserves_and_commits_when_the_warehouse_takes_it() {
    let policy = policy();
    let mut order = Order::new("shop:1");
    let (_, effects) = order.apply(&paid_with_items(1, 0), &policy).unwrap();
    assert_eq!(effects.internal.len(), 1);
    let request = effects.internal[0].clone();
    assert_eq!(request.source, INTERNAL_SOURCE);
    assert_eq!(request.source_event_id, "stock:reserve:1@shop:1");
    assert_eq!(
        request.action,
        EventAction::Stock {
            op: StockOp::Reserve {
                lines: vec![line("A", 3), line("B", 1)]
            },
            outcome: None
        }
    );
    let stock = order.stock.clone().unwrap();
    assert_eq!(stock.state, StockState::Requested);
    // Asked again by the timer if no answer comes.
    assert!(
        effects
            .armed
            .contains(&(STOCK_TIMER.to_owned(), super::stock::STOCK_RETRY_MS))
    );
    let again = order.stock_due(super::stock::STOCK_RETRY_MS).unwrap();
    assert_eq!(again.source_event_id, request.source_event_id);
    // Another report while the request waits asks nothing more.
    let (_, effects) = order
        .apply(&event(2, "shop", EventAction::Inform, MINUTE), &policy)
        .unwrap();
    assert!(effects.internal.is_empty());

    let reserved = StockOutcome::Reserved {
        lines: vec![line("A", 3)],
    };
    let (_, effects) = order
        .apply(&answered(3, &request, reserved, 2 * MINUTE), &policy)
        .unwrap();
    let stock = order.stock.clone().unwrap();
    assert_eq!(stock.state, StockState::Reserved);
    assert_eq!(stock.deadline, Some(17 * MINUTE));
    assert!(
        effects
            .armed
            .contains(&(STOCK_TIMER.to_owned(), 17 * MINUTE))
    );
    assert_eq!(effects.stock, [("reserve", "reserved")]);
    assert!(effects.internal.is_empty());

    // The warehouse allocates: commit.
    let (_, effects) = order.apply(&mv(4, Allocated, 3 * MINUTE), &policy).unwrap();
    assert_eq!(effects.internal.len(), 1);
    let commit = effects.internal[0].clone();
    assert_eq!(commit.source_event_id, "stock:commit:4@shop:1");
    order.apply(
        &answered(
            5,
            &commit,
            StockOutcome::Done {
                lines: vec![line("A", 3)],
            },
            3 * MINUTE,
        ),
        &policy,
    );
    assert_eq!(order.stock.as_ref().unwrap().state, StockState::Committed);
    assert!(!order.armed_timers().any(|(t, _)| t == STOCK_TIMER));
    // Later reports ask nothing; a replay gives the same order.
    let (_, effects) = order.apply(&mv(6, Shipped, 4 * MINUTE), &policy).unwrap();
    assert!(effects.internal.is_empty());
}

#[test]
fn an_order_that_cannot_reserve_goes_on_hold_oversell_and_tells_someone() {
    let policy = policy();
    let mut order = Order::new("shop:1");
    let (_, effects) = order.apply(&paid_with_items(1, 0), &policy).unwrap();
    let request = effects.internal[0].clone();
    let short = StockOutcome::Short {
        lines: vec![ShortLine {
            sku: "A".into(),
            warehouse: String::new(),
            wanted: 3,
            available: 1,
        }],
    };
    let (_, effects) = order
        .apply(&answered(2, &request, short, MINUTE), &policy)
        .unwrap();
    assert_eq!(order.state, Some(OnHold));
    let hold = order.hold.clone().unwrap();
    assert_eq!(hold.by.as_deref(), Some("stock"));
    assert_eq!(hold.reason.as_deref(), Some("oversell: A wants 3, 1 left"));
    assert_eq!(effects.holds, ["oversell"]);
    let texts: Vec<&str> = effects
        .syncs
        .iter()
        .filter_map(|s| s.payload["text"].as_str())
        .collect();
    assert_eq!(texts, ["shop:1 oversold: A wants 3"]);
    assert!(effects.syncs[0].id.ends_with(":oversell"));
    // Released (stock was added): it asks again.
    let (_, effects) = order
        .apply(
            &event(3, "ops", EventAction::ReleaseHold, 2 * MINUTE),
            &policy,
        )
        .unwrap();
    assert_eq!(order.state, Some(Paid));
    assert_eq!(effects.internal.len(), 1);
    assert_eq!(
        effects.internal[0].source_event_id,
        "stock:reserve:3@shop:1"
    );
}

#[test]
fn a_reservation_expires_unless_taken_and_a_cancel_gives_it_back() {
    let policy = policy();
    let mut order = Order::new("shop:1");
    let (_, effects) = order.apply(&paid_with_items(1, 0), &policy).unwrap();
    let request = effects.internal[0].clone();
    let reserved = StockOutcome::Reserved {
        lines: vec![line("A", 3)],
    };
    order.apply(&answered(2, &request, reserved.clone(), 0), &policy);
    let expiry = order.stock_due(15 * MINUTE).unwrap();
    assert_eq!(
        expiry.source_event_id,
        "stock:release:expired:900000@shop:1"
    );
    assert!(order.stock_due(14 * MINUTE).is_none(), "not that deadline");
    order.apply(
        &answered(
            3,
            &expiry,
            StockOutcome::Done {
                lines: vec![line("A", 3)],
            },
            15 * MINUTE,
        ),
        &policy,
    );
    let stock = order.stock.clone().unwrap();
    assert_eq!(stock.state, StockState::Released);
    assert_eq!(stock.reason.as_deref(), Some("expired"));
    assert!(!order.armed_timers().any(|(t, _)| t == STOCK_TIMER));

    // Another order: reserved, then cancelled.
    let mut cancelled = Order::new("shop:1");
    cancelled.apply(&paid_with_items(1, 0), &policy);
    cancelled.apply(&answered(2, &request, reserved, 0), &policy);
    let (_, effects) = cancelled.apply(&mv(3, Cancelled, MINUTE), &policy).unwrap();
    assert_eq!(
        effects.internal[0].action,
        EventAction::Stock {
            op: StockOp::Release {
                reason: "cancelled".into()
            },
            outcome: None
        }
    );
}

#[test]
fn lines_arrive_later_and_without_stock_configured_nothing_is_asked() {
    let policy = policy();
    let mut order = Order::new("shop:1");
    let (_, effects) = order.apply(&mv(1, Paid, 0), &policy).unwrap();
    assert!(effects.internal.is_empty(), "no lines yet");
    assert!(order.stock.is_none());
    // The order's contents arrive (order details).
    let mut details = event(2, "shop_api", EventAction::Inform, MINUTE);
    details
        .event
        .fields
        .insert_value(ITEMS_FIELD, &serde_json::json!([{"sku": "A", "qty": 1}]));
    let (_, effects) = order.apply(&details, &policy).unwrap();
    assert_eq!(effects.internal.len(), 1);

    let plain = OrderPolicy::permissive();
    let mut order = Order::new("shop:1");
    let (_, effects) = order.apply(&paid_with_items(1, 0), &plain).unwrap();
    assert!(effects.internal.is_empty());
    assert!(order.stock.is_none());
}

#[test]
fn lines_are_read_from_items_with_sku_and_positive_qty() {
    let fields = serde_json::json!({
        "warehouse": "hz",
        "items": [
            {"sku": "A", "qty": 2},
            {"sku": "A", "qty": 1, "warehouse": "sh"},
            {"sku": 42, "qty": 1.5},
            {"sku": "B", "qty": 0},
            {"sku": " ", "qty": 1},
            "junk"
        ]
    });
    let lines = super::stock::lines_of(&fields.as_object().unwrap().into()).unwrap();
    assert_eq!(
        lines,
        vec![
            StockLine {
                sku: "A".into(),
                warehouse: "hz".into(),
                qty: 2
            },
            StockLine {
                sku: "A".into(),
                warehouse: "sh".into(),
                qty: 1
            },
        ]
    );
    assert!(super::stock::lines_of(&Default::default()).is_none());
}
