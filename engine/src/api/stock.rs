//! Stock: `GET /v1/stock` and `GET /v1/stock/{sku}` (viewer) show what can still be sold and
//! what is reserved; `PUT /v1/stock/{sku} {"available", "warehouse"?}` sets a record and
//! `PUT /v1/stock` with a CSV body (`sku,available[,warehouse]`, one record per line, a header
//! line allowed) sets many (operator). `available` is what can still be sold on top of the
//! paid orders that hold a reservation. Only SKUs with a record reserve (see the order's
//! `stock`); with `[stock]` not configured the routes answer `404 not_configured`.

use crate::AppState;
use crate::envelope::error_response;
use crate::journal::stock::{StockRecord, StockSetting};
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// The largest quantity taken.
const MAX_QTY: i64 = 1_000_000_000_000;
/// The longest SKU and warehouse taken.
const MAX_SKU: usize = 128;
const MAX_WAREHOUSE: usize = 64;
/// The most records one CSV sets.
const MAX_CSV_RECORDS: usize = 100_000;
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;

fn bad(message: String) -> Response {
    error_response(StatusCode::BAD_REQUEST, "bad_request", &message)
}

fn not_configured() -> Option<Response> {
    Some(error_response(
        StatusCode::NOT_FOUND,
        "not_configured",
        "stock reservation is off: add [stock] to the configuration (docs/operators.md)",
    ))
}

fn off(app: &AppState) -> Option<Response> {
    if app.config.stock.is_none() {
        not_configured()
    } else {
        None
    }
}

/// Checks a SKU, a warehouse and a quantity.
fn setting(sku: &str, warehouse: &str, available: i64) -> Result<StockSetting, String> {
    let sku = sku.trim();
    let warehouse = warehouse.trim();
    if sku.is_empty() || sku.chars().count() > MAX_SKU || sku.chars().any(char::is_control) {
        return Err(format!(
            "sku {sku:?}: 1 to {MAX_SKU} characters, no control characters"
        ));
    }
    if warehouse.chars().count() > MAX_WAREHOUSE || warehouse.chars().any(char::is_control) {
        return Err(format!(
            "warehouse {warehouse:?}: at most {MAX_WAREHOUSE} characters, no control characters"
        ));
    }
    if !(0..=MAX_QTY).contains(&available) {
        return Err(format!(
            "available {available}: a whole number from 0 to {MAX_QTY}"
        ));
    }
    Ok((sku.to_owned(), warehouse.to_owned(), available))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SetBody {
    available: i64,
    #[serde(default)]
    warehouse: Option<String>,
}

/// `PUT /v1/stock/{sku}`.
pub(crate) async fn put_one(
    State(app): State<Arc<AppState>>,
    Path(sku): Path<String>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    body: axum::body::Bytes,
) -> Response {
    let by = caller.map_or_else(|| "unknown".to_owned(), |c| c.0.name.clone());
    if let Some(answer) = off(&app) {
        return answer;
    }
    let body: SetBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(err) => {
            return bad(format!(
                "body: {err} (expected {{\"available\": 12, \"warehouse\"?: \"…\"}})"
            ));
        }
    };
    let setting = match setting(
        &sku,
        body.warehouse.as_deref().unwrap_or(""),
        body.available,
    ) {
        Ok(setting) => setting,
        Err(message) => return bad(message),
    };
    match app.journal.set_stock(vec![setting.clone()]).await {
        Ok(levels) => {
            let level = levels.first().copied().unwrap_or_default();
            tracing::info!(sku = %setting.0, warehouse = %setting.1, available = setting.2, operator = %by, "stock set");
            Json(StockRecord {
                sku: setting.0,
                warehouse: setting.1,
                available: level.available(),
                reserved: level.reserved,
                updated_at: app.now_ms(),
            })
            .into_response()
        }
        Err(err) => super::internal(err),
    }
}

