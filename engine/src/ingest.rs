//! HTTP ingest: every source's push goes through one pipeline — body limit, signature check on
//! the raw bytes, decode (simd-json), map to canonical events, durable journal append — and is
//! answered in the source's own ack format. Bad input gets a JSON error naming the problem, is
//! counted, and stores nothing.
//!
//! One file per source adapter: `douyin`, `youzan`, `kuaishou`, `wechat`, `sf` (courier),
//! `generic` (configurable JSON), `events` (canonical events, Standard Webhooks); the engine's
//! own clients of connection-based channels: `pdd`, `tmc` (over `connection`); pollers: `wdt`
//! (WMS shipments), `poll` (JD, fallbacks).

pub(crate) mod cipher;
pub(crate) mod connection;
pub(crate) mod details;
pub(crate) mod douyin;
pub(crate) mod events;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod generic;
pub(crate) mod kuaishou;
pub(crate) mod pdd;
pub(crate) mod poll;
pub(crate) mod registry;
pub(crate) mod rejections;
pub(crate) mod sf;
pub(crate) mod tmc;
pub(crate) mod wdt;
pub(crate) mod wechat;
pub(crate) mod youzan;

use crate::AppState;
use crate::envelope::error_response;
use crate::journal::{AppendOutcome, JournalError};
pub(crate) use crate::secrets::{SecretLookup, secret};
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt as _;
use orderhub_actors::order::{EventAction, Millis, OrderEvent, OrderState};
use orderhub_actors::telemetry as t;
pub use registry::Sources;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

/// Parses a canonical status: a state name, `hold_released`, or `none` (informational).
pub fn parse_status(status: &str) -> Option<EventAction> {
    match status {
        "hold_released" => Some(EventAction::ReleaseHold),
        "none" => Some(EventAction::Inform),
        other => other
            .parse::<OrderState>()
            .ok()
            .map(|state| EventAction::Move { state }),
    }
}

/// A source's status table as configured (raw status → canonical status name), parsed. A key
/// ending in `*` matches by prefix; exact keys are tried first. Entries that do not parse were
/// refused by config validation.
pub(crate) struct StatusTable {
    exact: HashMap<String, EventAction>,
    prefixes: Vec<(String, EventAction)>,
}

impl StatusTable {
    pub(crate) fn new(table: &std::collections::BTreeMap<String, String>) -> Self {
        let mut exact = HashMap::new();
        let mut prefixes = Vec::new();
        for (raw, status) in table {
            let Some(action) = parse_status(status) else {
                continue;
            };
            match raw.strip_suffix('*') {
                Some(prefix) => prefixes.push((prefix.to_owned(), action)),
                None => {
                    exact.insert(raw.clone(), action);
                }
            }
        }
        // Longest prefix first.
        prefixes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        StatusTable { exact, prefixes }
    }

    /// What `raw` means, or [`EventAction::Unmapped`] when the table does not know it.
    pub(crate) fn map(&self, raw: &str) -> EventAction {
        self.get(raw).cloned().unwrap_or(EventAction::Unmapped)
    }

    pub(crate) fn get(&self, raw: &str) -> Option<&EventAction> {
        self.exact.get(raw).or_else(|| {
            self.prefixes
                .iter()
                .find(|(prefix, _)| raw.starts_with(prefix.as_str()))
                .map(|(_, action)| action)
        })
    }
}

/// An id or tag a platform sends as a string or a number.
#[derive(serde::Deserialize)]
#[serde(untagged)]
pub(crate) enum Scalar {
    Text(String),
    Number(u64),
}

impl Scalar {
    pub(crate) fn into_string(self) -> String {
        match self {
            Scalar::Text(text) => text,
            Scalar::Number(n) => n.to_string(),
        }
    }
}

