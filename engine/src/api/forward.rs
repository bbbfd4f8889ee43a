//! Cluster mode: reads answered on any node. An order's read goes to its partition's owner, a
//! list or the dead letters are gathered from every live node — over NATS (see
//! `cluster::rpc`), never through the public API and its tokens.

use super::{DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT};
use crate::AppState;
use crate::cluster::Cluster;
use crate::cluster::rpc::{Answer, Call, RpcError};
use crate::envelope::error_response;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::future::Future;
use std::sync::Arc;

/// Largest answer body a node relays.
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// `503` with `Retry-After` for a read that cannot reach its owner right now.
pub(crate) fn unavailable(err: &RpcError) -> Response {
    let code = match err {
        RpcError::NoOwner(_) => "partition_moving",
        RpcError::Unreachable { .. } => "owner_unreachable",
    };
    let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE, code, &err.to_string());
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Has `node` answer `call` and relays its answer.
pub(crate) async fn to(app: &AppState, cluster: &Cluster, node: &str, call: Call) -> Response {
    match cluster
        .call(node, &call, app.config.server.query_timeout.0)
        .await
    {
        Ok(answer) => relay(answer),
        Err(err) => unavailable(&err),
    }
}

fn relay(answer: Answer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    (status, Json(answer.body)).into_response()
}

/// Answers a call from another node with this node's own handlers.
pub(crate) async fn answer(app: &Arc<AppState>, call: Call) -> Answer {
    let response = match call {
        Call::Order { key } => super::order_here(app, key).await,
        Call::List { query } => super::list_here(app.clone(), query).await,
        Call::DeadLetters { query } => super::dead_letters_here(app.clone(), query).await,
        Call::Retry { row, operator } => super::retry_here(app, row.to_string(), operator).await,
        Call::Sources => super::sources_here(app.clone()).await,
    };
    answer_of(response).await
}

/// `limit=` of a raw query, as the list handlers read it.
fn limit_of(raw: &str) -> usize {
    form_urlencoded::parse(raw.as_bytes())
        .find(|(name, _)| name == "limit")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(DEFAULT_LIST_LIMIT)
        .min(MAX_LIST_LIMIT)
}

/// A list read: this node's own answer (`here`) on a single node; in cluster mode every live
/// node's, gathered (see [`gather`]).
pub(crate) async fn read<F, Fut>(
    app: Arc<AppState>,
    raw: Option<String>,
    call: fn(String) -> Call,
    field: &str,
    here: F,
) -> Response
where
    F: Fn(Arc<AppState>, String) -> Fut,
    Fut: Future<Output = Response>,
{
    let raw = raw.unwrap_or_default();
    match app.cluster.clone() {
        Some(cluster) => {
            gather(&app, &cluster, call(raw.clone()), field, &raw, |app| {
                here(app, raw.clone())
            })
            .await
        }
        None => here(app, raw).await,
    }
}

