//! Approval flows in the fold: opening, counting each operator once, closing, intercepts that
//! move the order (or return it), deadlines that escalate or decide, and replay.

use super::*;
use crate::order::rules::{RuleSet, RuleSpec};
use OrderState::*;

const MINUTE: Millis = 60_000;

fn event(seq: u64, source: &str, raw: &str, action: EventAction, at: Millis) -> JournaledEvent {
    super::test_support::journaled(seq, "shop:1", source, raw, action, at)
}

fn mv(seq: u64, source: &str, state: OrderState, at: Millis) -> JournaledEvent {
    event(seq, source, state.as_str(), EventAction::Move { state }, at)
}

fn decide(seq: u64, approval: &str, who: &str, decision: Verdict, at: Millis) -> JournaledEvent {
    let mut decided = event(
        seq,
        OPERATOR_SOURCE,
        decision.as_str(),
        EventAction::Decide {
            approval: approval.into(),
            decision,
            comment: Some(format!("{who} says {}", decision.as_str())),
        },
        at,
    );
    decided
        .event
        .fields
        .insert_value("operator", &who.to_owned().into());
    decided
}

fn due(seq: u64, approval: &Approval, at: Millis) -> JournaledEvent {
    event(
        seq,
        INTERNAL_SOURCE,
        "approval_due",
        EventAction::ApprovalDue {
            approval: approval.id.clone(),
            deadline: approval.deadline,
            late: false,
        },
        at,
    )
}

fn intercept_flow(on_timeout: OnTimeout) -> ApprovalSpec {
    ApprovalSpec {
        name: "intercept".into(),
        when: r#"event.status == "intercept_requested""#.into(),
        required: 2,
        role: "approver".into(),
        within_ms: 20 * MINUTE,
        on_timeout,
        escalate_to: Some("wecom_ops".into()),
        on_approve: Some(ApprovalActions {
            sync: Some(crate::order::rules::Sinks(vec![
                "wms".into(),
                "courier".into(),
            ])),
            ..ApprovalActions::default()
        }),
        on_reject: Some(ApprovalActions {
            notify: Some("wecom_cs".into()),
            message: Some("{{ order.key }}: intercept refused".into()),
            ..ApprovalActions::default()
        }),
    }
}

fn policy(on_timeout: OnTimeout) -> OrderPolicy {
    let rules = RuleSet::compile_with_approvals(
        vec![
            RuleSpec {
                name: "erp_on_shipped".into(),
                when: r#"order.state == "shipped""#.into(),
                sync: Some("erp".into()),
                ..RuleSpec::default()
            },
            RuleSpec {
                name: "tell_opened".into(),
                when: "true".into(),
                on: Some("approval_opened".into()),
                notify: Some("wecom_cs".into()),
                message: Some(
                    "{{ event.approval.name }} for {{ order.key }} needs {{ event.approval.required }} by {{ event.approval.deadline_utc }}"
                        .into(),
                ),
                ..RuleSpec::default()
            },
            RuleSpec {
                name: "tell_decided".into(),
                when: "true".into(),
                on: Some("approval_decided".into()),
                notify: Some("wecom_cs".into()),
                message: Some("{{ event.approval.name }}: {{ event.approval.state }}".into()),
                ..RuleSpec::default()
            },
            RuleSpec {
                name: "tell_expired".into(),
                when: "true".into(),
                on: Some("approval_expired".into()),
                tag: Some("approval_expired".into()),
                ..RuleSpec::default()
            },
        ],
        vec![intercept_flow(on_timeout)],
    )
    .unwrap();
    OrderPolicy::permissive().with_rules(rules)
}

fn sinks(effects: &Effects) -> Vec<(String, String)> {
    effects
        .syncs
        .iter()
        .map(|s| (s.sink.clone(), s.id.clone()))
        .collect()
}

/// A shipped order whose intercept was requested at seq 3: the approval is open.
fn requested(policy: &OrderPolicy) -> (Order, Effects) {
    let mut order = Order::new("shop:1");
    order.apply(&mv(1, "shop", Paid, 0), policy);
    order.apply(&mv(2, "wms", Shipped, MINUTE), policy);
    let (outcome, effects) = order
        .apply(&mv(3, "cs", InterceptRequested, 2 * MINUTE), policy)
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Applied {
            from: Some(Shipped),
            to: InterceptRequested
        }
    );
    (order, effects)
}