/// Why an ingest request was refused. Nothing of a refused request is stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// No source of that name is configured.
    #[error("unknown source {0:?}")]
    UnknownSource(String),
    /// The source is configured but cannot verify requests.
    #[error("source {origin} is unavailable: {reason}")]
    SourceUnavailable {
        /// The source.
        origin: &'static str,
        /// Why (names the missing environment variable).
        reason: String,
    },
    /// The body is larger than allowed.
    #[error("body exceeds {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The signature is missing or wrong.
    #[error("signature rejected: {0}")]
    BadSignature(String),
    /// The body is not what the source sends.
    #[error("malformed body: {0}")]
    Malformed(String),
    /// The route needs the source's secret path segment (`/v1/ingest/{source}/{token}`).
    #[error("{0}")]
    NoSuchRoute(String),
    /// A request that was already accepted, or is too old to tell (replay protection).
    #[error("request refused: {0}")]
    Replayed(String),
    /// The handler panicked: a bug, answered 500; the engine stays up.
    #[error("internal error while handling the request")]
    Panicked,
    /// The engine is saturated; the sender should retry after the given seconds.
    #[error("engine is saturated ({0}); retry later")]
    Throttled(&'static str),
    /// The engine is shutting down.
    #[error("engine is shutting down")]
    ShuttingDown,
    /// The journal failed to store the events.
    #[error("events were not stored: {0}")]
    Journal(String),
}

/// How long a throttled sender is asked to wait.
const RETRY_AFTER_SECONDS: &str = "1";

impl IngestError {
    /// A short label: the error code in the response and the `outcome` metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            IngestError::UnknownSource(_) => "unknown_source",
            IngestError::SourceUnavailable { .. } => "source_unavailable",
            IngestError::TooLarge { .. } => "body_too_large",
            IngestError::BadSignature(_) => "bad_signature",
            IngestError::Malformed(_) => "malformed",
            IngestError::NoSuchRoute(_) => "not_found",
            IngestError::Replayed(_) => "replayed",
            IngestError::Panicked => "panic",
            IngestError::Throttled(_) => "throttled",
            IngestError::ShuttingDown => "shutting_down",
            IngestError::Journal(_) => "journal_error",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            IngestError::UnknownSource(_) | IngestError::NoSuchRoute(_) => StatusCode::NOT_FOUND,
            IngestError::SourceUnavailable { .. }
            | IngestError::ShuttingDown
            | IngestError::Journal(_) => StatusCode::SERVICE_UNAVAILABLE,
            IngestError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::BadSignature(_) | IngestError::Replayed(_) => StatusCode::UNAUTHORIZED,
            IngestError::Malformed(_) => StatusCode::BAD_REQUEST,
            IngestError::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            IngestError::Panicked => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let mut response = error_response(self.status(), self.kind(), &self.to_string());
        if matches!(
            self,
            IngestError::Throttled(_) | IngestError::ShuttingDown | IngestError::Journal(_)
        ) {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}

/// The parts of a request an adapter looks at.
pub(crate) struct RawRequest<'a> {
    pub(crate) headers: &'a HeaderMap,
    /// The raw query string (empty when there is none).
    pub(crate) query: &'a str,
    pub(crate) body: &'a [u8],
    pub(crate) received_at: Millis,
    /// The path segment after the source's name (`/v1/ingest/{source}/{token}`), if any.
    pub(crate) path_token: Option<&'a str>,
    /// The TCP peer's address (no proxy header is trusted).
    pub(crate) peer: Option<std::net::IpAddr>,
}

