//! The query and operations API: `GET /v1/orders/{key}`, `GET /v1/orders`, `/healthz`,
//! `/readyz`, `/metrics`.

use crate::AppState;
use crate::cluster::rpc::Call;
use crate::envelope::error_response;
use crate::journal::OrderFilter;
use axum::Json;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use orderhub_actors::order::{EventAction, OPERATOR_SOURCE, Order, OrderEvent, OrderState};
use serde::Deserialize;
use std::sync::Arc;

pub(crate) mod approvals;
mod forward;
mod holds;
pub(crate) mod reports;
pub(crate) mod stock;
pub(crate) use forward::answer;
pub(crate) use holds::{hold, release};

/// Parses a query string as `T`; the error says what is wrong (answered `400 bad_query`).
fn parse_query<T: serde::de::DeserializeOwned>(raw: &str) -> Result<T, String> {
    let uri: axum::http::Uri = format!("/?{raw}")
        .parse()
        .map_err(|e: axum::http::uri::InvalidUri| format!("query {raw:?}: {e}"))?;
    Query::<T>::try_from_uri(&uri)
        .map(|Query(query)| query)
        .map_err(|e| e.body_text())
}

/// Default and largest `limit` of the order list.
const DEFAULT_LIST_LIMIT: usize = 100;
const MAX_LIST_LIMIT: usize = 1000;

fn internal(err: impl std::fmt::Display) -> Response {
    tracing::error!(error = %err, "query failed");
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        &err.to_string(),
    )
}

/// `GET /v1/orders/{key}`: from the order's actor when it is active, else folded from the
/// journal (which never lags what was acknowledged).
/// Phone numbers are masked unless the caller is an operator or above (with no operators
/// configured, always).
pub(crate) async fn get_order(
    State(app): State<Arc<AppState>>,
    Path(key): Path<String>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
) -> Response {
    let reveal = caller.is_some_and(|c| c.0.sees_personal_data());
    let response = match &app.cluster {
        Some(cluster) => match cluster.owner_of(&key).await {
            Ok(owner) if owner != cluster.node() => {
                forward::to(&app, cluster, &owner, Call::Order { key }).await
            }
            Ok(_) => order_here(&app, key).await,
            Err(err) => return forward::unavailable(&err),
        },
        None => order_here(&app, key).await,
    };
    if reveal || response.status() != StatusCode::OK {
        return response;
    }
    mask_personal_data(response).await
}

/// Keys under which an order's JSON carries phone numbers (normalised and platform-native).
const PHONE_KEYS: [&str; 6] = [
    "phone",
    "mobile",
    "tel",
    "receiver_phone",
    "receiver_mobile",
    "tel_number",
];

/// Masks every phone number in a JSON answer (`138****5678`).
async fn mask_personal_data(response: Response) -> Response {
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return internal("reading the order's answer failed");
    };
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    mask_phones(&mut value);
    let mut response = Json(value).into_response();
    *response.status_mut() = parts.status;
    response
}

fn mask_phones(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                match inner {
                    serde_json::Value::String(text) if PHONE_KEYS.contains(&key.as_str()) => {
                        *text = crate::ingest::details::mask_phone(text);
                    }
                    other => mask_phones(other),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(mask_phones),
        _ => {}
    }
}

/// The order as this node knows it: from its actor when active, else folded from the journal;
/// `Err` is the answer to give (`404 unknown_order`, `410 archived`, `503`).
pub(crate) async fn load_order(app: &Arc<AppState>, key: &str) -> Result<Order, Response> {
    let timeout = app.config.server.query_timeout.0;
    match app.router.active_order(key, timeout).await {
        Ok(Some(order)) => Ok(order),
        Ok(None) | Err(_) => {
            let journal = app.journal.clone();
            let policy = app.policy.clone();
            let lookup = key.to_owned();
            let folded = tokio::task::spawn_blocking(move || {
                let events = journal.events_of(&lookup)?;
                if events.is_empty() {
                    return journal.archived(&lookup).map(Err);
                }
                Ok(Ok(Order::replay(lookup.as_str(), &events, &policy)))
            })
            .await;
            match folded {
                Ok(Ok(Ok(order))) => Ok(order),
                Ok(Ok(Err(Some(archived)))) => Err(gone(app, key, &archived)),
                Ok(Ok(Err(None))) => Err(error_response(
                    StatusCode::NOT_FOUND,
                    "unknown_order",
                    &format!("no events for order {key:?}"),
                )),
                Ok(Err(err)) => Err(internal(err)),
                Err(err) => Err(internal(err)),
            }
        }
    }
}