#[test]
fn two_approvers_approve_an_intercept_and_its_syncs_go_out() {
    let policy = policy(OnTimeout::Escalate);
    let (mut order, effects) = requested(&policy);
    let approval = order.approvals[0].clone();
    assert_eq!(approval.id, "shop:1:intercept:3");
    assert_eq!(approval.state, ApprovalState::Open);
    assert_eq!(approval.deadline, 22 * MINUTE);
    assert!(approval.intercept);
    assert!(
        effects
            .armed
            .contains(&("shop:1:intercept:3".into(), 22 * MINUTE))
    );
    assert!(order.armed_timers().any(|(t, _)| t == approval.id));
    assert_eq!(
        sinks(&effects),
        [(
            "wecom_cs".to_owned(),
            "shop:1:3:wecom_cs:approval_opened".to_owned()
        )]
    );
    assert_eq!(
        effects.syncs[0].payload["text"],
        "intercept for shop:1 needs 2 by 1970-01-01T00:22:00Z"
    );

    // One approval: still open, nothing sent.
    let (outcome, effects) = order
        .apply(
            &decide(4, &approval.id, "li.na", Verdict::Approve, 3 * MINUTE),
            &policy,
        )
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Approval {
            approval: approval.id.clone(),
            state: ApprovalState::Open
        }
    );
    assert!(effects.syncs.is_empty());
    assert_eq!(order.timeline.last().unwrap().by.as_deref(), Some("li.na"));

    // The same operator again does not count.
    let (outcome, _) = order
        .apply(
            &decide(5, &approval.id, "li.na", Verdict::Approve, 4 * MINUTE),
            &policy,
        )
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::NotDecided {
            approval: approval.id.clone(),
            reason: "decided_already".into()
        }
    );
    assert_eq!(order.state, Some(InterceptRequested));

    // A second approver: approved, intercepted, the syncs go out, the deadline is disarmed.
    let (outcome, effects) = order
        .apply(
            &decide(6, &approval.id, "wang.wei", Verdict::Approve, 5 * MINUTE),
            &policy,
        )
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Applied {
            from: Some(InterceptRequested),
            to: Intercepted
        }
    );
    assert_eq!(order.state, Some(Intercepted));
    assert_eq!(order.approvals[0].state, ApprovalState::Approved);
    assert_eq!(order.approvals[0].closed_at, Some(5 * MINUTE));
    assert_eq!(order.approvals[0].decisions.len(), 2);
    assert!(effects.disarmed.contains(&approval.id));
    assert!(!order.armed_timers().any(|(t, _)| t == approval.id));
    assert_eq!(
        sinks(&effects),
        [
            ("wms".to_owned(), "shop:1:6:wms:approved".to_owned()),
            ("courier".to_owned(), "shop:1:6:courier:approved".to_owned()),
            (
                "wecom_cs".to_owned(),
                "shop:1:6:wecom_cs:approval_decided".to_owned()
            ),
        ]
    );
    assert_eq!(effects.syncs[2].payload["text"], "intercept: approved");

    // Deciding after the decision does not count.
    let (outcome, _) = order
        .apply(
            &decide(7, &approval.id, "zhao.min", Verdict::Reject, 6 * MINUTE),
            &policy,
        )
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::NotDecided {
            approval: approval.id.clone(),
            reason: "closed".into()
        }
    );
    assert_eq!(order.state, Some(Intercepted));

    // Everything is in the journal: a replay gives the same order.
    let events: Vec<JournaledEvent> = vec![
        mv(1, "shop", Paid, 0),
        mv(2, "wms", Shipped, MINUTE),
        mv(3, "cs", InterceptRequested, 2 * MINUTE),
        decide(4, &approval.id, "li.na", Verdict::Approve, 3 * MINUTE),
        decide(5, &approval.id, "li.na", Verdict::Approve, 4 * MINUTE),
        decide(6, &approval.id, "wang.wei", Verdict::Approve, 5 * MINUTE),
        decide(7, &approval.id, "zhao.min", Verdict::Reject, 6 * MINUTE),
    ];
    assert_eq!(Order::replay("shop:1", &events, &policy), order);
}