impl<'a> RawRequest<'a> {
    /// A request with only a body, headers and a query (tests and fuzzing).
    pub(crate) fn plain(headers: &'a HeaderMap, query: &'a str, body: &'a [u8]) -> Self {
        RawRequest {
            headers,
            query,
            body,
            received_at: 1,
            path_token: None,
            peer: None,
        }
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Verifies a request's Standard Webhooks headers against its raw body.
pub(crate) fn verify_webhook(
    key: &crate::signing::WebhookKey,
    request: &RawRequest<'_>,
    tolerance_s: i64,
) -> Result<(), IngestError> {
    key.verify(
        request.header("webhook-id"),
        request.header("webhook-timestamp"),
        request.header("webhook-signature"),
        request.body,
        request.received_at / 1000,
        tolerance_s,
    )
    .map_err(|e| IngestError::BadSignature(e.to_string()))
}

/// The first value of parameter `name` in a URL-encoded query string.
pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// What a verified body decodes to.
pub(crate) enum Decoded {
    /// Events to journal, and the messages of the same body that could not be used. An event
    /// whose `order` is empty is a courier scan: its order is the one that reported its
    /// `fields.waybill_no` (the journal resolves it, or keeps the scan until that report).
    Events {
        /// The usable messages, mapped (an unknown status maps to [`EventAction::Unmapped`]).
        events: Vec<OrderEvent>,
        /// The malformed messages of a batch, recorded instead of failing the others.
        rejected: Vec<Rejected>,
    },
    /// A platform check (e.g. Douyin tag 0): acknowledged, nothing stored.
    Verification,
}

impl Decoded {
    /// Events with nothing rejected.
    pub(crate) fn events(events: Vec<OrderEvent>) -> Self {
        Decoded::Events {
            events,
            rejected: Vec::new(),
        }
    }

    /// Splits per-message results: usable events, and the errors of the others.
    pub(crate) fn from_results(
        results: impl IntoIterator<Item = Result<OrderEvent, IngestError>>,
    ) -> Self {
        let mut events = Vec::new();
        let mut rejected = Vec::new();
        for (index, result) in results.into_iter().enumerate() {
            match result {
                Ok(event) => events.push(event),
                Err(error) => rejected.push(Rejected { index, error }),
            }
        }
        Decoded::Events { events, rejected }
    }
}

/// Test view of a decode: the events, or the first rejected message's error.
#[cfg(test)]
pub(crate) fn events_of(
    decoded: Result<Decoded, IngestError>,
) -> Result<Vec<OrderEvent>, IngestError> {
    match decoded? {
        Decoded::Events { rejected, .. } if !rejected.is_empty() => {
            Err(rejected.into_iter().next().expect("not empty").error)
        }
        Decoded::Events { events, .. } => Ok(events),
        Decoded::Verification => Ok(Vec::new()),
    }
}

/// One message of a batch that could not be used.
#[derive(Debug)]
pub(crate) struct Rejected {
    /// Its position in the body.
    pub(crate) index: usize,
    /// Why.
    pub(crate) error: IngestError,
}

/// `{"status":"accepted"}`, the success answer of orderhub's own formats (canonical events,
/// generic JSON), written once rather than built and serialized for every request.
pub(crate) fn accepted() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        r#"{"status":"accepted"}"#,
    )
        .into_response()
}

