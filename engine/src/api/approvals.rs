//! Approvals: `GET /v1/approvals?state=open|approved|rejected|expired[&order=KEY][&limit=N]`
//! (viewer) lists them, soonest deadline first; `POST /v1/approvals/{id}/approve` and
//! `/reject` with an optional `{"comment"}` decide (the flow's role or above).
//!
//! A decision is journaled as an event of source `operator` (the timeline names who) and folded
//! by the order like any report, so it survives kill -9 and a replay decides the same. The
//! answer waits for the fold: `200` with the approval as it now stands, or `409 conflict` when
//! the operator decided it already or it was decided (by people or its deadline). Decisions on
//! one approval are taken one at a time, so two at once by the same operator count once and
//! the second is told so.

use crate::AppState;
use crate::auth::Caller;
use crate::config::Role;
use crate::envelope::error_response;
use crate::journal::AppendOutcome;
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use orderhub_actors::order::{
    Approval, ApprovalState, EventAction, OPERATOR_SOURCE, Order, OrderEvent, Outcome, Verdict,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest comment taken.
const MAX_COMMENT: usize = 500;
/// Default and largest `limit`.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// One lock per approval being decided: decisions on one approval are taken one at a time.
#[derive(Default)]
pub(crate) struct Deciding(dashmap::DashMap<String, Arc<tokio::sync::Mutex<()>>>);

impl Deciding {
    fn lock_for(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.0.entry(id.to_owned()).or_default().clone()
    }

    /// Forgets `id`'s lock when nobody else holds or waits for it.
    fn release(&self, id: &str, lock: Arc<tokio::sync::Mutex<()>>) {
        drop(lock);
        self.0.remove_if(id, |_, lock| Arc::strong_count(lock) == 1);
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    order: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/approvals`.
pub(crate) async fn list(State(app): State<Arc<AppState>>, RawQuery(raw): RawQuery) -> Response {
    let bad = |message: String| error_response(StatusCode::BAD_REQUEST, "bad_query", &message);
    let query = match super::parse_query::<ListQuery>(raw.as_deref().unwrap_or_default()) {
        Ok(query) => query,
        Err(message) => return bad(message),
    };
    let state = match query.state.as_deref().map(str::parse::<ApprovalState>) {
        None => None,
        Some(Ok(state)) => Some(state),
        Some(Err(message)) => return bad(format!("state: {message}")),
    };
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    let journal = app.journal.clone();
    let order = query.order;
    match tokio::task::spawn_blocking(move || journal.approvals(state, order.as_deref(), limit))
        .await
    {
        Ok(Ok(approvals)) => Json(serde_json::json!({ "approvals": approvals })).into_response(),
        Ok(Err(err)) => super::internal(err),
        Err(err) => super::internal(err),
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    #[serde(default)]
    comment: Option<String>,
}

/// `POST /v1/approvals/{id}/approve`.
pub(crate) async fn approve(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    caller: Option<axum::Extension<Caller>>,
    body: axum::body::Bytes,
) -> Response {
    decide(&app, id, caller.map(|c| c.0), &body, Verdict::Approve).await
}

/// `POST /v1/approvals/{id}/reject`.
pub(crate) async fn reject(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    caller: Option<axum::Extension<Caller>>,
    body: axum::body::Bytes,
) -> Response {
    decide(&app, id, caller.map(|c| c.0), &body, Verdict::Reject).await
}

/// The order an approval id names: ids are `{order}:{flow}:{seq}`.
fn order_of(id: &str) -> Option<&str> {
    let mut parts = id.rsplitn(3, ':');
    let seq = parts.next()?;
    let flow = parts.next()?;
    let order = parts.next()?;
    (!seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()) && !flow.is_empty())
        .then_some(order)
}

fn conflict(message: String) -> Response {
    error_response(StatusCode::CONFLICT, "conflict", &message)
}

async fn decide(
    app: &Arc<AppState>,
    id: String,
    caller: Option<Caller>,
    body: &[u8],
    verdict: Verdict,
) -> Response {
    let bad = |message: String| error_response(StatusCode::BAD_REQUEST, "bad_request", &message);
    let request: DecisionBody = if body.iter().all(u8::is_ascii_whitespace) {
        DecisionBody::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(request) => request,
            Err(err) => return bad(format!("body: {err} (expected {{\"comment\": \"…\"}})")),
        }
    };
    let comment = request
        .comment
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty());
    if comment
        .as_ref()
        .is_some_and(|c| c.chars().count() > MAX_COMMENT)
    {
        return bad(format!("comment is longer than {MAX_COMMENT} characters"));
    }
    let not_found = || {
        error_response(
            StatusCode::NOT_FOUND,
            "unknown_approval",
            &format!("no approval {id:?}"),
        )
    };
    let Some(key) = order_of(&id).map(str::to_owned) else {
        return not_found();
    };
    let Some(caller) = caller else {
        return error_response(
            StatusCode::FORBIDDEN,
            "forbidden",
            "deciding an approval needs an operator's token",
        );
    };
    let lock = app.deciding.lock_for(&id);
    let answer = {
        let _turn = lock.lock().await;
        decide_in_turn(app, &id, &key, &caller, comment, verdict).await
    };
    app.deciding.release(&id, lock);
    answer.unwrap_or_else(|answer| answer)
}

/// Checks, journals and waits for the fold, holding the approval's turn.
async fn decide_in_turn(
    app: &Arc<AppState>,
    id: &str,
    key: &str,
    caller: &Caller,
    comment: Option<String>,
    verdict: Verdict,
) -> Result<Response, Response> {
    let order = match super::load_order(app, key).await {
        Ok(order) => order,
        Err(answer) if answer.status() == StatusCode::NOT_FOUND => {
            return Err(error_response(
                StatusCode::NOT_FOUND,
                "unknown_approval",
                &format!("no approval {id:?}"),
            ));
        }
        Err(answer) => return Err(answer),
    };
    let Some(approval) = order.approvals.iter().find(|a| a.id == id) else {
        return Err(error_response(
            StatusCode::NOT_FOUND,
            "unknown_approval",
            &format!("no approval {id:?}"),
        ));
    };
    // The role the approval opened with; the flow's own if that is unreadable.
    let needed = approval
        .role
        .parse::<Role>()
        .ok()
        .or_else(|| app.config.approval_role(&approval.name))
        .unwrap_or(Role::Admin);
    if caller.role.is_none_or(|role| role < needed) {
        return Err(error_response(
            StatusCode::FORBIDDEN,
            "forbidden",
            &format!(
                "operator {} has role {}; approval {} needs {} or above",
                caller.name,
                caller.role.map_or("caller without a role", Role::as_str),
                approval.name,
                needed.as_str()
            ),
        ));
    }
    if let Some(why) = refusal(approval, &caller.name) {
        return Err(conflict(why));
    }
    let now = app.now_ms();
    let mut fields = serde_json::Map::new();
    fields.insert("operator".into(), caller.name.clone().into());
    let event = OrderEvent {
        order: key.to_owned(),
        source: OPERATOR_SOURCE.to_owned(),
        source_event_id: format!("{}:{id}:{}:{now}", verdict.as_str(), caller.name),
        supersedes: None,
        log_seq: None,
        raw_status: verdict.as_str().to_owned(),
        action: EventAction::Decide {
            approval: id.to_owned(),
            decision: verdict,
            comment,
        },
        occurred_at: now,
        received_at: now,
        fields: fields.into(),
    };
    // A person's decision is never held back by a sync backlog: it goes straight to the log.
    let seq = match app.append(vec![event]).await {
        Ok(outcomes) => match outcomes.first() {
            Some(AppendOutcome::Appended(seq)) => *seq,
            _ => {
                return Err(conflict(format!(
                    "approval {id}: the same decision was just taken"
                )));
            }
        },
        Err(err) => {
            tracing::error!(error = %err, approval = %id, "cannot journal a decision");
            return Err(error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                &err.to_string(),
            ));
        }
    };
    tracing::info!(approval = %id, operator = %caller.name, decision = verdict.as_str(), "decision journaled");
    let folded = applied(app, key, seq).await;
    let Some(order) = folded else {
        // Durable, not folded yet (actors behind): it will count as the fold decides.
        return Ok((
            StatusCode::ACCEPTED,
            Json(serde_json::json!({
                "status": "accepted",
                "approval": id,
                "decision": verdict.as_str(),
                "by": caller.name,
            })),
        )
            .into_response());
    };
    let entry = order.timeline.iter().find(|e| e.seq == seq);
    if let Some(Outcome::NotDecided { reason, .. }) = entry.map(|e| &e.outcome) {
        return Err(conflict(format!(
            "approval {id} was not decided by this: {reason}"
        )));
    }
    let approval = order.approvals.iter().find(|a| a.id == id);
    Ok(Json(serde_json::json!({
        "status": "decided",
        "decision": verdict.as_str(),
        "by": caller.name,
        "approval": approval,
        "order_state": order.state,
    }))
    .into_response())
}

/// Why `operator` may not decide `approval`, if they may not.
fn refusal(approval: &Approval, operator: &str) -> Option<String> {
    if !approval.decidable() {
        let when = approval
            .closed_at
            .map_or_else(String::new, |at| format!(" at {at}"));
        let by = approval
            .decisions
            .iter()
            .map(|d| format!("{} ({})", d.operator, d.decision.as_str()))
            .collect::<Vec<_>>();
        return Some(format!(
            "approval {} is {} already{when}{}",
            approval.id,
            approval.state.as_str(),
            if by.is_empty() {
                " (by its deadline)".to_owned()
            } else {
                format!(": {}", by.join(", "))
            }
        ));
    }
    approval
        .decisions
        .iter()
        .find(|d| d.operator == operator)
        .map(|d| {
            format!(
                "{operator} decided approval {} already ({}, at {}); one operator counts once",
                approval.id,
                d.decision.as_str(),
                d.at
            )
        })
}

/// The order once its actor folded journal sequence `seq` (bounded by the query timeout).
async fn applied(app: &Arc<AppState>, key: &str, seq: u64) -> Option<Order> {
    let deadline = Instant::now() + app.config.server.query_timeout.0;
    loop {
        if let Ok(order) = super::load_order(app, key).await
            && order.applied_seq >= seq
        {
            return Some(order);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::order_of;

    #[test]
    fn an_approval_id_names_its_order() {
        assert_eq!(order_of("douyin:4987:intercept:12"), Some("douyin:4987"));
        assert_eq!(order_of("events:a:b:c:intercept:7"), Some("events:a:b:c"));
        assert_eq!(order_of("douyin:4987:intercept:x"), None);
        assert_eq!(order_of("intercept:7"), None);
        assert_eq!(order_of(""), None);
    }
}