/// Gathers the array `field` from every live node (this one through `here`), oldest first by
/// `state_since` or `updated_at`, cut at the query's `limit`. Nodes that did not answer are
/// named under `incomplete`, and for a list of orders so are the partitions no answering node
/// held (each order listed once); a query this node refuses is refused as it is.
pub(crate) async fn gather<F, Fut>(
    app: &Arc<AppState>,
    cluster: &Cluster,
    call: Call,
    field: &str,
    raw: &str,
    here: F,
) -> Response
where
    F: FnOnce(Arc<AppState>) -> Fut,
    Fut: Future<Output = Response>,
{
    let by_partition = matches!(call, Call::List { .. });
    let own = answer_of(here(app.clone()).await).await;
    if own.status != 200 {
        return relay(own);
    }
    let (answers, mut incomplete) = ask_others(app, cluster, &call).await;
    let mut held = Vec::new();
    let mut items: Vec<Value> = Vec::new();
    for body in std::iter::once(own.body).chain(answers.into_iter().map(|(_, body)| body)) {
        if let Some(partitions) = body.get(HELD) {
            held.push(partitions.clone());
        }
        // What a node says its own answer lacks.
        if let Some(lacks) = body.get("incomplete").and_then(Value::as_array) {
            incomplete.extend(lacks.iter().filter_map(Value::as_str).map(str::to_owned));
        }
        items.extend(take(body, field));
    }
    if by_partition {
        // A node answers for the partitions it holds and has caught up on. One whose view of
        // the members is short (say, just after losing its NATS server), a partition between
        // owners or one its new owner is still restoring leaves partitions nobody answered
        // for: say which, never a silent short list.
        if let Some(missing) = uncovered(cluster.partition_count(), &held) {
            incomplete.push(format!(
                "partitions {missing}: no node that answered holds them with their events applied (moving between nodes, being restored, or their owner is not in this node's view of the members); retry shortly"
            ));
        }
        items = one_per_key(items);
    }
    let age = |item: &Value| {
        item.get("state_since")
            .or_else(|| item.get("updated_at"))
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    items.sort_by(|a, b| {
        age(a)
            .cmp(&age(b))
            .then_with(|| a["key"].as_str().cmp(&b["key"].as_str()))
    });
    items.truncate(limit_of(raw));
    let mut body = serde_json::json!({ field: items });
    if !incomplete.is_empty() {
        body["incomplete"] = incomplete.into();
    }
    Json(body).into_response()
}

/// Asks every other live node `call` at once: the bodies of those that answered 200, by node,
/// and what kept the others from it (for `incomplete`).
async fn ask_others(
    app: &AppState,
    cluster: &Cluster,
    call: &Call,
) -> (Vec<(String, Value)>, Vec<String>) {
    let timeout = app.config.server.query_timeout.0;
    let others: Vec<String> = cluster
        .live_members()
        .into_iter()
        .filter(|node| node != cluster.node())
        .collect();
    let calls = others.iter().map(|node| cluster.call(node, call, timeout));
    let answers = futures_util::future::join_all(calls).await;
    let (mut bodies, mut incomplete) = (Vec::new(), Vec::new());
    for (node, answer) in others.into_iter().zip(answers) {
        match answer {
            Ok(answer) if answer.status == 200 => bodies.push((node, answer.body)),
            Ok(answer) => incomplete.push(format!("{node}: answered {}", answer.status)),
            Err(err) => incomplete.push(err.to_string()),
        }
    }
    (bodies, incomplete)
}

async fn answer_of(response: Response) -> Answer {
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), MAX_ANSWER_BYTES)
        .await
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null);
    Answer { status, body }
}

/// Field of a cluster node's list answer naming the partitions it answered for (see
/// `list_here`), so the gathering node can tell which partitions no answer covered.
pub(crate) const HELD: &str = "held";

/// The partitions of `0..count` none of `held` names, as runs for `incomplete`
/// (`"3, 7-9"`), or `None` when every partition is covered.
fn uncovered(count: u32, held: &[Value]) -> Option<String> {
    let mut covered = vec![false; count as usize];
    for partition in held
        .iter()
        .flat_map(|list| list.as_array().into_iter().flatten())
    {
        if let Some(slot) = partition
            .as_u64()
            .and_then(|p| covered.get_mut(usize::try_from(p).ok()?))
        {
            *slot = true;
        }
    }
    let mut runs: Vec<String> = Vec::new();
    let mut partition = 0;
    while partition < covered.len() {
        if covered[partition] {
            partition += 1;
            continue;
        }
        let start = partition;
        while partition < covered.len() && !covered[partition] {
            partition += 1;
        }
        runs.push(if partition - start == 1 {
            start.to_string()
        } else {
            format!("{start}-{}", partition - 1)
        });
    }
    (!runs.is_empty()).then(|| runs.join(", "))
}