/// One source's protocol.
pub(crate) trait SourceAdapter: Send + Sync {
    /// The source's name (path segment and metric label).
    fn name(&self) -> &'static str;
    /// Checks the signature over the raw body.
    fn verify(&self, request: &RawRequest<'_>) -> Result<(), IngestError>;
    /// Decodes and maps the body to canonical events.
    fn decode(&self, request: &RawRequest<'_>) -> Result<Decoded, IngestError>;
    /// The success answer in the source's own format.
    fn ack(&self) -> Response;
    /// The success answer to `request` (a source with several modes answers each in its own).
    fn ack_for(&self, _request: &RawRequest<'_>) -> Response {
        self.ack()
    }
    /// The success answer when some messages of the batch were rejected (most platforms'
    /// formats cannot say so; the rejects are listed in `GET /v1/sources`).
    fn ack_partial(&self, request: &RawRequest<'_>, _rejected: &[Rejected]) -> Response {
        self.ack_for(request)
    }
    /// Called once a request that passed [`Self::verify`] is settled: `accepted` when its
    /// events were journaled (or it was a platform check). Replay protection records here.
    fn settle(&self, _request: &RawRequest<'_>, _accepted: bool) {}
    /// Answers the platform's URL check (a GET when the push URL is set up), if it makes one.
    fn url_verification(&self, _query: &str) -> Option<Result<Response, IngestError>> {
        None
    }
}

/// A configured source: ready, or unable to verify (credentials missing or invalid).
pub(crate) enum SourceEntry {
    Ready(Box<dyn SourceAdapter>),
    Unavailable { name: &'static str, reason: String },
}

impl SourceEntry {
    fn name(&self) -> &'static str {
        match self {
            SourceEntry::Ready(adapter) => adapter.name(),
            SourceEntry::Unavailable { name, .. } => name,
        }
    }
}

/// The configured sources by name.
pub(crate) struct SourceRegistry {
    sources: HashMap<&'static str, SourceEntry>,
}

impl SourceRegistry {
    /// Builds the adapter of every configured push source; one whose secrets are missing is
    /// kept as unavailable (it answers 503 naming the variable).
    pub(crate) fn build(sources: &Sources, secrets: &SecretLookup) -> Self {
        let mut registry = HashMap::new();
        for (name, build) in sources.pushed() {
            let entry = build(secrets);
            if let SourceEntry::Unavailable { name, reason } = &entry {
                tracing::warn!(source = name, reason = %reason, "ingest source unavailable; it answers 503");
            }
            registry.insert(name, entry);
        }
        SourceRegistry { sources: registry }
    }

    /// Each source with `Ok` when it can verify requests, or why not.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&'static str, Result<(), String>)> + '_ {
        self.sources.values().map(|entry| match entry {
            SourceEntry::Ready(adapter) => (adapter.name(), Ok(())),
            SourceEntry::Unavailable { name, reason } => (*name, Err(reason.clone())),
        })
    }
}

/// A channel whose credentials are not set: shown as disconnected, so the dashboard and the
/// alert see it.
fn not_started(source: &'static str, reason: &str) {
    connection::ConnectionMetrics::new(source)
        .connected
        .set(0.0);
    tracing::warn!(source, reason = %reason, "channel not started");
}

/// The connected and polled sources, running as tasks of the engine.
pub(crate) struct Channels {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Channels {
    /// Starts every connected or polled source whose credentials are set; the others are
    /// logged and shown as disconnected.
    pub(crate) fn start(
        sources: &Sources,
        app: &Arc<AppState>,
        secrets: &SecretLookup,
    ) -> Channels {
        let mut tasks = Vec::new();
        for (name, start) in sources.tasks() {
            match start(app, secrets) {
                Ok(task) => tasks.push(task),
                Err(reason) => not_started(name, &reason),
            }
        }
        Channels { tasks }
    }

    /// Stops every client; unacknowledged messages are redelivered by the platform.
    pub(crate) fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Outcomes counted per source.
const OUTCOMES: [&str; 14] = [
    "accepted",
    "duplicate",
    "verification",
    "unknown_source",
    "not_found",
    "source_unavailable",
    "body_too_large",
    "bad_signature",
    "replayed",
    "malformed",
    "throttled",
    "shutting_down",
    "journal_error",
    "panic",
];

/// Ingest metric handles, registered once at start-up for every source and outcome.
pub(crate) struct IngestMetrics {
    requests: HashMap<(&'static str, &'static str), metrics::Counter>,
    events: HashMap<(&'static str, &'static str), metrics::Counter>,
    unmapped: HashMap<&'static str, metrics::Counter>,
    latency: HashMap<&'static str, metrics::Histogram>,
}

impl IngestMetrics {
    pub(crate) fn new(sources: impl Iterator<Item = &'static str>) -> Self {
        let mut metrics = IngestMetrics {
            requests: HashMap::new(),
            events: HashMap::new(),
            unmapped: HashMap::new(),
            latency: HashMap::new(),
        };
        for source in sources.chain(["unknown"]) {
            for outcome in OUTCOMES {
                metrics.requests.insert(
                    (source, outcome),
                    metrics::counter!(t::INGEST_REQUESTS, "source" => source, "outcome" => outcome),
                );
            }
            for outcome in EVENT_OUTCOMES {
                metrics.events.insert(
                    (source, outcome),
                    metrics::counter!(t::INGEST_EVENTS, "source" => source, "outcome" => outcome),
                );
            }
            metrics.unmapped.insert(
                source,
                metrics::counter!(t::INGEST_UNMAPPED, "source" => source),
            );
            metrics.latency.insert(
                source,
                metrics::histogram!(t::INGEST_LATENCY, "source" => source),
            );
        }
        metrics
    }

    pub(crate) fn request(&self, source: &'static str, outcome: &'static str, started: Instant) {
        if let Some(counter) = self.requests.get(&(source, outcome)) {
            counter.increment(1);
        }
        if let Some(histogram) = self.latency.get(source) {
            histogram.record(started.elapsed().as_secs_f64());
        }
    }

    fn events(&self, source: &'static str, outcome: &'static str, count: u64) {
        if count > 0
            && let Some(counter) = self.events.get(&(source, outcome))
        {
            counter.increment(count);
        }
    }

    fn unmapped(&self, source: &'static str, count: u64) {
        if count > 0
            && let Some(counter) = self.unmapped.get(source)
        {
            counter.increment(count);
        }
    }
}

/// What happened to each message, counted per source.
const EVENT_OUTCOMES: [&str; 4] = ["appended", "duplicate", "parked", "rejected"];

/// `POST /v1/ingest/{source}`.
pub(crate) async fn ingest_source(
    State(app): State<Arc<AppState>>,
    Path(source): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    let query = query.unwrap_or_default();
    let (parts, body) = request.into_parts();
    ingest(app, &source, None, Some(peer), &query, parts.headers, body).await
}

/// `POST /v1/ingest/{source}/{token}`: a source authenticated by a secret path segment (SF's
/// route push, which carries no signature).
pub(crate) async fn ingest_source_with_token(
    State(app): State<Arc<AppState>>,
    Path((source, token)): Path<(String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    let query = query.unwrap_or_default();
    let (parts, body) = request.into_parts();
    ingest(
        app,
        &source,
        Some(&token),
        Some(peer),
        &query,
        parts.headers,
        body,
    )
    .await
}

/// `GET /v1/ingest/{source}`: the platform's URL verification (WeChat's `echostr`).
pub(crate) async fn verify_source_url(
    State(app): State<Arc<AppState>>,
    Path(source): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let started = Instant::now();
    let Some(entry) = app.sources.sources.get(source.as_str()) else {
        app.ingest_metrics
            .request("unknown", "unknown_source", started);
        return IngestError::UnknownSource(source).into_response();
    };
    let name = entry.name();
    let answer = match entry {
        SourceEntry::Unavailable { name, reason } => Err(IngestError::SourceUnavailable {
            origin: name,
            reason: reason.clone(),
        }),
        SourceEntry::Ready(adapter) => {
            match adapter.url_verification(query.as_deref().unwrap_or("")) {
                Some(answer) => answer,
                None => Err(IngestError::Malformed(format!(
                    "source {name} has no URL verification; it takes POST"
                ))),
            }
        }
    };
    match answer {
        Ok(response) => {
            app.ingest_metrics.request(name, "verification", started);
            response
        }
        Err(err) => {
            app.ingest_metrics.request(name, err.kind(), started);
            err.into_response()
        }
    }
}

/// `POST /v1/events`.
pub(crate) async fn ingest_events(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    ingest(app, "events", None, Some(peer), "", parts.headers, body).await
}

async fn ingest(
    app: Arc<AppState>,
    source: &str,
    path_token: Option<&str>,
    peer: Option<SocketAddr>,
    query: &str,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let Some(entry) = app.sources.sources.get(source) else {
        app.ingest_metrics
            .request("unknown", "unknown_source", started);
        return IngestError::UnknownSource(source.to_owned()).into_response();
    };
    let name = entry.name();
    let request = Incoming {
        query,
        path_token,
        peer: peer.map(|p| p.ip()),
        headers,
        body,
    };
    // Boxed here, when the request is first polled: the handling's state (body, decoded events,
    // the journal's answer) is kilobytes, and the web framework moves the handler's future into
    // a box of its own twice per request, a copy of every byte of it each time (callgrind).
    let handled = contain_panic(name, Box::pin(process(&app, entry, request))).await;
    match handled {
        Ok((response, outcome)) => {
            app.ingest_metrics.request(name, outcome, started);
            response
        }
        Err(err) => {
            app.ingest_metrics.request(name, err.kind(), started);
            if !matches!(err, IngestError::Throttled(_)) {
                tracing::debug!(source = name, error = %err, "ingest refused");
            }
            err.into_response()
        }
    }
}

/// Runs one request's handling so that a bug in a decoder costs that request, never the engine:
/// a panic becomes [`IngestError::Panicked`] (answered 500 and counted as `panic`); every event
/// acknowledged before stays acknowledged.
async fn contain_panic<T>(
    source: &'static str,
    handling: impl std::future::Future<Output = Result<T, IngestError>>,
) -> Result<T, IngestError> {
    AssertUnwindSafe(handling)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            tracing::error!(source, "ingest handler panicked; answered 500");
            Err(IngestError::Panicked)
        })
}

/// The parts of an HTTP request the pipeline reads.
struct Incoming<'a> {
    query: &'a str,
    path_token: Option<&'a str>,
    peer: Option<std::net::IpAddr>,
    headers: HeaderMap,
    body: Body,
}

async fn process(
    app: &AppState,
    entry: &SourceEntry,
    incoming: Incoming<'_>,
) -> Result<(Response, &'static str), IngestError> {
    if !app.is_ready() {
        return Err(IngestError::ShuttingDown);
    }
    let adapter = match entry {
        SourceEntry::Ready(adapter) => adapter,
        SourceEntry::Unavailable { name, reason } => {
            return Err(IngestError::SourceUnavailable {
                origin: name,
                reason: reason.clone(),
            });
        }
    };
    let limit = app.config.server.max_body_bytes;
    let declared = incoming
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(IngestError::TooLarge { limit });
    }
    let bytes = axum::body::to_bytes(incoming.body, limit)
        .await
        .map_err(|_| IngestError::TooLarge { limit })?;
    let request = RawRequest {
        headers: &incoming.headers,
        query: incoming.query,
        body: &bytes,
        received_at: app.now_ms(),
        path_token: incoming.path_token,
        peer: incoming.peer,
    };
    adapter.verify(&request)?;
    let settled = admit(app, adapter.as_ref(), &request).await;
    adapter.settle(&request, settled.is_ok());
    settled
}

/// Decodes a verified request, records the messages it rejects and journals the rest.
async fn admit(
    app: &AppState,
    adapter: &dyn SourceAdapter,
    request: &RawRequest<'_>,
) -> Result<(Response, &'static str), IngestError> {
    let name = adapter.name();
    let (events, rejected) = match adapter.decode(request)? {
        Decoded::Verification => return Ok((adapter.ack_for(request), "verification")),
        Decoded::Events { events, rejected } => (events, rejected),
    };
    if events.is_empty() {
        // Nothing of the body is usable: the request as a whole is malformed.
        app.ingest_metrics
            .events(name, "rejected", rejected.len() as u64);
        app.rejections
            .record(name, request.received_at, request.body, &rejected);
        let first = rejected.into_iter().next().map_or_else(
            || IngestError::Malformed("the body carries no message".into()),
            |r| r.error,
        );
        return Err(first);
    }
    let outcome = journal_events(app, name, events).await?;
    if rejected.is_empty() {
        return Ok((adapter.ack_for(request), outcome));
    }
    app.ingest_metrics
        .events(name, "rejected", rejected.len() as u64);
    app.rejections
        .record(name, request.received_at, request.body, &rejected);
    Ok((adapter.ack_partial(request, &rejected), outcome))
}

/// Admits `events` of `source` (refusing with 429 while the actors or the sync backlog are
/// behind) and journals them durably; `accepted`, or `duplicate` when every one was known.
/// The one way into the journal for every source, pushed or connected.
pub(crate) async fn journal_events(
    app: &AppState,
    source: &'static str,
    events: Vec<OrderEvent>,
) -> Result<&'static str, IngestError> {
    if events.is_empty() {
        return Ok("accepted");
    }
    if app.router.pending_events() > app.config.journal.max_pending_events {
        return Err(IngestError::Throttled("order actors are behind"));
    }
    if app.dispatch.backlog() > app.config.dispatch.max_backlog {
        return Err(IngestError::Throttled("sync backlog is over its limit"));
    }
    let unmapped: Vec<bool> = events
        .iter()
        .map(|e| e.action == EventAction::Unmapped)
        .collect();
    let outcomes = app
        .append(events)
        .await
        .map_err(|e| append_error(source, e))?;
    let count = |wanted: fn(&AppendOutcome) -> bool| outcomes.iter().filter(|o| wanted(o)).count();
    let appended = count(|o| matches!(o, AppendOutcome::Appended(_)));
    let parked = count(|o| matches!(o, AppendOutcome::Parked));
    let metrics = &app.ingest_metrics;
    metrics.events(source, "appended", appended as u64);
    metrics.events(source, "parked", parked as u64);
    metrics.events(
        source,
        "duplicate",
        (outcomes.len() - appended - parked) as u64,
    );
    let new_unmapped = outcomes
        .iter()
        .zip(&unmapped)
        .filter(|(o, unmapped)| **unmapped && !matches!(o, AppendOutcome::Duplicate))
        .count();
    metrics.unmapped(source, new_unmapped as u64);
    Ok(if appended + parked == 0 {
        "duplicate"
    } else {
        "accepted"
    })
}

