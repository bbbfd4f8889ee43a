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
/// named under `incomplete`; a query this node refuses is refused as it is.
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
    let own = answer_of(here(app.clone()).await).await;
    if own.status != 200 {
        return relay(own);
    }
    let timeout = app.config.server.query_timeout.0;
    let others: Vec<String> = cluster
        .live_members()
        .into_iter()
        .filter(|node| node != cluster.node())
        .collect();
    let calls = others.iter().map(|node| cluster.call(node, &call, timeout));
    let answers = futures_util::future::join_all(calls).await;
    let mut items: Vec<Value> = take(own.body, field);
    let mut incomplete = Vec::new();
    for (node, answer) in others.iter().zip(answers) {
        match answer {
            Ok(answer) if answer.status == 200 => items.extend(take(answer.body, field)),
            Ok(answer) => incomplete.push(format!("{node}: answered {}", answer.status)),
            Err(err) => incomplete.push(err.to_string()),
        }
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

async fn answer_of(response: Response) -> Answer {
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), MAX_ANSWER_BYTES)
        .await
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null);
    Answer { status, body }
}

fn take(mut body: Value, field: &str) -> Vec<Value> {
    match body.get_mut(field).map(Value::take) {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    }
}
