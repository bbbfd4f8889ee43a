//! Pollers: every `every`, ask an order API for the orders changed in the window
//! `[cursor − overlap, now]`, page by page, and journal what pushes have not already told us.
//! This is JD's incremental source and any channel's fallback for missed pushes.
//!
//! - The cursor lives in the journal's meta table (`poll_cursor:NAME`) and advances only after
//!   the window's events are durably journaled and every item was taken; a crash or a refused
//!   item means the window is read again, which is harmless: a polled state an order already
//!   reached (by push or by an earlier poll; folded from its journaled events) is skipped, and a polled event's id
//!   (`poll:{order id}:{status}`) makes a repeat a duplicate.
//! - `jos` signing is JD JOS's (and Taobao TOP's): md5hex(secret + the sorted parameters'
//!   names and values concatenated + secret), uppercase, over `method, app_key, access_token,
//!   timestamp, v` and the business parameters as JSON in `param_json`. [?] JD's response
//!   shape: `items_path`, `order_path`, `status_path` and `updated_path` are configurable.

use super::registry::{self, Configured, Issue};

mod jd_details;
use super::{IngestError, SecretLookup, StatusTable};
use crate::AppState;
use crate::config::HumanDuration;
use metrics::{Counter, Gauge};
use orderhub_actors::order::{EventAction, Millis, Order, OrderEvent};
use orderhub_actors::telemetry as t;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How a poller signs its requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PollSign {
    /// JD JOS / Taobao TOP style: md5(secret + sorted name+value pairs + secret), uppercase.
    Jos,
    /// No signature (an internal API behind its own network controls).
    None,
    /// The channel's own signed client and token, as configured in its
    /// `[sources.CHANNEL.details]` (Douyin, Youzan, Kuaishou, WeChat, Pinduoduo, Taobao), with
    /// its quota: `method` is the channel's API method and the parameters are sent as its JSON.
    Channel,
}

/// How a poller writes the window's times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PollTimeFormat {
    /// `YYYY-MM-DD HH:MM:SS` in China time (UTC+8), as Chinese platforms' APIs take it.
    ChinaDatetime,
    /// Milliseconds since the epoch.
    UnixMs,
    /// Seconds since the epoch.
    UnixS,
}

/// `[pollers.NAME]`: a periodic "orders changed since the cursor" pull — an incremental polling
/// source (JD) or a fallback catching what a channel's pushes missed. The cursor is kept in
/// the journal; a polled state an order already reached (by push) is not journaled again.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PollerConfig {
    /// The reporting system the events carry (e.g. `jd`, or `douyin` for its fallback).
    pub(crate) source: String,
    /// The order key's prefix.
    pub(crate) channel: String,
    /// The API's URL (not used with `sign = "channel"`: the channel's gateway is).
    #[serde(default)]
    pub(crate) url: String,
    /// How often to poll.
    pub(crate) every: HumanDuration,
    /// How far before the cursor each window starts (late commits on the platform, clocks).
    pub(crate) overlap: HumanDuration,
    /// How far back the very first window reaches.
    pub(crate) lookback: HumanDuration,
    /// Request signing.
    pub(crate) sign: PollSign,
    /// Environment variable holding the app key (`jos`).
    #[serde(default)]
    pub(crate) app_key_env: Option<String>,
    /// Environment variable holding the app secret (`jos`).
    #[serde(default)]
    pub(crate) app_secret_env: Option<String>,
    /// Environment variable holding the seller's access token (`jos`, optional).
    #[serde(default)]
    pub(crate) access_token_env: Option<String>,
    /// The API method (`jos`: the `method` parameter).
    #[serde(default)]
    pub(crate) method: Option<String>,
    /// Put the business parameters as JSON into this one parameter (`360buy_param_json`);
    /// otherwise each is a query parameter.
    #[serde(default)]
    pub(crate) param_json: Option<String>,
    /// Fixed business parameters.
    #[serde(default)]
    pub(crate) params: BTreeMap<String, String>,
    /// Parameter names of the window's start and end.
    pub(crate) window_start_param: String,
    /// See `window_start_param`.
    pub(crate) window_end_param: String,
    /// How the window's times are written.
    pub(crate) time_format: PollTimeFormat,
    /// Parameter name of the page number (from 1).
    pub(crate) page_param: String,
    /// Parameter name of the page size.
    pub(crate) page_size_param: String,
    /// Orders per page.
    pub(crate) page_size: u32,
    /// The number of the first page (Douyin's `order.searchList` counts from 0).
    #[serde(default = "default_first_page")]
    pub(crate) first_page: u32,
    /// Cursor paging (Kuaishou, WeChat): the parameter that carries the cursor of the next
    /// page; with `next_cursor_path`, pages follow the cursor instead of `page_param`'s number.
    #[serde(default)]
    pub(crate) cursor_param: Option<String>,
    /// Pointer to the next page's cursor in a response (absent, empty, the same again or
    /// `nomore`: the window is read).
    #[serde(default)]
    pub(crate) next_cursor_path: Option<String>,
    /// JSON pointer to the array of orders in a response.
    pub(crate) items_path: String,
    /// Pointer to the order id within one.
    pub(crate) order_path: String,
    /// Pointer to its status.
    pub(crate) status_path: String,
    /// Pointer to its last-modified time (optional).
    #[serde(default)]
    pub(crate) updated_path: Option<String>,
    /// Status → canonical status.
    pub(crate) status_map: BTreeMap<String, String>,
    /// `[pollers.NAME.details]` (JD pollers, `channel = "jd"`): fetch each order's contents
    /// with `jingdong.pop.order.enGet`, signed with the poller's credentials.
    #[serde(default)]
    pub(crate) details: Option<super::details::DetailsConfig>,
}