/// What a failed append answers; one that is neither back-pressure nor a shutdown is noted
/// for the periodic warning (an SRE sees why pushes got 503, not only that they did).
fn append_error(source: &str, error: JournalError) -> IngestError {
    match error {
        JournalError::Full => IngestError::Throttled("journal queue is full"),
        JournalError::Closed => IngestError::ShuttingDown,
        other => {
            let reason = other.to_string();
            orderhub_actors::digest::note(
                orderhub_actors::digest::Warning::AppendFailed,
                source,
                &reason,
            );
            IngestError::Journal(reason)
        }
    }
}

/// Journals order-detail answers (source `{channel}_api`). Unlike a push they are not held
/// back by the sync backlog: the backlog may be the fetches themselves, which finish only by
/// journaling their answers.
pub(crate) async fn journal_answers(
    app: &AppState,
    source: &'static str,
    events: Vec<OrderEvent>,
) -> Result<&'static str, IngestError> {
    if app.router.pending_events() > app.config.journal.max_pending_events {
        return Err(IngestError::Throttled("order actors are behind"));
    }
    let outcomes = app
        .append(events)
        .await
        .map_err(|e| append_error(source, e))?;
    let appended = outcomes
        .iter()
        .filter(|o| matches!(o, AppendOutcome::Appended(_)))
        .count();
    app.ingest_metrics
        .events(source, "appended", appended as u64);
    app.ingest_metrics
        .events(source, "duplicate", (outcomes.len() - appended) as u64);
    Ok(if appended == 0 {
        "duplicate"
    } else {
        "accepted"
    })
}

