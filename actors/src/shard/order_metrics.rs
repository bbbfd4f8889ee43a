//! Metric handles the order actors use, registered once per engine rather than looked up per
//! event.

use crate::order::{OrderState, Outcome, STATE_LABELS_WITH_NONE};
use crate::telemetry as t;
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;

const OUTCOMES: [&str; 15] = [
    "applied",
    "unchanged",
    "stale",
    "conflict",
    "not_allowed",
    "superseded",
    "recorded",
    "held",
    "not_held",
    "sla_breached",
    "sla_not_armed",
    "part_moved",
    "approval",
    "not_decided",
    "noted",
];

/// The stock ledger answers exported from start-up when stock is configured.
const STOCK_RESULTS: [(&str, &str); 6] = [
    ("reserve", "reserved"),
    ("reserve", "short"),
    ("reserve", "untracked"),
    ("release", "done"),
    ("commit", "done"),
    ("restock", "done"),
];

/// What can happen to an approval (the `outcome` label of `orderhub_approvals_total`).
pub(crate) const APPROVAL_OUTCOMES: [&str; 4] = ["opened", "approved", "rejected", "expired"];

/// Pre-registered handles plus the shared counters behind the gauges that are refreshed
/// periodically instead of on every event.
pub(crate) struct OrderMetrics {
    transitions: Vec<Counter>,
    by_state: Vec<Gauge>,
    outcomes: Vec<Counter>,
    breaches: HashMap<(String, bool), Counter>,
    holds: HashMap<String, Counter>,
    approvals: HashMap<(String, &'static str), Counter>,
    stock: HashMap<(&'static str, &'static str), Counter>,
    disagreements: HashMap<&'static str, Counter>,
    delays: HashMap<String, Histogram>,
    pub(crate) spawned: Counter,
    pub(crate) passivated_idle: Counter,
    pub(crate) passivated_capacity: Counter,
    pub(crate) passivated_shutdown: Counter,
    pub(crate) restarts: Counter,
    pub(crate) failures_start: Counter,
    pub(crate) failures_crash_loop: Counter,
    pub(crate) active: Arc<AtomicI64>,
    pub(crate) pending: Arc<AtomicI64>,
    pub(crate) armed: Arc<AtomicI64>,
}

impl OrderMetrics {
    /// Records how late a transition's report reached the hub (its label from `policy`).
    pub(crate) fn delay(&self, label: &str, seconds: f64) {
        if let Some(handle) = self.delays.get(label) {
            handle.record(seconds);
        }
    }

    /// Registers every series up front (so each is exported as 0 before its first event):
    /// breaches for each SLA rule, holds for each hold rule.
    pub(crate) fn new(
        rules: impl IntoIterator<Item = String>,
        hold_rules: impl IntoIterator<Item = String>,
        sources: impl IntoIterator<Item = String>,
        approval_flows: impl IntoIterator<Item = String>,
        stock: bool,
    ) -> Self {
        let mut stock_requests = HashMap::new();
        if stock {
            for (op, result) in STOCK_RESULTS {
                stock_requests.insert(
                    (op, result),
                    counter!(t::STOCK_REQUESTS, "op" => op, "result" => result),
                );
            }
        }
        let mut approvals = HashMap::new();
        for flow in approval_flows {
            for outcome in APPROVAL_OUTCOMES {
                let handle = counter!(t::APPROVALS, "name" => flow.clone(), "outcome" => outcome);
                approvals.insert((flow.clone(), outcome), handle);
            }
        }
        let mut transitions =
            Vec::with_capacity(STATE_LABELS_WITH_NONE.len() * OrderState::ALL.len());
        for from in STATE_LABELS_WITH_NONE {
            for to in OrderState::ALL {
                transitions
                    .push(counter!(t::ORDERS_TRANSITIONS, "from" => from, "to" => to.as_str()));
            }
        }
        let mut breaches = HashMap::new();
        for rule in rules {
            for late in [false, true] {
                let handle = counter!(t::SLA_BREACHES, "rule" => rule.clone(), "late" => if late { "true" } else { "false" });
                breaches.insert((rule.clone(), late), handle);
            }
        }
        OrderMetrics {
            transitions,
            by_state: OrderState::ALL
                .iter()
                .map(|s| gauge!(t::ORDERS_BY_STATE, "state" => s.as_str()))
                .collect(),
            outcomes: OUTCOMES
                .iter()
                .map(|o| counter!(t::ORDERS_EVENT_OUTCOMES, "outcome" => *o))
                .collect(),
            breaches,
            approvals,
            stock: stock_requests,
            disagreements: crate::order::disagreement::KINDS
                .iter()
                .map(|kind| (*kind, counter!(t::DISAGREEMENTS, "kind" => *kind)))
                .collect(),
            delays: sources
                .into_iter()
                .map(|source| {
                    let handle = histogram!(t::STATE_CHANGE_DELAY, "source" => source.clone());
                    (source, handle)
                })
                .collect(),
            holds: hold_rules
                .into_iter()
                .map(|rule| (rule.clone(), counter!(t::ORDERS_HOLDS, "rule" => rule)))
                .collect(),
            spawned: counter!(t::ACTORS_SPAWNED),
            passivated_idle: counter!(t::ACTORS_PASSIVATED, "reason" => "idle"),
            passivated_capacity: counter!(t::ACTORS_PASSIVATED, "reason" => "capacity"),
            passivated_shutdown: counter!(t::ACTORS_PASSIVATED, "reason" => "shutdown"),
            restarts: counter!(t::ACTORS_RESTARTS),
            failures_start: counter!(t::ACTORS_FAILURES, "kind" => "start"),
            failures_crash_loop: counter!(t::ACTORS_FAILURES, "kind" => "crash_loop"),
            active: Arc::default(),
            pending: Arc::default(),
            armed: Arc::default(),
        }
    }

