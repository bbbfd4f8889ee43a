//! Rules: evaluated once per applied transition, inside the deterministic order fold. A rule's
//! condition is a CEL expression over the order; its actions are syncs (with an optional
//! minijinja payload template and CEL-computed fields), notifications, tags and holds.

use super::approval::{Approval, ApprovalActions, ApprovalSpec};
use super::sync::SyncIntent;
use crate::order::{Order, OrderEvent, OrderState};
use cel_interpreter::{Context, Program, Value};
use serde_json::{Map, Value as Json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A rule as configured (before compilation): the engine reads `[[rules]]` straight into it.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Unique name.
    pub name: String,
    /// CEL condition over `order` and `event`.
    pub when: String,
    /// Sinks that receive a sync: one (`sync = "erp"`) or several (`sync = ["wms", "courier"]`).
    pub sync: Option<Sinks>,
    /// Sink that receives a notification.
    pub notify: Option<String>,
    /// minijinja template of the notification text.
    pub message: Option<String>,
    /// minijinja template of the sync payload (must render JSON).
    pub template: Option<String>,
    /// Computed fields: name → CEL expression, added to the payload's `fields`.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// What the sink is asked to do (`create`, `cancel`, …); defaults to the new state.
    pub operation: Option<String>,
    /// Tag to add to the order.
    pub tag: Option<String>,
    /// Put the order on hold (exception interception): `true`, or the hold's reason
    /// (`hold = "address check"`).
    #[serde(default)]
    pub hold: HoldSpec,
    /// What the rule is judged on: `transition` (the default: every state change),
    /// `sla_breached`, `hold` (the order went on hold), `unmapped_status` (a report whose raw
    /// status the source's mapping does not know), `approval_opened`, `approval_decided`,
    /// `approval_expired`, `oversell` (stock could not be reserved) or `disagreement` (systems
    /// contradict each other). Conditions and templates see the trigger's
    /// facts in `event` (`event.sla {rule, deadline, late, late_by_ms}`, `event.hold {reason,
    /// by}`).
    #[serde(default)]
    pub on: Option<String>,
    /// Order fields the rule needs (e.g. `["items"]`, brought by order-detail enrichment): at a
    /// transition where one is missing the rule waits, and is judged when an event brings them
    /// — as at the transition it waited at (its state, its sequence), with the fields known
    /// then.
    #[serde(default)]
    pub needs: Vec<String>,
}

/// The sinks a rule syncs to: written as one name or a list of names.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(from = "OneOrMany")]
pub struct Sinks(pub Vec<String>);

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl From<OneOrMany> for Sinks {
    fn from(value: OneOrMany) -> Self {
        match value {
            OneOrMany::One(sink) => Sinks(vec![sink]),
            OneOrMany::Many(sinks) => Sinks(sinks),
        }
    }
}

impl From<&str> for Sinks {
    fn from(sink: &str) -> Self {
        Sinks(vec![sink.to_owned()])
    }
}

impl<'a> IntoIterator for &'a Sinks {
    type Item = &'a String;
    type IntoIter = std::slice::Iter<'a, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// The triggers a rule may be judged on (`on`); `transition` when unset.
pub const TRIGGERS: [&str; 9] = [
    "transition",
    "sla_breached",
    "hold",
    "unmapped_status",
    "approval_opened",
    "approval_decided",
    "approval_expired",
    "oversell",
    "disagreement",
];

/// A rule's `hold`: a flag, the reason the hold carries, or the reason and the sinks whose
/// syncs it keeps back.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(untagged)]
pub enum HoldSpec {
    /// `hold = true` / `false`.
    Flag(bool),
    /// `hold = "address check"`: on hold, for that reason.
    Reason(String),
    /// `hold = { reason = "address check", syncs = ["wms", "courier"] }`: on hold, keeping back
    /// only the syncs to those sinks (the others go out).
    Detailed {
        /// Why.
        reason: String,
        /// The sinks whose syncs wait for the release.
        syncs: Sinks,
    },
}

impl Default for HoldSpec {
    fn default() -> Self {
        HoldSpec::Flag(false)
    }
}

impl HoldSpec {
    /// The sinks the hold keeps back, when it names them.
    pub fn sinks(&self) -> &[String] {
        match self {
            HoldSpec::Detailed { syncs, .. } => &syncs.0,
            _ => &[],
        }
    }

    /// Whether the rule holds the order.
    pub fn is_set(&self) -> bool {
        match self {
            HoldSpec::Flag(set) => *set,
            HoldSpec::Reason(_) | HoldSpec::Detailed { .. } => true,
        }
    }
}

/// A rule that cannot be used; names the rule and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule {rule:?}: {problem}")]
pub struct RuleError {
    /// The rule.
    pub rule: String,
    /// What is wrong.
    pub problem: String,
}

/// A rule about to be judged, and whether its condition is already known to hold.
struct Judged<'a> {
    rule: &'a CompiledRule,
    holds: bool,
}

impl<'a> Judged<'a> {
    /// A rule whose condition is evaluated.
    fn new(rule: &'a CompiledRule) -> Self {
        Judged { rule, holds: false }
    }
}

struct CompiledRule {
    spec: RuleSpec,
    when: Program,
    /// The only states `when` can be true in, when its form says so (see [`required_states`]).
    states: Option<Vec<&'static str>>,
    /// Whether `when` is true in every one of `states` too (see [`decided_by`]): a transition
    /// into one of them then needs no evaluation of the condition.
    decided: bool,
    fields: Vec<(String, Program)>,
    /// Whether its condition or computed fields can read `order.fields` (they name
    /// `fields`): the order's contents are converted to CEL values only for such rules.
    reads_fields: bool,
    payload_template: Option<String>,
    message_template: Option<String>,
}

impl CompiledRule {
    /// The trigger the rule is judged on.
    fn trigger(&self) -> &str {
        self.spec.on.as_deref().unwrap_or("transition")
    }

    /// The first field the rule needs that `order` lacks.
    fn missing_need(&self, order: &Order) -> Option<&str> {
        self.spec
            .needs
            .iter()
            .find(|field| {
                order
                    .fields
                    .get(field.as_str())
                    .is_none_or(super::Field::is_null)
            })
            .map(String::as_str)
    }
}

/// What the rules decided for one transition.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuleEffects {
    /// Syncs to dispatch.
    pub syncs: Vec<SyncIntent>,
    /// Tags to add.
    pub tags: Vec<String>,
    /// Rules that asked for a hold.
    pub holds: Vec<String>,
    /// One line per action taken or failed, for the timeline.
    pub notes: Vec<String>,
    /// Rules that wait for fields they need.
    pub waiting: Vec<String>,
}

