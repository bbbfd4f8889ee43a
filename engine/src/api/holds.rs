//! Operators' holds: `POST /v1/orders/{key}/hold {"reason", "syncs"?}` puts an order on hold (exception
//! interception) and `POST /v1/orders/{key}/release {"reason"?}` releases it to where it would
//! be. Both need an operator (or above); each is journaled as an event of source `operator`
//! whose `fields.operator` names who acted, so it shows in the order's timeline (`by`) and the
//! hold says who, why and since when. Answered `202 accepted` once durable.
//!
//! On a single node the order is checked first: unknown `404`, archived `410`, a hold of an order
//! that cannot be held (only `paid`…`packed` can) or is held already, or a release of one that
//! is not held, `409 conflict` naming its state. In cluster mode the check is the fold's (the
//! timeline records `conflict`/`not_held`).

use crate::AppState;
use crate::auth::Caller;
use crate::envelope::error_response;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use orderhub_actors::order::{EventAction, OPERATOR_SOURCE, OrderEvent, OrderState};
use std::sync::Arc;

/// Longest reason taken.
const MAX_REASON: usize = 500;

/// The body of a hold or release.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    /// Why (required for a hold).
    #[serde(default)]
    reason: Option<String>,
    /// The sinks whose syncs the hold keeps back (a hold only; absent: every sink).
    #[serde(default)]
    syncs: Option<Vec<String>>,
}

/// `POST /v1/orders/{key}/hold`.
pub(crate) async fn hold(
    State(app): State<Arc<AppState>>,
    Path(key): Path<String>,
    caller: Option<axum::Extension<Caller>>,
    body: axum::body::Bytes,
) -> Response {
    act(&app, key, caller, &body, Action::Hold).await
}

/// `POST /v1/orders/{key}/release`.
pub(crate) async fn release(
    State(app): State<Arc<AppState>>,
    Path(key): Path<String>,
    caller: Option<axum::Extension<Caller>>,
    body: axum::body::Bytes,
) -> Response {
    act(&app, key, caller, &body, Action::Release).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Hold,
    Release,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Hold => "hold",
            Action::Release => "release",
        }
    }
}

fn bad_request(message: String) -> Response {
    error_response(StatusCode::BAD_REQUEST, "bad_request", &message)
}

async fn act(
    app: &Arc<AppState>,
    key: String,
    caller: Option<axum::Extension<Caller>>,
    body: &[u8],
    action: Action,
) -> Response {
    let request: Request = if body.iter().all(u8::is_ascii_whitespace) {
        Request::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(request) => request,
            Err(err) => {
                return bad_request(format!("body: {err} (expected {{\"reason\": \"…\"}})"));
            }
        }
    };
    let reason = request
        .reason
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty());
    if action == Action::Hold && reason.is_none() {
        return bad_request("reason is required: say why the order is held".into());
    }
    if reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_REASON)
    {
        return bad_request(format!("reason is longer than {MAX_REASON} characters"));
    }
    if let Some(syncs) = &request.syncs {
        if action == Action::Release {
            return bad_request("syncs is for a hold: a release lets every held sync go".into());
        }
        if syncs.is_empty() {
            return bad_request(
                "syncs = []: name the sinks whose syncs wait, or leave syncs out (all)".into(),
            );
        }
        if let Some(unknown) = syncs
            .iter()
            .find(|sink| !app.config.sinks.iter().any(|s| &s.name == *sink))
        {
            return bad_request(format!("syncs: {unknown:?} is no configured sink"));
        }
    }
    if app.cluster.is_none() {
        let order = match super::load_order(app, &key).await {
            Ok(order) => order,
            Err(answer) => return answer,
        };
        let state = order.state.map_or("none", OrderState::as_str);
        let conflict = match (action, &order.hold) {
            (Action::Hold, Some(hold)) => Some(format!(
                "order {key:?} is on hold already (since {}, by {}, {})",
                hold.since,
                hold.by.as_deref().unwrap_or("?"),
                hold.reason.as_deref().unwrap_or("no reason")
            )),
            (Action::Hold, None) if !order.state.is_some_and(OrderState::can_hold) => Some(
                format!("order {key:?} is {state}: holds apply from paid to packed"),
            ),
            (Action::Release, None) => {
                Some(format!("order {key:?} is not on hold (it is {state})"))
            }
            _ => None,
        };
        if let Some(message) = conflict {
            return error_response(StatusCode::CONFLICT, "conflict", &message);
        }
    }
    let operator = caller.map_or_else(|| "unknown".to_owned(), |c| c.0.name.clone());
    let now = app.now_ms();
    let mut fields = serde_json::Map::new();
    fields.insert("operator".into(), operator.clone().into());
    if let Some(reason) = &reason {
        fields.insert("reason".into(), reason.clone().into());
    }
    if let Some(syncs) = &request.syncs {
        fields.insert("syncs".into(), syncs.clone().into());
    }
    let event = OrderEvent {
        order: key.clone(),
        source: OPERATOR_SOURCE.to_owned(),
        // Names the order: one operator holding several orders within a millisecond makes
        // as many events (a journal from before deduplication was per order, and JetStream's
        // message-id window, would keep only the first).
        source_event_id: format!("{}:{operator}:{now}@{key}", action.name()),
        supersedes: None,
        log_seq: None,
        raw_status: action.name().to_owned(),
        action: match action {
            Action::Hold => EventAction::Move {
                state: OrderState::OnHold,
            },
            Action::Release => EventAction::ReleaseHold,
        },
        occurred_at: now,
        received_at: now,
        fields: fields.into(),
    };
    if let Err(err) = crate::ingest::journal_events(app, OPERATOR_SOURCE, vec![event]).await {
        return err.into_response();
    }
    tracing::info!(order = %key, operator = %operator, action = action.name(), "operator action journaled");
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({
            "status": "accepted",
            "order": key,
            "action": action.name(),
            "by": operator,
            "reason": reason,
            "syncs": request.syncs,
        })),
    )
        .into_response()
}