fn default_first_page() -> u32 {
    1
}

/// Configures poller `name` from its `[pollers.NAME]` table (and its order details, if any).
pub(crate) fn configure(name: &str, table: toml::Value) -> Result<Vec<Configured>, Issue> {
    let path = format!("pollers.{name}");
    let config: PollerConfig = registry::parse(&path, table)?;
    validate(name, &config)?;
    registry::statuses(&format!("{path}.status_map"), &config.status_map)?;
    // Pollers are configured once per process: the source name lives as long as it does.
    let source: &'static str = Box::leak(config.source.clone().into_boxed_str());
    let mut configured = Vec::new();
    if let Some(table) = &config.details {
        configured.push(details_of(name, source, &config, table)?);
    }
    let name = name.to_owned();
    configured.insert(
        0,
        Configured::Task {
            name: source,
            start: Box::new(move |app, secrets| {
                let poller = build(&name, &config, secrets)?;
                tracing::info!(poller = %name, source = poller.source(), "poller started");
                Ok(tokio::spawn(Arc::new(poller).run(app.clone())))
            }),
        },
    );
    Ok(configured)
}

/// The order details of a JD poller, signed with its `jos` credentials.
fn details_of(
    name: &str,
    source: &'static str,
    config: &PollerConfig,
    table: &super::details::DetailsConfig,
) -> Result<Configured, Issue> {
    let key = format!("pollers.{name}.details");
    if config.channel != "jd" || config.sign != PollSign::Jos {
        return Err((
            key,
            "order details of a poller are JD's (channel = \"jd\", sign = \"jos\"); other channels take [sources.CHANNEL.details]".into(),
        ));
    }
    let credential = |field: &Option<String>, what: &str| {
        field.clone().ok_or_else(|| {
            (
                format!("pollers.{name}.{what}"),
                "is required for its order details".to_owned(),
            )
        })
    };
    let key_env = credential(&config.app_key_env, "app_key_env")?;
    let secret_env = credential(&config.app_secret_env, "app_secret_env")?;
    let token_env = credential(&config.access_token_env, "access_token_env")?;
    let api: &'static str = Box::leak(format!("{source}_api").into_boxed_str());
    super::details::configure(
        key,
        source,
        api,
        table,
        &jd_details::TAKES,
        jd_details::DEFAULT_RATE,
        &[],
        move |table, secrets, data_dir| {
            let credentials = (
                super::secret(secrets, &key_env)?,
                super::secret(secrets, &secret_env)?,
                super::secret(secrets, &token_env)?,
            );
            let client = jd_details::JdDetails::new(table, credentials, secrets, data_dir)?;
            Ok(Arc::new(client) as Arc<dyn super::details::DetailsClient>)
        },
    )
}

