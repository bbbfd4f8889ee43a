//! Configuration the state machine consults: who may cause which state, and the SLA rules.

use super::event::Millis;
use super::rules::RuleSet;
use super::state::{OrderState, STATE_COUNT};
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
    details: Vec<DetailsSpec>,
    /// The sources whose names may label metrics (configured sources, their `_api` answers,
    /// `operator`, `orderhub`); any other name counts as `events`.
    metric_sources: Vec<String>,
    /// Stock reservation (`[stock]`), when configured.
    stock: Option<StockSpec>,
    /// Configured source roles (`[source_roles]`); others take their default.
    roles: std::collections::BTreeMap<String, super::disagreement::SourceRole>,
}

/// Stock reservation (`[stock]`): paid orders reserve their lines of tracked SKUs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockSpec {
    /// How long a reservation lasts unless the warehouse allocates the order.
    pub reserve_ttl_ms: Millis,
}

/// Order-detail enrichment of one channel: after its reports, the order's contents (items,
/// amounts, receiver) are fetched from the channel's order API by a sync to `sink`, whose
/// answer comes back as an event of source `answers` (`{channel}_api`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetailsSpec {
    /// The channel source whose reports cause fetches (`douyin`).
    pub source: String,
    /// The sink (dispatcher) that fetches: by convention `{channel}_api`.
    pub sink: String,
    /// The source of the events that carry the answers: by convention `{channel}_api`.
    pub answers: String,
    /// Raw statuses of `source` after which the details are fetched again (address or amount
    /// changed); reaching `paid` always fetches again.
    pub refetch_on: Vec<String>,
}

/// The metric label of sources nobody configured (canonical events' free text).
const FALLBACK_METRIC_SOURCE: &str = "events";

/// The source and sink name of `channel`'s order-detail answers and fetches.
pub fn details_name(channel: &str) -> String {
    format!("{channel}_api")
}

impl Default for OrderPolicy {
    fn default() -> Self {
        OrderPolicy {
            allowed_sources: Default::default(),
            sla: Vec::new(),
            rules: RuleSet::empty(),
            details: Vec::new(),
            metric_sources: Vec::new(),
            stock: None,
            roles: Default::default(),
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

    /// Gives `source` the role `role` (`[source_roles]`).
    pub fn with_role(mut self, source: &str, role: super::disagreement::SourceRole) -> Self {
        self.roles.insert(source.to_owned(), role);
        self
    }

    /// The role of `source`: configured, else its default.
    pub fn role_of(&self, source: &str) -> super::disagreement::SourceRole {
        self.roles
            .get(source)
            .copied()
            .unwrap_or_else(|| super::disagreement::SourceRole::default_for(source))
    }

    /// Reserve stock as `spec` says.
    pub fn with_stock(mut self, spec: StockSpec) -> Self {
        self.stock = Some(spec);
        self
    }

    /// Stock reservation, when configured.
    pub fn stock(&self) -> Option<&StockSpec> {
        self.stock.as_ref()
    }

    /// Fetch `spec.source`'s order details.
    pub fn with_details(mut self, spec: DetailsSpec) -> Self {
        self.details.retain(|d| d.source != spec.source);
        self.details.push(spec);
        self
    }

    /// The enrichment of the channel `source`, if it has one.
    pub fn details_for(&self, source: &str) -> Option<&DetailsSpec> {
        self.details.iter().find(|d| d.source == source)
    }

    /// Whether `source` carries order-detail answers.
    pub fn is_details_answer(&self, source: &str) -> bool {
        self.details.iter().any(|d| d.answers == source)
    }

    /// Every enriched channel.
    pub fn details(&self) -> &[DetailsSpec] {
        &self.details
    }

    /// Names `sources` as the ones that may label metrics.
    pub fn with_metric_sources(mut self, sources: impl IntoIterator<Item = String>) -> Self {
        self.metric_sources.extend(sources);
        self.metric_sources.sort();
        self.metric_sources.dedup();
        self
    }

    /// The metric label of `source`: itself when known, else `events` (a canonical event's
    /// free-text source never becomes a label).
    pub fn metric_source<'a>(&'a self, source: &str) -> &'a str {
        self.metric_sources
            .iter()
            .find(|known| known.as_str() == source)
            .map_or(FALLBACK_METRIC_SOURCE, String::as_str)
    }

    /// Every label [`OrderPolicy::metric_source`] can give.
    pub fn metric_source_labels(&self) -> impl Iterator<Item = &str> {
        let fallback = (!self
            .metric_sources
            .iter()
            .any(|s| s == FALLBACK_METRIC_SOURCE))
        .then_some(FALLBACK_METRIC_SOURCE);
        self.metric_sources
            .iter()
            .map(String::as_str)
            .chain(fallback)
    }

    /// The SLA rules, in configuration order.
    pub fn sla_rules(&self) -> &[SlaRule] {
        &self.sla
    }
}