    /// Counts one applied event's outcome, and the transition if it moved the order.
    pub(crate) fn record(&self, outcome: &Outcome) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome.label()) {
            self.outcomes[i].increment(1);
        }
        if let Outcome::Applied { from, to } = outcome {
            let from_index = from.map_or(0, |f| f as usize + 1);
            self.transitions[from_index * OrderState::ALL.len() + *to as usize].increment(1);
            if let Some(from) = from {
                self.by_state[*from as usize].decrement(1.0);
            }
            self.by_state[*to as usize].increment(1.0);
        }
    }

    /// Counts a disagreement flagged.
    pub(crate) fn disagreement(&self, kind: &'static str) {
        match self.disagreements.get(kind) {
            Some(counter) => counter.increment(1),
            None => counter!(t::DISAGREEMENTS, "kind" => kind).increment(1),
        }
    }

    /// Counts a stock ledger answer.
    pub(crate) fn stock(&self, op: &'static str, result: &'static str) {
        match self.stock.get(&(op, result)) {
            Some(counter) => counter.increment(1),
            None => counter!(t::STOCK_REQUESTS, "op" => op, "result" => result).increment(1),
        }
    }

    /// Counts what happened to an approval of flow `name`.
    pub(crate) fn approval(&self, name: &str, outcome: &'static str) {
        match self.approvals.get(&(name.to_owned(), outcome)) {
            Some(counter) => counter.increment(1),
            None => {
                counter!(t::APPROVALS, "name" => name.to_owned(), "outcome" => outcome).increment(1)
            }
        }
    }

    /// Counts a hold by `rule`.
    pub(crate) fn hold(&self, rule: &str) {
        match self.holds.get(rule) {
            Some(counter) => counter.increment(1),
            None => counter!(t::ORDERS_HOLDS, "rule" => rule.to_owned()).increment(1),
        }
    }

    /// Counts an SLA breach.
    pub(crate) fn breach(&self, rule: &str, late: bool) {
        match self.breaches.get(&(rule.to_owned(), late)) {
            Some(counter) => counter.increment(1),
            None => {
                counter!(t::SLA_BREACHES, "rule" => rule.to_owned(), "late" => late.to_string())
                    .increment(1)
            }
        }
    }

    /// Counts an order that left the journal (archived) out of its state.
    pub(crate) fn left(&self, state: OrderState) {
        self.by_state[state as usize].decrement(1.0);
    }

    /// Sets the per-state gauges to absolute counts (at start-up, from the index).
    pub(crate) fn set_orders_by_state(&self, counts: &[(OrderState, u64)]) {
        for (state, count) in counts {
            self.by_state[*state as usize].set(*count as f64);
        }
    }
}