/// The order as this node knows it (its owner's answer in cluster mode).
pub(crate) async fn order_here(app: &Arc<AppState>, key: String) -> Response {
    let order = match load_order(app, &key).await {
        Ok(order) => order,
        Err(answer) => return answer,
    };
    let journal = app.journal.clone();
    let syncs = match tokio::task::spawn_blocking(move || journal.syncs_of(&key)).await {
        Ok(Ok(syncs)) => syncs,
        Ok(Err(err)) => return internal(err),
        Err(err) => return internal(err),
    };
    let mut body = match serde_json::to_value(&order) {
        Ok(body) => body,
        Err(err) => return internal(err),
    };
    body["syncs"] = serde_json::to_value(syncs).unwrap_or_default();
    Json(body).into_response()
}

/// `410 archived`: compaction archived the order and removed it from the journal; the body
/// names the archive file that holds its events, syncs and timeline.
fn gone(
    app: &AppState,
    key: &str,
    archived: &crate::journal::retention::ArchivedOrder,
) -> Response {
    let dir = &app.config.journal.archive_dir;
    let file = archived.archive.as_ref().map(|name| {
        app.config
            .server
            .data_dir
            .join(dir)
            .join(name)
            .display()
            .to_string()
    });
    let message = match &file {
        Some(file) => format!(
            "order {key:?} finished more than journal.retain ago and was archived to {file} (zcat {file} | jq 'select(.order == \"{key}\")')"
        ),
        None => format!(
            "order {key:?} finished more than journal.retain ago and was removed (journal.archive_dir was empty: no archive was kept)"
        ),
    };
    let body = serde_json::json!({
        "error": { "code": "archived", "message": message },
        "order": key,
        "archive": file,
        "archived_at": archived.archived_at,
    });
    (StatusCode::GONE, Json(body)).into_response()
}