/// Deepest JSON nesting any decoder accepts. Platforms' messages nest a few levels; the limit
/// is checked before any recursive decoding, which would otherwise overflow the stack.
pub const MAX_JSON_DEPTH: usize = 64;

/// Checks that `bytes` nest arrays and objects at most [`MAX_JSON_DEPTH`] deep (a linear scan
/// that skips strings; it does not validate the rest).
pub fn check_json_depth(bytes: &[u8]) -> Result<(), IngestError> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            // A string, most of a body: skipped with `memchr` to its closing quote, past escapes
            // (an unterminated one ends the scan).
            b'"' => loop {
                i += 1;
                match bytes
                    .get(i..)
                    .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
                {
                    Some(at) if bytes[i + at] == b'"' => {
                        i += at;
                        break;
                    }
                    Some(at) => i += at + 1,
                    None => return Ok(()),
                }
            },
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(IngestError::Malformed(format!(
                        "JSON nests deeper than {MAX_JSON_DEPTH} levels"
                    )));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Parses JSON with simd-json (which needs a mutable copy of the bytes), after checking its
/// nesting depth.
pub fn decode_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, IngestError> {
    check_json_depth(bytes)?;
    let mut buffer = bytes.to_vec();
    simd_json::serde::from_slice(&mut buffer).map_err(|e| IngestError::Malformed(e.to_string()))
}

