//! `loadgen run` and `loadgen sinks`, put together from the other modules.

use crate::lifecycle::{Anomalies, Channel};
use crate::profile::{FLASH_SALE_ORDERS_PER_MINUTE, Profile, Shape};
use crate::report::{EngineUsage, Latency, LoadgenUsage, Report, sample_process};
use crate::run::{Live, Traffic, send};
use crate::sinks::SinkBehaviour;
use crate::verify::{Checks, DEFAULT_EXPECT_SYNCS, ExpectSyncs, verify};
use crate::wire::Credentials;
use anyhow::{Context, bail};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))
}

/// Options of `loadgen run`.
#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// The engine, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub target: String,
    /// Shape of the load.
    #[arg(long, value_enum, default_value = "flash-sale")]
    pub profile: Profile,
    /// Length of the run (arrivals stop then; lifecycles in progress finish).
    #[arg(long, value_parser = duration, default_value = "60s")]
    pub duration: Duration,
    /// Base request rate per second (default: 43 orders a minute per channel).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Channels orders come from (douyin, youzan, shop).
    #[arg(long, value_delimiter = ',', default_value = "douyin,shop")]
    pub channels: Vec<String>,
    /// Probability a report is delivered twice.
    #[arg(long, default_value_t = 0.05)]
    pub duplicate_rate: f64,
    /// Probability an order's WMS reports arrive out of order.
    #[arg(long, default_value_t = 0.05)]
    pub out_of_order_rate: f64,
    /// Probability an order is cancelled after payment.
    #[arg(long, default_value_t = 0.05)]
    pub cancel_rate: f64,
    /// Time between two reports of one order (min..max).
    #[arg(long, default_value = "100ms..400ms")]
    pub gap: String,
    /// The downstream simulators (`loadgen sinks`), to verify syncs.
    #[arg(long)]
    pub sinks: Option<String>,
    /// Which syncs each state must cause.
    #[arg(long, default_value = DEFAULT_EXPECT_SYNCS)]
    pub expect_syncs: String,
    /// Where to write the JSON report.
    #[arg(long, default_value = "report.json")]
    pub report: PathBuf,
    /// Fail if the ack p99 exceeds this many milliseconds.
    #[arg(long)]
    pub max_p99: Option<f64>,
    /// Fail if the achieved rate is below this many requests per second.
    #[arg(long)]
    pub min_rate: Option<f64>,
    /// How long to wait after sending for the engine and sinks to catch up.
    #[arg(long, value_parser = duration, default_value = "30s")]
    pub settle: Duration,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 4096)]
    pub max_in_flight: usize,
    /// Orders whose final state is checked (an even sample beyond).
    #[arg(long, default_value_t = 2000)]
    pub verify_max: usize,
    /// The 429 retry schedule (5 s, 5 min 20 s, 21 min 20 s, 2 h) is divided by this.
    #[arg(long, default_value_t = 50.0)]
    pub retry_compression: f64,
    /// The engine's process id, to report its memory and CPU.
    #[arg(long)]
    pub engine_pid: Option<u32>,
    /// An operator's token for reading orders back when the engine has `[[operators]]`
    /// (viewer is enough; without operators the engine answers loopback callers).
    #[arg(long)]
    pub token: Option<String>,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
}

/// Options of `loadgen replay`.
#[derive(Clone, Debug, Args)]
pub struct ReplayArgs {
    /// An `orderhub export` file (`.jsonl.gz`, or plain JSON lines).
    pub file: PathBuf,
    /// The engine's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// Speed-up of the original pace (10 = ten times as fast: tonight's 10x from last night).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Tags the replayed event ids, so a second replay into the same engine is not a duplicate.
    #[arg(long, default_value_t = 1)]
    pub run: u64,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 4096)]
    pub max_in_flight: usize,
    /// Fail if the ack p99 exceeds this many milliseconds.
    #[arg(long)]
    pub max_p99: Option<f64>,
    /// Where to write the JSON report.
    #[arg(long, default_value = "replay-report.json")]
    pub report: PathBuf,
}

/// An HTTP client for `target` (with an operator's token when given), once the engine there
/// answers `/readyz`.
pub(crate) async fn ready_client(
    target: &str,
    max_in_flight: usize,
    token: Option<&str>,
) -> anyhow::Result<reqwest::Client> {
    rustls::crypto::ring::default_provider()
        .install_default()
        .ok();
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .context("--token is not a valid header value")?;
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(max_in_flight)
        .timeout(Duration::from_secs(30))
        .default_headers(headers)
        .build()?;
    wait_ready(&client, target, READY_WAIT).await?;
    Ok(client)
}