#[test]
fn a_rejected_intercept_returns_the_order_to_where_it_was() {
    let policy = policy(OnTimeout::Escalate);
    let (mut order, _) = requested(&policy);
    let id = order.approvals[0].id.clone();
    let (outcome, effects) = order
        .apply(
            &decide(4, &id, "li.na", Verdict::Reject, 3 * MINUTE),
            &policy,
        )
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Applied {
            from: Some(InterceptRequested),
            to: Shipped
        }
    );
    assert_eq!(order.state, Some(Shipped));
    assert!(order.intercept.is_none());
    assert_eq!(order.approvals[0].state, ApprovalState::Rejected);
    let entry = order.timeline.last().unwrap();
    assert_eq!(entry.mapped, "intercept_rejected");
    assert_eq!(entry.by.as_deref(), Some("li.na"));
    // Back where it was: shipped's rule (erp) does not fire again; the rejection is told.
    assert_eq!(
        sinks(&effects),
        [
            (
                "wecom_cs".to_owned(),
                "shop:1:4:wecom_cs:rejected".to_owned()
            ),
            (
                "wecom_cs".to_owned(),
                "shop:1:4:wecom_cs:approval_decided".to_owned()
            ),
        ]
    );
    assert_eq!(
        effects.syncs[0].payload["text"],
        "shop:1: intercept refused"
    );
    // The order goes on as before.
    let (outcome, _) = order
        .apply(&mv(5, "courier", InTransit, 4 * MINUTE), &policy)
        .unwrap();
    assert!(matches!(outcome, Outcome::Applied { to: InTransit, .. }));
}

#[test]
fn progress_reported_while_an_intercept_waits_applies_if_it_is_rejected() {
    let policy = policy(OnTimeout::Escalate);
    let (mut order, _) = requested(&policy);
    let id = order.approvals[0].id.clone();
    let (outcome, _) = order
        .apply(&mv(4, "courier", InTransit, 3 * MINUTE), &policy)
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Noted {
            resume_to: InTransit
        }
    );
    assert_eq!(order.state, Some(InterceptRequested));
    // A report behind it is stale, one that contradicts it conflicts.
    let (outcome, _) = order
        .apply(&mv(5, "wms", Packed, 3 * MINUTE), &policy)
        .unwrap();
    assert_eq!(outcome, Outcome::Stale { current: InTransit });
    let (outcome, effects) = order
        .apply(
            &decide(6, &id, "li.na", Verdict::Reject, 4 * MINUTE),
            &policy,
        )
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Applied {
            from: Some(InterceptRequested),
            to: InTransit
        }
    );
    assert_eq!(effects.syncs.len(), 2, "{:?}", effects.syncs);
}

#[test]
fn an_intercept_may_be_requested_before_shipping_and_a_cancel_still_cancels() {
    let policy = policy(OnTimeout::Escalate);
    let mut order = Order::new("shop:1");
    order.apply(&mv(1, "shop", Paid, 0), &policy);
    let (outcome, _) = order
        .apply(&mv(2, "cs", InterceptRequested, MINUTE), &policy)
        .unwrap();
    assert!(matches!(
        outcome,
        Outcome::Applied {
            to: InterceptRequested,
            ..
        }
    ));
    assert_eq!(order.approvals.len(), 1);
    let id = order.approvals[0].id.clone();
    let (outcome, effects) = order
        .apply(&mv(3, "shop", Cancelled, 2 * MINUTE), &policy)
        .unwrap();
    assert!(matches!(outcome, Outcome::Applied { to: Cancelled, .. }));
    assert!(order.intercept.is_none());
    // Its approval cannot decide anything any more: closed, its deadline disarmed.
    assert_eq!(order.approvals[0].state, ApprovalState::Expired);
    assert!(!order.approvals[0].decidable());
    assert!(effects.disarmed.contains(&id));
    assert!(
        order.timeline.last().unwrap().rules[0].contains("closed undecided"),
        "{:?}",
        order.timeline.last()
    );
    let (outcome, effects) = order
        .apply(
            &decide(4, &id, "li.na", Verdict::Approve, 3 * MINUTE),
            &policy,
        )
        .unwrap();
    assert!(matches!(outcome, Outcome::NotDecided { ref reason, .. } if reason == "closed"));
    assert!(
        effects.syncs.is_empty(),
        "no intercept for a cancelled order"
    );

    // Not after delivery: the request conflicts and opens nothing.
    let mut delivered = Order::new("shop:2");
    delivered.apply(&mv(1, "courier", Delivered, 0), &policy);
    let (outcome, _) = delivered
        .apply(&mv(2, "cs", InterceptRequested, MINUTE), &policy)
        .unwrap();
    assert_eq!(outcome, Outcome::Conflict { current: Delivered });
    assert!(delivered.approvals.is_empty());
}