/// Keeps one item per `key`: the one updated last (a partition that moved while the nodes
/// answered can be listed by its old owner and its new one).
fn one_per_key(items: Vec<Value>) -> Vec<Value> {
    let updated = |item: &Value| item.get("updated_at").and_then(Value::as_i64).unwrap_or(0);
    let mut kept: Vec<Value> = Vec::with_capacity(items.len());
    let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for item in items {
        let Some(key) = item.get("key").and_then(Value::as_str).map(str::to_owned) else {
            kept.push(item);
            continue;
        };
        match at.get(&key) {
            Some(&i) => {
                if updated(&item) > updated(&kept[i]) {
                    kept[i] = item;
                }
            }
            None => {
                at.insert(key, kept.len());
                kept.push(item);
            }
        }
    }
    kept
}

fn take(mut body: Value, field: &str) -> Vec<Value> {
    match body.get_mut(field).map(Value::take) {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    }
}

/// `GET /v1/sources` in cluster mode: every live node's view, merged per source. Pushes land on
/// whichever node the load balancer picked (rejected messages are counted there) and events are
/// journaled by their partition's owner (unmapped statuses, parked scans), so one node alone
/// sees only its share. Nodes that did not answer are named under `incomplete`.
pub(crate) async fn sources(app: Arc<AppState>, cluster: Cluster) -> Response {
    let own = answer_of(super::sources_here(app.clone()).await).await;
    if own.status != 200 {
        return relay(own);
    }
    let (answers, mut incomplete) = ask_others(&app, &cluster, &Call::Sources).await;
    let mut views = vec![(cluster.node().to_owned(), own.body)];
    views.extend(answers);
    let mut body = merge_sources(views);
    // Courier scans waiting for their order wait in the stream, not in a node's journal.
    match cluster.parked_scans().await {
        Ok(waiting) => {
            if let Some(why) = &waiting.stopped {
                incomplete.push(format!(
                    "stream: courier scans waiting for their order: {why}"
                ));
            }
            add_waiting_scans(&mut body, &waiting);
        }
        Err(err) => incomplete.push(format!(
            "stream: courier scans waiting for their order: {err}"
        )),
    }
    if !incomplete.is_empty() {
        body["incomplete"] = incomplete.into();
    }
    Json(body).into_response()
}

/// Adds the scans waiting in the stream to their sources' `parked_scans` (count and earliest
/// `received_at`); those beyond the read limit are counted at the top level as
/// `parked_scans_unread` (their sources unread).
fn add_waiting_scans(body: &mut Value, waiting: &crate::cluster::scans::Waiting) {
    let Some(sources) = body["sources"].as_array_mut() else {
        return;
    };
    for (source, (count, oldest)) in &waiting.by_source {
        let Some(entry) = sources.iter_mut().find(|s| s["name"] == source.as_str()) else {
            continue;
        };
        let parked = &mut entry["parked_scans"];
        let total = parked["count"].as_u64().unwrap_or(0) + count;
        let earliest = match parked["oldest_received_at"].as_i64() {
            Some(known) => known.min(*oldest),
            None => *oldest,
        };
        *parked = serde_json::json!({ "count": total, "oldest_received_at": earliest });
    }
    if waiting.unread > 0 {
        body["parked_scans_unread"] = waiting.unread.into();
    }
}

