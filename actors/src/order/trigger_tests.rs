//! Rules judged on what is not a transition: SLA breaches, holds, unmapped statuses.

use super::*;
use crate::order::rules::{RuleSet, RuleSpec};
use OrderState::*;

fn event(seq: u64, source: &str, raw: &str, action: EventAction, at: Millis) -> JournaledEvent {
    super::test_support::journaled(seq, "shop:1", source, raw, action, at)
}

fn notify(name: &str, on: &str, message: &str) -> RuleSpec {
    RuleSpec {
        name: name.into(),
        when: "true".into(),
        on: Some(on.into()),
        notify: Some("wecom".into()),
        message: Some(message.into()),
        ..RuleSpec::default()
    }
}

fn policy() -> OrderPolicy {
    let rules = RuleSet::compile(vec![
        notify(
            "tell_breach",
            "sla_breached",
            "{{ order.key }} breached {{ event.sla.rule }} by {{ (event.sla.late_by_ms / 60000) | round | int }} min",
        ),
        notify("tell_hold", "hold", "{{ order.key }} held by {{ event.hold.by }}: {{ event.hold.reason }}"),
        notify("tell_unmapped", "unmapped_status", "{{ order.key }}: unknown status {{ event.raw_status }}"),
        RuleSpec {
            name: "erp".into(),
            when: r#"order.state == "paid""#.into(),
            sync: Some("erp".into()),
            ..RuleSpec::default()
        },
    ])
    .unwrap();
    OrderPolicy::permissive()
        .with_rules(rules)
        .with_sla(SlaRule {
            name: "allocate_within_2h".into(),
            from: Paid,
            within_ms: 2 * 3_600_000,
            reset_on_event: false,
        })
}

fn texts(effects: &Effects) -> Vec<(String, String)> {
    effects
        .syncs
        .iter()
        .filter(|s| s.sink == "wecom")
        .map(|s| {
            (
                s.id.clone(),
                s.payload["text"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
fn a_breach_a_hold_and_an_unknown_status_each_tell_someone() {
    let policy = policy();
    let mut order = Order::new("shop:1");
    let (_, effects) = order
        .apply(
            &event(1, "shop", "paid", EventAction::Move { state: Paid }, 0),
            &policy,
        )
        .unwrap();
    assert!(
        texts(&effects).is_empty(),
        "a transition fires only transition rules"
    );
    assert_eq!(effects.syncs.len(), 1);
    // The breach, detected 30 minutes late.
    let deadline = 2 * 3_600_000;
    let breach = event(
        2,
        INTERNAL_SOURCE,
        "sla_breach",
        EventAction::SlaBreach {
            rule: "allocate_within_2h".into(),
            deadline,
            late: true,
        },
        deadline + 30 * 60_000,
    );
    let (_, effects) = order.apply(&breach, &policy).unwrap();
    assert_eq!(
        texts(&effects),
        [(
            "shop:1:2:wecom:sla_breached".to_owned(),
            "shop:1 breached allocate_within_2h by 30 min".to_owned()
        )]
    );
    // An operator's hold.
    let mut hold = event(
        3,
        OPERATOR_SOURCE,
        "hold",
        EventAction::Move { state: OnHold },
        1,
    );
    hold.event.fields = serde_json::json!({"operator": "li.na", "reason": "fraud check"})
        .as_object()
        .cloned()
        .unwrap()
        .into();
    let (_, effects) = order.apply(&hold, &policy).unwrap();
    assert_eq!(
        texts(&effects),
        [(
            "shop:1:3:wecom:hold".to_owned(),
            "shop:1 held by li.na: fraud check".to_owned()
        )]
    );
    // A status the mapping does not know.
    let (_, effects) = order
        .apply(
            &event(4, "wms", "TELEPORTED", EventAction::Unmapped, 2),
            &policy,
        )
        .unwrap();
    assert_eq!(
        texts(&effects),
        [(
            "shop:1:4:wecom:unmapped_status".to_owned(),
            "shop:1: unknown status TELEPORTED".to_owned()
        )]
    );
    // Replaying decides the same.
    let events = [
        event(1, "shop", "paid", EventAction::Move { state: Paid }, 0),
        breach,
        hold,
    ];
    let (_, first) = Order::replay_collecting("shop:1", &events, &policy, 0);
    let (_, again) = Order::replay_collecting("shop:1", &events, &policy, 0);
    assert_eq!(first, again);
    assert_eq!(first.len(), 3);
}

#[test]
fn unknown_triggers_are_refused_by_name() {
    assert!(RuleSet::compile(vec![notify("r", "disagreement", "x")]).is_ok());
    let err = RuleSet::compile(vec![notify("r", "sla_breech", "x")]).unwrap_err();
    assert!(err.problem.contains("unknown trigger"), "{err}");
}
