//! Disagreements: systems that contradict each other are flagged (and told), and resolved when
//! they stop.

use super::*;
use crate::order::rules::{RuleSet, RuleSpec};
use OrderState::*;

fn report(seq: u64, source: &str, raw: &str, state: OrderState, at: Millis) -> JournaledEvent {
    super::test_support::journaled(
        seq,
        "douyin:1",
        source,
        raw,
        EventAction::Move { state },
        at,
    )
}

fn policy() -> OrderPolicy {
    let rules = RuleSet::compile(vec![RuleSpec {
        name: "tell_disagreement".into(),
        when: "true".into(),
        on: Some("disagreement".into()),
        notify: Some("wecom".into()),
        message: Some("{{ order.key }}: {{ event.disagreement.kind }}".into()),
        ..RuleSpec::default()
    }])
    .unwrap();
    OrderPolicy::permissive()
        .with_rules(rules)
        .with_sla(SlaRule {
            name: "pickup_within_24h".into(),
            from: Shipped,
            within_ms: 24 * 3_600_000,
            reset_on_event: false,
        })
        .with_role("yunda", SourceRole::Courier)
}

fn open_kinds(order: &Order) -> Vec<&str> {
    order.disagreeing().collect()
}

#[test]
fn the_channel_cancels_what_the_warehouse_shipped() {
    let policy = policy();
    let mut order = Order::new("douyin:1");
    order.apply(&report(1, "douyin", "2", Paid, 0), &policy);
    order.apply(&report(2, "wdt", "95", Shipped, 1000), &policy);
    let (outcome, effects) = order
        .apply(&report(3, "douyin", "4", Cancelled, 2000), &policy)
        .unwrap();
    assert_eq!(outcome, Outcome::Conflict { current: Shipped });
    assert_eq!(open_kinds(&order), ["cancelled_but_shipped"]);
    let flagged = &order.disagreements[0];
    assert_eq!(flagged.systems["douyin"], "4");
    assert_eq!(flagged.systems["wdt"], "95");
    assert_eq!(flagged.since, 2000);
    assert_eq!(effects.disagreements, ["cancelled_but_shipped"]);
    assert_eq!(effects.syncs.len(), 1);
    assert_eq!(
        effects.syncs[0].payload["text"],
        "douyin:1: cancelled_but_shipped"
    );
    assert!(effects.syncs[0].id.ends_with(":disagreement"));
    // Flagged once: another report changes nothing.
    let (_, effects) = order
        .apply(&report(4, "douyin", "4", Cancelled, 3000), &policy)
        .unwrap();
    assert!(effects.disagreements.is_empty() && effects.syncs.is_empty());
}

#[test]
fn a_courier_scan_the_warehouse_never_shipped_and_its_resolution() {
    let policy = policy();
    let mut order = Order::new("douyin:1");
    order.apply(&report(1, "wdt", "55", Packed, 0), &policy);
    let (_, effects) = order
        .apply(&report(2, "yunda", "collected", InTransit, 1000), &policy)
        .unwrap();
    assert_eq!(effects.disagreements, ["scan_without_shipment"]);
    // The WMS catches up: resolved, and the history stays.
    order.apply(&report(3, "wdt", "95", Shipped, 2000), &policy);
    assert!(open_kinds(&order).is_empty());
    assert_eq!(order.disagreements[0].resolved_at, Some(2000));
    // Without a WMS reporting the order, a scan alone is no disagreement.
    let mut alone = Order::new("douyin:2");
    alone.apply(&report(1, "douyin", "2", Paid, 0), &policy);
    let (_, effects) = alone
        .apply(&report(2, "sf", "50", InTransit, 1000), &policy)
        .unwrap();
    assert!(effects.disagreements.is_empty());
}

#[test]
fn shipped_without_pickup_by_the_deadline_until_the_courier_collects() {
    let policy = policy();
    let mut order = Order::new("douyin:1");
    order.apply(&report(1, "wms", "SHIPPED", Shipped, 0), &policy);
    let deadline = 24 * 3_600_000;
    let breach = JournaledEvent {
        seq: 2,
        event: OrderEvent {
            order: "douyin:1".into(),
            source: INTERNAL_SOURCE.into(),
            source_event_id: "sla".into(),
            supersedes: None,
            log_seq: None,
            raw_status: "sla_breach".into(),
            action: EventAction::SlaBreach {
                rule: "pickup_within_24h".into(),
                deadline,
                late: false,
            },
            occurred_at: deadline,
            received_at: deadline,
            fields: Default::default(),
        },
    };
    let (_, effects) = order.apply(&breach, &policy).unwrap();
    assert_eq!(effects.disagreements, ["shipped_without_pickup"]);
    assert_eq!(order.disagreements[0].systems["wms"], "SHIPPED");
    assert_eq!(order.disagreements[0].systems["courier"], "none");
    // Still open on an unrelated report; resolved when the courier collects.
    order.apply(&report(3, "erp", "x", Shipped, deadline + 1), &policy);
    assert_eq!(open_kinds(&order), ["shipped_without_pickup"]);
    order.apply(&report(4, "sf", "50", InTransit, deadline + 2), &policy);
    assert!(open_kinds(&order).is_empty());
}

#[test]
fn roles_default_by_name_and_can_be_configured() {
    assert_eq!(SourceRole::default_for("douyin"), SourceRole::Channel);
    assert_eq!(SourceRole::default_for("douyin_api"), SourceRole::Channel);
    assert_eq!(SourceRole::default_for("shop"), SourceRole::Channel);
    assert_eq!(SourceRole::default_for("wdt"), SourceRole::Wms);
    assert_eq!(SourceRole::default_for("sf"), SourceRole::Courier);
    assert_eq!(SourceRole::default_for("kingdee"), SourceRole::Erp);
    assert_eq!(SourceRole::default_for("cs"), SourceRole::Other);
    assert_eq!(policy().role_of("yunda"), SourceRole::Courier);
}