/// Pages read per window at most; a window with more is read again (the cursor stays).
const MAX_PAGES: u32 = 200;
/// The longest one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct Poller {
    name: String,
    source: &'static str,
    config: PollerConfig,
    app_key: Option<String>,
    app_secret: Option<String>,
    access_token: Option<String>,
    status_map: StatusTable,
    client: reqwest::Client,
    metrics: PollMetrics,
}

/// A poller's metric handles.
pub(crate) struct PollMetrics {
    pub(crate) runs_ok: Counter,
    pub(crate) runs_failed: Counter,
    pub(crate) journaled: Counter,
    known: Counter,
    pub(crate) refused: Counter,
    cursor_age: Gauge,
}

impl PollMetrics {
    pub(crate) fn new(source: &'static str) -> Self {
        let runs = |outcome: &'static str| metrics::counter!(t::POLL_RUNS, "source" => source, "outcome" => outcome);
        let items = |outcome: &'static str| metrics::counter!(t::POLL_ITEMS, "source" => source, "outcome" => outcome);
        PollMetrics {
            runs_ok: runs("ok"),
            runs_failed: runs("failed"),
            journaled: items("journaled"),
            known: items("known"),
            refused: items("refused"),
            cursor_age: metrics::gauge!(t::POLL_CURSOR_AGE, "source" => source),
        }
    }
}

/// Builds poller `name`; `Err` names a missing credential variable.
pub(crate) fn build(
    name: &str,
    config: &PollerConfig,
    secrets: &SecretLookup,
) -> Result<Poller, String> {
    let source: &'static str = Box::leak(config.source.clone().into_boxed_str());
    let metrics = PollMetrics::new(source);
    let read = |variable: &Option<String>| -> Result<Option<String>, String> {
        variable
            .as_deref()
            .map(|v| super::secret(secrets, v))
            .transpose()
    };
    let (app_key, app_secret) = (read(&config.app_key_env)?, read(&config.app_secret_env)?);
    let access_token = match &config.access_token_env {
        Some(variable) => secrets(variable).filter(|t| !t.is_empty()),
        None => None,
    };
    let client = crate::http_client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    Ok(Poller {
        name: name.to_owned(),
        source,
        status_map: StatusTable::new(&config.status_map),
        config: config.clone(),
        app_key,
        app_secret,
        access_token,
        client,
        metrics,
    })
}

