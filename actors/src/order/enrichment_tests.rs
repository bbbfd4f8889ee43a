//! Order-detail enrichment in the fold: when fetches are queued, what an answer does, and
//! rules that wait for the fields they need.

use super::*;
use crate::order::rules::{RuleSet, RuleSpec};
use OrderState::*;

fn policy(rules: Vec<RuleSpec>) -> OrderPolicy {
    OrderPolicy::permissive()
        .with_rules(RuleSet::compile(rules).unwrap())
        .with_details(DetailsSpec {
            source: "douyin".into(),
            sink: details_name("douyin"),
            answers: details_name("douyin"),
            refetch_on: vec!["105".into()],
        })
}

fn report(seq: u64, source: &str, raw: &str, action: EventAction, at: Millis) -> JournaledEvent {
    super::test_support::journaled(seq, "douyin:42", source, raw, action, at)
}

fn answer(seq: u64, at: Millis, amount: f64) -> JournaledEvent {
    let mut event = report(seq, "douyin_api", "2", EventAction::Inform, at);
    event.event.fields = serde_json::json!({
        "items": [{"sku": "SKU-1", "name": "Tea", "qty": 2, "price": amount / 2.0}],
        "amount": amount,
    })
    .as_object()
    .cloned()
    .unwrap()
    .into();
    event
}

fn fetches(effects: &Effects) -> Vec<(&str, &str)> {
    effects
        .syncs
        .iter()
        .filter(|s| s.rule == DETAILS_RULE)
        .map(|s| (s.id.as_str(), s.payload["reason"].as_str().unwrap()))
        .collect()
}

#[test]
fn a_channel_report_without_contents_queues_one_fetch_until_answered() {
    let policy = policy(vec![]);
    let mut order = Order::new("douyin:42");
    let (_, effects) = order
        .apply(
            &report(1, "douyin", "100", EventAction::Inform, 1_000),
            &policy,
        )
        .unwrap();
    assert_eq!(fetches(&effects), [("douyin:42:1:douyin_api", "missing")]);
    assert_eq!(effects.syncs[0].sink, "douyin_api");
    assert_eq!(effects.syncs[0].payload["order_id"], "42");
    // Another report while that fetch is outstanding asks for nothing more.
    let (_, effects) = order
        .apply(
            &report(2, "douyin", "113", EventAction::Inform, 2_000),
            &policy,
        )
        .unwrap();
    assert!(fetches(&effects).is_empty());
    // Reaching paid fetches again (amounts and status are final then).
    let (_, effects) = order
        .apply(
            &report(3, "douyin", "101", EventAction::Move { state: Paid }, 3_000),
            &policy,
        )
        .unwrap();
    assert_eq!(fetches(&effects), [("douyin:42:3:douyin_api", "paid")]);
    // The answer merges the fields and is noted; it queues nothing itself.
    let (_, effects) = order.apply(&answer(4, 4_000, 10.0), &policy).unwrap();
    assert!(effects.syncs.is_empty());
    assert_eq!(order.fields.to_json()["amount"], 10.0);
    let status = order.details.clone().unwrap();
    assert_eq!(
        (status.requested, status.fetched, status.fetches),
        (3, 4, 2)
    );
    assert_eq!(order.systems["douyin_api"].raw_status, "2");
    // With the contents known, only a status that changes them fetches again.
    let (_, effects) = order
        .apply(
            &report(5, "douyin", "113", EventAction::Inform, 5_000),
            &policy,
        )
        .unwrap();
    assert!(fetches(&effects).is_empty());
    let (_, effects) = order
        .apply(
            &report(6, "douyin", "105", EventAction::Inform, 6_000),
            &policy,
        )
        .unwrap();
    assert_eq!(fetches(&effects), [("douyin:42:6:douyin_api", "changed")]);
}

#[test]
fn a_fetch_that_never_answers_stops_holding_back_new_ones() {
    let policy = policy(vec![]);
    let mut order = Order::new("douyin:42");
    order.apply(&report(1, "douyin", "100", EventAction::Inform, 0), &policy);
    let late = DETAILS_PATIENCE_MS + 1;
    let (_, effects) = order
        .apply(
            &report(2, "douyin", "113", EventAction::Inform, late),
            &policy,
        )
        .unwrap();
    assert_eq!(fetches(&effects), [("douyin:42:2:douyin_api", "missing")]);
}

