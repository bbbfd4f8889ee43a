//! The ops board: `GET /board` (a page embedded in the binary: no CDN, no other fetch) for the
//! warehouse floor (`?view=floor`), customer service (`?view=service`) and the flow of work
//! (`?view=flow`), kept live over Server-Sent Events (`GET /v1/board/events`). Behind the
//! operators' tokens like the rest of the API; a browser passes its token as `?token=` (an
//! EventSource cannot send headers) and the page keeps it for its API calls.
//!
//! One task computes the board's snapshot every second from the index (stuck orders per SLA
//! through the `orders_by_state` index, holds, open approvals, disagreements; new orders per
//! channel and hour) and publishes it when it changed; every open page is sent the
//! same JSON.

use crate::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use orderhub_actors::order::{ApprovalState, Millis, Order, OrderState};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The page (HTML, CSS and JavaScript in one file).
const PAGE: &str = include_str!("board/board.html");

/// How many stuck orders each SLA shows.
const TOP: usize = 5;
/// How many holds and approvals the board lists.
const LISTED: usize = 50;
/// How often the snapshot is computed.
const EVERY: Duration = Duration::from_secs(1);
/// How often the new-orders heat map is refreshed (a range of the `orders_by_first_seen`
/// index: the last day's orders).
const HEAT_EVERY: Duration = Duration::from_secs(1);

/// The latest snapshot (JSON), for every page, and when a page last asked for one.
#[derive(Clone)]
pub(crate) struct Board {
    latest: watch::Receiver<Arc<String>>,
    wanted: Arc<std::sync::atomic::AtomicU64>,
}

/// Computes the snapshots (see [`Publisher::start`]).
pub(crate) struct Publisher {
    tx: watch::Sender<Arc<String>>,
    wanted: Arc<std::sync::atomic::AtomicU64>,
}

/// A snapshot is computed while a page watches or asked within this long.
const WANTED_FOR: Duration = Duration::from_secs(10);

fn epoch_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Board {
    /// The board and the publisher that keeps it.
    pub(crate) fn channel() -> (Board, Publisher) {
        let (tx, latest) = watch::channel(Arc::new(String::new()));
        let wanted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        (
            Board {
                latest,
                wanted: wanted.clone(),
            },
            Publisher { tx, wanted },
        )
    }

    /// Notes that a page wants the board (the publisher computes it for a while).
    fn want(&self) {
        self.wanted
            .store(epoch_s(), std::sync::atomic::Ordering::Relaxed);
    }
}

impl Publisher {
    /// Keeps the snapshot while anyone watches (an open event stream, or a snapshot asked for
    /// in the last 10 s); ends with the engine.
    pub(crate) fn start(self, app: std::sync::Weak<AppState>) {
        tokio::spawn(async move {
            let mut heat: (Option<std::time::Instant>, serde_json::Value) =
                (None, serde_json::Value::Array(Vec::new()));
            let mut reasons: HashMap<(String, Millis), serde_json::Value> = HashMap::new();
            let mut last = String::new();
            loop {
                // The engine's own receiver is always there; a page adds one.
                let watched = self.tx.receiver_count() > 1
                    || epoch_s()
                        .saturating_sub(self.wanted.load(std::sync::atomic::Ordering::Relaxed))
                        < WANTED_FOR.as_secs();
                if watched {
                    let Some(app) = app.upgrade() else { return };
                    let refresh_heat = heat.0.is_none_or(|at| at.elapsed() >= HEAT_EVERY);
                    let computed = snapshot(&app, refresh_heat, &mut reasons).await;
                    drop(app);
                    match computed {
                        Ok((mut value, fresh_heat)) => {
                            if let Some(fresh) = fresh_heat {
                                heat = (Some(std::time::Instant::now()), fresh);
                            }
                            value["new_orders"] = heat.1.clone();
                            // Sent when something changed (`at` aside), so the pages' timers
                            // (overdue, countdowns) run on their own clocks in between.
                            let body = value.to_string();
                            if body != last {
                                value["at"] = epoch_ms().into();
                                let _ = self.tx.send(Arc::new(value.to_string()));
                                last = body;
                            }
                        }
                        Err(err) => tracing::warn!(error = %err, "cannot compute the ops board"),
                    }
                } else if app.strong_count() == 0 {
                    return;
                }
                tokio::time::sleep(EVERY).await;
            }
        });
    }
}

