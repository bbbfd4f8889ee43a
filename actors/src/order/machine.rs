//! The canonical state machine: applies journaled events to an [`Order`], keeping every report
//! in the timeline and never moving the order backwards. Pure: no clock, no I/O.

use super::approval::{Approval, ApprovalState, Closing, Decision};
use super::event::{EventAction, JournaledEvent, Millis};
use super::policy::{OrderPolicy, SlaRule};
use super::state::OrderState;
use super::stock::{StockOp, StockOutcome, StockState, StockStatus};
use super::sync::SyncIntent;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One system's last reported status for an order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SystemStatus {
    /// The raw status as the system reported it.
    pub raw_status: String,
    /// Its canonical meaning (`none` for informational statuses).
    pub mapped: String,
    /// When the system says it happened.
    pub occurred_at: Millis,
    /// When orderhub received it.
    pub received_at: Millis,
}

/// What applying one event did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// The order moved.
    Applied {
        /// Where it was (`None` for the first event).
        from: Option<OrderState>,
        /// Where it is now.
        to: OrderState,
    },
    /// The order is already in that state.
    Unchanged,
    /// The event lies behind the current state (late or out of order).
    Stale {
        /// The state the order was in.
        current: OrderState,
    },
    /// The event contradicts the current state (e.g. `shipped` after `cancelled`).
    Conflict {
        /// The state the order was in.
        current: OrderState,
    },
    /// The source is not allowed to cause that state.
    NotAllowed,
    /// A later version of the same message stream was already applied (Youzan `version`).
    Superseded {
        /// The latest version seen in the stream.
        latest: i64,
    },
    /// An informational status.
    Recorded,
    /// The order is on hold: progress was noted and applies when the hold is released.
    Held {
        /// Where the order resumes when released.
        resume_to: OrderState,
    },
    /// A release for an order that is not on hold.
    NotHeld,
    /// An SLA deadline was breached.
    SlaBreached {
        /// The rule's name.
        rule: String,
    },
    /// A decision was counted or an approval's deadline passed, and the order did not move
    /// (the approval is still open, expired with `escalate`, or is no intercept).
    Approval {
        /// The approval's id.
        approval: String,
        /// Where the approval stands now.
        state: super::approval::ApprovalState,
    },
    /// A decision that did not count: `unknown` approval, `closed` already, `decided_already`
    /// by this operator; or a deadline for an approval no longer open (`not_open`).
    NotDecided {
        /// The approval's id.
        approval: String,
        /// Why.
        reason: String,
    },
    /// The order awaits an intercept decision: progress was noted and applies if the intercept
    /// is rejected.
    Noted {
        /// Where the order goes if the intercept is rejected.
        resume_to: OrderState,
    },
    /// An SLA breach report for a timer that was no longer armed (the order moved on first).
    SlaNotArmed {
        /// The rule's name.
        rule: String,
    },
    /// One part of the order moved; the order waits for the others (or does not know them).
    PartMoved {
        /// The part.
        part: String,
        /// Where it moved.
        state: OrderState,
        /// Parts listed in `fields.sub_orders` that have not reached `state` yet (0 when the
        /// order lists none: then the order never follows a part on its own).
        remaining: usize,
    },
}

impl Outcome {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Applied { .. } => "applied",
            Outcome::Unchanged => "unchanged",
            Outcome::Stale { .. } => "stale",
            Outcome::Conflict { .. } => "conflict",
            Outcome::NotAllowed => "not_allowed",
            Outcome::Superseded { .. } => "superseded",
            Outcome::Recorded => "recorded",
            Outcome::Held { .. } => "held",
            Outcome::NotHeld => "not_held",
            Outcome::SlaBreached { .. } => "sla_breached",
            Outcome::SlaNotArmed { .. } => "sla_not_armed",
            Outcome::PartMoved { .. } => "part_moved",
            Outcome::Approval { .. } => "approval",
            Outcome::NotDecided { .. } => "not_decided",
            Outcome::Noted { .. } => "noted",
        }
    }
}

/// One entry of an order's timeline: a report and what it did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// Journal sequence number.
    pub seq: u64,
    /// Reporting system.
    pub source: String,
    /// The source's event id.
    pub source_event_id: String,
    /// Raw status as reported.
    pub raw_status: String,
    /// Canonical meaning of the raw status.
    pub mapped: String,
    /// Source time.
    pub occurred_at: Millis,
    /// Hub time.
    pub received_at: Millis,
    /// What it did.
    pub outcome: Outcome,
    /// What the rules did on this transition (syncs, tags, holds, failures).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
    /// The source's mapping did not know `raw_status`: recorded, nothing changed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unmapped: bool,
    /// The operator who acted (events of source `operator`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// Where an SLA timer stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum SlaStatus {
    /// Waiting for its deadline.
    Armed,
    /// The deadline passed first.
    Breached {
        /// When the breach was detected.
        detected_at: Millis,
        /// True when it passed while the engine was down.
        late: bool,
    },
}

/// An SLA timer of one order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlaTimer {
    /// The rule's name.
    pub rule: String,
    /// The state that armed it.
    pub from: OrderState,
    /// When it was armed.
    pub armed_at: Millis,
    /// When it is (or was) due.
    pub deadline: Millis,
    /// Armed or breached.
    #[serde(flatten)]
    pub status: SlaStatus,
}

/// The hold overlay: where the order resumes when released.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// Where the order goes back to (advanced by progress reported during the hold).
    pub resume_to: OrderState,
    /// When the hold began.
    pub since: Millis,
    /// Why (an operator's reason, a rule's reason or name, or what the source reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who: an operator's name, `rule NAME`, or the reporting source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The state the order was in when the hold began: released back to it, its rules do not
    /// fire again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_in: Option<OrderState>,
    /// The sinks whose syncs the hold keeps back (absent: every sink).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syncs: Option<Vec<String>>,
}

/// An intercept awaiting its decision: where the order goes if it is rejected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intercept {
    /// The state the order was in when the intercept was requested.
    pub requested_in: OrderState,
    /// Where a rejection returns it (advanced by progress reported meanwhile).
    pub resume_to: OrderState,
    /// When it was requested.
    pub since: Millis,
}

/// Who asked for a hold and why.
struct HoldCause {
    reason: Option<String>,
    by: Option<String>,
    syncs: Option<Vec<String>>,
}