/// Query of `GET /v1/dispatch/dead-letters`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeadLetterQuery {
    sink: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/dispatch/dead-letters?sink=&limit=`: syncs given up on, oldest first, with the
/// last error (status and response excerpt).
pub(crate) async fn dead_letters(
    State(app): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
) -> Response {
    forward::read(
        app,
        raw,
        |query| Call::DeadLetters { query },
        "dead_letters",
        dead_letters_here,
    )
    .await
}

/// This node's dead letters (in cluster mode each carries `node`, and its retry id is
/// `{node}:{row}`).
pub(crate) async fn dead_letters_here(app: Arc<AppState>, raw: String) -> Response {
    let query = match parse_query::<DeadLetterQuery>(&raw) {
        Ok(query) => query,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, "bad_query", &message),
    };
    let limit = query
        .limit
        .unwrap_or(DEFAULT_LIST_LIMIT)
        .min(MAX_LIST_LIMIT);
    let journal = app.journal.clone();
    match tokio::task::spawn_blocking(move || journal.dead_letters(query.sink.as_deref(), limit))
        .await
    {
        Ok(Ok(letters)) => {
            let mut letters = serde_json::to_value(letters).unwrap_or_default();
            if let (Some(cluster), Some(list)) = (&app.cluster, letters.as_array_mut()) {
                for letter in list {
                    letter["node"] = cluster.node().into();
                    letter["retry_id"] = format!("{}:{}", cluster.node(), letter["row"]).into();
                }
            }
            Json(serde_json::json!({ "dead_letters": letters })).into_response()
        }
        Ok(Err(err)) => internal(err),
        Err(err) => internal(err),
    }
}

/// `POST /v1/dispatch/dead-letters/{row}/retry`: makes the dead letter pending again (attempts
/// reset) and hands it to its sink's dispatcher.
pub(crate) async fn retry_dead_letter(
    State(app): State<Arc<AppState>>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    Path(row): Path<String>,
) -> Response {
    let operator = caller.map_or_else(|| "unknown".to_owned(), |c| c.0.name.clone());
    // In cluster mode a dead letter lives in one node's outbox: its id is `{node}:{row}`.
    let (node, row) = match row.rsplit_once(':') {
        Some((node, row)) => (Some(node.to_owned()), row.to_owned()),
        None => (None, row),
    };
    if let (Some(cluster), Some(node)) = (&app.cluster, &node)
        && node != cluster.node()
    {
        let Ok(row) = row.parse::<i64>() else {
            return error_response(
                StatusCode::BAD_REQUEST,
                "bad_id",
                &format!("dead letter id {node}:{row:?} does not end in a number"),
            );
        };
        return forward::to(&app, cluster, node, Call::Retry { row, operator }).await;
    }
    retry_here(&app, row, operator).await
}

/// Retries dead letter `row` of this node's outbox.
pub(crate) async fn retry_here(app: &Arc<AppState>, row: String, operator: String) -> Response {
    let Ok(row) = row.parse::<i64>() else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "bad_id",
            &format!("dead letter id {row:?} is not a number"),
        );
    };
    match app.journal.revive(row).await {
        Ok(Some(sync)) => {
            let id = sync.intent.id.clone();
            let (order, sink) = (sync.intent.order.clone(), sync.intent.sink.clone());
            if let Err(err) = app.dispatch.replay(sync) {
                // Pending on disk: the sink's dispatcher picks it up when it runs again.
                tracing::warn!(row, error = %err, "revived sync not handed to a dispatcher");
            }
            tracing::info!(row, id = %id, operator = %operator, "dead letter retried");
            // The order's timeline says who sent it again.
            let now = app.now_ms();
            let mut fields = serde_json::Map::new();
            fields.insert("operator".into(), operator.clone().into());
            fields.insert("sync".into(), id.clone().into());
            fields.insert("sink".into(), sink.into());
            let noted = OrderEvent {
                order,
                source: OPERATOR_SOURCE.to_owned(),
                source_event_id: format!("retry:{id}:{now}"),
                supersedes: None,
                log_seq: None,
                raw_status: "retry_dead_letter".to_owned(),
                action: EventAction::Inform,
                occurred_at: now,
                received_at: now,
                fields: fields.into(),
            };
            if let Err(err) = crate::ingest::journal_events(app, OPERATOR_SOURCE, vec![noted]).await
            {
                tracing::warn!(row, error = %err, "the retry is not in the order's timeline");
            }
            Json(serde_json::json!({ "row": row, "id": id, "status": "pending", "retried_by": operator }))
                .into_response()
        }
        Ok(None) => error_response(
            StatusCode::NOT_FOUND,
            "unknown_dead_letter",
            &format!("no dead letter with id {row}"),
        ),
        Err(err) => internal(err),
    }
}

/// Query of `GET /v1/orders`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    state: Option<String>,
    stuck_for: Option<String>,
    sla: Option<String>,
    disagreement: Option<bool>,
    limit: Option<usize>,
}

/// `GET /v1/orders?state=&stuck_for=&sla=breached|armed&disagreement=true&limit=`: oldest
/// first.
pub(crate) async fn list_orders(
    State(app): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
) -> Response {
    forward::read(app, raw, |query| Call::List { query }, "orders", list_here).await
}

/// The orders of this node's store (in cluster mode: of the partitions it owns).
pub(crate) async fn list_here(app: Arc<AppState>, raw: String) -> Response {
    let bad = |message: String| error_response(StatusCode::BAD_REQUEST, "bad_query", &message);
    let query = match parse_query::<ListQuery>(&raw) {
        Ok(query) => query,
        Err(message) => return bad(message),
    };
    let limit = query
        .limit
        .unwrap_or(DEFAULT_LIST_LIMIT)
        .min(MAX_LIST_LIMIT);
    let mut filter = OrderFilter {
        limit,
        ..OrderFilter::default()
    };
    if let Some(state) = &query.state {
        match state.parse::<OrderState>() {
            Ok(state) => filter.state = Some(state),
            Err(e) => return bad(e.to_string()),
        }
    }
    if let Some(stuck_for) = &query.stuck_for {
        match humantime::parse_duration(stuck_for) {
            Ok(d) => filter.state_since_at_most = Some(app.now_ms() - d.as_millis() as i64),
            Err(e) => return bad(format!("stuck_for {stuck_for:?}: {e}")),
        }
    }
    filter.disagreement = query.disagreement.unwrap_or(false);
    match query.sla.as_deref() {
        None => {}
        Some("breached") => filter.sla_breached = true,
        Some("armed") => filter.sla_armed = true,
        Some(other) => return bad(format!("sla must be breached or armed, got {other:?}")),
    }
    let journal = app.journal.clone();
    let Some(cluster) = app.cluster.clone() else {
        return match tokio::task::spawn_blocking(move || journal.list(&filter)).await {
            Ok(Ok(orders)) => Json(serde_json::json!({ "orders": orders })).into_response(),
            Ok(Err(err)) => internal(err),
            Err(err) => internal(err),
        };
    };
    // A cluster node's store still holds orders of partitions it gave away: it lists those of
    // the partitions it can answer for, and says which (`held`: those it could answer for both
    // before and after reading, so a partition that moved meanwhile is left to the gathering
    // node to name as missing rather than listed half).
    let before = cluster.current_partitions();
    if before.is_empty() {
        let held: [u32; 0] = [];
        return Json(serde_json::json!({ "orders": [], forward::HELD: held })).into_response();
    }
    let listed = tokio::task::spawn_blocking({
        let (cluster, before) = (cluster.clone(), before.clone());
        move || journal.list_kept(&filter, &|key| cluster.in_partitions(&before, key))
    })
    .await;
    match listed {
        Ok(Ok((mut orders, whole))) => {
            let held: Vec<u32> = cluster
                .current_partitions()
                .into_iter()
                .filter(|partition| before.binary_search(partition).is_ok())
                .collect();
            orders.retain(|order| cluster.in_partitions(&held, &order.key));
            let mut body = serde_json::json!({ "orders": orders, forward::HELD: held });
            if !whole {
                body["incomplete"] = serde_json::json!([format!(
                    "{}: its store holds so many older matching orders of partitions it gave away that it stopped reading before the limit; narrow the query (state=, stuck_for=)",
                    cluster.node()
                )]);
            }
            Json(body).into_response()
        }
        Ok(Err(err)) => internal(err),
        Err(err) => internal(err),
    }
}

/// `GET /v1/sources`: every configured source — pushed, connected or polled — with whether it
/// can take messages, the raw statuses it sent that its mapping did not know (durable, from
/// the journal), the malformed messages of its batches (since start-up) and, for couriers,
/// the scans still waiting for an order to report their waybill.
pub(crate) async fn sources(State(app): State<Arc<AppState>>) -> Response {
    match app.cluster.clone() {
        Some(cluster) => forward::sources(app, cluster).await,
        None => sources_here(app).await,
    }
}

/// This node's own sources: its ingest's rejected messages and its journal's unmapped statuses
/// and parked scans.
pub(crate) async fn sources_here(app: Arc<AppState>) -> Response {
    let journal = app.journal.clone();
    let stored = tokio::task::spawn_blocking(move || {
        Ok::<_, crate::journal::JournalError>((
            journal.unmapped_statuses()?,
            journal.parked_scans()?,
        ))
    })
    .await;
    let (unmapped, parked) = match stored {
        Ok(Ok(stored)) => stored,
        Ok(Err(err)) => return internal(err),
        Err(err) => return internal(err),
    };
    let mut listed: Vec<(&'static str, &'static str, Result<(), String>)> = app
        .sources
        .entries()
        .map(|(name, status)| (name, "push", status))
        .collect();
    for &name in &app.connected {
        if !listed.iter().any(|(listed, _, _)| *listed == name) {
            listed.push((name, "connection", Ok(())));
        }
    }
    listed.sort_by_key(|(name, _, _)| *name);
    let sources: Vec<serde_json::Value> = listed
        .into_iter()
        .map(|(name, kind, status)| {
            let unmapped: Vec<_> = unmapped.iter().filter(|u| u.source == name).collect();
            let mut entry = serde_json::json!({
                "name": name,
                "kind": kind,
                "status": if status.is_ok() { "ready" } else { "unavailable" },
                "unmapped": unmapped,
                "rejected": app.rejections.of(name),
            });
            if let Err(reason) = status {
                entry["reason"] = reason.into();
            }
            if let Some((_, count, oldest)) = parked.iter().find(|(source, ..)| source == name) {
                entry["parked_scans"] =
                    serde_json::json!({ "count": count, "oldest_received_at": oldest });
            }
            entry
        })
        .collect();
    Json(serde_json::json!({ "sources": sources })).into_response()
}

/// `GET /healthz`: the process is alive.
pub(crate) async fn healthz() -> Response {
    Json(serde_json::json!({ "status": "ok" })).into_response()
}

/// `GET /readyz`: accepting ingest (fails once shutdown began).
pub(crate) async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    if app.is_ready() {
        Json(serde_json::json!({ "status": "ready" })).into_response()
    } else if let Some(why) = app.cluster.as_ref().and_then(|c| c.duplicate()) {
        error_response(StatusCode::SERVICE_UNAVAILABLE, "duplicate_node", why)
    } else if app.cluster.as_ref().is_some_and(|c| !c.joined()) {
        error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_joined",
            "this node has not joined its cluster yet (or has left it)",
        )
    } else {
        error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "engine is shutting down",
        )
    }
}

/// `GET /metrics`: Prometheus text format.
pub(crate) async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.prometheus.render(),
    )
        .into_response()
}

/// Any other path.
pub(crate) async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}