/// The compiled rules, shared read-only by every order actor.
pub struct RuleSet {
    rules: Vec<CompiledRule>,
    approvals: Vec<CompiledApproval>,
    templates: minijinja::Environment<'static>,
    /// CEL's built-in functions, registered once; each evaluation adds its variables in an
    /// inner scope (building this per evaluation cost ~10 µs a transition).
    builtins: Context<'static>,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field(
                "rules",
                &self.rules.iter().map(|r| &r.spec.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Variables a condition may refer to.
const VARIABLES: [&str; 2] = ["order", "event"];

impl RuleSet {
    /// No rules.
    pub fn empty() -> Arc<RuleSet> {
        Arc::new(RuleSet {
            rules: Vec::new(),
            approvals: Vec::new(),
            templates: minijinja::Environment::new(),
            builtins: Context::default(),
        })
    }

    /// Compiles and checks `specs`: CEL syntax and variables, template syntax, that a rule does
    /// something, and that each payload template renders JSON for a sample order.
    pub fn compile(specs: Vec<RuleSpec>) -> Result<Arc<RuleSet>, RuleError> {
        Self::compile_with_approvals(specs, Vec::new())
    }

    /// Compiles `specs` and the approval flows `approvals` (their conditions, and what
    /// approving, rejecting and escalating send). An approval's problem names it as
    /// `approval NAME`.
    pub fn compile_with_approvals(
        specs: Vec<RuleSpec>,
        approvals: Vec<ApprovalSpec>,
    ) -> Result<Arc<RuleSet>, RuleError> {
        let (mut rules, mut templates) = Self::compile_rules(specs)?;
        let compiled = compile_approvals(approvals, &mut rules, &mut templates)?;
        let set = RuleSet {
            rules,
            approvals: compiled,
            templates,
            builtins: Context::default(),
        };
        // A payload template must render JSON; try it on a sample order.
        let sample = sample_order();
        for rule in &set.rules {
            if let Some(name) = &rule.payload_template {
                let context = set.template_context(&sample, None, Map::new());
                set.render_json(name, &context)
                    .map_err(|problem| RuleError {
                        rule: rule.spec.name.clone(),
                        problem: format!("template: {problem}"),
                    })?;
            }
        }
        Ok(Arc::new(set))
    }

    #[allow(clippy::type_complexity)]
    fn compile_rules(
        specs: Vec<RuleSpec>,
    ) -> Result<(Vec<CompiledRule>, minijinja::Environment<'static>), RuleError> {
        let mut templates = minijinja::Environment::new();
        templates.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
        // A missing value renders as JSON null, so `"shop": {{ order.fields.shop_id }}` stays
        // JSON for an order without that field.
        templates.set_formatter(|out, state, value| {
            if value.is_undefined() || value.is_none() {
                out.write_str("null").map_err(minijinja::Error::from)
            } else {
                minijinja::escape_formatter(out, state, value)
            }
        });
        let mut rules = Vec::with_capacity(specs.len());
        let mut names = std::collections::HashSet::new();
        for spec in specs {
            let fail = |problem: String| RuleError {
                rule: spec.name.clone(),
                problem,
            };
            if spec.name.is_empty() || !names.insert(spec.name.clone()) {
                return Err(fail("rule names must be unique and non-empty".into()));
            }
            let when = compile_cel(&spec.when).map_err(|e| fail(format!("when: {e}")))?;
            let ast = parse_cel(&spec.when);
            let states = ast.as_ref().and_then(required_states);
            let decided = ast
                .as_ref()
                .is_some_and(|ast| decided_by(ast, &ORDER_STATE));
            let mut fields = Vec::new();
            for (name, expr) in &spec.fields {
                let program = compile_cel(expr).map_err(|e| fail(format!("fields.{name}: {e}")))?;
                fields.push((name.clone(), program));
            }
            if let Some(sinks) = &spec.sync {
                if sinks.0.is_empty() {
                    return Err(fail("sync = []: name at least one sink".into()));
                }
                let mut seen = std::collections::HashSet::new();
                if let Some(twice) = sinks.0.iter().find(|sink| !seen.insert(sink.as_str())) {
                    return Err(fail(format!("sync names sink {twice:?} twice")));
                }
            }
            if spec.sync.is_none()
                && spec.notify.is_none()
                && spec.tag.is_none()
                && !spec.hold.is_set()
            {
                return Err(fail("does nothing: set sync, notify, tag or hold".into()));
            }
            if let Some(on) = &spec.on
                && !TRIGGERS.contains(&on.as_str())
            {
                let problem = format!(
                    "unknown trigger on = {on:?}; one of {}",
                    TRIGGERS.join(", ")
                );
                return Err(fail(problem));
            }
            if let HoldSpec::Detailed { syncs, .. } = &spec.hold
                && syncs.0.is_empty()
            {
                return Err(fail(
                    "hold.syncs = []: name the sinks whose syncs wait (or leave syncs out: all)"
                        .into(),
                ));
            }
            if let Some(blank) = spec.needs.iter().find(|f| f.trim().is_empty()) {
                return Err(fail(format!("needs: {blank:?} is no field name")));
            }
            if spec.template.is_some() && spec.sync.is_none() {
                return Err(fail("template is only used with sync".into()));
            }
            if spec.message.is_some() && spec.notify.is_none() {
                return Err(fail("message is only used with notify".into()));
            }
            // A template is kept as `{rule}#{what}`.
            let mut add = |what: &str, key: &str, source: &Option<String>| {
                source
                    .as_ref()
                    .map(|source| {
                        let name = format!("{}#{what}", spec.name);
                        templates
                            .add_template_owned(name.clone(), source.clone())
                            .map(|()| name)
                            .map_err(|e| fail(format!("{key}: {e}")))
                    })
                    .transpose()
            };
            let payload_template = add("payload", "template", &spec.template)?;
            let message_template = add("message", "message", &spec.message)?;
            let reads_fields = std::iter::once(&spec.when)
                .chain(spec.fields.values())
                .any(|source| source.contains("fields"));
            rules.push(CompiledRule {
                spec,
                when,
                states,
                decided,
                fields,
                reads_fields,
                payload_template,
                message_template,
            });
        }
        Ok((rules, templates))
    }

    /// Names of the rules, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.spec.name.as_str())
    }

    /// Names of the rules that put orders on hold.
    pub fn hold_rules(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .filter(|r| r.spec.hold.is_set())
            .map(|r| r.spec.name.as_str())
    }

    /// The reason rule `rule`'s hold carries: its own, else its name.
    pub fn hold_reason(&self, rule: &str) -> String {
        match self.hold_of(rule) {
            Some(HoldSpec::Reason(reason) | HoldSpec::Detailed { reason, .. })
                if !reason.trim().is_empty() =>
            {
                reason.clone()
            }
            _ => rule.to_owned(),
        }
    }

    /// The sinks rule `rule`'s hold keeps back (`None`: every sink).
    pub fn hold_syncs(&self, rule: &str) -> Option<Vec<String>> {
        match self.hold_of(rule) {
            Some(HoldSpec::Detailed { syncs, .. }) => Some(syncs.0.clone()),
            _ => None,
        }
    }

    fn hold_of(&self, rule: &str) -> Option<&HoldSpec> {
        self.rules
            .iter()
            .find(|r| r.spec.name == rule)
            .map(|r| &r.spec.hold)
    }

    /// Sinks each rule sends to: `(rule, sink)`.
    pub fn sinks(&self) -> impl Iterator<Item = (&str, &str)> {
        self.rules.iter().flat_map(|r| {
            r.spec
                .sync
                .iter()
                .flatten()
                .chain(r.spec.notify.iter())
                .map(move |sink| (r.spec.name.as_str(), sink.as_str()))
        })
    }

    /// Whether there is nothing to evaluate.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Evaluates every rule for the transition `from → order.state` caused by `event` at `seq`.
    pub fn evaluate(
        &self,
        order: &Order,
        previous: Option<OrderState>,
        event: &OrderEvent,
        seq: u64,
    ) -> RuleEffects {
        let mut effects = RuleEffects::default();
        // Most transitions match no rule, and most conditions name the state they fire in:
        // skip those rules before paying for the order's conversion to CEL values.
        let state = state_name(order.state);
        let live: Vec<&CompiledRule> = self
            .rules
            .iter()
            .filter(|rule| rule.trigger() == "transition")
            .filter(|rule| rule.states.as_ref().is_none_or(|s| s.contains(&state)))
            .collect();
        if live.is_empty() {
            return effects;
        }
        let event_value = event_json(event, None);
        let mut root = self.builtins.new_inner_scope();
        // A condition that only tests the state holds here (the filter above): the order is
        // converted to CEL values only for rules that evaluate something.
        let known = |rule: &CompiledRule| rule.decided && rule.fields.is_empty();
        if !live.iter().all(|rule| known(rule)) {
            // The order's contents are the bulk of its conversion: left out when no rule reads
            // them.
            let with_fields = live.iter().any(|rule| rule.reads_fields);
            let order_value = order_value(order, previous, with_fields);
            if root.add_variable("order", Cel(&order_value)).is_err()
                || root.add_variable("event", Cel(&event_value)).is_err()
            {
                effects
                    .notes
                    .push("rules skipped: order not representable in CEL".into());
                return effects;
            }
        }
        for rule in live {
            let name = &rule.spec.name;
            if let Some(missing) = rule.missing_need(order) {
                effects.waiting.push(name.clone());
                effects
                    .notes
                    .push(format!("rule {name}: waits for fields.{missing}"));
                continue;
            }
            let judged = Judged {
                rule,
                // In one of its states (the filter above), such a condition holds.
                holds: rule.decided,
            };
            self.judge(
                judged,
                &root,
                order,
                previous,
                &event_value,
                seq,
                &mut effects,
            );
        }
        self.note_syncs(&mut effects);
        effects
    }

    /// Evaluates the rules judged on `trigger` (not a transition) for `event` at `seq`, with the
    /// trigger's `facts` in `event` (e.g. `{"sla": {...}}`). Their syncs' keys end in
    /// `:{trigger}`, apart from any the same event's transition decided.
    pub fn evaluate_trigger(
        &self,
        trigger: &str,
        order: &Order,
        event: &OrderEvent,
        seq: u64,
        facts: Map<String, Json>,
    ) -> RuleEffects {
        self.evaluate_on(trigger, trigger, order, event, seq, facts)
    }

    /// What closing (or escalating) `approval` sends: its flow's `on_approve`, `on_reject` or
    /// `escalate_to`, judged on the event that closed it. Their syncs' keys end in `:{outcome}`
    /// (`approved`, `rejected`, `escalated`).
    pub fn approval_actions(
        &self,
        outcome: &str,
        approval: &Approval,
        order: &Order,
        event: &OrderEvent,
        seq: u64,
    ) -> RuleEffects {
        let trigger = approval_trigger(&approval.name, outcome);
        self.evaluate_on(&trigger, outcome, order, event, seq, approval.facts())
    }

    fn evaluate_on(
        &self,
        trigger: &str,
        suffix: &str,
        order: &Order,
        event: &OrderEvent,
        seq: u64,
        facts: Map<String, Json>,
    ) -> RuleEffects {
        let mut effects = RuleEffects::default();
        let live: Vec<&CompiledRule> = self
            .rules
            .iter()
            .filter(|r| r.trigger() == trigger)
            .collect();
        if live.is_empty() {
            return effects;
        }
        let event_value = event_json(event, Some(facts));
        let mut root = self.builtins.new_inner_scope();
        if root
            .add_variable("order", Cel(&order_json(order, None)))
            .is_err()
            || root.add_variable("event", Cel(&event_value)).is_err()
        {
            effects
                .notes
                .push("rules skipped: order not representable in CEL".into());
            return effects;
        }
        for rule in live {
            if let Some(missing) = rule.missing_need(order) {
                effects.notes.push(format!(
                    "rule {}: needs fields.{missing}, not there at {trigger}",
                    rule.spec.name
                ));
                continue;
            }
            self.judge(
                Judged::new(rule),
                &root,
                order,
                None,
                &event_value,
                seq,
                &mut effects,
            );
        }
        for sync in &mut effects.syncs {
            sync.id = format!("{}:{suffix}", sync.id);
        }
        self.note_syncs(&mut effects);
        effects
    }

    /// The approval flow called `name`.
    pub fn approval(&self, name: &str) -> Option<&ApprovalSpec> {
        self.approvals
            .iter()
            .map(|a| &a.spec)
            .find(|spec| spec.name == name)
    }

    /// The approval flows, in configuration order.
    pub fn approvals(&self) -> impl Iterator<Item = &ApprovalSpec> {
        self.approvals.iter().map(|a| &a.spec)
    }

    /// The approval flows whose condition holds for `event` (the order as it is after it) and
    /// of which the order has no approval still to decide. Conditions that fail are noted.
    pub fn approvals_to_open(
        &self,
        order: &Order,
        event: &OrderEvent,
        notes: &mut Vec<String>,
    ) -> Vec<&ApprovalSpec> {
        let status = event.action.label();
        let state = state_name(order.state);
        let live: Vec<&CompiledApproval> = self
            .approvals
            .iter()
            .filter(|a| a.statuses.as_ref().is_none_or(|s| s.contains(&status)))
            .filter(|a| a.states.as_ref().is_none_or(|s| s.contains(&state)))
            .filter(|a| {
                !order
                    .approvals
                    .iter()
                    .any(|open| open.name == a.spec.name && open.decidable())
            })
            .collect();
        if live.is_empty() {
            return Vec::new();
        }
        let mut root = self.builtins.new_inner_scope();
        if root
            .add_variable("order", Cel(&order_json(order, None)))
            .is_err()
            || root
                .add_variable("event", Cel(&event_json(event, None)))
                .is_err()
        {
            notes.push("approvals skipped: order not representable in CEL".into());
            return Vec::new();
        }
        live.into_iter()
            .filter(|a| match a.when.execute(&root) {
                Ok(Value::Bool(open)) => open,
                Ok(other) => {
                    notes.push(format!(
                        "approval {}: condition gave {other:?}, not a bool",
                        a.spec.name
                    ));
                    false
                }
                Err(e) => {
                    notes.push(format!("approval {}: condition failed: {e}", a.spec.name));
                    false
                }
            })
            .map(|a| &a.spec)
            .collect()
    }

    /// Judges again `waiting` rules now that `event` brought fields: each whose needs are met
    /// is judged as at the transition it waited at. Returns what they decided and the rules
    /// still waiting.
    pub fn resume(
        &self,
        order: &Order,
        waiting: Vec<crate::order::WaitingRule>,
        event: &OrderEvent,
    ) -> (RuleEffects, Vec<crate::order::WaitingRule>) {
        let mut effects = RuleEffects::default();
        let mut still = Vec::new();
        let event_value = event_json(event, None);
        for waiting in waiting {
            let Some(rule) = self.rules.iter().find(|r| r.spec.name == waiting.rule) else {
                // The rule is no longer configured.
                continue;
            };
            if rule.missing_need(order).is_some() {
                still.push(waiting);
                continue;
            }
            // The order as it was at the transition, with the fields known now.
            let mut then = Order::new(order.key.clone());
            then.state = Some(waiting.state);
            then.fields = order.fields.clone();
            then.systems = order.systems.clone();
            then.tags = order.tags.clone();
            let mut root = self.builtins.new_inner_scope();
            if root
                .add_variable("order", Cel(&order_json(&then, waiting.previous)))
                .is_err()
                || root.add_variable("event", Cel(&event_value)).is_err()
            {
                effects.notes.push(format!(
                    "rule {}: skipped: order not representable in CEL",
                    waiting.rule
                ));
                continue;
            }
            effects
                .notes
                .push(format!("rule {}: fields it needs arrived", waiting.rule));
            self.judge(
                Judged::new(rule),
                &root,
                &then,
                waiting.previous,
                &event_value,
                waiting.seq,
                &mut effects,
            );
        }
        self.note_syncs(&mut effects);
        (effects, still)
    }

    fn note_syncs(&self, effects: &mut RuleEffects) {
        for sync in &effects.syncs {
            effects.notes.push(format!(
                "rule {}: sync {} ({})",
                sync.rule, sync.sink, sync.id
            ));
        }
    }

    /// Evaluates the rule's condition in `root` (unless it is known to hold) and, when it
    /// holds, takes its actions.
    #[allow(clippy::too_many_arguments)]
    fn judge(
        &self,
        judged: Judged<'_>,
        root: &Context<'_>,
        order: &Order,
        previous: Option<OrderState>,
        event_value: &Json,
        seq: u64,
        effects: &mut RuleEffects,
    ) {
        let rule = judged.rule;
        let name = &rule.spec.name;
        let condition = if judged.holds {
            Ok(Value::Bool(true))
        } else {
            rule.when.execute(root)
        };
        match condition {
            Ok(Value::Bool(true)) => {}
            Ok(Value::Bool(false)) => return,
            Ok(other) => {
                effects
                    .notes
                    .push(format!("rule {name}: condition gave {other:?}, not a bool"));
                return;
            }
            Err(e) => {
                effects
                    .notes
                    .push(format!("rule {name}: condition failed: {e}"));
                return;
            }
        }
        let mut computed = Map::new();
        for (field, program) in &rule.fields {
            let value = program
                .execute(root)
                .map_err(|e| e.to_string())
                .and_then(|v| v.json().map_err(|e| e.to_string()));
            let value = value.unwrap_or_else(|e| {
                effects
                    .notes
                    .push(format!("rule {name}: fields.{field}: {e}"));
                Json::Null
            });
            computed.insert(field.clone(), value);
        }
        for sink in rule.spec.sync.iter().flatten() {
            let payload = match &rule.payload_template {
                Some(template) => {
                    let context = self.template_context(order, Some(event_value), computed.clone());
                    self.render_json(template, &context)
                        .map(|payload| (payload, None))
                }
                None => {
                    let (payload, fields) = default_payload(order, previous, seq, rule, &computed);
                    Ok((payload, Some(fields)))
                }
            };
            match payload {
                Ok((payload, fields)) => effects.syncs.push(self.intent(
                    order,
                    seq,
                    sink,
                    name,
                    (payload, fields),
                    &effects.syncs,
                )),
                Err(problem) => effects
                    .notes
                    .push(format!("rule {name}: template: {problem}")),
            }
        }
        if let Some(sink) = &rule.spec.notify {
            let text = match &rule.message_template {
                Some(template) => {
                    let context = self.template_context(order, Some(event_value), computed.clone());
                    self.templates
                        .get_template(template)
                        .and_then(|t| t.render(minijinja::value::Serde(&context)))
                        .unwrap_or_else(|e| {
                            format!(
                                "order {} is now {}: ({e})",
                                order.key,
                                state_name(order.state)
                            )
                        })
                }
                None => format!("order {} is now {}", order.key, state_name(order.state)),
            };
            let payload = serde_json::json!({ "text": text, "order": order.key, "state": state_name(order.state) });
            effects.syncs.push(self.intent(
                order,
                seq,
                sink,
                name,
                (payload, None),
                &effects.syncs,
            ));
        }
        if let Some(tag) = &rule.spec.tag {
            effects.tags.push(tag.clone());
            effects.notes.push(format!("rule {name}: tag {tag}"));
        }
        if rule.spec.hold.is_set() {
            effects.holds.push(name.clone());
        }
    }

    fn intent(
        &self,
        order: &Order,
        seq: u64,
        sink: &str,
        rule: &str,
        (payload, fields): (Json, Option<super::Fields>),
        earlier: &[SyncIntent],
    ) -> SyncIntent {
        // Two rules syncing the same transition to the same sink get distinct keys; the first
        // keeps the plain `{order}:{seq}:{sink}` form.
        let mut id = SyncIntent::key(&order.key, seq, sink);
        if earlier.iter().any(|s| s.id == id) {
            id = format!("{id}:{rule}");
        }
        SyncIntent {
            id,
            sink: sink.to_owned(),
            order: order.key.clone(),
            seq,
            rule: rule.to_owned(),
            payload,
            fields,
            contents: None,
        }
    }

    fn template_context(
        &self,
        order: &Order,
        event: Option<&Json>,
        computed: Map<String, Json>,
    ) -> Json {
        serde_json::json!({
            "order": order_json(order, None),
            "event": event.cloned().unwrap_or(Json::Null),
            "computed": computed,
        })
    }

    fn render_json(&self, template: &str, context: &Json) -> Result<Json, String> {
        let text = self
            .templates
            .get_template(template)
            .and_then(|t| t.render(minijinja::value::Serde(context)))
            .map_err(|e| e.to_string())?;
        serde_json::from_str(&text).map_err(|e| format!("did not render JSON ({e}): {text}"))
    }
}

struct CompiledApproval {
    spec: ApprovalSpec,
    when: Program,
    /// The only `event.status` values `when` can be true for, when its form says so.
    statuses: Option<Vec<&'static str>>,
    /// The only `order.state` values `when` can be true in, when its form says so.
    states: Option<Vec<&'static str>>,
}

/// The internal trigger (and rule name) of what approval flow `name` sends on `outcome`.
fn approval_trigger(name: &str, outcome: &str) -> String {
    format!("approval {name} {outcome}")
}

/// Compiles the approval flows; what they send becomes internal rules judged on
/// `approval NAME approved|rejected|escalated`, added to `rules`.
fn compile_approvals(
    specs: Vec<ApprovalSpec>,
    rules: &mut Vec<CompiledRule>,
    templates: &mut minijinja::Environment<'static>,
) -> Result<Vec<CompiledApproval>, RuleError> {
    let mut compiled: Vec<CompiledApproval> = Vec::with_capacity(specs.len());
    for spec in specs {
        let fail = |problem: String| RuleError {
            rule: format!("approval {}", spec.name),
            problem,
        };
        let name_ok = !spec.name.is_empty()
            && spec
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !name_ok {
            return Err(fail(
                "name must be non-empty letters, digits, '_', '-' or '.' (it is part of the approval's id)".into(),
            ));
        }
        if compiled.iter().any(|a| a.spec.name == spec.name) {
            return Err(fail("approval names must be unique".into()));
        }
        if spec.required == 0 {
            return Err(fail("required must be at least 1".into()));
        }
        if spec.within_ms <= 0 {
            return Err(fail("within must be longer than 0s".into()));
        }
        let when = compile_cel(&spec.when).map_err(|e| fail(format!("when: {e}")))?;
        let ast = parse_cel(&spec.when);
        let statuses = ast
            .as_ref()
            .and_then(|ast| required_values(ast, &EVENT_STATUS));
        let states = ast
            .as_ref()
            .and_then(|ast| required_values(ast, &ORDER_STATE));
        let default_text = |outcome: &str| {
            format!(
                "approval {{{{ event.approval.name }}}} of order {{{{ order.key }}}}: {outcome}"
            )
        };
        let escalation = spec.escalate_to.clone().map(|sink| ApprovalActions {
            sync: None,
            notify: Some(sink),
            message: Some(
                "approval {{ event.approval.name }} of order {{ order.key }} is past its deadline \
                 with {{ event.approval.decisions | length }} of {{ event.approval.required }} \
                 approvals: please decide"
                    .into(),
            ),
        });
        for (outcome, key, actions) in [
            ("approved", "on_approve", spec.on_approve.clone()),
            ("rejected", "on_reject", spec.on_reject.clone()),
            ("escalated", "escalate_to", escalation),
        ] {
            let Some(actions) = actions else { continue };
            if actions.sync.is_none() && actions.notify.is_none() {
                return Err(fail(format!("{key}: set sync or notify")));
            }
            if actions.message.is_some() && actions.notify.is_none() {
                return Err(fail("message is only used with notify".into()));
            }
            let name = approval_trigger(&spec.name, outcome);
            if rules.iter().any(|r| r.spec.name == name) {
                return Err(fail(format!("a rule is called {name:?} already")));
            }
            let message = actions.message.unwrap_or_else(|| default_text(outcome));
            let message_template = format!("{name}#message");
            templates
                .add_template_owned(message_template.clone(), message)
                .map_err(|e| fail(format!("message: {e}")))?;
            rules.push(CompiledRule {
                spec: RuleSpec {
                    name: name.clone(),
                    when: "true".into(),
                    sync: actions.sync,
                    notify: actions.notify,
                    on: Some(name),
                    ..RuleSpec::default()
                },
                when: compile_cel("true").map_err(fail)?,
                states: None,
                decided: false,
                fields: Vec::new(),
                reads_fields: false,
                payload_template: None,
                message_template: Some(message_template),
            });
        }
        compiled.push(CompiledApproval {
            spec,
            when,
            statuses,
            states,
        });
    }
    Ok(compiled)
}

/// A value a condition may compare with a literal: `order.state` or `event.status`, and what a
/// string literal means for it.
struct Subject {
    ident: &'static str,
    field: &'static str,
    /// Every value the subject can take; a literal naming none of them can never be equal, so
    /// it is kept as `"\u{0}"`, which no value is called.
    values: fn() -> Vec<&'static str>,
}

const ORDER_STATE: Subject = Subject {
    ident: "order",
    field: "state",
    values: || {
        OrderState::ALL
            .iter()
            .map(|s| s.as_str())
            .chain(["none"])
            .collect()
    },
};

const EVENT_STATUS: Subject = Subject {
    ident: "event",
    field: "status",
    values: || {
        OrderState::ALL
            .iter()
            .map(|s| s.as_str())
            .chain(crate::order::event::NON_STATE_LABELS)
            .collect()
    },
};

/// Parses `source` again for its syntax tree (cel-interpreter keeps its own private), or
/// `None` if the parser fails or panics (the caller compiled it successfully first).
fn parse_cel(source: &str) -> Option<cel_parser::Expression> {
    quietly(|| cel_parser::Parser::default().parse(source))?.ok()
}

thread_local! {
    /// Set while this thread runs the CEL parser, whose panics are expected (see [`quietly`]).
    static PARSING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic into `None` without printing it. The CEL parser (antlr4rust)
/// panics on some syntax errors instead of returning one. The process's panic hook is wrapped
/// once so that only this thread's expected panics are silenced: swapping the hook around each
/// call would also silence other threads' panics meanwhile (a failing test's message, a crash
/// elsewhere in the engine).
fn quietly<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Option<T> {
    static WRAPPED: std::sync::Once = std::sync::Once::new();
    WRAPPED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !PARSING.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    PARSING.with(|p| p.set(true));
    let result = std::panic::catch_unwind(f);
    PARSING.with(|p| p.set(false));
    result.ok()
}

/// The canonical states in which `expr` can be true, when its form says so: `order.state ==
/// "paid"` (either way round), `order.state in ["paid", "allocated"]`, and `&&` / `||` of
/// those (a conjunction needs what either side needs; a disjunction what both sides allow).
/// CEL defines `&&` as false when either side is false, even if the other errs, so a rule
/// skipped this way is a rule whose condition is false. (cel-interpreter errs when the left
/// side errs, whatever the right; such a rule is now skipped, as CEL says, instead of noted as
/// failing in a state it could never fire in.) `None`: any state.
fn required_states(expr: &cel_parser::Expression) -> Option<Vec<&'static str>> {
    required_values(expr, &ORDER_STATE)
}

/// [`required_states`] for any [`Subject`].
fn required_values(expr: &cel_parser::Expression, subject: &Subject) -> Option<Vec<&'static str>> {
    use cel_parser::ast::{Expr, operators};
    let Expr::Call(call) = &expr.expr else {
        return None;
    };
    if call.target.is_some() || call.args.len() != 2 {
        return None;
    }
    let (left, right) = (&call.args[0], &call.args[1]);
    match call.func_name.as_str() {
        operators::EQUALS => {
            let named = |side: &cel_parser::Expression, other: &cel_parser::Expression| {
                is_subject(side, subject)
                    .then(|| literal(other, subject))
                    .flatten()
            };
            named(left, right)
                .or_else(|| named(right, left))
                .map(|state| vec![state])
        }
        operators::IN if is_subject(left, subject) => match &right.expr {
            Expr::List(list) => list.elements.iter().map(|e| literal(e, subject)).collect(),
            _ => None,
        },
        operators::LOGICAL_AND => match (
            required_values(left, subject),
            required_values(right, subject),
        ) {
            (Some(a), Some(b)) => Some(a.into_iter().filter(|s| b.contains(s)).collect()),
            (one, other) => one.or(other),
        },
        operators::LOGICAL_OR => {
            let mut both = required_values(left, subject)?;
            both.extend(required_values(right, subject)?);
            Some(both)
        }
        _ => None,
    }
}