#[test]
fn a_deadline_escalates_and_the_approval_stays_decidable() {
    let policy = policy(OnTimeout::Escalate);
    let (mut order, _) = requested(&policy);
    let approval = order.approvals[0].clone();
    let (outcome, effects) = order
        .apply(&due(4, &approval, 22 * MINUTE), &policy)
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Approval {
            approval: approval.id.clone(),
            state: ApprovalState::Expired
        }
    );
    assert_eq!(order.state, Some(InterceptRequested));
    assert!(order.tags.contains(&"approval_expired".to_owned()));
    assert_eq!(
        sinks(&effects),
        [(
            "wecom_ops".to_owned(),
            "shop:1:4:wecom_ops:escalated".to_owned()
        )]
    );
    let text = effects.syncs[0].payload["text"].as_str().unwrap();
    assert!(text.contains("past its deadline with 0 of 2"), "{text}");
    assert!(order.approvals[0].decidable());
    assert!(!order.armed_timers().any(|(t, _)| t == approval.id));

    // A second due for the same deadline changes nothing.
    let (outcome, _) = order
        .apply(&due(5, &approval, 23 * MINUTE), &policy)
        .unwrap();
    assert!(matches!(outcome, Outcome::NotDecided { .. }));

    order.apply(
        &decide(6, &approval.id, "li.na", Verdict::Approve, 30 * MINUTE),
        &policy,
    );
    order.apply(
        &decide(7, &approval.id, "wang.wei", Verdict::Approve, 31 * MINUTE),
        &policy,
    );
    assert_eq!(order.approvals[0].state, ApprovalState::Approved);
    assert_eq!(order.state, Some(Intercepted));
}

#[test]
fn a_deadline_can_decide_instead_of_people() {
    for (on_timeout, state) in [
        (OnTimeout::Reject, Shipped),
        (OnTimeout::Approve, Intercepted),
    ] {
        let policy = policy(on_timeout);
        let (mut order, _) = requested(&policy);
        let approval = order.approvals[0].clone();
        order.apply(
            &decide(4, &approval.id, "li.na", Verdict::Approve, 3 * MINUTE),
            &policy,
        );
        let (outcome, effects) = order
            .apply(&due(5, &approval, 22 * MINUTE), &policy)
            .unwrap();
        assert!(matches!(outcome, Outcome::Applied { to, .. } if to == state));
        assert_eq!(order.approvals[0].state, ApprovalState::Expired);
        assert!(!order.approvals[0].decidable());
        let ids: Vec<String> = effects.syncs.iter().map(|s| s.id.clone()).collect();
        assert!(
            ids.iter().any(|id| id.ends_with(":approval_decided")),
            "{ids:?}"
        );
        let (outcome, _) = order
            .apply(
                &decide(6, &approval.id, "wang.wei", Verdict::Approve, 23 * MINUTE),
                &policy,
            )
            .unwrap();
        assert!(matches!(outcome, Outcome::NotDecided { ref reason, .. } if reason == "closed"));
    }
}

#[test]
fn one_approval_per_flow_is_open_at_a_time_and_reports_that_change_nothing_open_none() {
    let policy = policy(OnTimeout::Escalate);
    let (mut order, _) = requested(&policy);
    // The same request again (another delivery id): unchanged, no second approval.
    order.apply(&mv(4, "cs", InterceptRequested, 3 * MINUTE), &policy);
    assert_eq!(order.approvals.len(), 1);
    // A decision for an approval that does not exist.
    let (outcome, _) = order
        .apply(
            &decide(
                5,
                "shop:1:intercept:99",
                "li.na",
                Verdict::Approve,
                4 * MINUTE,
            ),
            &policy,
        )
        .unwrap();
    assert!(matches!(outcome, Outcome::NotDecided { ref reason, .. } if reason == "unknown"));
}

#[test]
fn approval_flows_are_checked_when_compiled() {
    let compile = |spec: ApprovalSpec| RuleSet::compile_with_approvals(Vec::new(), vec![spec]);
    let mut bad = intercept_flow(OnTimeout::Escalate);
    bad.name = "two words".into();
    assert!(compile(bad).unwrap_err().problem.contains("name"));
    let mut bad = intercept_flow(OnTimeout::Escalate);
    bad.required = 0;
    assert!(compile(bad).unwrap_err().problem.contains("required"));
    let mut bad = intercept_flow(OnTimeout::Escalate);
    bad.when = "order.state ==".into();
    let err = compile(bad).unwrap_err();
    assert_eq!(err.rule, "approval intercept");
    assert!(err.problem.starts_with("when:"), "{err}");
    let mut bad = intercept_flow(OnTimeout::Escalate);
    bad.on_approve = Some(ApprovalActions::default());
    assert!(compile(bad).unwrap_err().problem.contains("on_approve"));
    let twice = RuleSet::compile_with_approvals(
        Vec::new(),
        vec![
            intercept_flow(OnTimeout::Escalate),
            intercept_flow(OnTimeout::Reject),
        ],
    );
    assert!(twice.unwrap_err().problem.contains("unique"));
}
