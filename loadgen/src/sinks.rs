//! `loadgen sinks`: downstream systems (ERP, WMS, courier, notifications) on one port. The
//! first path segment names the system (`/erp`, `/wms`, …). Each answers after a random
//! latency, with configurable error and 429 rates, a per-system rate limit and an outage, and
//! records every sync it accepts by idempotency key (`webhook-id`). `GET /_records` returns
//! what was recorded, for the verifier. With `--details` the same port also plays the
//! channels' order APIs (`crate::details`; `GET /_details` counts their calls).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the simulated systems behave.
#[derive(Clone, Debug)]
pub struct SinkBehaviour {
    /// Answer latency, uniformly between these.
    pub latency: (Duration, Duration),
    /// Probability of a 503.
    pub error_rate: f64,
    /// Probability of a 429 with `Retry-After: 1`.
    pub throttle_rate: f64,
    /// Accepted requests per second per system (0: unlimited); more are answered 429.
    pub rate_limit: u32,
    /// An outage: from `.0` after start, for `.1`, every request is answered 503.
    pub outage: Option<(Duration, Duration)>,
    /// Seed of the fault decisions.
    pub seed: u64,
    /// Also serve the simulated channels' order APIs (`crate::details`).
    pub details: bool,
}

/// One sync as recorded.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    /// System (first path segment).
    pub system: String,
    /// Idempotency key.
    pub id: String,
    /// Order key.
    pub order: String,
    /// Canonical state the sync was about.
    pub state: String,
    /// Wall time of the first accepted delivery, ms since the epoch.
    pub first_at_ms: i64,
    /// Accepted deliveries of this key (more than 1: duplicates).
    pub count: u32,
}

struct Shared {
    behaviour: SinkBehaviour,
    started: Instant,
    rng: Mutex<fastrand::Rng>,
    records: Mutex<HashMap<String, Record>>,
    windows: Mutex<HashMap<String, (u64, u32)>>,
    details: crate::details::DetailCalls,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

async fn sync(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let system = uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let b = &shared.behaviour;
    let (latency, roll) = {
        let mut rng = shared.rng.lock().unwrap_or_else(|e| e.into_inner());
        let span = b.latency.1.saturating_sub(b.latency.0).as_micros() as u64;
        (
            b.latency.0 + Duration::from_micros(rng.u64(0..=span)),
            rng.f64(),
        )
    };
    tokio::time::sleep(latency).await;
    let elapsed = shared.started.elapsed();
    if let Some((from, length)) = b.outage
        && elapsed >= from
        && elapsed < from + length
    {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if roll < b.error_rate {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if b.details {
        let throttled = roll < b.error_rate + b.throttle_rate;
        if let Some(answer) = crate::details::answer(&shared.details, uri.path(), &body, throttled)
        {
            return axum::Json(answer).into_response();
        }
    }
    if roll < b.error_rate + b.throttle_rate || over_limit(&shared, &system, elapsed) {
        return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")]).into_response();
    }
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| json["id"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut records = shared.records.lock().unwrap_or_else(|e| e.into_inner());
    records
        .entry(id.clone())
        .and_modify(|r| r.count += 1)
        .or_insert_with(|| Record {
            system,
            id,
            order: json["order"].as_str().unwrap_or_default().to_owned(),
            state: json["payload"]["state"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            first_at_ms: now_ms(),
            count: 1,
        });
    StatusCode::OK.into_response()
}

fn over_limit(shared: &Shared, system: &str, elapsed: Duration) -> bool {
    let limit = shared.behaviour.rate_limit;
    if limit == 0 {
        return false;
    }
    let second = elapsed.as_secs();
    let mut windows = shared.windows.lock().unwrap_or_else(|e| e.into_inner());
    let window = windows.entry(system.to_owned()).or_insert((second, 0));
    if window.0 != second {
        *window = (second, 0);
    }
    window.1 += 1;
    window.1 > limit
}

async fn records(State(shared): State<Arc<Shared>>) -> Response {
    let records: Vec<Record> = shared
        .records
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    axum::Json(records).into_response()
}

async fn detail_calls(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.details.snapshot()).into_response()
}

/// Serves the simulated systems on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    behaviour: SinkBehaviour,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared {
        rng: Mutex::new(fastrand::Rng::with_seed(behaviour.seed)),
        behaviour,
        started: Instant::now(),
        records: Mutex::default(),
        windows: Mutex::default(),
        details: crate::details::DetailCalls::default(),
    });
    let app = axum::Router::new()
        .route("/_records", axum::routing::get(records))
        .route("/_details", axum::routing::get(detail_calls))
        .fallback(axum::routing::post(sync))
        .with_state(shared);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds `addr` with a backlog of 4096 (the kernel caps it at `net.core.somaxconn`) and serves
/// until Ctrl-C. `TcpListener::bind`'s 128 overflows when the engine opens a few hundred
/// connections to the simulated systems at once, and every SYN the kernel drops then costs the
/// engine's client a one-second resend: the simulator's own backlog would show up as the
/// engine's sync latency.
pub async fn run(addr: SocketAddr, behaviour: SinkBehaviour) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let listen = || {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(4096)
    };
    let listener = listen().with_context(|| format!("cannot listen on {addr}"))?;
    eprintln!(
        "loadgen sinks listening on http://{}",
        listener.local_addr()?
    );
    serve(listener, behaviour, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