/// Whether `expr` is true exactly when the subject is one of [`required_values`]: an equality
/// with a string literal, `in` a list of them, or `&&` and `||` of such tests. Its truth then
/// follows from the subject alone. (`required_values` alone only says where it may be true:
/// `order.state == "paid" && order.fields.vip` may be false in `paid`.)
fn decided_by(expr: &cel_parser::Expression, subject: &Subject) -> bool {
    use cel_parser::ast::{Expr, operators};
    let Expr::Call(call) = &expr.expr else {
        return false;
    };
    if call.target.is_some() || call.args.len() != 2 {
        return false;
    }
    match call.func_name.as_str() {
        operators::EQUALS | operators::IN => required_values(expr, subject).is_some(),
        operators::LOGICAL_AND | operators::LOGICAL_OR => {
            decided_by(&call.args[0], subject) && decided_by(&call.args[1], subject)
        }
        _ => false,
    }
}

/// Whether `expr` is the subject (`order.state`, `event.status`).
fn is_subject(expr: &cel_parser::Expression, subject: &Subject) -> bool {
    use cel_parser::ast::Expr;
    matches!(&expr.expr, Expr::Select(select)
        if select.field == subject.field
            && !select.test
            && matches!(&select.operand.expr, Expr::Ident(name) if name == subject.ident))
}