/// Merges nodes' `GET /v1/sources` bodies: a source is `ready` when it is on every node (else
/// `unavailable`, the reasons named by node); unmapped statuses and parked scans are summed
/// (first and last times kept), rejected messages summed and their latest kept, newest first,
/// each with the node that received it.
pub(crate) fn merge_sources(views: Vec<(String, Value)>) -> Value {
    use std::collections::BTreeMap;
    let nodes: Vec<String> = views.iter().map(|(node, _)| node.clone()).collect();
    let mut merged: BTreeMap<String, Value> = BTreeMap::new();
    for (node, view) in views {
        for source in take(view, "sources") {
            let Some(name) = source["name"].as_str().map(str::to_owned) else {
                continue;
            };
            let entry = merged.entry(name).or_insert_with(|| {
                serde_json::json!({
                    "name": source["name"], "kind": source["kind"], "status": "ready",
                    "unmapped": [], "rejected": {"total": 0, "recent": []},
                })
            });
            if source["status"] != "ready" {
                entry["status"] = "unavailable".into();
                let reason = format!(
                    "{node}: {}",
                    source["reason"].as_str().unwrap_or("unavailable")
                );
                entry["reason"] = match entry["reason"].as_str() {
                    Some(earlier) => format!("{earlier}; {reason}").into(),
                    None => reason.into(),
                };
            }
            for status in source["unmapped"].as_array().into_iter().flatten() {
                let unmapped = entry["unmapped"].as_array_mut().expect("built as an array");
                match unmapped
                    .iter_mut()
                    .find(|u| u["raw_status"] == status["raw_status"])
                {
                    Some(known) => {
                        let count = known["count"].as_u64().unwrap_or(0)
                            + status["count"].as_u64().unwrap_or(0);
                        known["count"] = count.into();
                        if status["first_seen"].as_i64() < known["first_seen"].as_i64() {
                            known["first_seen"] = status["first_seen"].clone();
                        }
                        if status["last_seen"].as_i64() > known["last_seen"].as_i64() {
                            known["last_seen"] = status["last_seen"].clone();
                            known["last_order"] = status["last_order"].clone();
                        }
                    }
                    None => unmapped.push(status.clone()),
                }
            }
            let rejected = &source["rejected"];
            let total = entry["rejected"]["total"].as_u64().unwrap_or(0)
                + rejected["total"].as_u64().unwrap_or(0);
            entry["rejected"]["total"] = total.into();
            for message in rejected["recent"].as_array().into_iter().flatten() {
                let mut message = message.clone();
                message["node"] = node.clone().into();
                if let Some(recent) = entry["rejected"]["recent"].as_array_mut() {
                    recent.push(message);
                }
            }
            if let Some(parked) = source.get("parked_scans") {
                let count = entry["parked_scans"]["count"].as_u64().unwrap_or(0)
                    + parked["count"].as_u64().unwrap_or(0);
                let oldest = match (
                    entry["parked_scans"]["oldest_received_at"].as_i64(),
                    parked["oldest_received_at"].as_i64(),
                ) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                entry["parked_scans"] =
                    serde_json::json!({ "count": count, "oldest_received_at": oldest });
            }
        }
    }
    let sources: Vec<Value> = merged
        .into_values()
        .map(|mut source| {
            if let Some(recent) = source["rejected"]["recent"].as_array_mut() {
                recent.sort_by_key(|m| std::cmp::Reverse(m["received_at"].as_i64().unwrap_or(0)));
                recent.truncate(REJECTED_KEPT);
            }
            source
        })
        .collect();
    serde_json::json!({ "sources": sources, "nodes": nodes })
}

