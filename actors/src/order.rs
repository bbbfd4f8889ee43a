//! The canonical order: states, events, the policy that judges them and the pure state machine.

pub mod approval;
pub mod disagreement;
pub mod event;
pub mod fields;
pub mod machine;
pub mod policy;
pub mod rules;
pub mod state;
pub mod stock;
pub mod sync;

pub use approval::{
    Approval, ApprovalActions, ApprovalSpec, ApprovalState, Decision, OnTimeout, Verdict,
};
pub use disagreement::{Disagreement, SourceRole};
pub use event::{
    EventAction, INTERNAL_SOURCE, JournaledEvent, Millis, OrderEvent, SharedEvent, Superseding,
};
pub use fields::{Field, Fields};
pub use machine::{
    DETAILS_PATIENCE_MS, DETAILS_RULE, DetailsStatus, Effects, Hold, ITEMS_FIELD, OPERATOR_SOURCE,
    Order, Outcome, SUB_ORDERS_FIELD, SlaStatus, SlaTimer, SystemStatus, TimelineEntry,
    WaitingRule,
};
pub use policy::{DetailsSpec, OrderPolicy, SlaRule, StockSpec, details_name};
pub use state::{OrderState, STATE_LABELS_WITH_NONE, UnknownState};
pub use stock::{
    STOCK_TIMER, ShortLine, StockLine, StockOp, StockOutcome, StockState, StockStatus,
};

#[cfg(test)]
mod tests {
    use super::*;
    use OrderState::*;
    use proptest::prelude::*;

    fn ev(seq: u64, source: &str, action: EventAction, at: Millis) -> JournaledEvent {
        let raw = action.label().to_owned();
        test_support::journaled(seq, "douyin:1", source, &raw, action, at)
    }

    fn mv(seq: u64, state: OrderState) -> JournaledEvent {
        ev(
            seq,
            "wms",
            EventAction::Move { state },
            seq as Millis * 1000,
        )
    }

    #[test]
    fn forward_moves_apply_and_late_events_are_kept_but_stale() {
        let policy = OrderPolicy::permissive();
        let mut order = Order::new("douyin:1");
        order.apply(&mv(1, Paid), &policy);
        order.apply(&mv(2, Packed), &policy);
        let (outcome, _) = order.apply(&mv(3, Picked), &policy).unwrap();
        assert_eq!(outcome, Outcome::Stale { current: Packed });
        let (outcome, _) = order.apply(&mv(4, Packed), &policy).unwrap();
        assert_eq!(outcome, Outcome::Unchanged);
        assert_eq!(order.state, Some(Packed));
        assert_eq!(order.timeline.len(), 4);
        assert_eq!(order.applied_seq, 4);
        assert!(
            order.apply(&mv(4, Delivered), &policy).is_none(),
            "seq already folded"
        );
    }

    #[test]
    fn an_older_version_of_a_stream_is_kept_but_superseded() {
        let policy = OrderPolicy::permissive();
        let mut order = Order::new("douyin:1");
        let versioned = |seq, state, stream: &str, version| {
            let mut event = mv(seq, state);
            event.event.source = "youzan".into();
            event.event.supersedes = Some(Superseding {
                stream: stream.into(),
                version,
            });
            event
        };
        order.apply(&versioned(1, Paid, "trade_TradeChanged", 5), &policy);
        // Version 3 of the same type was sent earlier and arrives late: it says shipped,
        // but version 5 (paid) is the newer truth.
        let (outcome, _) = order
            .apply(&versioned(2, Shipped, "trade_TradeChanged", 3), &policy)
            .unwrap();
        assert_eq!(outcome, Outcome::Superseded { latest: 5 });
        assert_eq!(order.state, Some(Paid));
        assert_eq!(order.systems["youzan"].raw_status, "paid");
        // Another type's versions do not compare; a newer version of the stream applies.
        let (outcome, _) = order
            .apply(&versioned(3, Allocated, "trade_Other", 1), &policy)
            .unwrap();
        assert!(matches!(outcome, Outcome::Applied { .. }));
        let (outcome, _) = order
            .apply(&versioned(4, Shipped, "trade_TradeChanged", 6), &policy)
            .unwrap();
        assert!(matches!(outcome, Outcome::Applied { .. }));
        assert_eq!(order.timeline.len(), 4);
        // Replaying the journal gives the same order.
        let events: Vec<JournaledEvent> = vec![
            versioned(1, Paid, "trade_TradeChanged", 5),
            versioned(2, Shipped, "trade_TradeChanged", 3),
            versioned(3, Allocated, "trade_Other", 1),
            versioned(4, Shipped, "trade_TradeChanged", 6),
        ];
        assert_eq!(Order::replay("douyin:1", &events, &policy), order);
    }

