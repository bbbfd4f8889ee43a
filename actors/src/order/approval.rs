//! Approval flows: a decision some people must take about an order within a deadline — say two
//! approvers agreeing to intercept a parcel within 20 minutes. An approval opens when its CEL
//! condition holds for a report, lives in the order (so it is journaled, replayed and survives
//! kill -9 like everything else the fold decides), counts each operator once, and closes
//! approved, rejected or — when its durable deadline passes first — expired.

use super::event::Millis;
use super::rules::Sinks;
use serde::{Deserialize, Serialize};

/// Where an approval stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalState {
    /// Waiting for decisions.
    Open,
    /// Enough approvers approved.
    Approved,
    /// An approver rejected.
    Rejected,
    /// The deadline passed first (`timed_out` says what that did).
    Expired,
}

impl ApprovalState {
    /// Every state, for `?state=` and metric labels.
    pub const ALL: [ApprovalState; 4] = [
        ApprovalState::Open,
        ApprovalState::Approved,
        ApprovalState::Rejected,
        ApprovalState::Expired,
    ];

    /// The snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Open => "open",
            ApprovalState::Approved => "approved",
            ApprovalState::Rejected => "rejected",
            ApprovalState::Expired => "expired",
        }
    }
}

impl std::str::FromStr for ApprovalState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ApprovalState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| {
                format!("{s:?} is no approval state (open, approved, rejected, expired)")
            })
    }
}

/// What happens when nobody decided in time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    /// Tell someone (`escalate_to`); the approval stays decidable.
    #[default]
    Escalate,
    /// Decide it as rejected.
    Reject,
    /// Decide it as approved.
    Approve,
}

/// One operator's decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Approve.
    Approve,
    /// Reject.
    Reject,
}

impl Verdict {
    /// `approve` or `reject`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Reject => "reject",
        }
    }
}

/// A decision as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The operator's name.
    pub operator: String,
    /// What they decided.
    pub decision: Verdict,
    /// Why, if they said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Hub time.
    pub at: Millis,
}

/// One approval of one order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// `{order}:{name}:{seq}`: the order, the flow and the report that opened it. Also the
    /// name of its deadline timer.
    pub id: String,
    /// The order.
    pub order: String,
    /// The flow's name (`[[approvals]] name`).
    pub name: String,
    /// Where it stands.
    pub state: ApprovalState,
    /// Hub time it opened.
    pub opened_at: Millis,
    /// When it expires.
    pub deadline: Millis,
    /// Distinct approvers needed (as configured when it opened).
    pub required: u32,
    /// The least role that may decide (as configured when it opened).
    pub role: String,
    /// What the deadline does (as configured when it opened).
    pub on_timeout: OnTimeout,
    /// Decisions, in order.
    pub decisions: Vec<Decision>,
    /// It was opened by the report that requested an intercept: approved, the order moves to
    /// `intercepted`; rejected, back to where it was.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub intercept: bool,
    /// Hub time it was decided (by people or by its deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<Millis>,
}

impl Approval {
    /// Whether decisions still count: open, or expired with `escalate` (somebody was told and
    /// may still decide).
    pub fn decidable(&self) -> bool {
        self.state == ApprovalState::Open
            || (self.state == ApprovalState::Expired && self.closed_at.is_none())
    }

    /// Approvals so far.
    pub fn approvals(&self) -> usize {
        self.decisions
            .iter()
            .filter(|d| d.decision == Verdict::Approve)
            .count()
    }

    /// Whether `operator` decided already.
    pub fn decided_by(&self, operator: &str) -> bool {
        self.decisions.iter().any(|d| d.operator == operator)
    }

    /// Counts `decision`; returns the state it closes the approval in, if it does (one
    /// rejection rejects; `required` distinct approvals approve).
    pub(crate) fn count(&mut self, decision: Decision) -> Option<ApprovalState> {
        let verdict = decision.decision;
        let at = decision.at;
        self.decisions.push(decision);
        let closed = match verdict {
            Verdict::Reject => ApprovalState::Rejected,
            Verdict::Approve if self.approvals() >= self.required as usize => {
                ApprovalState::Approved
            }
            Verdict::Approve => return None,
        };
        self.state = closed;
        self.closed_at = Some(at);
        Some(closed)
    }

    /// The facts rules see in `event.approval`: the approval, with its deadline also as UTC
    /// text (`deadline_utc`) for messages.
    pub(crate) fn facts(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut approval = serde_json::to_value(self).unwrap_or_default();
        if let serde_json::Value::Object(map) = &mut approval {
            let at = std::time::UNIX_EPOCH
                + std::time::Duration::from_millis(self.deadline.max(0) as u64);
            map.insert(
                "deadline_utc".into(),
                humantime::format_rfc3339_seconds(at).to_string().into(),
            );
        }
        let mut facts = serde_json::Map::new();
        facts.insert("approval".into(), approval);
        facts
    }
}

/// What approving or rejecting sends (`on_approve = { sync = ["wms", "courier"] }`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalActions {
    /// Sinks that receive a sync (one or a list).
    #[serde(default)]
    pub sync: Option<Sinks>,
    /// Sink that receives a notification.
    #[serde(default)]
    pub notify: Option<String>,
    /// minijinja template of the notification's text.
    #[serde(default)]
    pub message: Option<String>,
}

/// An approval flow as configured (`[[approvals]]`), durations already in milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalSpec {
    /// Unique name.
    pub name: String,
    /// CEL over `order` and `event`: opens an approval when true for a report.
    pub when: String,
    /// Distinct approvers needed.
    pub required: u32,
    /// The least role that may decide.
    pub role: String,
    /// How long people have.
    pub within_ms: Millis,
    /// What the deadline does.
    pub on_timeout: OnTimeout,
    /// A sink told when the deadline passes.
    pub escalate_to: Option<String>,
    /// Sent when approved.
    pub on_approve: Option<ApprovalActions>,
    /// Sent when rejected.
    pub on_reject: Option<ApprovalActions>,
}

/// How an approval closed, for the triggers and actions judged after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Closing {
    /// People decided (or the deadline decided, `on_timeout = approve | reject`).
    Decided(ApprovalState),
    /// The deadline passed with `escalate`.
    Escalated,
}