impl HoldCause {
    /// The cause an event gives: an operator's reason and name (`fields.reason`,
    /// `fields.operator`), else the reporting source and its raw status.
    fn of(event: &super::event::OrderEvent) -> Self {
        let text = |name: &str| event.fields.str(name).map(|text| text.into_owned());
        if event.source == OPERATOR_SOURCE {
            let syncs = match event.fields.value("syncs") {
                Some(serde_json::Value::Array(sinks)) => Some(
                    sinks
                        .iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            };
            HoldCause {
                reason: text("reason"),
                by: text("operator"),
                syncs: syncs.filter(|s| !s.is_empty()),
            }
        } else {
            HoldCause {
                reason: text("reason").or_else(|| Some(event.raw_status.clone())),
                by: Some(event.source.clone()),
                syncs: None,
            }
        }
    }

    /// The cause of rule `rule`'s hold.
    fn rule(rule: &str, policy: &OrderPolicy) -> Self {
        HoldCause {
            reason: Some(policy.rules().hold_reason(rule)),
            by: Some(format!("rule {rule}")),
            syncs: policy.rules().hold_syncs(rule),
        }
    }
}

/// The source of the events operators cause through the API (holds, releases); their
/// `fields.operator` names the operator.
pub const OPERATOR_SOURCE: &str = "operator";

/// What applying an event caused beyond the order itself: timer changes for the shard's timer
/// structure and the syncs the rules decided.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Effects {
    /// `(rule, deadline)` pairs to arm (re-arming replaces the previous deadline).
    pub armed: Vec<(String, Millis)>,
    /// SLA rules to disarm.
    pub disarmed: Vec<String>,
    /// Syncs to persist and dispatch.
    pub syncs: Vec<SyncIntent>,
    /// Rules that put the order on hold (an exception to alert on).
    pub holds: Vec<String>,
    /// What happened to approvals: `(flow, opened | approved | rejected | expired)`.
    pub approvals: Vec<(String, &'static str)>,
    /// Events orderhub journals for the order (stock requests), to append.
    pub internal: Vec<super::event::OrderEvent>,
    /// What the stock ledger answered: `(reserve | release | commit | restock, result)`.
    pub stock: Vec<(&'static str, &'static str)>,
    /// Disagreements flagged (their kinds).
    pub disagreements: Vec<&'static str>,
}

/// Where an order's detail fetches stand (journal sequences of the events concerned).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetailsStatus {
    /// The transition sequence of the last fetch queued (0: none).
    pub requested: u64,
    /// Hub time of that request.
    pub requested_at: Millis,
    /// Journal sequence of the last answer folded in (0: none yet).
    pub fetched: u64,
    /// Fetches queued so far.
    pub fetches: u32,
}

impl DetailsStatus {
    /// Whether a fetch was queued after the last answer and not long ago: one that has not
    /// answered within [`DETAILS_PATIENCE_MS`] (still retrying, or given up) does not stop a
    /// later report from queueing another.
    fn outstanding(&self, now: Millis) -> bool {
        self.requested > 0
            && self.fetched < self.requested
            && now.saturating_sub(self.requested_at) < DETAILS_PATIENCE_MS
    }
}

/// How long a queued detail fetch counts as outstanding (see [`DetailsStatus`]).
pub const DETAILS_PATIENCE_MS: Millis = 10 * 60 * 1000;

/// The field whose presence means an order's contents are known.
pub const ITEMS_FIELD: &str = "items";

/// A rule waiting for fields (`needs`), with the transition it waits at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingRule {
    /// The rule's name.
    pub rule: String,
    /// The transition's sequence: its syncs' idempotency keys use it.
    pub seq: u64,
    /// The state the transition entered.
    pub state: OrderState,
    /// The state it left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<OrderState>,
}

/// The canonical view of one order: a deterministic fold over its journaled events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Order {
    /// `{channel}:{channel order id}`.
    pub key: String,
    /// The canonical state (`None` until an event was applied).
    pub state: Option<OrderState>,
    /// When the order entered its current state.
    pub state_since: Millis,
    /// Set while the order is on hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
    /// Each system's own last status.
    pub systems: BTreeMap<String, SystemStatus>,
    /// Business fields, later reports overriding earlier ones.
    pub fields: super::Fields,
    /// Tags added by rules.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Latest version per versioned message stream (`{source}:{stream}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub versions: BTreeMap<String, i64>,
    /// Where each reported part (sub-order) stands, for parts that moved on their own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parts: BTreeMap<String, OrderState>,
    /// Order-detail fetches (enriched channels only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<DetailsStatus>,
    /// Approvals opened for the order, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<Approval>,
    /// Set while an intercept awaits its decision (`intercept_requested`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intercept: Option<Intercept>,
    /// Stock reservation (when `[stock]` is configured and the order has lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stock: Option<StockStatus>,
    /// Systems contradicting each other about the order, open and resolved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disagreements: Vec<super::disagreement::Disagreement>,
    /// Rules whose condition held at a transition but which need fields the order did not have
    /// yet (`needs`): judged again when an event brings fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<WaitingRule>,
    /// Every report, in journal order.
    pub timeline: Vec<TimelineEntry>,
    /// Armed and breached SLA timers.
    pub sla: Vec<SlaTimer>,
    /// The last journal sequence number folded in.
    pub applied_seq: u64,
    /// Hub time of the first report.
    pub first_seen: Millis,
    /// Hub time of the last report.
    pub updated_at: Millis,
}

impl Order {
    /// An order with no events.
    pub fn new(key: impl Into<String>) -> Self {
        Order {
            key: key.into(),
            state: None,
            state_since: 0,
            hold: None,
            systems: BTreeMap::new(),
            fields: super::Fields::new(),
            tags: Vec::new(),
            versions: BTreeMap::new(),
            parts: BTreeMap::new(),
            details: None,
            approvals: Vec::new(),
            intercept: None,
            stock: None,
            disagreements: Vec::new(),
            waiting: Vec::new(),
            timeline: Vec::new(),
            sla: Vec::new(),
            applied_seq: 0,
            first_seen: 0,
            updated_at: 0,
        }
    }