    #[test]
    fn a_part_refund_refunds_the_order_only_when_every_listed_part_is_refunded() {
        let policy = OrderPolicy::permissive();
        let mut order = Order::new("douyin:1");
        let mut paid = mv(1, Paid);
        paid.event
            .fields
            .insert_value(SUB_ORDERS_FIELD, &serde_json::json!(["11", 12]));
        order.apply(&paid, &policy);
        let part = |seq, part: &str| {
            ev(
                seq,
                "douyin",
                EventAction::MovePart {
                    part: part.into(),
                    state: Refunded,
                },
                seq as Millis * 1000,
            )
        };
        let (outcome, _) = order.apply(&part(2, "11"), &policy).unwrap();
        assert_eq!(
            outcome,
            Outcome::PartMoved {
                part: "11".into(),
                state: Refunded,
                remaining: 1
            }
        );
        assert_eq!(order.state, Some(Paid));
        let (outcome, _) = order.apply(&part(3, "11"), &policy).unwrap();
        assert!(matches!(outcome, Outcome::PartMoved { remaining: 1, .. }));
        let (outcome, _) = order.apply(&part(4, "12"), &policy).unwrap();
        assert_eq!(
            outcome,
            Outcome::Applied {
                from: Some(Paid),
                to: Refunded
            }
        );
        // Without a list of parts the order never follows one part on its own.
        let mut unlisted = Order::new("douyin:2");
        unlisted.apply(&mv(1, Paid), &policy);
        let (outcome, _) = unlisted.apply(&part(2, "21"), &policy).unwrap();
        assert!(matches!(outcome, Outcome::PartMoved { remaining: 0, .. }));
        assert_eq!(unlisted.state, Some(Paid));
    }

    #[test]
    fn an_unmapped_status_is_recorded_and_marked() {
        let policy = OrderPolicy::permissive();
        let mut order = Order::new("douyin:1");
        order.apply(&mv(1, Paid), &policy);
        let (outcome, _) = order
            .apply(&ev(2, "douyin", EventAction::Unmapped, 2_000), &policy)
            .unwrap();
        assert_eq!(outcome, Outcome::Recorded);
        assert_eq!(order.state, Some(Paid));
        let entry = order.timeline.last().unwrap();
        assert!(entry.unmapped);
        assert_eq!(entry.mapped, "none");
        let json = serde_json::to_value(entry).unwrap();
        assert_eq!(json["unmapped"], true);
        assert!(
            serde_json::to_value(&order.timeline[0])
                .unwrap()
                .get("unmapped")
                .is_none()
        );
    }

    #[test]
    fn cancel_after_shipping_conflicts() {
        let policy = OrderPolicy::permissive();
        let mut order = Order::new("k");
        order.apply(&mv(1, Shipped), &policy);
        let (outcome, _) = order.apply(&mv(2, Cancelled), &policy).unwrap();
        assert_eq!(outcome, Outcome::Conflict { current: Shipped });
        assert_eq!(order.state, Some(Shipped));
    }

    #[test]
    fn sources_can_be_restricted() {
        let policy = OrderPolicy::permissive().allow_only(Paid, vec!["douyin".into()]);
        let mut order = Order::new("k");
        let (outcome, _) = order.apply(&mv(1, Paid), &policy).unwrap();
        assert_eq!(outcome, Outcome::NotAllowed);
        assert_eq!(order.state, None);
        let (outcome, _) = order
            .apply(
                &ev(2, "douyin", EventAction::Move { state: Paid }, 2),
                &policy,
            )
            .unwrap();
        assert_eq!(
            outcome,
            Outcome::Applied {
                from: None,
                to: Paid
            }
        );
        assert_eq!(order.systems["wms"].raw_status, "paid");
    }