/// A string literal as the value the subject would carry (see [`Subject::values`]).
fn literal(expr: &cel_parser::Expression, subject: &Subject) -> Option<&'static str> {
    use cel_parser::ast::Expr;
    use cel_parser::reference::Val;
    let Expr::Literal(Val::String(text)) = &expr.expr else {
        return None;
    };
    Some(
        (subject.values)()
            .into_iter()
            .find(|name| name == &text.as_str())
            .unwrap_or("\u{0}"),
    )
}

fn compile_cel(source: &str) -> Result<Program, String> {
    // The CEL parser panics on some syntax errors: that is a clear configuration error too.
    let program = match quietly(|| Program::compile(source)) {
        Some(result) => result.map_err(|e| e.to_string())?,
        None => return Err(format!("syntax error in {source:?}")),
    };
    let references = program.references();
    for variable in references.variables() {
        if !VARIABLES.contains(&variable) {
            return Err(format!(
                "unknown variable {variable:?} (conditions see order and event)"
            ));
        }
    }
    Ok(program)
}

fn state_name(state: Option<OrderState>) -> &'static str {
    state.map_or("none", OrderState::as_str)
}

/// The event as rules see it: its source, raw status, canonical `status` and the trigger's
/// facts.
fn event_json(event: &OrderEvent, facts: Option<Map<String, Json>>) -> Json {
    let mut value = serde_json::json!({
        "source": event.source,
        "raw_status": event.raw_status,
        "status": event.action.label(),
    });
    if let (Some(facts), Json::Object(map)) = (facts, &mut value) {
        map.extend(facts);
    }
    value
}

