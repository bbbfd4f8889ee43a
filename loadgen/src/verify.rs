//! End-to-end verification: every order reached its expected final state in the engine, and
//! every expected sync is **delivered** (a simulator received it), **pending** (the engine's
//! outbox still holds it: waiting behind its sink's quota is not loss) or **lost** (the traffic
//! required it and the engine has no record of it, or gave up on it: a dead letter).
//! Duplicates are counted apart. Before judging, it waits for the engine's sync backlog
//! (`orderhub_dispatch_backlog` on `/metrics`, no API token needed) to drain, bounded by the
//! drain time the sinks' quotas (`orderhub_dispatch_quota_per_second`) imply plus `--settle`.

use crate::run::SimOrder;
use hdrhistogram::Histogram;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Which syncs each state must cause: `paid=erp,wms;in_transit=notify`.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpectSyncs(pub Vec<(String, Vec<String>)>);

/// The engine's default rules, as `--expect-syncs` writes them.
pub const DEFAULT_EXPECT_SYNCS: &str = "paid=erp,wms;in_transit=notify;cancelled=wms";

impl ExpectSyncs {
    /// Parses `state=sink,sink;state=sink`.
    pub fn parse(spec: &str) -> Result<ExpectSyncs, String> {
        let mut rules = Vec::new();
        for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (state, sinks) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not state=sink,sink"))?;
            let sinks: Vec<String> = sinks
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
            if state.trim().is_empty() || sinks.is_empty() {
                return Err(format!("{part:?} is not state=sink,sink"));
            }
            rules.push((state.trim().to_owned(), sinks));
        }
        Ok(ExpectSyncs(rules))
    }

    /// `(sink, state)` pairs an order that visited `states` must have caused.
    fn expected<'a>(
        &'a self,
        states: &'a HashSet<&'a str>,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.0
            .iter()
            .filter(|(state, _)| states.contains(state.as_str()))
            .flat_map(|(state, sinks)| {
                sinks
                    .iter()
                    .map(move |sink| (sink.as_str(), state.as_str()))
            })
    }
}

/// A sync as the simulator recorded it.
#[derive(Clone, Debug, serde::Deserialize)]
struct Record {
    system: String,
    order: String,
    state: String,
    first_at_ms: i64,
    count: u32,
}

/// What verification found.
#[derive(Debug)]
pub struct Verification {
    /// Orders whose state was checked.
    pub orders_verified: usize,
    /// `(order, expected, found)` for orders not in their expected state.
    pub wrong_state: Vec<(String, String, String)>,
    /// Whether syncs were verified (a simulator was given).
    pub syncs_verified: bool,
    /// Syncs the traffic must have caused.
    pub syncs_expected: usize,
    /// Of those, received by a simulator.
    pub syncs_delivered: usize,
    /// `(order, sink, state)` never received and not in the engine's outbox (or dead-lettered).
    pub lost: Vec<(String, String, String)>,
    /// `(order, sink, state)` not received yet but pending in the engine's outbox.
    pub pending: Vec<(String, String, String)>,
    /// The engine's sync backlog per sink when verification ended, with each sink's quota.
    pub backlog: Vec<SinkBacklog>,
    /// How long the backlog at the start of verification takes to drain at the sinks' quotas.
    pub drain_estimate_s: f64,
    /// `(order, sink, state)` not due: the engine never entered that state because a later
    /// one was reported first under load (the monotone rule, DESIGN.md §4), so its rule never
    /// fired. Not counted as lost.
    pub skipped: Vec<(String, String, String)>,
    /// Deliveries beyond the first of the same idempotency key.
    pub syncs_duplicated: u64,
    /// Syncs the engine itself shows as not delivered (pending or dead), among the verified
    /// orders.
    pub engine_syncs_undelivered: usize,
    /// Of those, dead-lettered.
    pub engine_syncs_dead: usize,
    /// Event-to-sync latency, ms.
    pub e2e_ms: Histogram<u64>,
}