#[test]
fn other_sources_and_unenriched_channels_fetch_nothing() {
    let policy = policy(vec![]);
    let mut order = Order::new("douyin:42");
    let (_, effects) = order
        .apply(
            &report(1, "wms", "paid", EventAction::Move { state: Paid }, 0),
            &policy,
        )
        .unwrap();
    assert!(effects.syncs.is_empty());
    assert!(order.details.is_none());
}

#[test]
fn a_rule_that_needs_items_waits_for_them_and_fires_as_at_its_transition() {
    let rules = vec![
        RuleSpec {
            name: "big".into(),
            when: r#"order.state == "paid" && order.fields.amount >= 50000.0"#.into(),
            sync: Some("erp".into()),
            needs: vec!["items".into(), "amount".into()],
            ..RuleSpec::default()
        },
        RuleSpec {
            name: "tag_paid".into(),
            when: r#"order.state == "paid""#.into(),
            tag: Some("seen_paid".into()),
            ..RuleSpec::default()
        },
    ];
    let policy = policy(rules);
    let mut order = Order::new("douyin:42");
    let (_, effects) = order
        .apply(
            &report(1, "douyin", "101", EventAction::Move { state: Paid }, 0),
            &policy,
        )
        .unwrap();
    // The rule without needs fired; the one with needs waits (no failed condition).
    assert_eq!(order.tags, ["seen_paid"]);
    assert!(effects.syncs.iter().all(|s| s.sink != "erp"));
    assert_eq!(order.waiting.len(), 1);
    assert_eq!(order.waiting[0].rule, "big");
    assert!(
        order.timeline[0]
            .rules
            .iter()
            .any(|n| n == "rule big: waits for fields.items"),
        "{:?}",
        order.timeline[0].rules
    );
    // The order moves on before the details come; the rule is judged as at paid.
    order.apply(
        &report(2, "wms", "alloc", EventAction::Move { state: Allocated }, 1),
        &policy,
    );
    let (_, effects) = order.apply(&answer(3, 2, 60_000.0), &policy).unwrap();
    let erp: Vec<_> = effects.syncs.iter().filter(|s| s.sink == "erp").collect();
    assert_eq!(erp.len(), 1);
    assert_eq!(
        erp[0].id, "douyin:42:1:erp",
        "keyed by the transition it waited at"
    );
    assert_eq!(erp[0].payload["state"], "paid");
    assert_eq!(erp[0].whole_payload()["fields"]["amount"], 60_000.0);
    assert!(order.waiting.is_empty());
    // A small order: the rule is judged, its condition is false, nothing is sent.
    let mut small = Order::new("douyin:42");
    small.apply(
        &report(1, "douyin", "101", EventAction::Move { state: Paid }, 0),
        &policy,
    );
    let (_, effects) = small.apply(&answer(2, 1, 100.0), &policy).unwrap();
    assert!(effects.syncs.iter().all(|s| s.sink != "erp"));
    assert!(small.waiting.is_empty());
}

#[test]
fn replay_decides_the_same_fetches_and_waiting_rules() {
    let rules = vec![RuleSpec {
        name: "erp".into(),
        when: r#"order.state == "paid""#.into(),
        sync: Some("erp".into()),
        needs: vec!["items".into()],
        ..RuleSpec::default()
    }];
    let policy = policy(rules);
    let events = [
        report(1, "douyin", "100", EventAction::Inform, 0),
        report(2, "douyin", "101", EventAction::Move { state: Paid }, 1),
        answer(3, 2, 10.0),
    ];
    let (once, syncs) = Order::replay_collecting("douyin:42", &events, &policy, 0);
    let (again, _) = Order::replay_collecting("douyin:42", &events, &policy, 0);
    assert_eq!(once, again);
    let ids: Vec<_> = syncs.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "douyin:42:1:douyin_api",
            "douyin:42:2:douyin_api",
            "douyin:42:2:erp"
        ]
    );
    let text = serde_json::to_string(&once).unwrap();
    let back: Order = serde_json::from_str(&text).unwrap();
    assert_eq!(
        back, once,
        "details and waiting survive a summary round trip"
    );
}