/// A JSON value as CEL sees it: an integer that fits `i64` is a CEL `int`. serde_json holds
/// every non-negative integer as a `u64`, which the interpreter would make a `uint`, and CEL
/// does not mix `uint` with the `int` literals a rule is written with: `order.fields.qty * 2`
/// would fail on `uint * int`.
struct Cel<'a>(&'a Json);

impl serde::Serialize for Cel<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self.0 {
            Json::Number(number) => match number.as_i64() {
                Some(int) => serializer.serialize_i64(int),
                None => number.serialize(serializer),
            },
            Json::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&Cel(item))?;
                }
                seq.end()
            }
            Json::Object(members) => {
                let mut map = serializer.serialize_map(Some(members.len()))?;
                for (name, value) in members {
                    map.serialize_entry(name, &Cel(value))?;
                }
                map.end()
            }
            other => other.serialize(serializer),
        }
    }
}

/// The order as rules see it.
fn order_json(order: &Order, previous: Option<OrderState>) -> Json {
    order_value(order, previous, true)
}

/// The order as rules see it, its contents (`fields`) only when asked for.
fn order_value(order: &Order, previous: Option<OrderState>, with_fields: bool) -> Json {
    let systems: Map<String, Json> = order
        .systems
        .iter()
        .map(|(source, status)| (source.clone(), Json::String(status.raw_status.clone())))
        .collect();
    let mut value = Map::with_capacity(6);
    value.insert("key".into(), Json::String(order.key.clone()));
    value.insert("state".into(), state_name(order.state).into());
    value.insert("previous_state".into(), state_name(previous).into());
    if with_fields {
        value.insert("fields".into(), Json::Object(order.fields.to_json()));
    }
    value.insert("systems".into(), Json::Object(systems));
    value.insert(
        "tags".into(),
        Json::Array(order.tags.iter().cloned().map(Json::String).collect()),
    );
    Json::Object(value)
}