/// One sink's outbox, read from the engine's `/metrics`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SinkBacklog {
    /// The sink.
    pub sink: String,
    /// Syncs waiting in the engine's outbox.
    pub pending: f64,
    /// The sink's quota, syncs per second.
    pub quota_per_second: f64,
}

impl SinkBacklog {
    /// Seconds the backlog takes to drain at the quota.
    pub fn drain_s(&self) -> f64 {
        if self.quota_per_second > 0.0 {
            self.pending / self.quota_per_second
        } else {
            0.0
        }
    }
}

/// The value of every sample of `name` in Prometheus text, by its `sink` label.
fn samples_by_sink(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, value) = rest.split_once('}')?;
            let sink = labels
                .split(',')
                .find_map(|pair| pair.trim().strip_prefix("sink="))?
                .trim_matches('"')
                .to_owned();
            Some((sink, value.trim().parse().ok()?))
        })
        .collect()
}

/// Reads each sink's backlog and quota from the engine's `/metrics`.
pub async fn read_backlog(client: &reqwest::Client, target: &str) -> Vec<SinkBacklog> {
    let Ok(response) = client.get(format!("{target}/metrics")).send().await else {
        return Vec::new();
    };
    let text = response.text().await.unwrap_or_default();
    let quotas: HashMap<String, f64> = samples_by_sink(&text, "orderhub_dispatch_quota_per_second")
        .into_iter()
        .collect();
    samples_by_sink(&text, "orderhub_dispatch_backlog")
        .into_iter()
        .map(|(sink, pending)| SinkBacklog {
            quota_per_second: quotas.get(&sink).copied().unwrap_or(0.0),
            sink,
            pending,
        })
        .collect()
}

/// What to check and against whom.
#[derive(Clone, Copy, Debug)]
pub struct Checks<'a> {
    /// The engine.
    pub target: &'a str,
    /// The simulators, if syncs are to be verified.
    pub sinks: Option<&'a str>,
    /// Which syncs each state must cause.
    pub expect: &'a ExpectSyncs,
    /// How long to wait for the system to catch up.
    pub settle: Duration,
    /// Orders checked at most (an even sample beyond).
    pub verify_max: usize,
}