/// `PUT /v1/stock` with `sku,available[,warehouse]` lines.
pub(crate) async fn put_csv(
    State(app): State<Arc<AppState>>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    body: axum::body::Bytes,
) -> Response {
    let by = caller.map_or_else(|| "unknown".to_owned(), |c| c.0.name.clone());
    if let Some(answer) = off(&app) {
        return answer;
    }
    let text = match std::str::from_utf8(&body) {
        Ok(text) => text,
        Err(err) => return bad(format!("body is not UTF-8 text: {err}")),
    };
    let mut settings = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim().trim_start_matches('\u{feff}');
        if line.is_empty() {
            continue;
        }
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if n == 0 && cells.first().is_some_and(|c| c.eq_ignore_ascii_case("sku")) {
            continue; // the header
        }
        let parsed = match cells.as_slice() {
            [sku, available] | [sku, available, ""] => available
                .parse::<i64>()
                .map_err(|e| format!("available {available:?}: {e}"))
                .and_then(|available| setting(sku, "", available)),
            [sku, available, warehouse] => available
                .parse::<i64>()
                .map_err(|e| format!("available {available:?}: {e}"))
                .and_then(|available| setting(sku, warehouse, available)),
            _ => Err(format!(
                "{} cells; expected sku,available[,warehouse]",
                cells.len()
            )),
        };
        match parsed {
            Ok(setting) => settings.push(setting),
            Err(message) => return bad(format!("line {}: {message}", n + 1)),
        }
        if settings.len() > MAX_CSV_RECORDS {
            return bad(format!("more than {MAX_CSV_RECORDS} records in one upload"));
        }
    }
    if settings.is_empty() {
        return bad("no records: send lines of sku,available[,warehouse]".into());
    }
    let count = settings.len();
    match app.journal.set_stock(settings).await {
        Ok(_) => {
            tracing::info!(records = count, operator = %by, "stock set from CSV");
            Json(serde_json::json!({ "updated": count })).into_response()
        }
        Err(err) => super::internal(err),
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<usize>,
}

/// `GET /v1/stock`.
pub(crate) async fn list(State(app): State<Arc<AppState>>, RawQuery(raw): RawQuery) -> Response {
    if let Some(answer) = off(&app) {
        return answer;
    }
    let query = match super::parse_query::<ListQuery>(raw.as_deref().unwrap_or_default()) {
        Ok(query) => query,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, "bad_query", &message),
    };
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    let journal = app.journal.clone();
    match tokio::task::spawn_blocking(move || journal.stock_records(None, limit)).await {
        Ok(Ok(records)) => Json(serde_json::json!({ "stock": records })).into_response(),
        Ok(Err(err)) => super::internal(err),
        Err(err) => super::internal(err),
    }
}

/// `GET /v1/stock/{sku}`: `{"sku","available","reserved"}` over its records, and each record
/// (per warehouse) in `records`.
pub(crate) async fn get_one(State(app): State<Arc<AppState>>, Path(sku): Path<String>) -> Response {
    if let Some(answer) = off(&app) {
        return answer;
    }
    let journal = app.journal.clone();
    let lookup = sku.clone();
    let records =
        match tokio::task::spawn_blocking(move || journal.stock_records(Some(&lookup), MAX_LIMIT))
            .await
        {
            Ok(Ok(records)) => records,
            Ok(Err(err)) => return super::internal(err),
            Err(err) => return super::internal(err),
        };
    if records.is_empty() {
        return error_response(
            StatusCode::NOT_FOUND,
            "unknown_sku",
            &format!(
                "no stock record for SKU {sku:?}: it is not tracked (its orders do not reserve)"
            ),
        );
    }
    Json(serde_json::json!({
        "sku": sku,
        "available": records.iter().map(|r| r.available).sum::<i64>(),
        "reserved": records.iter().map(|r| r.reserved).sum::<i64>(),
        "records": records,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::setting;

    #[test]
    fn settings_are_checked() {
        assert_eq!(
            setting(" A-1 ", "", 3),
            Ok(("A-1".to_owned(), String::new(), 3))
        );
        assert!(setting("", "", 1).is_err());
        assert!(setting("A", "", -1).is_err());
        assert!(setting("A\u{7}", "", 1).is_err());
        assert!(setting("A", &"w".repeat(65), 1).is_err());
    }
}
