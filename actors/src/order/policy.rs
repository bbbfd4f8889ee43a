//! Configuration the state machine consults: who may cause which state, and the SLA rules.

use super::event::Millis;
use super::state::{OrderState, STATE_COUNT};
use crate::dispatch::RuleSet;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// An SLA rule: armed when the order enters `from`, disarmed when it leaves, breached when the
/// deadline passes first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlaRule {
    /// Unique name, used in the API and as a metric label.
    pub name: String,
    /// The state that arms the timer.
    pub from: OrderState,
    /// How long the order may stay in `from`.
    pub within_ms: Millis,
    /// Restart the deadline on every report about the order while it is in `from`
    /// ("in transit without an update for 48 h").
    pub reset_on_event: bool,
}

/// The rules an order is judged by. Shared read-only by every order actor.
#[derive(Clone, Debug)]
pub struct OrderPolicy {
    /// Per target state, the sources allowed to cause it; `None` means any source may.
    allowed_sources: [Option<Vec<String>>; STATE_COUNT],
    sla: Vec<SlaRule>,
    rules: Arc<RuleSet>,
}

impl Default for OrderPolicy {
    fn default() -> Self {
        OrderPolicy {
            allowed_sources: Default::default(),
            sla: Vec::new(),
            rules: RuleSet::empty(),
        }
    }
}

impl OrderPolicy {
    /// A policy where any source may cause any forward transition and no SLA applies.
    pub fn permissive() -> Self {
        Self::default()
    }

    /// Restrict `state` to be caused only by `sources`.
    pub fn allow_only(mut self, state: OrderState, sources: Vec<String>) -> Self {
        self.allowed_sources[state as usize] = Some(sources);
        self
    }

    /// Add an SLA rule.
    pub fn with_sla(mut self, rule: SlaRule) -> Self {
        self.sla.push(rule);
        self
    }

    /// Whether `source` may move an order into `state`.
    pub fn allows(&self, source: &str, state: OrderState) -> bool {
        match &self.allowed_sources[state as usize] {
            None => true,
            Some(list) => list.iter().any(|s| s == source),
        }
    }

    /// Use `rules` to decide syncs, tags and holds on every transition.
    pub fn with_rules(mut self, rules: Arc<RuleSet>) -> Self {
        self.rules = rules;
        self
    }

    /// The rules.
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// The SLA rules, in configuration order.
    pub fn sla_rules(&self) -> &[SlaRule] {
        &self.sla
    }
}