/// Verifies `orders` against the engine and, if given, the simulators, waiting up to
/// `checks.settle` for the system to catch up.
pub async fn verify(
    client: &reqwest::Client,
    checks: &Checks<'_>,
    orders: &[SimOrder],
    intended_ms: &HashMap<(String, &'static str), i64>,
) -> Verification {
    let Checks {
        target,
        sinks,
        expect,
        settle,
        verify_max,
    } = *checks;
    // Syncs queued behind a sink's quota are not lost: wait for them, as long as the quota says
    // they take, plus the settle time.
    let backlog = read_backlog(client, target).await;
    let drain_estimate_s = backlog.iter().map(SinkBacklog::drain_s).fold(0.0, f64::max);
    let deadline =
        Instant::now() + settle + Duration::from_secs_f64(drain_estimate_s.min(86_400.0));
    let mut verification = Verification {
        orders_verified: 0,
        wrong_state: Vec::new(),
        syncs_verified: sinks.is_some(),
        syncs_expected: 0,
        syncs_delivered: 0,
        lost: Vec::new(),
        pending: Vec::new(),
        backlog: Vec::new(),
        drain_estimate_s,
        skipped: Vec::new(),
        syncs_duplicated: 0,
        engine_syncs_undelivered: 0,
        engine_syncs_dead: 0,
        e2e_ms: Histogram::new_with_bounds(1, 3_600_000, 3).expect("valid bounds"),
    };

    // Syncs: every expected (order, sink, state) recorded by a simulator.
    if let Some(sinks) = sinks {
        let mut expected: Vec<(String, String, String)> = Vec::new();
        for order in orders {
            let states: HashSet<&str> = order.plan.steps.iter().map(|s| s.state).collect();
            for (sink, state) in expect.expected(&states) {
                expected.push((order.key.clone(), sink.to_owned(), state.to_owned()));
            }
        }
        verification.syncs_expected = expected.len();
        let mut records: HashMap<(String, String, String), Record> = HashMap::new();
        loop {
            if let Ok(response) = client.get(format!("{sinks}/_records")).send().await
                && let Ok(list) = response.json::<Vec<Record>>().await
            {
                records = list
                    .into_iter()
                    .map(|r| ((r.order.clone(), r.system.clone(), r.state.clone()), r))
                    .collect();
            }
            let missing = expected
                .iter()
                .filter(|k| !records.contains_key(*k))
                .count();
            if missing == 0 || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        for key in &expected {
            match records.get(key) {
                Some(record) => {
                    verification.syncs_delivered += 1;
                    if let Some(intended) = intended_ms.get(&(key.0.clone(), state_static(&key.2)))
                    {
                        let _ = verification
                            .e2e_ms
                            .record((record.first_at_ms - intended).max(1) as u64);
                    }
                }
                None => verification.lost.push(key.clone()),
            }
        }
        verification.syncs_duplicated = records
            .values()
            .map(|r| u64::from(r.count.saturating_sub(1)))
            .sum();
    }

    // Orders: every one (or an even sample) in its expected final state.
    let step = orders.len().div_ceil(verify_max.max(1)).max(1);
    let mut pending: Vec<&SimOrder> = orders.iter().step_by(step).collect();
    verification.orders_verified = pending.len();
    let mut last_seen: HashMap<String, (String, usize, usize)> = HashMap::new();
    let mut entered: HashMap<String, HashSet<String>> = HashMap::new();
    let mut outbox: HashMap<String, Vec<(String, String, String)>> = HashMap::new();
    loop {
        let mut still = Vec::new();
        for chunk in pending.chunks(64) {
            let mut tasks = tokio::task::JoinSet::new();
            for order in chunk {
                let url = format!("{target}/v1/orders/{}", order.key);
                let client = client.clone();
                let key = order.key.clone();
                tasks.spawn(async move {
                    let body: serde_json::Value = match client.get(url).send().await {
                        Ok(r) => r.json().await.unwrap_or_default(),
                        Err(_) => serde_json::Value::Null,
                    };
                    let state = body["state"].as_str().unwrap_or("unknown").to_owned();
                    let syncs = engine_syncs(&body);
                    (key, state, syncs, entered_states(&body))
                });
            }
            while let Some(Ok((key, state, syncs, states))) = tasks.join_next().await {
                let undelivered = syncs.iter().filter(|s| s.2 != "delivered").count();
                let dead = syncs.iter().filter(|s| s.2 == "dead").count();
                last_seen.insert(key.clone(), (state, undelivered, dead));
                entered.insert(key.clone(), states);
                outbox.insert(key, syncs);
            }
        }
        for order in pending {
            let (state, undelivered, _) = &last_seen[&order.key];
            if state != order.plan.final_state || (sinks.is_some() && *undelivered > 0) {
                still.push(order);
            }
        }
        pending = still;
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for order in pending {
        let (state, undelivered, dead) = &last_seen[&order.key];
        verification.engine_syncs_dead += dead;
        if state != order.plan.final_state {
            verification.wrong_state.push((
                order.key.clone(),
                order.plan.final_state.to_owned(),
                state.clone(),
            ));
        }
        verification.engine_syncs_undelivered += undelivered;
    }
    // A sync not received is pending while the engine's outbox holds it, not due when the
    // engine never entered its state, and lost otherwise (never decided, or dead-lettered).
    let missing = std::mem::take(&mut verification.lost);
    for key in missing {
        if !entered.contains_key(&key.0) {
            let url = format!("{target}/v1/orders/{}", key.0);
            let body: serde_json::Value = match client.get(url).send().await {
                Ok(r) => r.json().await.unwrap_or_default(),
                Err(_) => serde_json::Value::Null,
            };
            entered.insert(key.0.clone(), entered_states(&body));
            outbox.insert(key.0.clone(), engine_syncs(&body));
        }
        let states = &entered[&key.0];
        let status = outbox[&key.0]
            .iter()
            .find(|(sink, state, _)| *sink == key.1 && *state == key.2)
            .map(|(_, _, status)| status.as_str());
        let never_paid_cancel = key.2 == "cancelled" && !states.contains("paid");
        if status == Some("pending") {
            verification.pending.push(key);
        } else if status.is_none()
            && !states.is_empty()
            && (!states.contains(&key.2) || never_paid_cancel)
        {
            // Not due: the engine never entered that state (a later one came first), or it
            // cancelled an order that was never paid (the default rule cancels an outbound only
            // after payment; a cancel that overtook the payment leaves nothing to cancel).
            verification.skipped.push(key);
        } else {
            verification.lost.push(key);
        }
    }
    verification.backlog = read_backlog(client, target).await;
    verification
}

/// The order's syncs in the engine: `(sink, state it was about, status)`.
fn engine_syncs(order: &serde_json::Value) -> Vec<(String, String, String)> {
    order["syncs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            (
                text(&s["sink"]),
                text(&s["payload"]["state"]),
                text(&s["status"]),
            )
        })
        .collect()
}

/// The states an order entered, from the `applied` outcomes of its timeline.
fn entered_states(order: &serde_json::Value) -> HashSet<String> {
    order["timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["outcome"]["result"] == "applied")
        .filter_map(|e| e["outcome"]["to"].as_str().map(str::to_owned))
        .collect()
}

/// The `&'static str` of a canonical state name the lifecycle uses.
fn state_static(state: &str) -> &'static str {
    const STATES: [&str; 10] = [
        "pending_payment",
        "paid",
        "allocated",
        "picked",
        "packed",
        "shipped",
        "in_transit",
        "delivered",
        "completed",
        "cancelled",
    ];
    STATES.iter().find(|s| **s == state).copied().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expect_syncs_parse_and_apply() {
        let expect = ExpectSyncs::parse(DEFAULT_EXPECT_SYNCS).unwrap();
        assert_eq!(
            expect.0[0],
            ("paid".to_owned(), vec!["erp".to_owned(), "wms".to_owned()])
        );
        let states: HashSet<&str> = ["pending_payment", "paid", "cancelled"]
            .into_iter()
            .collect();
        let pairs: Vec<(&str, &str)> = expect.expected(&states).collect();
        assert_eq!(
            pairs,
            [("erp", "paid"), ("wms", "paid"), ("wms", "cancelled")]
        );
        assert!(ExpectSyncs::parse("paid").is_err());
        assert!(ExpectSyncs::parse("paid=").is_err());
    }

    #[test]
    fn the_backlog_and_quota_are_read_per_sink_from_prometheus_text() {
        let text = "# HELP orderhub_dispatch_backlog x\n\
            orderhub_dispatch_backlog{sink=\"erp\"} 2753\n\
            orderhub_dispatch_backlog{sink=\"wms\"} 0\n\
            orderhub_dispatch_quota_per_second{sink=\"erp\"} 200\n\
            orderhub_dispatch_backlog_extra{sink=\"x\"} 9\n";
        let backlog = samples_by_sink(text, "orderhub_dispatch_backlog");
        assert_eq!(
            backlog,
            [("erp".to_owned(), 2753.0), ("wms".to_owned(), 0.0)]
        );
        let erp = SinkBacklog {
            sink: "erp".into(),
            pending: 2753.0,
            quota_per_second: 200.0,
        };
        assert!((erp.drain_s() - 13.765).abs() < 1e-9);
    }
}