    #[test]
    fn hold_notes_progress_and_release_resumes_there() {
        let policy = OrderPolicy::permissive();
        let mut order = Order::new("k");
        order.apply(&mv(1, Paid), &policy);
        order.apply(&mv(2, OnHold), &policy);
        assert_eq!(order.state, Some(OnHold));
        let (outcome, _) = order.apply(&mv(3, Picked), &policy).unwrap();
        assert_eq!(outcome, Outcome::Held { resume_to: Picked });
        assert_eq!(order.state, Some(OnHold));
        order.apply(&ev(4, "ops", EventAction::ReleaseHold, 4000), &policy);
        assert_eq!(order.state, Some(Picked));
        assert!(order.hold.is_none());
        let (outcome, _) = order
            .apply(&ev(5, "ops", EventAction::ReleaseHold, 5000), &policy)
            .unwrap();
        assert_eq!(outcome, Outcome::NotHeld);
    }

    #[test]
    fn a_hold_says_who_why_and_since_when() {
        // An operator's hold, even where on_hold is restricted to other sources.
        let policy = OrderPolicy::permissive().allow_only(OnHold, vec!["wms".into()]);
        let mut order = Order::new("k");
        order.apply(&mv(1, Paid), &policy);
        let mut hold = ev(
            2,
            OPERATOR_SOURCE,
            EventAction::Move { state: OnHold },
            2000,
        );
        hold.event.fields = serde_json::json!({"operator": "li.na", "reason": "address check"})
            .as_object()
            .cloned()
            .unwrap()
            .into();
        order.apply(&hold, &policy);
        let held = order.hold.clone().unwrap();
        assert_eq!(
            (held.since, held.reason.as_deref(), held.by.as_deref()),
            (2000, Some("address check"), Some("li.na"))
        );
        assert_eq!(order.timeline[1].by.as_deref(), Some("li.na"));
        assert_eq!(held.held_in, Some(Paid));
        assert!(
            order.fields.is_empty() && !order.systems.contains_key(OPERATOR_SOURCE),
            "an operator's action sets no fields and is no system: {:?}",
            order.fields
        );
        // A source's hold names the source and its raw status.
        let mut other = Order::new("k2");
        other.apply(&mv(1, Paid), &policy);
        let mut report = ev(2, "wms", EventAction::Move { state: OnHold }, 3000);
        report.event.raw_status = "FROZEN".into();
        other.apply(&report, &policy);
        let held = other.hold.unwrap();
        assert_eq!(
            (held.reason.as_deref(), held.by.as_deref()),
            (Some("FROZEN"), Some("wms"))
        );
        assert_eq!(other.timeline[1].by, None);
        assert_eq!(held.syncs, None);
    }

    #[test]
    fn a_hold_may_name_the_sinks_whose_syncs_wait() {
        let policy = OrderPolicy::permissive();
        let mut order = Order::new("k");
        order.apply(&mv(1, Paid), &policy);
        let mut hold = ev(
            2,
            OPERATOR_SOURCE,
            EventAction::Move { state: OnHold },
            2000,
        );
        hold.event.fields =
            serde_json::json!({"operator": "li.na", "reason": "x", "syncs": ["wms", "courier"]})
                .as_object()
                .cloned()
                .unwrap()
                .into();
        order.apply(&hold, &policy);
        assert_eq!(
            order.hold.as_ref().unwrap().syncs,
            Some(vec!["wms".to_owned(), "courier".to_owned()])
        );
        // A rule's hold names them as `hold = { reason, syncs }`.
        let rule: crate::order::rules::RuleSpec = serde_json::from_value(serde_json::json!({
            "name": "address_check",
            "when": "order.state == \"paid\"",
            "hold": {"reason": "address changed", "syncs": ["wms"]},
        }))
        .unwrap();
        let policy = OrderPolicy::permissive()
            .with_rules(crate::order::rules::RuleSet::compile(vec![rule]).unwrap());
        let mut ruled = Order::new("k2");
        ruled.apply(&mv(1, Paid), &policy);
        let held = ruled.hold.unwrap();
        assert_eq!(held.reason.as_deref(), Some("address changed"));
        assert_eq!(held.syncs, Some(vec!["wms".to_owned()]));
    }