/// How long loadgen waits for an engine started beside it (in the same shell line, or still
/// recovering its journal) to answer `/readyz`.
const READY_WAIT: Duration = Duration::from_secs(30);

/// Polls `{target}/readyz` until it answers 2xx; fails with the last answer after `wait`.
async fn wait_ready(client: &reqwest::Client, target: &str, wait: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + wait;
    let mut said = false;
    loop {
        let answer = client
            .get(format!("{target}/readyz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .and_then(|r| r.error_for_status());
        match answer {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| {
                    format!(
                        "the engine at {target} is not ready after {}s",
                        wait.as_secs()
                    )
                });
            }
            Err(e) => {
                if !said {
                    eprintln!(
                        "waiting up to {}s for the engine at {target} to be ready ({e})",
                        wait.as_secs()
                    );
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The canonical-events key: `ORDERHUB_EVENTS_SECRET` (`whsec_…`), decoded.
pub(crate) fn events_key_from_env() -> anyhow::Result<Vec<u8>> {
    let secret = std::env::var("ORDERHUB_EVENTS_SECRET").context(
        "environment variable ORDERHUB_EVENTS_SECRET is not set (the target's whsec_ secret)",
    )?;
    base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        secret.trim_start_matches("whsec_"),
    )
    .context("ORDERHUB_EVENTS_SECRET is not a whsec_ base64 secret")
}

/// Replays an export file (the events secret from `ORDERHUB_EVENTS_SECRET`).
pub async fn replay(args: ReplayArgs) -> anyhow::Result<crate::replay::ReplayReport> {
    replay_with(args, &events_key_from_env()?).await
}

/// Replays with the decoded events key; the report's `failures` say whether it passed.
pub async fn replay_with(
    args: ReplayArgs,
    events_key: &[u8],
) -> anyhow::Result<crate::replay::ReplayReport> {
    if !(args.speed > 0.0 && args.speed.is_finite()) {
        anyhow::bail!("--speed must be a positive number, got {}", args.speed);
    }
    let events = crate::replay::read(&args.file).map_err(anyhow::Error::msg)?;
    let target = args.target.trim_end_matches('/');
    let client = ready_client(target, args.max_in_flight, None).await?;
    let poster = std::sync::Arc::new(crate::http::Poster::new(target, client)?);
    let mut report = crate::replay::replay(
        poster,
        events,
        args.speed,
        events_key,
        args.run,
        args.max_in_flight,
    )
    .await;
    report.failures.extend(crate::report::p99_failure(
        report.ack_latency_ms.p99,
        args.max_p99,
    ));
    crate::report::write_json(&args.report, &report)?;
    Ok(report)
}

/// Options of `loadgen sinks`.
#[derive(Clone, Debug, Args)]
pub struct SinksArgs {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: std::net::SocketAddr,
    /// Answer latency (min..max).
    #[arg(long, default_value = "1ms..10ms")]
    pub latency: String,
    /// Probability of a 503.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Probability of a 429.
    #[arg(long, default_value_t = 0.0)]
    pub throttle_rate: f64,
    /// Accepted requests per second per system (0: unlimited).
    #[arg(long, default_value_t = 0)]
    pub rate_limit: u32,
    /// An outage as START+LENGTH, e.g. 30s+10s.
    #[arg(long)]
    pub outage: Option<String>,
    /// Seed of the fault decisions.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also serve the Douyin and Youzan order APIs (token and order detail), so an engine
    /// whose `[sources.*.details]` gateway points here fetches order details under load.
    #[arg(long)]
    pub details: bool,
}

fn range(text: &str) -> anyhow::Result<(Duration, Duration)> {
    let (a, b) = text
        .split_once("..")
        .with_context(|| format!("{text:?} is not MIN..MAX"))?;
    let (a, b) = (
        duration(a).map_err(anyhow::Error::msg)?,
        duration(b).map_err(anyhow::Error::msg)?,
    );
    if b < a {
        bail!("{text:?}: MAX is below MIN");
    }
    Ok((a, b))
}

impl SinksArgs {
    /// The simulators' behaviour.
    pub fn behaviour(&self) -> anyhow::Result<SinkBehaviour> {
        let outage = match &self.outage {
            Some(spec) => {
                let (start, length) = spec
                    .split_once('+')
                    .with_context(|| format!("--outage {spec:?} is not START+LENGTH"))?;
                Some((
                    duration(start).map_err(anyhow::Error::msg)?,
                    duration(length).map_err(anyhow::Error::msg)?,
                ))
            }
            None => None,
        };
        Ok(SinkBehaviour {
            latency: range(&self.latency)?,
            error_rate: self.error_rate,
            throttle_rate: self.throttle_rate,
            rate_limit: self.rate_limit,
            outage,
            seed: self.seed,
            details: self.details,
        })
    }
}

/// Runs the load with credentials from the environment (the variables the engine reads).
pub async fn run(args: RunArgs) -> anyhow::Result<Report> {
    let credentials = Credentials::from_env().map_err(anyhow::Error::msg)?;
    run_with(args, credentials).await
}

/// Runs the load, verifies, writes the report; the report's `failures` say whether it passed.
pub async fn run_with(args: RunArgs, credentials: Credentials) -> anyhow::Result<Report> {
    let channels = args
        .channels
        .iter()
        .map(|c| {
            Channel::parse(c)
                .with_context(|| format!("unknown channel {c:?} (douyin, youzan, shop)"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if channels.is_empty() {
        bail!("--channels names no channel");
    }
    if channels.contains(&Channel::Youzan) && credentials.youzan.is_none() {
        bail!(
            "--channels youzan needs ORDERHUB_YOUZAN_CLIENT_ID and ORDERHUB_YOUZAN_CLIENT_SECRET (the engine's own)"
        );
    }
    let expect = ExpectSyncs::parse(&args.expect_syncs).map_err(anyhow::Error::msg)?;
    let anomalies = Anomalies {
        duplicate: args.duplicate_rate,
        out_of_order: args.out_of_order_rate,
        cancel: args.cancel_rate,
    };
    let per_order = 9.0 * (1.0 - anomalies.cancel) + 3.0 * anomalies.cancel;
    let base_rate = args.rate.unwrap_or(
        FLASH_SALE_ORDERS_PER_MINUTE / 60.0
            * channels.len() as f64
            * per_order
            * (1.0 + anomalies.duplicate),
    );
    if !base_rate.is_finite() || base_rate <= 0.0 {
        bail!("--rate must be positive");
    }
    let shape = Shape {
        profile: args.profile,
        base_rate,
        duration: args.duration,
    };
    let target = args.target.trim_end_matches('/').to_owned();
    let sinks = args
        .sinks
        .as_deref()
        .map(|s| s.trim_end_matches('/').to_owned());
    let client = ready_client(&target, args.max_in_flight, args.token.as_deref()).await?;
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        % 100_000;
    let traffic = Traffic {
        target: target.clone(),
        shape,
        channels,
        anomalies,
        gap: range(&args.gap)?,
        seed: args.seed,
        run,
        retry_compression: args.retry_compression.max(1.0),
        max_in_flight: args.max_in_flight.max(1),
        credentials,
    };
    let before = args.engine_pid.and_then(sample_process);
    let own_before = sample_process(std::process::id());
    let live = Arc::new(Live::default());
    let progress = (!args.quiet).then(|| {
        let bar = indicatif::ProgressBar::new(args.duration.as_secs().max(1));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len}s {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let live = live.clone();
        let shown = bar.clone();
        let started = Instant::now();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let acked = live.acked.load(Ordering::Relaxed);
                shown.set_position(started.elapsed().as_secs());
                shown.set_message(format!(
                    "sent {} acked {} ({}/s) 429 {} failed {}",
                    live.sent.load(Ordering::Relaxed),
                    acked,
                    (acked - last) * 2,
                    live.throttled.load(Ordering::Relaxed),
                    live.failed.load(Ordering::Relaxed)
                ));
                last = acked;
            }
        });
        bar
    });
    let poster = Arc::new(crate::http::Poster::new(&target, client.clone())?);
    let sent = send(traffic, poster, live).await;
    // loadgen's own CPU while sending (the verification after it is not load), so a reader can
    // tell the engine's limits from the load generator's.
    let own = LoadgenUsage::since(own_before, sent.elapsed, sent.sent);
    if let Some(bar) = &progress {
        bar.finish_with_message(format!(
            "sent {} acked {}, verifying",
            sent.sent, sent.acked
        ));
    }
    let checks = Checks {
        target: &target,
        sinks: sinks.as_deref(),
        expect: &expect,
        settle: args.settle,
        verify_max: args.verify_max,
    };
    let verification = verify(&client, &checks, &sent.orders, &sent.intended_ms).await;
    let engine = match (args.engine_pid.and_then(sample_process), before) {
        (Some((rss, peak, cpu_after)), Some((_, _, cpu_before))) => Some(EngineUsage {
            rss_mib: rss,
            peak_rss_mib: peak,
            cpu_seconds: cpu_after - cpu_before,
            cpu_cores: (cpu_after - cpu_before) / sent.elapsed.as_secs_f64().max(1e-9),
        }),
        _ => None,
    };
    // Both rates count the same requests: those intended within the arrival window. Intended
    // is their number over the window; achieved, those acknowledged over the time until the
    // last of them was (never shorter than the window): an engine that keeps up reaches ~100 %.
    let window = args.duration.as_secs_f64().max(1e-9);
    let achieved_over = sent.window_last_ack.as_secs_f64().max(window);
    let mut report = Report {
        profile: format!("{:?}", args.profile).to_lowercase(),
        seed: args.seed,
        duration_s: args.duration.as_secs_f64(),
        orders: sent.orders.len(),
        sent: sent.sent,
        acked: sent.acked,
        rejected: sent.rejected,
        errors_by_status: sent
            .errors_by_status
            .iter()
            .map(|(s, n)| (s.to_string(), *n))
            .collect(),
        throttled_429: sent.throttled,
        late_starts: sent.late_starts,
        rate_intended: sent.window_sent as f64 / window,
        rate_achieved: sent.window_acked as f64 / achieved_over,
        intended_per_second: (0..args.duration.as_secs())
            .map(|second| shape.rate_at(second as f64 + 0.5))
            .collect(),
        acks_per_second: sent.acks_per_second.clone(),
        ack_latency_ms: Latency::from_histogram(&sent.ack_latency_us, 0.001),
        e2e_latency_ms: Latency::from_histogram(&verification.e2e_ms, 1.0),
        orders_verified: verification.orders_verified,
        orders_wrong_state: verification.wrong_state.len(),
        syncs_verified: verification.syncs_verified,
        syncs_expected: verification.syncs_expected,
        syncs_delivered: verification.syncs_delivered,
        syncs_lost: verification.lost.len(),
        syncs_pending: verification.pending.len(),
        dispatch_backlog: verification.backlog.clone(),
        drain_estimate_s: verification.drain_estimate_s,
        syncs_skipped: verification.skipped.len(),
        syncs_duplicated: verification.syncs_duplicated,
        engine_syncs_undelivered: verification.engine_syncs_undelivered,
        engine_syncs_dead: verification.engine_syncs_dead,
        examples: verification
            .lost
            .iter()
            .take(5)
            .map(|(o, s, st)| format!("lost sync: {o} → {s} ({st})"))
            .chain(verification.skipped.iter().take(3).map(|(o, s, st)| {
                format!("not due: {o} → {s} ({st}): a later state arrived first")
            }))
            .chain(
                verification
                    .wrong_state
                    .iter()
                    .take(5)
                    .map(|(o, e, f)| format!("{o}: expected {e}, engine has {f}")),
            )
            .collect(),
        engine,
        loadgen: own,
        failures: Vec::new(),
    };
    if report.rejected > 0 {
        report
            .failures
            .push(format!("{} requests refused or failed", report.rejected));
    }
    if report.syncs_lost > 0 {
        report
            .failures
            .push(format!("{} syncs lost", report.syncs_lost));
    }
    if report.syncs_verified && report.engine_syncs_dead > 0 {
        report.failures.push(format!(
            "the engine dead-lettered {} syncs of verified orders",
            report.engine_syncs_dead
        ));
    }
    if report.orders_wrong_state > 0 {
        report.failures.push(format!(
            "{} orders not in their expected state",
            report.orders_wrong_state
        ));
    }
    report.failures.extend(crate::report::p99_failure(
        report.ack_latency_ms.p99,
        args.max_p99,
    ));
    if let Some(min) = args.min_rate
        && report.rate_achieved < min
    {
        report.failures.push(format!(
            "achieved {:.1}/s is below --min-rate {min}",
            report.rate_achieved
        ));
    }
    crate::report::write_json(&args.report, &report)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine whose `/readyz` answers 503 `not_ready_for` times, then 200.
    async fn engine(not_ready_for: usize) -> String {
        use std::sync::atomic::AtomicUsize;
        rustls::crypto::ring::default_provider()
            .install_default()
            .ok();
        let asked = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/readyz",
            axum::routing::get(move || async move {
                if asked.fetch_add(1, Ordering::SeqCst) < not_ready_for {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                } else {
                    axum::http::StatusCode::OK
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn waits_for_an_engine_that_is_still_starting() {
        let target = engine(3).await;
        wait_ready(&reqwest::Client::new(), &target, Duration::from_secs(10))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn names_the_engine_that_never_became_ready() {
        let target = engine(usize::MAX).await;
        let error = wait_ready(&reqwest::Client::new(), &target, Duration::from_millis(300))
            .await
            .unwrap_err();
        let text = format!("{error:#}");
        assert!(
            text.contains(&format!("the engine at {target} is not ready after 0s")),
            "{text}"
        );
        assert!(text.contains("503"), "{text}");
    }
}