fn default_payload(
    order: &Order,
    previous: Option<OrderState>,
    seq: u64,
    rule: &CompiledRule,
    computed: &Map<String, Json>,
) -> (Json, super::Fields) {
    // The contents are most of a payload's size: they stay text, shared with the order.
    let mut fields = order.fields.clone();
    for (name, value) in computed {
        fields.insert_value(name, value);
    }
    let operation = rule
        .spec
        .operation
        .clone()
        .unwrap_or_else(|| state_name(order.state).to_owned());
    let mut payload = Map::with_capacity(6);
    payload.insert("order".into(), Json::String(order.key.clone()));
    payload.insert("operation".into(), Json::String(operation));
    payload.insert("state".into(), state_name(order.state).into());
    payload.insert("previous_state".into(), state_name(previous).into());
    payload.insert("seq".into(), seq.into());
    (Json::Object(payload), fields)
}

fn sample_order() -> Order {
    let mut order = Order::new("sample:1");
    order.state = Some(OrderState::Paid);
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::{EventAction, JournaledEvent, OrderPolicy};

    fn spec(name: &str, when: &str) -> RuleSpec {
        RuleSpec {
            name: name.into(),
            when: when.into(),
            sync: Some("erp".into()),
            ..RuleSpec::default()
        }
    }

    fn states_of(when: &str) -> Option<Vec<&'static str>> {
        required_states(&parse_cel(when).unwrap())
    }

    #[test]
    fn conditions_that_name_their_states_are_recognised() {
        assert_eq!(states_of(r#"order.state == "paid""#), Some(vec!["paid"]));
        assert_eq!(states_of(r#""paid" == order.state"#), Some(vec!["paid"]));
        let statuses = |when: &str| required_values(&parse_cel(when).unwrap(), &EVENT_STATUS);
        assert_eq!(
            statuses(r#"event.status == "intercept_requested""#),
            Some(vec!["intercept_requested"])
        );
        assert_eq!(
            statuses(r#"event.status == "sla_breach" && order.state == "paid""#),
            Some(vec!["sla_breach"])
        );
        assert_eq!(statuses(r#"event.status == "shiped""#), Some(vec!["\u{0}"]));
        assert_eq!(statuses(r#"event.source == "cs""#), None);
        assert_eq!(
            states_of(r#"order.state in ["paid", "allocated"]"#),
            Some(vec!["paid", "allocated"])
        );
        assert_eq!(
            states_of(r#"order.state == "cancelled" && order.previous_state != "shipped""#),
            Some(vec!["cancelled"])
        );
        assert_eq!(
            states_of(r#"order.fields.vip && order.state == "paid""#),
            Some(vec!["paid"])
        );
        assert_eq!(
            states_of(r#"order.state == "paid" || order.state == "shipped""#),
            Some(vec!["paid", "shipped"])
        );
        assert_eq!(
            states_of(r#"order.state in ["paid", "shipped"] && order.state == "shipped""#),
            Some(vec!["shipped"])
        );
        assert_eq!(
            states_of(r#"order.state == "nonsense""#),
            Some(vec!["\u{0}"])
        );
        // Anything else may be true in any state.
        for when in [
            r#"order.state != "paid""#,
            r#"order.state == "paid" || order.fields.vip"#,
            r#"order.previous_state == "paid""#,
            r#"order.fields.amount > 100"#,
            r#"order.state == order.previous_state"#,
            r#"!(order.state == "paid")"#,
            r#"order.state.startsWith("pa")"#,
            "true",
        ] {
            assert_eq!(states_of(when), None, "{when}");
        }
    }

    /// `when` as the CEL interpreter evaluates it with the order in each state (and an event
    /// from `wms`): `(state, result)`.
    fn run_in_every_state(when: &str) -> Vec<(&'static str, cel_interpreter::ResolveResult)> {
        let program = compile_cel(when).unwrap();
        let states = OrderState::ALL.map(Some).into_iter().chain([None]);
        states
            .map(|state| {
                let mut order = sample_order();
                order.state = state;
                let context = Context::default();
                let mut scope = context.new_inner_scope();
                scope
                    .add_variable("order", order_json(&order, None))
                    .unwrap();
                scope
                    .add_variable(
                        "event",
                        serde_json::json!({"source": "wms", "raw_status": "x"}),
                    )
                    .unwrap();
                (state_name(state), program.execute(&scope))
            })
            .collect()
    }

    #[test]
    fn a_condition_is_never_true_outside_the_states_it_names() {
        let conditions = [
            r#"order.state == "paid""#,
            r#""shipped" == order.state && event.source == "wms""#,
            r#"order.state in ["paid", "allocated"] || order.state == "cancelled""#,
            r#"order.fields.missing.deeper && order.state == "paid""#,
            r#"order.state == "none""#,
        ];
        for when in conditions {
            let named = states_of(when).unwrap();
            for (name, result) in run_in_every_state(when) {
                if !named.contains(&name) {
                    assert!(
                        !matches!(result, Ok(Value::Bool(true))),
                        "{when} is true in {name}, which it was not expected to name"
                    );
                } else if when != conditions[3] {
                    assert!(result.is_ok(), "{when} in {name}: {result:?}");
                }
            }
        }
    }

    /// A condition judged without evaluation (`decided_by`) is true in exactly the states it
    /// names, as CEL itself says; conditions that test anything else are evaluated.
    #[test]
    fn a_condition_decided_by_the_state_is_true_in_exactly_its_states() {
        let decided = |when: &str| decided_by(&parse_cel(when).unwrap(), &ORDER_STATE);
        let conditions = [
            r#"order.state == "paid""#,
            r#""shipped" == order.state"#,
            r#"order.state in ["paid", "packed", "in_transit"]"#,
            r#"order.state in ["paid", "allocated"] || order.state == "cancelled""#,
            r#"order.state in ["paid", "shipped"] && order.state == "shipped""#,
            r#"order.state == "paid" && order.state == "shipped""#,
            r#"order.state == "nonsense""#,
            r#"order.state == "none""#,
        ];
        for when in conditions {
            assert!(decided(when), "{when}");
            let named = states_of(when).unwrap();
            for (name, result) in run_in_every_state(when) {
                assert_eq!(
                    result.unwrap(),
                    Value::Bool(named.contains(&name)),
                    "{when} in {name}"
                );
            }
        }
        for when in [
            r#"order.state == "paid" && order.fields.vip"#,
            r#"order.state == "paid" || order.fields.vip"#,
            r#""shipped" == order.state && event.source == "wms""#,
            r#"order.state in ["paid", 1]"#,
            r#"order.state in order.fields.states"#,
            r#"order.previous_state == "paid""#,
            r#"order.state != "paid""#,
            r#"!(order.state == "paid")"#,
            r#"order.state == order.previous_state"#,
            "true",
        ] {
            assert!(!decided(when), "{when}");
        }
    }

    /// A rule decided by the state syncs what evaluating it syncs, and when it computes fields
    /// they are computed; a condition that also tests the contents is still evaluated.
    #[test]
    fn rules_decided_by_the_state_act_as_evaluated_ones() {
        let mut with_fields = spec("paid_total", r#"order.state == "paid""#);
        with_fields.fields = [("total".to_string(), "order.fields.amount".to_string())]
            .into_iter()
            .collect();
        let rules = RuleSet::compile(vec![
            spec("progress", r#"order.state in ["paid", "packed"]"#),
            spec(
                "vip",
                r#"order.state == "paid" && order.fields.vip == true"#,
            ),
            with_fields,
        ])
        .unwrap();
        let mut order = sample_order();
        order.state = Some(OrderState::Paid);
        order.fields.insert_value("amount", &serde_json::json!(21));
        order.fields.insert_value("vip", &serde_json::json!(false));
        let trigger = event(1, OrderState::Paid, serde_json::json!({})).event;
        let effects = rules.evaluate(&order, None, &trigger, 7);
        let fired: Vec<&str> = effects.syncs.iter().map(|s| s.rule.as_str()).collect();
        assert_eq!(fired, ["progress", "paid_total"], "{:?}", effects.notes);
        assert_eq!(
            effects.syncs[1].whole_payload()["fields"]["total"],
            21,
            "{:?}",
            effects.notes
        );
        order.state = Some(OrderState::Packed);
        let effects = rules.evaluate(&order, Some(OrderState::Paid), &trigger, 8);
        let fired: Vec<&str> = effects.syncs.iter().map(|s| s.rule.as_str()).collect();
        assert_eq!(fired, ["progress"]);
        order.state = Some(OrderState::Allocated);
        assert!(rules.evaluate(&order, None, &trigger, 9).syncs.is_empty());
    }

    #[test]
    fn rules_skipped_by_state_give_what_evaluating_them_gives() {
        let rules = RuleSet::compile(vec![
            spec("paid", r#"order.state == "paid""#),
            spec("any", r#"order.fields.amount > 10"#),
            spec("shipped_or_paid", r#"order.state in ["shipped", "paid"]"#),
        ])
        .unwrap();
        let mut order = sample_order();
        order.fields.insert_value("amount", &serde_json::json!(20));
        let trigger = event(1, OrderState::Paid, serde_json::json!({})).event;
        let fired = |order: &Order| {
            rules
                .evaluate(order, None, &trigger, 1)
                .syncs
                .into_iter()
                .map(|s| s.rule)
                .collect::<Vec<_>>()
        };
        assert_eq!(fired(&order), ["paid", "any", "shipped_or_paid"]);
        order.state = Some(OrderState::Shipped);
        assert_eq!(fired(&order), ["any", "shipped_or_paid"]);
        order.state = Some(OrderState::Allocated);
        assert_eq!(fired(&order), ["any"]);
    }

    #[test]
    fn a_payload_carrying_exactly_the_events_contents_points_at_the_event() {
        let policy = OrderPolicy::permissive().with_rules(
            RuleSet::compile(vec![spec("erp", r#"order.state in ["paid", "shipped"]"#)]).unwrap(),
        );
        let mut order = Order::new("douyin:1");
        let contents = serde_json::json!({"items": [{"sku": "A", "qty": 2}], "amount": 99.5});
        let (_, effects) = order
            .apply(&event(7, OrderState::Paid, contents.clone()), &policy)
            .unwrap();
        assert_eq!(effects.syncs[0].whole_payload()["fields"], contents);
        assert_eq!(effects.syncs[0].contents, Some(7));
        // An event carrying only part of the order's contents: the payload has more than it.
        let (_, effects) = order
            .apply(
                &event(
                    8,
                    OrderState::Shipped,
                    serde_json::json!({"waybill_no": "SF1"}),
                ),
                &policy,
            )
            .unwrap();
        assert_eq!(
            effects.syncs[0].whole_payload()["fields"]["waybill_no"],
            "SF1"
        );
        assert_eq!(effects.syncs[0].whole_payload()["fields"]["amount"], 99.5);
        assert_eq!(effects.syncs[0].contents, None);
    }

    fn event(seq: u64, state: OrderState, fields: serde_json::Value) -> JournaledEvent {
        JournaledEvent {
            seq,
            event: OrderEvent {
                order: "douyin:1".into(),
                source: "douyin".into(),
                source_event_id: format!("e{seq}"),
                supersedes: None,
                log_seq: None,
                raw_status: state.as_str().into(),
                action: EventAction::Move { state },
                occurred_at: 1,
                received_at: 1,
                fields: fields.as_object().cloned().unwrap_or_default().into(),
            },
        }
    }

    #[test]
    fn invalid_rules_are_named_with_their_problem() {
        let err = RuleSet::compile(vec![spec("broken", "order.state ==")]).unwrap_err();
        assert_eq!(err.rule, "broken");
        assert!(err.problem.starts_with("when:"), "{}", err.problem);

        let err = RuleSet::compile(vec![spec("stranger", "customer.vip")]).unwrap_err();
        assert!(
            err.problem.contains("unknown variable \"customer\""),
            "{}",
            err.problem
        );

        let mut nothing = spec("idle", "true");
        nothing.sync = None;
        assert!(
            RuleSet::compile(vec![nothing])
                .unwrap_err()
                .problem
                .contains("does nothing")
        );

        let mut bad_template = spec("tpl", "true");
        bad_template.template = Some("{\"order\": {{ order.key }}".into());
        let err = RuleSet::compile(vec![bad_template]).unwrap_err();
        assert!(
            err.problem.contains("did not render JSON"),
            "{}",
            err.problem
        );

        let err = RuleSet::compile(vec![spec("twin", "true"), spec("twin", "true")]).unwrap_err();
        assert!(err.problem.contains("unique"));
    }

    #[test]
    fn integers_in_an_orders_contents_do_arithmetic_with_a_rules_literals() {
        // serde_json holds 3 as an unsigned integer; CEL has no `uint * int`.
        let mut rule = spec("erp_on_three", "order.fields.qty * 2 == 6");
        rule.fields.insert(
            "next".into(),
            "order.fields.qty + order.fields.lines[0] - 1".into(),
        );
        let policy = OrderPolicy::permissive().with_rules(RuleSet::compile(vec![rule]).unwrap());
        let mut order = Order::new("douyin:1");
        let contents = serde_json::json!({"qty": 3, "lines": [5]});
        let (_, effects) = order
            .apply(&event(7, OrderState::Paid, contents), &policy)
            .unwrap();
        assert_eq!(effects.syncs.len(), 1, "{:?}", order.timeline[0].rules);
        assert_eq!(effects.syncs[0].whole_payload()["fields"]["next"], 7);
    }

    #[test]
    fn a_matching_rule_decides_a_sync_with_computed_fields_and_a_stable_key() {
        let mut rule = spec("erp_on_paid", r#"order.state == "paid""#);
        rule.fields.insert(
            "amount_with_tax".into(),
            "order.fields.amount * 1.13".into(),
        );
        rule.operation = Some("create".into());
        let policy = OrderPolicy::permissive().with_rules(RuleSet::compile(vec![rule]).unwrap());
        let mut order = Order::new("douyin:1");
        let (_, effects) = order
            .apply(
                &event(7, OrderState::Paid, serde_json::json!({"amount": 100.0})),
                &policy,
            )
            .unwrap();
        assert_eq!(effects.syncs.len(), 1);
        let sync = &effects.syncs[0];
        assert_eq!(sync.id, "douyin:1:7:erp");
        assert_eq!(sync.payload["operation"], "create");
        assert_eq!(sync.payload["previous_state"], "none");
        let with_tax = sync.whole_payload()["fields"]["amount_with_tax"]
            .as_f64()
            .unwrap();
        assert!((with_tax - 113.0).abs() < 1e-9, "{with_tax}");
        // Computed fields make them more than the event's contents: the payload is kept whole.
        assert_eq!(sync.contents, None);
        assert_eq!(
            order.timeline[0].rules,
            ["rule erp_on_paid: sync erp (douyin:1:7:erp)"]
        );

        // Not again on a later transition.
        let (_, effects) = order
            .apply(
                &event(8, OrderState::Shipped, serde_json::json!({})),
                &policy,
            )
            .unwrap();
        assert!(effects.syncs.is_empty());
    }

    #[test]
    fn a_rule_may_sync_to_several_sinks_named_as_a_list() {
        let parsed: RuleSpec = serde_json::from_value(serde_json::json!({
            "name": "intercept",
            "when": "order.state == \"paid\"",
            "sync": ["wms", "courier"],
        }))
        .unwrap();
        assert_eq!(
            parsed.sync,
            Some(Sinks(vec!["wms".into(), "courier".into()]))
        );
        let one: RuleSpec =
            serde_json::from_value(serde_json::json!({"name": "a", "when": "true", "sync": "erp"}))
                .unwrap();
        assert_eq!(one.sync, Some(Sinks(vec!["erp".into()])));
        let policy = OrderPolicy::permissive().with_rules(RuleSet::compile(vec![parsed]).unwrap());
        let mut order = Order::new("douyin:1");
        let (_, effects) = order
            .apply(&event(3, OrderState::Paid, serde_json::json!({})), &policy)
            .unwrap();
        let ids: Vec<&str> = effects.syncs.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["douyin:1:3:wms", "douyin:1:3:courier"]);

        let mut twice = spec("twice", "true");
        twice.sync = Some(Sinks(vec!["erp".into(), "erp".into()]));
        let err = RuleSet::compile(vec![twice]).unwrap_err();
        assert!(err.problem.contains("twice"), "{err}");
        let mut none = spec("none", "true");
        none.sync = Some(Sinks(Vec::new()));
        assert!(RuleSet::compile(vec![none]).is_err());
    }

    #[test]
    fn templates_tags_holds_and_notifications() {
        let mut templated = spec("wms_on_paid", r#"order.state == "paid""#);
        templated.sync = Some("wms".into());
        templated.template =
            Some(r#"{"orderNo": "{{ order.key }}", "shop": {{ order.fields.shop_id }}}"#.into());
        let tag = RuleSpec {
            name: "vip".into(),
            when: "order.fields.amount > 1000.0".into(),
            tag: Some("vip".into()),
            hold: HoldSpec::Reason("vip check".into()),
            ..RuleSpec::default()
        };
        let notify = RuleSpec {
            name: "tell".into(),
            when: r#"order.state == "paid" && event.source == "douyin""#.into(),
            notify: Some("wecom".into()),
            message: Some("订单 {{ order.key }} 已付款".into()),
            ..RuleSpec::default()
        };
        let rules = RuleSet::compile(vec![templated, tag, notify]).unwrap();
        let policy = OrderPolicy::permissive().with_rules(rules);
        let mut order = Order::new("douyin:1");
        let (_, effects) = order
            .apply(
                &event(
                    1,
                    OrderState::Paid,
                    serde_json::json!({"amount": 5000.0, "shop_id": 77}),
                ),
                &policy,
            )
            .unwrap();
        assert_eq!(
            effects.syncs[0].payload,
            serde_json::json!({"orderNo": "douyin:1", "shop": 77})
        );
        assert_eq!(effects.syncs[1].sink, "wecom");
        assert_eq!(effects.syncs[1].payload["text"], "订单 douyin:1 已付款");
        assert_eq!(order.tags, ["vip"]);
        assert_eq!(
            order.state,
            Some(OrderState::OnHold),
            "the vip rule intercepts the order"
        );
        assert_eq!(effects.holds, ["vip"], "the hold is reported for alerting");
        assert!(order.timeline[0].rules.iter().any(|n| n.contains("hold")));
    }

    #[test]
    fn a_failing_condition_is_noted_and_decides_nothing() {
        let rules =
            RuleSet::compile(vec![spec("needs_amount", "order.fields.amount > 10")]).unwrap();
        let policy = OrderPolicy::permissive().with_rules(rules);
        let mut order = Order::new("douyin:1");
        let (_, effects) = order
            .apply(&event(1, OrderState::Paid, serde_json::json!({})), &policy)
            .unwrap();
        assert!(effects.syncs.is_empty());
        assert!(
            order.timeline[0].rules[0].contains("condition failed"),
            "{:?}",
            order.timeline[0].rules
        );
    }
}