    #[test]
    fn a_release_back_to_where_it_was_decides_nothing_again() {
        let rules = crate::order::rules::RuleSet::compile(vec![crate::order::rules::RuleSpec {
            name: "erp".into(),
            when: r#"order.state == "paid" || order.state == "picked""#.into(),
            sync: Some("erp".into()),
            ..Default::default()
        }])
        .unwrap();
        let policy = OrderPolicy::permissive().with_rules(rules);
        let mut order = Order::new("k");
        let (_, effects) = order.apply(&mv(1, Paid), &policy).unwrap();
        assert_eq!(effects.syncs.len(), 1);
        order.apply(&mv(2, OnHold), &policy);
        let (outcome, effects) = order
            .apply(&ev(3, "ops", EventAction::ReleaseHold, 3000), &policy)
            .unwrap();
        assert!(matches!(outcome, Outcome::Applied { to: Paid, .. }));
        assert!(effects.syncs.is_empty(), "paid's sync was decided already");
        // Progress during a hold: the release moves on, and that state's rules fire.
        order.apply(&mv(4, OnHold), &policy);
        order.apply(&mv(5, Picked), &policy);
        let (_, effects) = order
            .apply(&ev(6, "ops", EventAction::ReleaseHold, 6000), &policy)
            .unwrap();
        assert_eq!(order.state, Some(Picked));
        assert_eq!(effects.syncs.len(), 1);
    }

    #[test]
    fn metric_labels_come_only_from_configured_sources() {
        let policy = OrderPolicy::permissive().with_metric_sources([
            "douyin".to_owned(),
            "events".to_owned(),
            "douyin".to_owned(),
        ]);
        assert_eq!(policy.metric_source("douyin"), "douyin");
        assert_eq!(
            policy.metric_source("anything a request says"),
            "events",
            "free text never becomes a label"
        );
        let labels: Vec<&str> = policy.metric_source_labels().collect();
        assert_eq!(labels, ["douyin", "events"]);
        let bare = OrderPolicy::permissive();
        assert_eq!(bare.metric_source_labels().collect::<Vec<_>>(), ["events"]);
    }

    #[test]
    fn cancel_during_hold_cancels() {
        let policy = OrderPolicy::permissive();
        let mut order = Order::new("k");
        order.apply(&mv(1, Packed), &policy);
        order.apply(&mv(2, OnHold), &policy);
        order.apply(&mv(3, Cancelled), &policy);
        assert_eq!(order.state, Some(Cancelled));
        assert!(order.hold.is_none());
    }

    fn sla_policy() -> OrderPolicy {
        OrderPolicy::permissive()
            .with_sla(SlaRule {
                name: "allocate_within_2h".into(),
                from: Paid,
                within_ms: 7_200_000,
                reset_on_event: false,
            })
            .with_sla(SlaRule {
                name: "transit_update_48h".into(),
                from: InTransit,
                within_ms: 48 * 3_600_000,
                reset_on_event: true,
            })
    }

    #[test]
    fn sla_timer_arms_on_entry_and_disarms_on_exit() {
        let policy = sla_policy();
        let mut order = Order::new("k");
        let (_, timers) = order.apply(&mv(1, Paid), &policy).unwrap();
        assert_eq!(
            timers.armed,
            vec![("allocate_within_2h".to_owned(), 1000 + 7_200_000)]
        );
        let (_, timers) = order.apply(&mv(2, Allocated), &policy).unwrap();
        assert_eq!(timers.disarmed, vec!["allocate_within_2h".to_owned()]);
        assert!(order.sla.is_empty());
    }