fn epoch_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// The board's data (without `new_orders`), and the heat map when asked for.
async fn snapshot(
    app: &Arc<AppState>,
    refresh_heat: bool,
    reasons: &mut HashMap<(String, Millis), serde_json::Value>,
) -> Result<(serde_json::Value, Option<serde_json::Value>), String> {
    let now = app.now_ms();
    let journal = app.journal.clone();
    let rules = app.policy.sla_rules().to_vec();
    let policy = app.policy.clone();
    let known: HashMap<(String, Millis), serde_json::Value> = std::mem::take(reasons);
    // Cluster mode: the orders of the partitions this node answers for (its store also keeps,
    // at their old states, those of partitions it gave away).
    let current = app
        .cluster
        .clone()
        .map(|cluster| (cluster.current_partitions(), cluster));
    let blocking = tokio::task::spawn_blocking(move || {
        let ours = |key: &str| {
            current
                .as_ref()
                .is_none_or(|(partitions, cluster)| cluster.in_partitions(partitions, key))
        };
        let list = |filter: crate::journal::OrderFilter| match &current {
            None => journal.list(&filter),
            Some(_) => journal.list_kept(&filter, &ours).map(|(orders, _)| orders),
        };
        let mut stuck = Vec::new();
        for rule in &rules {
            let orders = list(crate::journal::OrderFilter {
                state: Some(rule.from),
                state_since_at_most: Some(now - rule.within_ms),
                limit: TOP,
                ..Default::default()
            })
            .map_err(|e| e.to_string())?;
            stuck.push(serde_json::json!({
                "sla": rule.name,
                "state": rule.from,
                "orders": orders.iter().map(|o| serde_json::json!({
                    "key": o.key,
                    "since": o.state_since,
                    "overdue_ms": now - o.state_since - rule.within_ms,
                })).collect::<Vec<_>>(),
            }));
        }
        let held = list(crate::journal::OrderFilter {
            state: Some(OrderState::OnHold),
            limit: LISTED,
            ..Default::default()
        })
        .map_err(|e| e.to_string())?;
        // A hold's who and why are in the order: folded once per change of the order.
        let mut holds = Vec::new();
        let mut kept = HashMap::new();
        for order in held {
            let cache = (order.key.clone(), order.updated_at);
            let hold = match known.get(&cache) {
                Some(hold) => hold.clone(),
                None => {
                    let events = journal.events_of(&order.key).map_err(|e| e.to_string())?;
                    let folded = Order::replay(order.key.as_str(), &events, &policy);
                    serde_json::json!({
                        "key": order.key,
                        "since": folded.hold.as_ref().map_or(order.state_since, |h| h.since),
                        "reason": folded.hold.as_ref().and_then(|h| h.reason.clone()),
                        "by": folded.hold.as_ref().and_then(|h| h.by.clone()),
                    })
                }
            };
            holds.push(hold.clone());
            kept.insert(cache, hold);
        }
        let approvals = journal
            .approvals(Some(ApprovalState::Open), None, LISTED)
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|a| ours(&a.order))
            .collect::<Vec<_>>();
        let escalated = journal
            .approvals(Some(ApprovalState::Expired), None, LISTED)
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|a| a.decidable() && ours(&a.order))
            .collect::<Vec<_>>();
        let no_pickup = journal
            .disagreeing("shipped_without_pickup")
            .map_err(|e| e.to_string())?;
        let disagreeing = list(crate::journal::OrderFilter {
            disagreement: true,
            limit: LISTED,
            ..Default::default()
        })
        .map_err(|e| e.to_string())?;
        let unmapped = journal.unmapped_statuses().map_err(|e| e.to_string())?;
        let heat = if refresh_heat {
            let rows = journal
                .new_orders_by_channel(now - 24 * 3_600_000)
                .map_err(|e| e.to_string())?;
            Some(serde_json::json!(
                rows.into_iter()
                    .map(|(channel, hour, count)| serde_json::json!({
                        "channel": channel, "hour": hour, "count": count
                    }))
                    .collect::<Vec<_>>()
            ))
        } else {
            None
        };
        Ok::<_, String>((
            serde_json::json!({
                "stuck": stuck,
                "holds": holds,
                "approvals": approvals,
                "escalated": escalated,
                "shipped_without_pickup": no_pickup,
                "disagreements": disagreeing,
                "unmapped": unmapped,
            }),
            heat,
            kept,
        ))
    })
    .await
    .map_err(|e| e.to_string())?;
    let (mut value, heat, kept) = blocking?;
    *reasons = kept;
    let mut sinks = Vec::new();
    for sink in app.dispatch.sinks() {
        if let Ok(status) = app.dispatch.status(sink).await {
            // The sink's quota per second (the page shows the delivery rate against it).
            let quota = app
                .config
                .sinks
                .iter()
                .find(|s| s.name == sink)
                .map(|s| f64::from(s.rate.count) / s.rate.per.as_secs_f64().max(f64::EPSILON));
            sinks.push(serde_json::json!({
                "sink": sink,
                "quota_per_s": quota,
                "backlog": status.backlog,
                "in_flight": status.in_flight,
                "breaker": match status.breaker as i64 { 0 => "closed", 1 => "half_open", _ => "open" },
                "delivered": status.delivered,
                "dead": status.dead,
            }));
        }
    }
    value["sinks"] = serde_json::Value::Array(sinks);
    Ok((value, heat))
}