    /// Folds `events` (in journal order) into a fresh order.
    pub fn replay<'a>(
        key: impl Into<String>,
        events: impl IntoIterator<Item = &'a JournaledEvent>,
        policy: &OrderPolicy,
    ) -> Self {
        let mut order = Order::new(key);
        for event in events {
            order.apply(event, policy);
        }
        order
    }

    /// Folds `events` into a fresh order, collecting the syncs decided for events after
    /// `collect_after` (those whose syncs may not be in the outbox yet).
    pub fn replay_collecting<'a>(
        key: impl Into<String>,
        events: impl IntoIterator<Item = &'a JournaledEvent>,
        policy: &OrderPolicy,
        collect_after: u64,
    ) -> (Self, Vec<SyncIntent>) {
        let mut order = Order::new(key);
        let mut syncs = Vec::new();
        for event in events {
            if let Some((_, effects)) = order.apply(event, policy)
                && event.seq > collect_after
            {
                syncs.extend(effects.syncs);
            }
        }
        (order, syncs)
    }

    /// Whether any SLA timer was breached.
    pub fn sla_breached(&self) -> bool {
        self.sla
            .iter()
            .any(|t| matches!(t.status, SlaStatus::Breached { .. }))
    }

    /// The armed timers as `(name, deadline)`: SLA timers (named by their rule) and the
    /// deadlines of open approvals (named by the approval's id).
    pub fn armed_timers(&self) -> impl Iterator<Item = (&str, Millis)> {
        self.sla
            .iter()
            .filter(|t| t.status == SlaStatus::Armed)
            .map(|t| (t.rule.as_str(), t.deadline))
            .chain(
                self.approvals
                    .iter()
                    .filter(|a| a.state == ApprovalState::Open)
                    .map(|a| (a.id.as_str(), a.deadline)),
            )
            .chain(self.stock.as_ref().and_then(StockStatus::timer))
    }

    /// The stock timer due at `deadline`: a request not answered yet is asked again (same id);
    /// a reservation the warehouse has not taken is given back. Returns the request to journal.
    pub fn stock_due(&self, deadline: Millis) -> Option<super::event::OrderEvent> {
        let status = self.stock.as_ref()?;
        if status.deadline != Some(deadline) {
            return None;
        }
        match status.state {
            StockState::Requested => {
                let request = status.request.as_ref()?;
                Some(super::stock::request(
                    &self.key,
                    request.op.clone(),
                    request.id.clone(),
                    deadline,
                ))
            }
            StockState::Reserved => {
                let op = StockOp::Release {
                    reason: "expired".into(),
                };
                let id = super::stock::request_id(&op, &format!("expired:{deadline}"));
                Some(super::stock::request(&self.key, op, id, deadline))
            }
            _ => None,
        }
    }

    /// The open approval whose deadline timer is `timer` due at `deadline`, if any.
    pub fn approval_due(&self, timer: &str, deadline: Millis) -> Option<&Approval> {
        self.approvals
            .iter()
            .find(|a| a.id == timer && a.deadline == deadline && a.state == ApprovalState::Open)
    }

    /// Applies one journaled event. Events at or below `applied_seq` were folded in already and
    /// are ignored (returns `None`), so redelivery after a restart is harmless.
    pub fn apply(
        &mut self,
        journaled: &JournaledEvent,
        policy: &OrderPolicy,
    ) -> Option<(Outcome, Effects)> {
        if journaled.seq <= self.applied_seq {
            return None;
        }
        let event = &journaled.event;
        let at = event.effective_at();
        if self.timeline.is_empty() {
            self.first_seen = event.received_at;
        }
        self.applied_seq = journaled.seq;
        self.updated_at = self.updated_at.max(event.received_at);

        let mut timers = Effects::default();
        let superseded = event.supersedes.as_ref().and_then(|s| {
            let stream = format!("{}:{}", event.source, s.stream);
            match self.versions.get(&stream) {
                Some(&latest) if latest > s.version => Some(latest),
                _ => {
                    self.versions.insert(stream, s.version);
                    None
                }
            }
        });
        let mut judged_already = false;
        let mut notes_early: Vec<String> = Vec::new();
        let mut closing: Option<(usize, Closing)> = None;
        let mut mapped_as: Option<&'static str> = None;
        let was_held = self.hold.is_some();
        let was_intercepting = self.state == Some(OrderState::InterceptRequested);
        let outcome = match &event.action {
            _ if superseded.is_some() => Outcome::Superseded {
                latest: superseded.unwrap_or_default(),
            },
            EventAction::Move { state }
                if event.source != OPERATOR_SOURCE && !policy.allows(&event.source, *state) =>
            {
                Outcome::NotAllowed
            }
            EventAction::Move {
                state: OrderState::OnHold,
            } => self.hold(at, HoldCause::of(event), policy, &mut timers),
            EventAction::Move { state } => self.advance(*state, at, policy, &mut timers),
            EventAction::ReleaseHold => match self.hold.take() {
                Some(hold) => {
                    // Back where it was: its rules fired when it got there, not again.
                    judged_already = hold.held_in == Some(hold.resume_to);
                    self.enter(hold.resume_to, at, policy, &mut timers);
                    Outcome::Applied {
                        from: Some(OrderState::OnHold),
                        to: hold.resume_to,
                    }
                }
                None => Outcome::NotHeld,
            },
            EventAction::Inform | EventAction::Unmapped => Outcome::Recorded,
            EventAction::MovePart { part, state } => {
                self.move_part(part, *state, &event.fields, at, policy, &mut timers)
            }
            EventAction::SlaBreach {
                rule,
                deadline,
                late,
            } => self.breach(rule, *deadline, *late, event.received_at),
            EventAction::Decide {
                approval,
                decision,
                comment,
            } => {
                let decision = Decision {
                    operator: event
                        .fields
                        .str("operator")
                        .map_or_else(|| "unknown".to_owned(), |name| name.into_owned()),
                    decision: *decision,
                    comment: comment.clone(),
                    at: event.received_at,
                };
                self.decide(approval, decision, &mut timers, &mut closing)
            }
            EventAction::ApprovalDue {
                approval, deadline, ..
            } => self.expire(approval, *deadline, event.received_at, &mut closing),
            EventAction::Stock { .. } => Outcome::Recorded,
        };
        let outcome = match closing {
            Some((index, closed)) => {
                let settled = self.settle_intercept(index, closed, at, policy, &mut timers);
                if let Some((outcome, back_where_it_was, rejected)) = settled {
                    judged_already = back_where_it_was;
                    if rejected {
                        mapped_as = Some("intercept_rejected");
                    }
                    outcome
                } else {
                    outcome
                }
            }
            None => outcome,
        };
        if was_intercepting && self.state != Some(OrderState::InterceptRequested) {
            self.close_intercept_approvals(event.received_at, &mut notes_early, &mut timers);
        }

        // A superseded message is history: it neither speaks for its system nor sets fields. An
        // operator's action is no system's report: its fields (who, why) stay in the timeline.
        if event.source != super::event::INTERNAL_SOURCE
            && event.source != OPERATOR_SOURCE
            && superseded.is_none()
        {
            self.record_system(journaled);
            self.fields.merge(&event.fields);
            if !matches!(outcome, Outcome::Applied { .. }) {
                self.reset_timers_on_report(at, policy, &mut timers);
            }
        }
        let mut notes = notes_early;
        let opened = if superseded.is_none() {
            self.open_approvals(journaled, &outcome, policy, &mut notes, &mut timers)
        } else {
            Vec::new()
        };
        if let Outcome::Applied { from, to } = &outcome
            && !judged_already
        {
            // The transition's place in the log names its syncs: the stream's sequence in cluster
            // mode (the same on every node that replays it), else the journal's.
            let seq = event.log_seq.unwrap_or(journaled.seq);
            let mut decided = policy.rules().evaluate(self, *from, event, seq);
            let waiting = std::mem::take(&mut decided.waiting);
            self.take(
                "transition",
                decided,
                event,
                policy,
                &mut notes,
                &mut timers,
            );
            self.waiting
                .extend(waiting.into_iter().map(|rule| WaitingRule {
                    rule,
                    seq,
                    state: *to,
                    previous: *from,
                }));
        }
        if superseded.is_none() && event.source != super::event::INTERNAL_SOURCE {
            if !self.waiting.is_empty() && !event.fields.is_empty() {
                self.resume_waiting(policy, event, &mut notes, &mut timers);
            }
            self.enrich(journaled, &outcome, policy, &mut notes, &mut timers);
        }
        if superseded.is_none() {
            self.reserve_stock(journaled, policy, &mut notes, &mut timers);
        }
        let reported = event.source != super::event::INTERNAL_SOURCE
            && event.source != OPERATOR_SOURCE
            && superseded.is_none();
        if reported || matches!(outcome, Outcome::SlaBreached { .. }) {
            self.judge_disagreements(journaled, &outcome, policy, &mut notes, &mut timers);
        }
        if superseded.is_none() {
            self.judge_triggers(
                journaled,
                &outcome,
                was_held,
                policy,
                &mut notes,
                &mut timers,
            );
            self.judge_approvals(journaled, &opened, closing, policy, &mut notes, &mut timers);
        }
        self.timeline.push(TimelineEntry {
            seq: journaled.seq,
            source: event.source.clone(),
            source_event_id: event.source_event_id.clone(),
            raw_status: event.raw_status.clone(),
            mapped: mapped_as.unwrap_or(event.action.label()).to_owned(),
            occurred_at: event.occurred_at,
            received_at: event.received_at,
            outcome: outcome.clone(),
            rules: notes,
            unmapped: event.action == EventAction::Unmapped,
            by: (event.source == OPERATOR_SOURCE)
                .then(|| event.fields.str("operator"))
                .flatten()
                .map(|name| name.into_owned()),
        });
        // A payload carrying exactly this event's contents points the outbox at the event
        // instead of storing them again (most syncs: the contents are most of their bytes).
        if !event.fields.is_empty() {
            for sync in &mut timers.syncs {
                if sync.contents.is_none() && sync.fields.as_ref() == Some(&event.fields) {
                    sync.contents = Some(journaled.seq);
                }
            }
        }
        Some((outcome, timers))
    }

    /// Rules judged on what is not a transition: an SLA breach, an unmapped status, the order
    /// going on hold (`on = "sla_breached" | "unmapped_status" | "hold"`).
    fn judge_triggers(
        &mut self,
        journaled: &JournaledEvent,
        outcome: &Outcome,
        was_held: bool,
        policy: &OrderPolicy,
        notes: &mut Vec<String>,
        timers: &mut Effects,
    ) {
        let event = &journaled.event;
        let seq = event.log_seq.unwrap_or(journaled.seq);
        let mut triggers: Vec<(&str, serde_json::Map<String, serde_json::Value>)> = Vec::new();
        if let (Outcome::SlaBreached { rule }, EventAction::SlaBreach { deadline, late, .. }) =
            (outcome, &event.action)
        {
            let facts = serde_json::json!({"sla": {
                "rule": rule,
                "deadline": deadline,
                "late": late,
                "late_by_ms": event.received_at.saturating_sub(*deadline).max(0),
            }});
            triggers.push((
                "sla_breached",
                facts.as_object().cloned().unwrap_or_default(),
            ));
        }
        if event.action == EventAction::Unmapped {
            triggers.push(("unmapped_status", serde_json::Map::new()));
        }
        for (trigger, facts) in triggers {
            let decided = policy
                .rules()
                .evaluate_trigger(trigger, self, event, seq, facts);
            self.take(trigger, decided, event, policy, notes, timers);
        }
        if !was_held && let Some(hold) = &self.hold {
            let facts = serde_json::json!({"hold": {
                "reason": hold.reason,
                "by": hold.by,
                "since": hold.since,
            }});
            let decided = policy.rules().evaluate_trigger(
                "hold",
                self,
                event,
                seq,
                facts.as_object().cloned().unwrap_or_default(),
            );
            self.take("hold", decided, event, policy, notes, timers);
        }
    }

    /// Compares what the systems say (see `disagreement`): flags a new contradiction (and
    /// judges the rules on `disagreement`), marks one that no longer holds resolved.
    fn judge_disagreements(
        &mut self,
        journaled: &JournaledEvent,
        outcome: &Outcome,
        policy: &OrderPolicy,
        notes: &mut Vec<String>,
        timers: &mut Effects,
    ) {
        use super::disagreement::{self as d, Disagreement};
        const NO_PICKUP: &str = "shipped_without_pickup";
        let event = &journaled.event;
        let at = event.received_at;
        let role_of = |source: &str| policy.role_of(source);
        let mut now = d::judge(&self.systems, &role_of);
        let breached_in_shipped = matches!(outcome, Outcome::SlaBreached { rule }
            if policy.sla_rules().iter().any(|r| &r.name == rule && r.from == OrderState::Shipped));
        let open_no_pickup = self
            .disagreements
            .iter()
            .find(|x| x.kind == NO_PICKUP && x.resolved_at.is_none());
        if let Some(open) = open_no_pickup {
            if !d::picked_up(&self.systems, &role_of) {
                now.push((NO_PICKUP, open.systems.clone()));
            }
        } else if breached_in_shipped
            && let Some(said) = d::shipped_without_pickup(&self.systems, &role_of)
        {
            now.push((NO_PICKUP, said));
        }
        for open in self
            .disagreements
            .iter_mut()
            .filter(|x| x.resolved_at.is_none())
        {
            if !now.iter().any(|(kind, _)| *kind == open.kind) {
                open.resolved_at = Some(at);
                notes.push(format!("disagreement {}: resolved", open.kind));
            }
        }
        let seq = event.log_seq.unwrap_or(journaled.seq);
        for (kind, systems) in now {
            if self
                .disagreements
                .iter()
                .any(|x| x.kind == kind && x.resolved_at.is_none())
            {
                continue;
            }
            notes.push(format!(
                "disagreement {kind}: {}",
                systems
                    .iter()
                    .map(|(source, status)| format!("{source} says {status}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            timers.disagreements.push(kind);
            let flagged = Disagreement {
                kind: kind.to_owned(),
                systems,
                since: at,
                resolved_at: None,
            };
            let mut facts = serde_json::Map::new();
            facts.insert(
                "disagreement".into(),
                serde_json::to_value(&flagged).unwrap_or_default(),
            );
            self.disagreements.push(flagged);
            let decided = policy
                .rules()
                .evaluate_trigger("disagreement", self, event, seq, facts);
            self.take("disagreement", decided, event, policy, notes, timers);
        }
    }

    /// Whether a disagreement is open.
    pub fn disagreeing(&self) -> impl Iterator<Item = &str> {
        self.disagreements
            .iter()
            .filter(|x| x.resolved_at.is_none())
            .map(|x| x.kind.as_str())
    }

    /// Stock: takes the ledger's answer to a request, then decides the next request — reserve
    /// once paid with known lines (again after an `oversell` hold is released), commit once the
    /// warehouse took the order, release on a cancel, restock a cancel after the commit.
    fn reserve_stock(
        &mut self,
        journaled: &JournaledEvent,
        policy: &OrderPolicy,
        notes: &mut Vec<String>,
        timers: &mut Effects,
    ) {
        let Some(spec) = policy.stock() else {
            return;
        };
        let event = &journaled.event;
        let at = event.received_at;
        match &event.action {
            EventAction::Stock {
                op,
                outcome: Some(answer),
            } => self.stock_answered(op, answer, at, spec, journaled, policy, notes, timers),
            // A request the journal did not answer (it answers every one it records).
            EventAction::Stock { outcome: None, .. } => return,
            _ => {}
        }
        let Some(state) = self.state else { return };
        let current = self.stock.as_ref().map(|s| s.state);
        let op = match (current, state) {
            (Some(StockState::Requested), _) => None,
            (None | Some(StockState::Short), OrderState::Paid) => {
                super::stock::lines_of(&self.fields).map(|lines| StockOp::Reserve { lines })
            }
            (Some(StockState::Reserved), OrderState::Cancelled) => Some(StockOp::Release {
                reason: "cancelled".into(),
            }),
            (Some(StockState::Reserved), state) if super::stock::taken(state) => {
                Some(StockOp::Commit)
            }
            (Some(StockState::Committed), OrderState::Cancelled) => Some(StockOp::Restock),
            _ => None,
        };
        let Some(op) = op else { return };
        let seq = event.log_seq.unwrap_or(journaled.seq);
        let id = super::stock::request_id(&op, &seq.to_string());
        notes.push(format!("stock: {} requested", op.name()));
        let deadline = at.saturating_add(super::stock::STOCK_RETRY_MS);
        timers
            .armed
            .push((super::stock::STOCK_TIMER.to_owned(), deadline));
        timers
            .internal
            .push(super::stock::request(&self.key, op.clone(), id.clone(), at));
        let previous = self.stock.take();
        self.stock = Some(StockStatus {
            state: StockState::Requested,
            lines: previous
                .as_ref()
                .map(|p| p.lines.clone())
                .unwrap_or_default(),
            short: Vec::new(),
            since: at,
            deadline: Some(deadline),
            request: Some(super::stock::Request {
                id,
                op,
                previous: previous.map(|p| p.state),
            }),
            reason: None,
        });
    }

    /// Takes the ledger's answer to a stock request.
    #[allow(clippy::too_many_arguments)]
    fn stock_answered(
        &mut self,
        op: &StockOp,
        answer: &StockOutcome,
        at: Millis,
        spec: &super::policy::StockSpec,
        journaled: &JournaledEvent,
        policy: &OrderPolicy,
        notes: &mut Vec<String>,
        timers: &mut Effects,
    ) {
        let mut status = StockStatus {
            state: StockState::Untracked,
            lines: Vec::new(),
            short: Vec::new(),
            since: at,
            deadline: None,
            request: None,
            reason: None,
        };
        let result = match answer {
            StockOutcome::Reserved { lines } => {
                status.state = StockState::Reserved;
                status.lines = lines.clone();
                let deadline = at.saturating_add(spec.reserve_ttl_ms);
                status.deadline = Some(deadline);
                timers
                    .armed
                    .push((super::stock::STOCK_TIMER.to_owned(), deadline));
                notes.push(format!(
                    "stock: reserved {}",
                    lines
                        .iter()
                        .map(|l| format!("{} × {}", l.qty, l.sku))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                "reserved"
            }
            StockOutcome::Short { lines } => {
                status.state = StockState::Short;
                status.short = lines.clone();
                "short"
            }
            StockOutcome::Untracked => {
                notes.push("stock: no SKU of the order is tracked".into());
                "untracked"
            }
            StockOutcome::Done { .. } | StockOutcome::Nothing => {
                if let StockOutcome::Done { lines } = answer {
                    status.lines = lines.clone();
                }
                status.state = match op {
                    StockOp::Release { reason } => {
                        status.reason = Some(reason.clone());
                        StockState::Released
                    }
                    StockOp::Commit => StockState::Committed,
                    StockOp::Restock => StockState::Restocked,
                    StockOp::Reserve { .. } => StockState::Untracked,
                };
                notes.push(format!("stock: {} done", op.name()));
                if matches!(answer, StockOutcome::Done { .. }) {
                    "done"
                } else {
                    "nothing"
                }
            }
        };
        timers.stock.push((op.name(), result));
        if status.deadline.is_none() {
            timers.disarmed.push(super::stock::STOCK_TIMER.to_owned());
        }
        let short = status.short.clone();
        self.stock = Some(status);
        if short.is_empty() {
            return;
        }
        // Oversell: the order cannot have what it was sold; a person decides (restock, cancel).
        let reason = format!(
            "oversell: {}",
            short
                .iter()
                .map(|l| format!("{} wants {}, {} left", l.sku, l.wanted, l.available.max(0)))
                .collect::<Vec<_>>()
                .join("; ")
        );
        notes.push(format!("stock: {reason}"));
        let cause = HoldCause {
            reason: Some(reason),
            by: Some("stock".into()),
            syncs: None,
        };
        if let Outcome::Applied { .. } = self.hold(at, cause, policy, timers) {
            timers.holds.push("oversell".into());
        }
        let event = &journaled.event;
        let seq = event.log_seq.unwrap_or(journaled.seq);
        let mut facts = serde_json::Map::new();
        facts.insert("oversell".into(), serde_json::json!({ "lines": short }));
        let decided = policy
            .rules()
            .evaluate_trigger("oversell", self, event, seq, facts);
        self.take("oversell", decided, event, policy, notes, timers);
    }

    /// Opens the approvals whose flow's condition holds for this report, arming their
    /// deadlines. Reports that changed nothing (stale, conflicting, not allowed, duplicate)
    /// and decisions open none. Returns the indices of the approvals opened.
    fn open_approvals(
        &mut self,
        journaled: &JournaledEvent,
        outcome: &Outcome,
        policy: &OrderPolicy,
        notes: &mut Vec<String>,
        timers: &mut Effects,
    ) -> Vec<usize> {
        let event = &journaled.event;
        let judged = matches!(
            outcome,
            Outcome::Applied { .. }
                | Outcome::Recorded
                | Outcome::Held { .. }
                | Outcome::Noted { .. }
                | Outcome::PartMoved { .. }
                | Outcome::SlaBreached { .. }
        ) && !matches!(
            event.action,
            EventAction::Decide { .. } | EventAction::ApprovalDue { .. }
        );
        if !judged || policy.rules().approvals().next().is_none() {
            return Vec::new();
        }
        let seq = event.log_seq.unwrap_or(journaled.seq);
        let intercept = matches!(
            outcome,
            Outcome::Applied {
                to: OrderState::InterceptRequested,
                ..
            }
        );
        let specs: Vec<_> = policy
            .rules()
            .approvals_to_open(self, event, notes)
            .into_iter()
            .cloned()
            .collect();
        let mut opened = Vec::new();
        for spec in specs {
            let approval = Approval {
                id: format!("{}:{}:{seq}", self.key, spec.name),
                order: self.key.clone(),
                name: spec.name.clone(),
                state: ApprovalState::Open,
                opened_at: event.received_at,
                deadline: event.received_at.saturating_add(spec.within_ms),
                required: spec.required,
                role: spec.role.clone(),
                on_timeout: spec.on_timeout,
                decisions: Vec::new(),
                intercept,
                closed_at: None,
            };
            notes.push(format!(
                "approval {}: opened ({}), {} {} needed",
                spec.name,
                approval.id,
                spec.required,
                if spec.required == 1 {
                    "approval"
                } else {
                    "approvals"
                },
            ));
            timers.armed.push((approval.id.clone(), approval.deadline));
            timers.approvals.push((spec.name.clone(), "opened"));
            opened.push(self.approvals.len());
            self.approvals.push(approval);
        }
        opened
    }

    /// The order left `intercept_requested` other than by its approval (a cancel before
    /// shipping, the courier reporting the interception itself): its open intercept approvals
    /// can no longer decide anything and close as `expired`, their deadlines disarmed.
    fn close_intercept_approvals(
        &mut self,
        at: Millis,
        notes: &mut Vec<String>,
        timers: &mut Effects,
    ) {
        let state = self.state.map_or("none", OrderState::as_str);
        for approval in self
            .approvals
            .iter_mut()
            .filter(|a| a.intercept && a.decidable())
        {
            if approval.state == ApprovalState::Open {
                timers.disarmed.push(approval.id.clone());
            }
            approval.state = ApprovalState::Expired;
            approval.closed_at = Some(at);
            notes.push(format!(
                "approval {}: closed undecided, the order is {state} now",
                approval.name
            ));
        }
    }

    /// Counts an operator's decision on approval `id`.
    fn decide(
        &mut self,
        id: &str,
        decision: Decision,
        timers: &mut Effects,
        closing: &mut Option<(usize, Closing)>,
    ) -> Outcome {
        let not_decided = |reason: &str| Outcome::NotDecided {
            approval: id.to_owned(),
            reason: reason.to_owned(),
        };
        let Some(index) = self.approvals.iter().position(|a| a.id == id) else {
            return not_decided("unknown");
        };
        let approval = &mut self.approvals[index];
        if !approval.decidable() {
            return not_decided("closed");
        }
        if approval.decided_by(&decision.operator) {
            return not_decided("decided_already");
        }
        let was_open = approval.state == ApprovalState::Open;
        match approval.count(decision) {
            Some(state) => {
                if was_open {
                    timers.disarmed.push(approval.id.clone());
                }
                *closing = Some((index, Closing::Decided(state)));
                Outcome::Approval {
                    approval: id.to_owned(),
                    state,
                }
            }
            None => Outcome::Approval {
                approval: id.to_owned(),
                state: approval.state,
            },
        }
    }

    /// Approval `id`'s deadline passed: it expires, and its `on_timeout` decides it or
    /// escalates.
    fn expire(
        &mut self,
        id: &str,
        deadline: Millis,
        at: Millis,
        closing: &mut Option<(usize, Closing)>,
    ) -> Outcome {
        let Some(index) = self
            .approvals
            .iter()
            .position(|a| a.id == id && a.deadline == deadline && a.state == ApprovalState::Open)
        else {
            return Outcome::NotDecided {
                approval: id.to_owned(),
                reason: "not_open".to_owned(),
            };
        };
        let approval = &mut self.approvals[index];
        approval.state = ApprovalState::Expired;
        let closed = match approval.on_timeout {
            super::approval::OnTimeout::Escalate => Closing::Escalated,
            super::approval::OnTimeout::Approve => Closing::Decided(ApprovalState::Approved),
            super::approval::OnTimeout::Reject => Closing::Decided(ApprovalState::Rejected),
        };
        if closed != Closing::Escalated {
            approval.closed_at = Some(at);
        }
        *closing = Some((index, closed));
        Outcome::Approval {
            approval: id.to_owned(),
            state: ApprovalState::Expired,
        }
    }

    /// An intercept's approval was decided: approved, the order moves to `intercepted`;
    /// rejected, back to where it was (an explicit exception to "never backwards", like a
    /// hold's release). Returns the outcome, whether it went back to the state it was in
    /// (its rules fired then, not again) and whether it was a rejection.
    fn settle_intercept(
        &mut self,
        index: usize,
        closed: Closing,
        at: Millis,
        policy: &OrderPolicy,
        timers: &mut Effects,
    ) -> Option<(Outcome, bool, bool)> {
        let Closing::Decided(state) = closed else {
            return None;
        };
        if !self.approvals[index].intercept || self.state != Some(OrderState::InterceptRequested) {
            return None;
        }
        let intercept = self.intercept.clone()?;
        let from = Some(OrderState::InterceptRequested);
        if state == ApprovalState::Approved {
            self.enter(OrderState::Intercepted, at, policy, timers);
            Some((
                Outcome::Applied {
                    from,
                    to: OrderState::Intercepted,
                },
                false,
                false,
            ))
        } else {
            self.enter(intercept.resume_to, at, policy, timers);
            Some((
                Outcome::Applied {
                    from,
                    to: intercept.resume_to,
                },
                intercept.resume_to == intercept.requested_in,
                true,
            ))
        }
    }

    /// Rules and actions of approvals: `approval_opened` for each approval this report opened;
    /// for one it closed, the flow's `on_approve` / `on_reject` and `approval_decided`; for one
    /// whose deadline passed, `approval_expired` (and `escalate_to`, or what `on_timeout`
    /// decided).
    fn judge_approvals(
        &mut self,
        journaled: &JournaledEvent,
        opened: &[usize],
        closing: Option<(usize, Closing)>,
        policy: &OrderPolicy,
        notes: &mut Vec<String>,
        timers: &mut Effects,
    ) {
        let event = &journaled.event;
        let seq = event.log_seq.unwrap_or(journaled.seq);
        for &index in opened {
            let facts = self.approvals[index].facts();
            let decided =
                policy
                    .rules()
                    .evaluate_trigger("approval_opened", self, event, seq, facts);
            self.take("approval_opened", decided, event, policy, notes, timers);
        }
        let Some((index, closed)) = closing else {
            return;
        };
        let approval = self.approvals[index].clone();
        let timed_out = matches!(event.action, EventAction::ApprovalDue { .. });
        if timed_out {
            notes.push(format!(
                "approval {}: deadline passed ({})",
                approval.name,
                match approval.on_timeout {
                    super::approval::OnTimeout::Escalate => "escalated",
                    super::approval::OnTimeout::Approve => "approved by timeout",
                    super::approval::OnTimeout::Reject => "rejected by timeout",
                }
            ));
            let decided = policy.rules().evaluate_trigger(
                "approval_expired",
                self,
                event,
                seq,
                approval.facts(),
            );
            self.take("approval_expired", decided, event, policy, notes, timers);
        }
        let outcome = match closed {
            Closing::Escalated => "escalated",
            Closing::Decided(ApprovalState::Approved) => "approved",
            Closing::Decided(_) => "rejected",
        };
        timers.approvals.push((
            approval.name.clone(),
            match outcome {
                _ if timed_out => "expired",
                "approved" => "approved",
                _ => "rejected",
            },
        ));
        if !timed_out {
            notes.push(format!("approval {}: {outcome}", approval.name));
        }
        let decided = policy
            .rules()
            .approval_actions(outcome, &approval, self, event, seq);
        self.take(outcome, decided, event, policy, notes, timers);
        if closed != Closing::Escalated {
            let decided = policy.rules().evaluate_trigger(
                "approval_decided",
                self,
                event,
                seq,
                approval.facts(),
            );
            self.take("approval_decided", decided, event, policy, notes, timers);
        }
    }

    /// Takes what rules decided on `trigger`: tags, notes, syncs and (but for `hold`'s) holds.
    fn take(
        &mut self,
        trigger: &str,
        decided: super::rules::RuleEffects,
        event: &super::event::OrderEvent,
        policy: &OrderPolicy,
        notes: &mut Vec<String>,
        timers: &mut Effects,
    ) {
        for tag in decided.tags {
            if !self.tags.contains(&tag) {
                self.tags.push(tag);
            }
        }
        notes.extend(decided.notes);
        if trigger != "hold"
            && let Some(rule) = decided.holds.first()
        {
            match self.hold(
                event.effective_at(),
                HoldCause::rule(rule, policy),
                policy,
                timers,
            ) {
                Outcome::Applied { .. } => {
                    notes.push(format!("rule {rule}: hold (exception interception)"));
                    timers.holds.push(rule.clone());
                }
                other => notes.push(format!(
                    "rule {rule}: hold not possible ({})",
                    other.label()
                )),
            }
        }
        timers.syncs.extend(decided.syncs);
    }

    /// Judges again the rules waiting for fields, now that `event` brought some.
    fn resume_waiting(
        &mut self,
        policy: &OrderPolicy,
        event: &super::event::OrderEvent,
        notes: &mut Vec<String>,
        timers: &mut Effects,
    ) {
        let waiting = std::mem::take(&mut self.waiting);
        let (decided, still) = policy.rules().resume(self, waiting, event);
        self.waiting = still;
        // A hold decided late applies only while the order can still be held.
        self.take("transition", decided, event, policy, notes, timers);
    }

    /// Order details: an answer is noted; a report of an enriched channel queues a fetch when
    /// the contents are missing (and none is outstanding), when the order reached `paid`, or
    /// when the raw status is one that changes them (address or amount changed).
    fn enrich(
        &mut self,
        journaled: &JournaledEvent,
        outcome: &Outcome,
        policy: &OrderPolicy,
        notes: &mut Vec<String>,
        timers: &mut Effects,
    ) {
        let event = &journaled.event;
        if policy.is_details_answer(&event.source) {
            self.details.get_or_insert_with(Default::default).fetched = journaled.seq;
            return;
        }
        let Some(spec) = policy.details_for(&event.source) else {
            return;
        };
        let status = self.details.get_or_insert_with(Default::default);
        let reason = if matches!(
            outcome,
            Outcome::Applied {
                to: OrderState::Paid,
                ..
            }
        ) {
            "paid"
        } else if spec.refetch_on.contains(&event.raw_status) {
            "changed"
        } else if !self.fields.contains_key(ITEMS_FIELD) && !status.outstanding(event.received_at) {
            "missing"
        } else {
            return;
        };
        let seq = event.log_seq.unwrap_or(journaled.seq);
        status.requested = seq;
        status.requested_at = event.received_at;
        status.fetches += 1;
        let id = SyncIntent::key(&self.key, seq, &spec.sink);
        notes.push(format!("details: fetch {} ({reason})", spec.sink));
        timers.syncs.push(SyncIntent {
            id,
            sink: spec.sink.clone(),
            order: self.key.clone(),
            seq,
            rule: DETAILS_RULE.to_owned(),
            payload: serde_json::json!({
                "order_id": self.key.split_once(':').map_or(self.key.as_str(), |(_, id)| id),
                "reason": reason,
            }),
            fields: None,
            contents: None,
        });
    }

    fn advance(
        &mut self,
        target: OrderState,
        at: Millis,
        policy: &OrderPolicy,
        timers: &mut Effects,
    ) -> Outcome {
        let Some(current) = self.state else {
            self.enter(target, at, policy, timers);
            return Outcome::Applied {
                from: None,
                to: target,
            };
        };
        if let Some(base) = self.hold.as_ref().map(|h| h.resume_to) {
            return if !base.reaches(target) {
                compare(base, target)
            } else if target == OrderState::Cancelled {
                self.hold = None;
                self.enter(target, at, policy, timers);
                Outcome::Applied {
                    from: Some(OrderState::OnHold),
                    to: target,
                }
            } else {
                if let Some(hold) = &mut self.hold {
                    hold.resume_to = target;
                }
                Outcome::Held { resume_to: target }
            };
        }
        if let Some(intercept) = &mut self.intercept
            && current == OrderState::InterceptRequested
            && !current.reaches(target)
        {
            // Awaiting the intercept's decision: progress is noted for a rejection; a cancel
            // before shipping cancels.
            let base = intercept.resume_to;
            return if !base.reaches(target) {
                compare(base, target)
            } else if target == OrderState::Cancelled {
                self.enter(target, at, policy, timers);
                Outcome::Applied {
                    from: Some(current),
                    to: target,
                }
            } else {
                intercept.resume_to = target;
                Outcome::Noted { resume_to: target }
            };
        }
        if current.reaches(target) {
            if target == OrderState::InterceptRequested {
                self.intercept = Some(Intercept {
                    requested_in: current,
                    resume_to: current,
                    since: at,
                });
            }
            self.enter(target, at, policy, timers);
            Outcome::Applied {
                from: Some(current),
                to: target,
            }
        } else {
            compare(current, target)
        }
    }

    /// Records where `part` stands; the order itself moves to `state` once every part it lists
    /// in `fields.sub_orders` (or this event lists) has reached it.
    fn move_part(
        &mut self,
        part: &str,
        state: OrderState,
        fields: &super::Fields,
        at: Millis,
        policy: &OrderPolicy,
        timers: &mut Effects,
    ) -> Outcome {
        let forward = self
            .parts
            .get(part)
            .is_none_or(|current| current.reaches(state));
        if forward {
            self.parts.insert(part.to_owned(), state);
        }
        let listed = sub_orders(fields).or_else(|| sub_orders(&self.fields));
        let remaining = listed.as_ref().map_or(0, |parts| {
            parts
                .iter()
                .filter(|p| self.parts.get(p.as_str()) != Some(&state))
                .count()
        });
        if listed.is_some() && remaining == 0 {
            return self.advance(state, at, policy, timers);
        }
        Outcome::PartMoved {
            part: part.to_owned(),
            state,
            remaining,
        }
    }

    fn hold(
        &mut self,
        at: Millis,
        cause: HoldCause,
        policy: &OrderPolicy,
        timers: &mut Effects,
    ) -> Outcome {
        match self.state {
            Some(OrderState::OnHold) => Outcome::Unchanged,
            Some(current) if current.can_hold() => {
                self.enter(OrderState::OnHold, at, policy, timers);
                self.hold = Some(Hold {
                    resume_to: current,
                    since: at,
                    reason: cause.reason,
                    by: cause.by,
                    held_in: Some(current),
                    syncs: cause.syncs,
                });
                Outcome::Applied {
                    from: Some(current),
                    to: OrderState::OnHold,
                }
            }
            Some(current) => Outcome::Conflict { current },
            None => Outcome::NotHeld,
        }
    }

    /// Moves into `target`, disarming the timers of the state left and arming those of `target`.
    fn enter(
        &mut self,
        target: OrderState,
        at: Millis,
        policy: &OrderPolicy,
        timers: &mut Effects,
    ) {
        if let Some(left) = self.state {
            let before = self.sla.len();
            self.sla.retain(|t| {
                let disarm = t.from == left && t.status == SlaStatus::Armed;
                if disarm {
                    timers.disarmed.push(t.rule.clone());
                }
                !disarm
            });
            debug_assert!(self.sla.len() <= before);
        }
        if target != OrderState::InterceptRequested {
            self.intercept = None;
        }
        self.state = Some(target);
        self.state_since = at;
        for rule in policy.sla_rules().iter().filter(|r| r.from == target) {
            self.arm(rule, at, timers);
        }
    }

    fn arm(&mut self, rule: &SlaRule, at: Millis, timers: &mut Effects) {
        let deadline = at.saturating_add(rule.within_ms);
        match self
            .sla
            .iter_mut()
            .find(|t| t.rule == rule.name && t.status == SlaStatus::Armed)
        {
            Some(timer) => {
                timer.armed_at = at;
                timer.deadline = deadline;
            }
            None => self.sla.push(SlaTimer {
                rule: rule.name.clone(),
                from: rule.from,
                armed_at: at,
                deadline,
                status: SlaStatus::Armed,
            }),
        }
        timers.armed.push((rule.name.clone(), deadline));
    }

    fn reset_timers_on_report(&mut self, at: Millis, policy: &OrderPolicy, timers: &mut Effects) {
        let Some(state) = self.state else { return };
        for rule in policy
            .sla_rules()
            .iter()
            .filter(|r| r.reset_on_event && r.from == state)
        {
            let armed = self
                .sla
                .iter()
                .any(|t| t.rule == rule.name && t.status == SlaStatus::Armed && t.armed_at < at);
            if armed {
                self.arm(rule, at, timers);
            }
        }
    }

    fn breach(&mut self, rule: &str, deadline: Millis, late: bool, detected_at: Millis) -> Outcome {
        match self
            .sla
            .iter_mut()
            .find(|t| t.rule == rule && t.deadline == deadline && t.status == SlaStatus::Armed)
        {
            Some(timer) => {
                timer.status = SlaStatus::Breached { detected_at, late };
                Outcome::SlaBreached {
                    rule: rule.to_owned(),
                }
            }
            None => Outcome::SlaNotArmed {
                rule: rule.to_owned(),
            },
        }
    }

    fn record_system(&mut self, journaled: &JournaledEvent) {
        let event = &journaled.event;
        let newer = self
            .systems
            .get(&event.source)
            .is_none_or(|s| s.occurred_at <= event.occurred_at);
        if newer {
            self.systems.insert(
                event.source.clone(),
                SystemStatus {
                    raw_status: event.raw_status.clone(),
                    mapped: event.action.label().to_owned(),
                    occurred_at: event.occurred_at,
                    received_at: event.received_at,
                },
            );
        }
    }
}

/// The order's parts as listed in `fields.sub_orders` (ids as strings or numbers), if any.
fn sub_orders(fields: &super::Fields) -> Option<Vec<String>> {
    let parts: Vec<String> = fields
        .value(SUB_ORDERS_FIELD)?
        .as_array()?
        .iter()
        .filter_map(|id| match id {
            serde_json::Value::String(id) => Some(id.clone()),
            serde_json::Value::Number(id) => Some(id.to_string()),
            _ => None,
        })
        .collect();
    (!parts.is_empty()).then_some(parts)
}

/// The `rule` of detail-fetch syncs.
pub const DETAILS_RULE: &str = "details";

/// The field in which a source lists an order's parts (sub-orders), for [`EventAction::MovePart`].
pub const SUB_ORDERS_FIELD: &str = "sub_orders";

/// Classifies a target that is not forward of `current`.
fn compare(current: OrderState, target: OrderState) -> Outcome {
    if current == target {
        Outcome::Unchanged
    } else if target.reaches(current) {
        Outcome::Stale { current }
    } else {
        Outcome::Conflict { current }
    }
}