    #[test]
    fn sla_breach_marks_the_timer_only_while_armed() {
        let policy = sla_policy();
        let mut order = Order::new("k");
        order.apply(&mv(1, Paid), &policy);
        let deadline = 1000 + 7_200_000;
        let breach = EventAction::SlaBreach {
            rule: "allocate_within_2h".into(),
            deadline,
            late: true,
        };
        let (outcome, _) = order
            .apply(
                &ev(2, INTERNAL_SOURCE, breach.clone(), deadline + 5),
                &policy,
            )
            .unwrap();
        assert_eq!(
            outcome,
            Outcome::SlaBreached {
                rule: "allocate_within_2h".into()
            }
        );
        assert!(order.sla_breached());
        assert_eq!(
            order.sla[0].status,
            SlaStatus::Breached {
                detected_at: deadline + 5,
                late: true
            }
        );
        assert!(!order.systems.contains_key(INTERNAL_SOURCE));
        // A second report of the same breach finds nothing armed.
        let (outcome, _) = order
            .apply(&ev(3, INTERNAL_SOURCE, breach, deadline + 6), &policy)
            .unwrap();
        assert_eq!(
            outcome,
            Outcome::SlaNotArmed {
                rule: "allocate_within_2h".into()
            }
        );
    }

    #[test]
    fn reset_on_event_rule_restarts_its_deadline_on_any_report() {
        let policy = sla_policy();
        let mut order = Order::new("k");
        order.apply(&mv(1, InTransit), &policy);
        let (_, timers) = order
            .apply(&ev(2, "courier", EventAction::Inform, 50_000), &policy)
            .unwrap();
        assert_eq!(
            timers.armed,
            vec![("transit_update_48h".to_owned(), 50_000 + 48 * 3_600_000)]
        );
        assert_eq!(order.armed_timers().count(), 1);
    }

    /// Lifecycles as a real order lives them: each is a chain in the state graph.
    fn lifecycle() -> impl Strategy<Value = Vec<OrderState>> {
        prop_oneof![
            (1usize..=9).prop_map(|n| [
                PendingPayment,
                Paid,
                Allocated,
                Picked,
                Packed,
                Shipped,
                InTransit,
                Delivered,
                Completed
            ][..n]
                .to_vec()),
            (0usize..=4).prop_map(|n| {
                let mut v = [PendingPayment, Paid, Allocated, Picked, Packed][..=n].to_vec();
                v.extend([Cancelled, Refunded]);
                v
            }),
            Just(vec![
                Paid,
                Packed,
                Shipped,
                InTransit,
                InterceptRequested,
                Intercepted,
                Returned,
                Refunded
            ]),
            Just(vec![
                Paid,
                Shipped,
                Delivered,
                Completed,
                ReturnRequested,
                Returned,
                Refunded
            ]),
        ]
    }

    fn furthest(states: &[OrderState]) -> OrderState {
        *states
            .iter()
            .find(|s| states.iter().all(|o| o == *s || o.reaches(**s)))
            .expect("a lifecycle is a chain")
    }

    proptest! {
        #[test]
        fn any_permutation_with_duplicates_ends_in_the_furthest_state(
            (states, order) in lifecycle().prop_flat_map(|states| {
                let n = states.len();
                let picks = proptest::collection::vec(0..n, n..n * 3);
                (Just(states), picks.prop_shuffle())
            }),
            also_all in any::<bool>(),
        ) {
            let mut indices = order;
            if also_all {
                indices.extend(0..states.len());
            }
            let events: Vec<JournaledEvent> = indices
                .iter()
                .enumerate()
                .map(|(i, &s)| mv(i as u64 + 1, states[s]))
                .collect();
            let policy = sla_policy();
            let a = Order::replay("k", &events, &policy);
            let b = Order::replay("k", &events, &policy);
            prop_assert_eq!(&a, &b, "replay is deterministic");
            prop_assert_eq!(a.timeline.len(), events.len(), "every report is kept");
            let seen: Vec<OrderState> = indices.iter().map(|&s| states[s]).collect();
            prop_assert_eq!(a.state, Some(furthest(&seen)));
            // Monotone: the applied states along the timeline only ever move forward.
            let mut last: Option<OrderState> = None;
            for entry in &a.timeline {
                if let Outcome::Applied { to, .. } = entry.outcome {
                    if let Some(prev) = last {
                        prop_assert!(prev.reaches(to), "{prev} -> {to}");
                    }
                    last = Some(to);
                }
            }
        }
    }
}

#[cfg(test)]
mod enrichment_tests;

#[cfg(test)]
mod trigger_tests;

#[cfg(test)]
mod approval_tests;

#[cfg(test)]
mod stock_tests;

#[cfg(test)]
mod disagreement_tests;

#[cfg(test)]
mod test_support;