/// `GET /board`.
pub(crate) async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Everything the page needs is in it: nothing else may load.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self' data:",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

/// The longest text a QR code is made of.
const MAX_QR_TEXT: usize = 1024;

/// `GET /v1/board/qr?text=…`: `text` (the wall-screen link) as a QR code, SVG.
pub(crate) async fn qr(axum::extract::RawQuery(raw): axum::extract::RawQuery) -> Response {
    let bad = |message: String| {
        crate::envelope::error_response(axum::http::StatusCode::BAD_REQUEST, "bad_query", &message)
    };
    let text = form_urlencoded::parse(raw.as_deref().unwrap_or_default().as_bytes())
        .find(|(name, _)| name == "text")
        .map(|(_, value)| value.into_owned());
    let Some(text) = text.filter(|t| !t.is_empty()) else {
        return bad("text is required: the link to encode".into());
    };
    if text.len() > MAX_QR_TEXT {
        return bad(format!("text is longer than {MAX_QR_TEXT} bytes"));
    }
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(code) => (
            [
                (header::CONTENT_TYPE, "image/svg+xml"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            code.render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(240, 240)
                .build(),
        )
            .into_response(),
        Err(err) => bad(format!("text cannot be a QR code: {err}")),
    }
}

/// `GET /v1/board/find?q=…`: the order `q` names — an order key, or a waybill number an order
/// reported — as `{"key"}`; the page then reads it through `GET /v1/orders/{key}` (masked as
/// the caller's role says).
pub(crate) async fn find(
    State(app): State<Arc<AppState>>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Response {
    use axum::http::StatusCode;
    let q = form_urlencoded::parse(raw.as_deref().unwrap_or_default().as_bytes())
        .find(|(name, _)| name == "q")
        .map(|(_, value)| value.trim().to_owned())
        .filter(|q| !q.is_empty());
    let Some(q) = q else {
        return crate::envelope::error_response(
            StatusCode::BAD_REQUEST,
            "bad_query",
            "q is required: an order key or a waybill number",
        );
    };
    let journal = app.journal.clone();
    let lookup = q.clone();
    let found = tokio::task::spawn_blocking(move || {
        if journal.knows(&lookup)? {
            return Ok(Some(lookup));
        }
        journal.order_of_waybill(&lookup)
    })
    .await;
    match found {
        Ok(Ok(Some(key))) => axum::Json(serde_json::json!({ "key": key })).into_response(),
        Ok(Ok(None)) => crate::envelope::error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no order or waybill {q:?}"),
        ),
        Ok(Err(err)) => crate::envelope::error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            &err.to_string(),
        ),
        Err(err) => crate::envelope::error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            &err.to_string(),
        ),
    }
}

/// `GET /v1/board/snapshot`: the board's data now.
pub(crate) async fn current(State(app): State<Arc<AppState>>) -> Response {
    app.board.want();
    let mut rx = app.board.latest.clone();
    if rx.borrow_and_update().is_empty() {
        // Nobody watched lately: the first snapshot is on its way.
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.changed()).await;
    }
    let text = rx.borrow().clone();
    (
        [(header::CONTENT_TYPE, "application/json")],
        text.as_ref().clone(),
    )
        .into_response()
}

/// `GET /v1/board/events`: the snapshot now, then each time it changes (`event: snapshot`).
pub(crate) async fn events(State(app): State<Arc<AppState>>) -> Response {
    app.board.want();
    let mut rx = app.board.latest.clone();
    let first = rx.borrow_and_update().clone();
    // Nothing computed yet: the first snapshot comes as a change.
    let first = (!first.is_empty()).then_some(first);
    let stream = futures_util::stream::unfold((rx, first), |(mut rx, pending)| async move {
        if let Some(text) = pending {
            let event = Event::default().event("snapshot").data(text.as_str());
            return Some((Ok::<_, std::convert::Infallible>(event), (rx, None)));
        }
        rx.changed().await.ok()?;
        let text = rx.borrow_and_update().clone();
        let event = Event::default().event("snapshot").data(text.as_str());
        Some((Ok(event), (rx, None)))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