/// Parses `bytes` as JSON into a `T` that keeps parts of it as text (an event's `fields`):
/// serde_json, which can hand a value's text over as it is (simd-json unescapes strings in
/// place, so it has no text to hand over).
pub fn decode_json_keeping_text<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, IngestError> {
    check_json_depth(bytes)?;
    serde_json::from_slice(bytes).map_err(|e| IngestError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_append_is_a_503_with_its_reason_and_a_full_journal_a_429() {
        let failed = append_error(
            "events",
            JournalError::CommitFailed("no PubAck from JetStream within 10s".into()),
        );
        assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(failed.to_string().contains("no PubAck"), "{failed}");
        let full = append_error("events", JournalError::Full);
        assert_eq!(full.status(), StatusCode::TOO_MANY_REQUESTS);
        let closing = append_error("events", JournalError::Closed);
        assert_eq!(closing.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn a_panicking_handler_is_answered_500_and_counted_as_panic() {
        // A decoder bug, as an index past what a request carried.
        let fields: Vec<usize> = std::hint::black_box(Vec::new());
        let handling = async move { Ok::<usize, IngestError>(fields[3]) };
        let err = contain_panic("douyin", handling).await.unwrap_err();
        assert_eq!(err.kind(), "panic");
        let response = err.into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        // The engine carries on: the next request is handled.
        let next = contain_panic("douyin", async { Ok::<_, IngestError>(7) }).await;
        assert_eq!(next.unwrap(), 7);
    }

    #[test]
    fn a_full_journal_is_answered_429_with_retry_after() {
        let response = IngestError::Throttled("journal queue is full").into_response();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["retry-after"], "1");
    }

    #[test]
    fn nesting_is_measured_outside_strings_only() {
        assert!(check_json_depth("[".repeat(MAX_JSON_DEPTH).as_bytes()).is_ok());
        assert!(check_json_depth("[".repeat(MAX_JSON_DEPTH + 1).as_bytes()).is_err());
        let quoted = format!("{{\"a\":\"{}\\\"{}\"}}", "[".repeat(500), "{".repeat(500));
        assert!(check_json_depth(quoted.as_bytes()).is_ok(), "{quoted}");
        let mut mixed = String::new();
        for _ in 0..40 {
            mixed.push_str("{\"k\":[");
        }
        assert!(
            check_json_depth(mixed.as_bytes()).is_err(),
            "80 levels of objects and arrays"
        );
    }

    /// The scan as it was first written, a byte at a time.
    fn depth_ok_bytewise(bytes: &[u8]) -> bool {
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        for &byte in bytes {
            if in_string {
                match byte {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => in_string = false,
                    _ => {}
                }
                continue;
            }
            match byte {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    if depth > MAX_JSON_DEPTH {
                        return false;
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        true
    }

    proptest::proptest! {
        #[test]
        fn the_skipping_depth_scan_agrees_with_the_bytewise_one(
            parts in proptest::collection::vec(
                proptest::sample::select(vec!["\"", "\\", "[", "{", "]", "}", "a", "[[[[[[[[[[[[[[[["]),
                0..64,
            )
        ) {
            let text = parts.concat();
            proptest::prop_assert_eq!(
                check_json_depth(text.as_bytes()).is_ok(),
                depth_ok_bytewise(text.as_bytes()),
                "{:?}", text
            );
        }
    }
}
