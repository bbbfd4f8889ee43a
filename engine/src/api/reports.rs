//! Reports: `GET /v1/reports/reconciliation?date=YYYY-MM-DD[&format=csv]` (viewer) — the day's
//! reconciliation per channel and the orders needing a look (see `journal::reconcile`); days
//! are calendar days in `[reports] timezone` of hub time.

use crate::AppState;
use crate::envelope::error_response;
use crate::journal::reconcile::Day;
use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Query {
    date: String,
    format: Option<String>,
}

/// `GET /v1/reports/reconciliation`.
pub(crate) async fn reconciliation(
    State(app): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
) -> Response {
    let bad = |message: String| error_response(StatusCode::BAD_REQUEST, "bad_query", &message);
    let query = match super::parse_query::<Query>(raw.as_deref().unwrap_or_default()) {
        Ok(query) => query,
        Err(message) => {
            return bad(format!(
                "{message} (expected ?date=YYYY-MM-DD[&format=csv])"
            ));
        }
    };
    let csv = match query.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => return bad(format!("format {other:?}: json or csv")),
    };
    let day = match Day::parse(&query.date, &app.config.reports.timezone) {
        Ok(day) => day,
        Err(message) => return bad(message),
    };
    if app.cluster.is_some() {
        return error_response(
            StatusCode::NOT_IMPLEMENTED,
            "not_in_cluster_mode",
            "reconciliation reads one node's journal; in cluster mode it is not available yet",
        );
    }
    let (journal, policy) = (app.journal.clone(), app.policy.clone());
    match tokio::task::spawn_blocking(move || journal.reconcile(&policy, day)).await {
        Ok(Ok(report)) if csv => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                (
                    header::CONTENT_DISPOSITION,
                    format!(
                        "attachment; filename=\"reconciliation-{}.csv\"",
                        report.date
                    ),
                ),
            ],
            report.csv(),
        )
            .into_response(),
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(err)) => super::internal(err),
        Err(err) => super::internal(err),
    }
}