/// Rejected messages kept per source in a merged view (as each node keeps).
const REJECTED_KEPT: usize = 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_no_answer_held_are_named_as_runs() {
        use serde_json::json;
        assert_eq!(uncovered(4, &[json!([0, 1]), json!([3, 2])]), None);
        assert_eq!(
            uncovered(10, &[json!([0, 2]), json!([6]), json!("not a list")]),
            Some("1, 3-5, 7-9".to_owned())
        );
        assert_eq!(uncovered(3, &[]), Some("0-2".to_owned()));
        // A partition beyond the count (an answer from a differently configured node) is
        // ignored, not a panic.
        assert_eq!(uncovered(1, &[json!([0, 5, -1])]), None);
    }

    #[test]
    fn an_order_listed_by_two_owners_is_kept_once_as_last_updated() {
        use serde_json::json;
        let items = vec![
            json!({"key": "a", "updated_at": 5, "state": "paid"}),
            json!({"key": "b", "updated_at": 1}),
            json!({"key": "a", "updated_at": 9, "state": "packed"}),
            json!({"key": "a", "updated_at": 7, "state": "allocated"}),
        ];
        let kept = one_per_key(items);
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert_eq!(kept[0]["state"], "packed");
        assert_eq!(kept[1]["key"], "b");
    }

    #[test]
    fn sources_of_every_node_are_merged() {
        let a = serde_json::json!({"sources": [
            {"name": "events", "kind": "push", "status": "ready", "unmapped": [],
             "rejected": {"total": 1, "recent": [{"received_at": 5, "error": "x"}]}},
            {"name": "youzan", "kind": "push", "status": "ready",
             "unmapped": [{"raw_status": "WAIT_GROUP", "count": 2, "first_seen": 10, "last_seen": 20, "last_order": "youzan:1"}],
             "rejected": {"total": 0, "recent": []}, "parked_scans": {"count": 1, "oldest_received_at": 7}},
        ]});
        let b = serde_json::json!({"sources": [
            {"name": "events", "kind": "push", "status": "unavailable", "reason": "no secret", "unmapped": [],
             "rejected": {"total": 2, "recent": [{"received_at": 9, "error": "y"}, {"received_at": 1, "error": "z"}]}},
            {"name": "youzan", "kind": "push", "status": "ready",
             "unmapped": [{"raw_status": "WAIT_GROUP", "count": 3, "first_seen": 5, "last_seen": 30, "last_order": "youzan:2"},
                          {"raw_status": "OTHER", "count": 1, "first_seen": 8, "last_seen": 8, "last_order": "youzan:3"}],
             "rejected": {"total": 0, "recent": []}, "parked_scans": {"count": 2, "oldest_received_at": 3}},
        ]});
        let merged = merge_sources(vec![("a".into(), a), ("b".into(), b)]);
        assert_eq!(merged["nodes"], serde_json::json!(["a", "b"]));
        let events = &merged["sources"][0];
        assert_eq!(events["status"], "unavailable");
        assert_eq!(events["reason"], "b: no secret");
        assert_eq!(events["rejected"]["total"], 3);
        let recent: Vec<(i64, &str)> = events["rejected"]["recent"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["received_at"].as_i64().unwrap(),
                    m["node"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(recent, vec![(9, "b"), (5, "a"), (1, "b")]);
        let youzan = &merged["sources"][1];
        assert_eq!(youzan["status"], "ready");
        assert_eq!(
            youzan["unmapped"][0],
            serde_json::json!({"raw_status": "WAIT_GROUP", "count": 5, "first_seen": 5, "last_seen": 30, "last_order": "youzan:2"})
        );
        assert_eq!(youzan["unmapped"][1]["raw_status"], "OTHER");
        assert_eq!(
            youzan["parked_scans"],
            serde_json::json!({"count": 3, "oldest_received_at": 3})
        );
    }

    #[test]
    fn scans_waiting_in_the_stream_join_their_sources_parked_scans() {
        let mut body = serde_json::json!({"sources": [
            {"name": "sf", "kind": "push", "status": "ready"},
            {"name": "jd", "kind": "push", "status": "ready",
             "parked_scans": {"count": 1, "oldest_received_at": 50}},
            {"name": "events", "kind": "push", "status": "ready"},
        ]});
        let waiting = crate::cluster::scans::Waiting {
            by_source: [("sf".to_owned(), (3, 70)), ("jd".to_owned(), (2, 40))]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        add_waiting_scans(&mut body, &waiting);
        assert_eq!(
            body["sources"][0]["parked_scans"],
            serde_json::json!({"count": 3, "oldest_received_at": 70})
        );
        assert_eq!(
            body["sources"][1]["parked_scans"],
            serde_json::json!({"count": 3, "oldest_received_at": 40})
        );
        assert!(body["sources"][2].get("parked_scans").is_none());
        assert!(body.get("parked_scans_unread").is_none());
        let waiting = crate::cluster::scans::Waiting {
            unread: 5,
            ..Default::default()
        };
        add_waiting_scans(&mut body, &waiting);
        assert_eq!(body["parked_scans_unread"], 5);
    }
}