/// Checks a poller's settings; the error names the offending key.
pub(crate) fn validate(name: &str, config: &PollerConfig) -> Result<(), (String, String)> {
    let key = |field: &str| format!("pollers.{name}.{field}");
    if config.sign == PollSign::Jos {
        for (field, value) in [
            ("app_key_env", &config.app_key_env),
            ("app_secret_env", &config.app_secret_env),
            ("method", &config.method),
        ] {
            if value.is_none() {
                return Err((key(field), "required when sign = \"jos\"".into()));
            }
        }
    }
    match config.sign {
        PollSign::Channel => {
            if config.method.is_none() {
                return Err((key("method"), "required when sign = \"channel\"".into()));
            }
            for (field, set) in [
                ("url", !config.url.is_empty()),
                ("app_key_env", config.app_key_env.is_some()),
                ("app_secret_env", config.app_secret_env.is_some()),
                ("access_token_env", config.access_token_env.is_some()),
                ("param_json", config.param_json.is_some()),
            ] {
                if set {
                    return Err((
                        key(field),
                        "not used with sign = \"channel\" (the channel's own client signs, with its [sources.CHANNEL.details] credentials)".into(),
                    ));
                }
            }
        }
        _ if config.url.is_empty() => {
            return Err((key("url"), "required (the API's URL)".into()));
        }
        _ => {}
    }
    if config.cursor_param.is_some() != config.next_cursor_path.is_some() {
        return Err((
            key("cursor_param"),
            "cursor paging needs both cursor_param and next_cursor_path".into(),
        ));
    }
    if config.every.0 < Duration::from_millis(100) {
        return Err((key("every"), "at least 100ms".into()));
    }
    if config.page_size == 0 {
        return Err((key("page_size"), "at least 1".into()));
    }
    if config.channel.is_empty() || config.channel.contains(':') {
        return Err((key("channel"), "a channel name without ':'".into()));
    }
    for (field, pointer) in [
        ("items_path", Some(&config.items_path)),
        ("order_path", Some(&config.order_path)),
        ("status_path", Some(&config.status_path)),
        ("updated_path", config.updated_path.as_ref()),
        ("next_cursor_path", config.next_cursor_path.as_ref()),
    ] {
        if let Some(pointer) = pointer
            && !pointer.starts_with('/')
        {
            return Err((
                key(field),
                format!("{pointer:?} is not a JSON pointer (it starts with '/')"),
            ));
        }
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS` in China time.
pub(crate) fn china_datetime(ms: Millis) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .to_offset(time::UtcOffset::from_hms(8, 0, 0).expect("valid offset"));
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// JOS's signature of `params` (TOP's scheme).
pub(crate) fn jos_sign(params: &BTreeMap<String, String>, secret: &str) -> String {
    crate::signing::top_sign(params.iter().map(|(k, v)| (k.as_str(), v.as_str())), secret)
}

/// A scalar at `pointer` as text.
fn text_at(value: &Value, pointer: &str) -> Option<String> {
    match value.pointer(pointer)? {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// What one window's read found.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct WindowItems {
    /// Events to journal.
    pub(crate) events: Vec<OrderEvent>,
    /// Items that cannot be read (no order id or no status).
    pub(crate) refused: usize,
}

impl Poller {
    fn format_time(&self, ms: Millis) -> String {
        match self.config.time_format {
            PollTimeFormat::ChinaDatetime => china_datetime(ms),
            PollTimeFormat::UnixMs => ms.to_string(),
            PollTimeFormat::UnixS => (ms / 1000).to_string(),
        }
    }

    /// The query parameters of page `page` (or the page at `cursor`) of the window
    /// `[start, end]` at `now`.
    pub(crate) fn request_params(
        &self,
        start: Millis,
        end: Millis,
        page: u32,
        cursor: Option<&str>,
        now: Millis,
    ) -> BTreeMap<String, String> {
        let business = self.business_params(start, end, page, cursor);
        let mut params = match &self.config.param_json {
            Some(name) => BTreeMap::from([(
                name.clone(),
                serde_json::to_string(&business).expect("strings serialize"),
            )]),
            None => business,
        };
        if self.config.sign == PollSign::Jos {
            if let Some(method) = &self.config.method {
                params.insert("method".into(), method.clone());
            }
            if let Some(app_key) = &self.app_key {
                params.insert("app_key".into(), app_key.clone());
            }
            if let Some(token) = &self.access_token {
                params.insert("access_token".into(), token.clone());
            }
            params.insert("timestamp".into(), china_datetime(now));
            params.insert("v".into(), "2.0".into());
            let sign = jos_sign(&params, self.app_secret.as_deref().unwrap_or_default());
            params.insert("sign".into(), sign);
        }
        params
    }

    /// The business parameters of a page: the fixed ones, the window, the page (its number,
    /// or its cursor with cursor paging) and its size.
    fn business_params(
        &self,
        start: Millis,
        end: Millis,
        page: u32,
        cursor: Option<&str>,
    ) -> BTreeMap<String, String> {
        let mut business = self.config.params.clone();
        business.insert(
            self.config.window_start_param.clone(),
            self.format_time(start),
        );
        business.insert(self.config.window_end_param.clone(), self.format_time(end));
        match (&self.config.cursor_param, cursor) {
            (Some(name), Some(cursor)) => {
                business.insert(name.clone(), cursor.to_owned());
            }
            (Some(_), None) => {}
            (None, _) => {
                let number = self.config.first_page + page - 1;
                business.insert(self.config.page_param.clone(), number.to_string());
            }
        }
        business.insert(
            self.config.page_size_param.clone(),
            self.config.page_size.to_string(),
        );
        business
    }

    /// The business parameters as the JSON a channel's client sends: a dotted name nests
    /// (`update_time_range.start_time`), a number stays a number.
    fn channel_params(&self, business: BTreeMap<String, String>) -> Map<String, Value> {
        let mut root = Map::new();
        for (name, text) in business {
            let value = match text.parse::<i64>() {
                Ok(number) if !text.starts_with('0') || text == "0" => Value::from(number),
                _ => Value::String(text),
            };
            let mut parts: Vec<&str> = name.split('.').collect();
            let leaf = parts.pop().unwrap_or_default().to_owned();
            let mut node = &mut root;
            for part in parts {
                let entry = node
                    .entry(part.to_owned())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                node = entry.as_object_mut().expect("made an object above");
            }
            node.insert(leaf, value);
        }
        root
    }

    /// The next page's cursor in `response`, if there is a next page.
    fn next_cursor(&self, response: &Value, current: Option<&str>) -> Option<String> {
        let next = text_at(response, self.config.next_cursor_path.as_deref()?)?;
        (next != "nomore" && Some(next.as_str()) != current).then_some(next)
    }

    /// Maps one response's items; `is_known(order, state)` says whether the order already
    /// reached that state.
    pub(crate) fn map_items(
        &self,
        response: &Value,
        now: Millis,
        is_known: &dyn Fn(&str, &EventAction) -> bool,
    ) -> Result<(WindowItems, usize), IngestError> {
        let Some(Value::Array(items)) = response.pointer(&self.config.items_path) else {
            let excerpt: String = response.to_string().chars().take(300).collect();
            return Err(IngestError::Malformed(format!(
                "no array at {} in {excerpt}",
                self.config.items_path
            )));
        };
        let mut found = WindowItems::default();
        for item in items {
            let (Some(order_id), Some(status)) = (
                text_at(item, &self.config.order_path),
                text_at(item, &self.config.status_path),
            ) else {
                found.refused += 1;
                continue;
            };
            // A status the table does not know is journaled as unmapped (its event id makes a
            // re-read a duplicate), never a reason to read the window again forever.
            let action = self.status_map.map(&status);
            let order = format!("{}:{order_id}", self.config.channel);
            if is_known(&order, &action) {
                self.metrics.known.increment(1);
                continue;
            }
            let updated = self
                .config
                .updated_path
                .as_deref()
                .and_then(|p| item.pointer(p))
                .and_then(|v| match v {
                    Value::Number(n) => n.as_i64(),
                    Value::String(text) => parse_china_datetime(text),
                    _ => None,
                });
            let mut fields = Map::new();
            fields.insert("polled_by".into(), Value::String(self.name.clone()));
            found.events.push(OrderEvent {
                order,
                source: self.source.to_owned(),
                source_event_id: format!("poll:{order_id}:{status}"),
                supersedes: None,
                log_seq: None,
                raw_status: status,
                action,
                occurred_at: updated.unwrap_or(now),
                received_at: now,
                fields: fields.into(),
            });
        }
        Ok((found, items.len()))
    }

    async fn fetch(&self, params: &BTreeMap<String, String>) -> Result<Value, String> {
        let url = reqwest::Url::parse_with_params(&self.config.url, params)
            .map_err(|e| format!("url {}: {e}", self.config.url))?;
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| format!("body: {e}"))?;
        if !status.is_success() {
            let excerpt = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            return Err(format!("HTTP {status}: {excerpt}"));
        }
        super::decode_json(&body).map_err(|e| format!("response is not JSON: {e}"))
    }

    /// Reads one window and journals what is new; the new cursor if it may advance.
    async fn run_once(self: &Arc<Self>, app: &Arc<AppState>) -> Result<Option<Millis>, String> {
        let cursor_key = format!("poll_cursor:{}", self.name);
        let journal = app.journal.clone();
        let key = cursor_key.clone();
        let cursor = tokio::task::spawn_blocking(move || journal.meta(&key))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let now = app.now_ms();
        let start = match cursor {
            Some(cursor) => cursor - self.config.overlap.0.as_millis() as Millis,
            None => now - self.config.lookback.0.as_millis() as Millis,
        };
        let mut complete = true;
        let mut cursor: Option<String> = None;
        for page in 1..=MAX_PAGES {
            let response = match self.config.sign {
                PollSign::Channel => {
                    let api = app.channel_apis.get(self.config.channel.as_str()).ok_or_else(|| {
                        format!(
                            "sign = \"channel\" needs the channel's signed client: [sources.{}.details] is not configured or its credentials are missing",
                            self.config.channel
                        )
                    })?;
                    let method = self.config.method.as_deref().unwrap_or_default();
                    let params = self.channel_params(self.business_params(
                        start,
                        now,
                        page,
                        cursor.as_deref(),
                    ));
                    api.call(method, params).await.map_err(|e| e.to_string())?
                }
                _ => {
                    let params =
                        self.request_params(start, now, page, cursor.as_deref(), app.now_ms());
                    self.fetch(&params).await?
                }
            };
            let next = self.next_cursor(&response, cursor.as_deref());
            // Whether the order already reached the polled state, from its journaled events
            // (the index is written behind and could miss a push committed a moment ago).
            let journal = app.journal.clone();
            let policy = app.policy.clone();
            let is_known = move |order: &str, action: &EventAction| match action {
                EventAction::Move { state } => match journal.events_of(order) {
                    Ok(events) if !events.is_empty() => Order::replay(order, &events, &policy)
                        .state
                        .is_some_and(|current| current == *state || state.reaches(current)),
                    _ => false,
                },
                _ => false,
            };
            let poller = self.clone();
            let now = app.now_ms();
            let (found, count) =
                tokio::task::spawn_blocking(move || poller.map_items(&response, now, &is_known))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
            if found.refused > 0 {
                self.metrics.refused.increment(found.refused as u64);
                complete = false;
            }
            let journaled = found.events.len() as u64;
            super::journal_events(app, self.source, found.events)
                .await
                .map_err(|e| format!("journal: {e}"))?;
            self.metrics.journaled.increment(journaled);
            let last = match &self.config.cursor_param {
                Some(_) => next.is_none(),
                None => count < self.config.page_size as usize,
            };
            if last {
                return Ok(complete.then_some(now));
            }
            cursor = next;
        }
        tracing::warn!(poller = %self.name, pages = MAX_PAGES, "window has more pages than read; it will be read again");
        Ok(None)
    }

    /// Polls until the task is dropped.
    pub(crate) async fn run(self: Arc<Self>, app: Arc<AppState>) {
        let mut tick = tokio::time::interval(self.config.every.0);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let cursor_key = format!("poll_cursor:{}", self.name);
        let mut last_cursor: Option<Millis> = app.journal.meta(&cursor_key).ok().flatten();
        loop {
            tick.tick().await;
            match self.run_once(&app).await {
                Ok(advance) => {
                    self.metrics.runs_ok.increment(1);
                    if let Some(cursor) = advance {
                        if let Err(err) = app.journal.set_meta(&cursor_key, cursor) {
                            tracing::warn!(poller = %self.name, error = %err, "cannot store the cursor");
                        }
                        last_cursor = Some(cursor);
                    }
                }
                Err(error) => {
                    self.metrics.runs_failed.increment(1);
                    tracing::warn!(poller = %self.name, %error, "poll failed; the window will be read again");
                }
            }
            if let Some(cursor) = last_cursor {
                self.metrics
                    .cursor_age
                    .set((app.now_ms() - cursor).max(0) as f64 / 1000.0);
            }
        }
    }

    /// The source name (for metric registration).
    pub(crate) fn source(&self) -> &'static str {
        self.source
    }
}

/// `YYYY-MM-DD HH:MM:SS` in China time, as milliseconds.
pub(crate) fn parse_china_datetime(text: &str) -> Option<Millis> {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let local = time::PrimitiveDateTime::parse(text.trim(), format).ok()?;
    let offset = time::UtcOffset::from_hms(8, 0, 0).ok()?;
    Some((local.assume_offset(offset).unix_timestamp_nanos() / 1_000_000) as Millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderhub_actors::order::OrderState;
    use std::sync::Arc;

    fn poller() -> Poller {
        let config = crate::config::Config::layered(Some((
            "jd.toml".into(),
            include_str!("../../tests/fixtures/jd/poller.toml")
                .replace("URL", "http://127.0.0.1:9"),
        )))
        .unwrap();
        let secrets: SecretLookup = Arc::new(|name: &str| match name {
            "ORDERHUB_JD_APP_KEY" => Some("jd-key".into()),
            "ORDERHUB_JD_APP_SECRET" => Some("jd-secret".into()),
            _ => None,
        });
        let jd: PollerConfig = registry::parse("pollers.jd", config.pollers["jd"].clone()).unwrap();
        build("jd", &jd, &secrets).unwrap()
    }

    #[test]
    fn jos_requests_are_signed_over_sorted_parameters() {
        // Worked value from Python: md5("s" + "a1b2" + "s").upper().
        let params = BTreeMap::from([
            ("b".to_owned(), "2".to_owned()),
            ("a".to_owned(), "1".to_owned()),
        ]);
        assert_eq!(jos_sign(&params, "s"), "5EE29085AF57D942F21F1C5BA3C2A90A");
        let poller = poller();
        // 2023-11-14 22:13:20 UTC is 2023-11-15 06:13:20 in China.
        let params = poller.request_params(
            1_700_000_000_000,
            1_700_000_600_000,
            2,
            None,
            1_700_000_700_000,
        );
        assert_eq!(params["method"], "jingdong.pop.order.search");
        assert_eq!(params["timestamp"], "2023-11-15 06:25:00");
        let business: Value = serde_json::from_str(&params["360buy_param_json"]).unwrap();
        assert_eq!(business["start_date"], "2023-11-15 06:13:20");
        assert_eq!(business["end_date"], "2023-11-15 06:23:20");
        assert_eq!(business["page"], "2");
        let mut unsigned = params.clone();
        let sign = unsigned.remove("sign").unwrap();
        assert_eq!(sign, jos_sign(&unsigned, "jd-secret"));
    }

    #[test]
    fn items_map_skip_what_is_known_and_record_an_unknown_state_unmapped() {
        let response: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/jd/page1.json")).unwrap();
        let known = |order: &str, _: &EventAction| order == "jd:30003";
        let (found, count) = poller().map_items(&response, 7, &known).unwrap();
        assert_eq!(count, 4);
        assert_eq!(found.refused, 0);
        assert_eq!(found.events.len(), 3);
        let unknown = &found.events[2];
        assert_eq!(unknown.raw_status, "SEND_TO_DISTRIBUTION_CENER");
        assert_eq!(unknown.action, EventAction::Unmapped);
        assert_eq!(found.events[0].order, "jd:30001");
        assert_eq!(
            found.events[0].source_event_id,
            "poll:30001:WAIT_SELLER_STOCK_OUT"
        );
        assert_eq!(
            found.events[0].action,
            EventAction::Move {
                state: OrderState::Paid
            }
        );
        assert_eq!(found.events[0].occurred_at, 1_700_000_000_000);
        assert!(
            poller()
                .map_items(
                    &serde_json::json!({"error_response": {"code": "19"}}),
                    7,
                    &known
                )
                .is_err()
        );
    }
}
