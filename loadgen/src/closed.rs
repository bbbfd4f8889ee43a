//! `loadgen lifecycle`: the closed-loop capacity benchmark. A fixed number of orders each go
//! through `paid → allocated → packed → in_transit → delivered` as canonical events (Standard
//! Webhooks, ~650-byte bodies with items, address and amounts in `fields`), each order's events
//! strictly in sequence (the next is sent when the previous is acknowledged), `--in-flight`
//! orders at a time, one event per request or `--batch` orders' next events per request. It
//! measures how fast the engine acknowledges and what each event costs it: CPU from
//! `/proc/PID/stat`, bytes written to disk from `/proc/PID/io` (`write_bytes`), both from the
//! first request until the engine's outbox has drained, and loadgen's own CPU per request.

use crate::report::{Latency, sample_process};
use crate::verify::read_backlog;
use crate::wire::webhook_signature;
use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The states every order reports, in order.
pub const STEPS: [&str; 5] = ["paid", "allocated", "packed", "in_transit", "delivered"];

/// Options of `loadgen lifecycle`.
#[derive(Clone, Debug, Args)]
pub struct LifecycleArgs {
    /// The engine, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub target: String,
    /// Orders to run through their lifecycle.
    #[arg(long, default_value_t = 20_000)]
    pub orders: u64,
    /// Orders in flight at a time.
    #[arg(long, default_value_t = 256)]
    pub in_flight: usize,
    /// Events per request (each the next event of a different order).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Line items in each event's `fields` (3: ~650-byte events; each one more adds ~75 bytes),
    /// to measure orders with more contents.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub items: u64,
    /// The `source` the events name.
    #[arg(long, default_value = "shop")]
    pub source: String,
    /// States whose syncs the simulators must have received, `sink=state,state`
    /// (checked when `--sinks` is given).
    #[arg(long, default_value = "erp=paid,packed,in_transit")]
    pub expect_syncs: String,
    /// The downstream simulators (`loadgen sinks`), to verify syncs.
    #[arg(long)]
    pub sinks: Option<String>,
    /// Tags order keys and event ids, so runs into one engine do not collide.
    #[arg(long, default_value_t = 1)]
    pub run: u64,
    /// The engine's process id, to measure its CPU and disk writes per event.
    #[arg(long)]
    pub engine_pid: Option<u32>,
    /// How long to wait for the engine's outbox to drain after the last ack.
    #[arg(long, value_parser = duration, default_value = "60s")]
    pub settle: Duration,
    /// Orders whose final state is read back (an even sample).
    #[arg(long, default_value_t = 500)]
    pub verify_max: u64,
    /// Fail if the ack p99 exceeds this many milliseconds.
    #[arg(long)]
    pub max_p99: Option<f64>,
    /// Fail if fewer events than this are acknowledged per second.
    #[arg(long)]
    pub min_rate: Option<f64>,
    /// Where to write the JSON report.
    #[arg(long, default_value = "lifecycle-report.json")]
    pub report: PathBuf,
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))
}

/// What one engine process used over the measured window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PerEvent {
    /// CPU seconds (user + system).
    pub cpu_seconds: f64,
    /// CPU microseconds per acknowledged event.
    pub cpu_us_per_event: f64,
    /// Bytes the process caused to be written to storage (`write_bytes`).
    pub write_bytes: u64,
    /// Of those, per acknowledged event.
    pub write_bytes_per_event: f64,
    /// Resident memory at the end, MiB.
    pub rss_mib: f64,
    /// CPU microseconds per event by thread name (tokio workers, the journal writer, …).
    pub cpu_us_per_event_by_thread: std::collections::BTreeMap<String, f64>,
}

/// The JSON report of `loadgen lifecycle`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LifecycleReport {
    /// Orders run.
    pub orders: u64,
    /// Events per request.
    pub batch: usize,
    /// Line items in each event.
    pub items: u64,
    /// Orders in flight.
    pub in_flight: usize,
    /// Requests answered 2xx.
    pub requests: u64,
    /// Events acknowledged.
    pub events: u64,
    /// Answers 429/503 (each retried after its Retry-After).
    pub retried: u64,
    /// Requests refused for good (any other status or a transport error).
    pub refused: u64,
    /// Seconds from the first request to the last ack.
    pub send_seconds: f64,
    /// Events acknowledged per second over that time.
    pub events_per_second: f64,
    /// Ack latency per request (a retried request counts from its first attempt).
    pub ack_latency_ms: Latency,
    /// Seconds from the last ack until the engine's outbox was empty.
    pub drain_seconds: f64,
    /// The engine from the first request until its outbox drained.
    pub engine: Option<PerEvent>,
    /// loadgen's own CPU while sending, microseconds per request.
    pub loadgen_us_per_request: Option<f64>,
    /// Orders read back.
    pub orders_verified: u64,
    /// Of those, not `delivered`.
    pub orders_wrong_state: u64,
    /// Syncs the simulators must have received.
    pub syncs_expected: u64,
    /// Received.
    pub syncs_delivered: u64,
    /// Still in the engine's outbox when the wait ended.
    pub syncs_pending: f64,
    /// Not received and not pending.
    pub syncs_lost: u64,
    /// Deliveries beyond the first of one idempotency key.
    pub syncs_duplicated: u64,
    /// Up to 10 examples of what failed.
    pub examples: Vec<String>,
    /// Failed checks; empty when the run passed.
    pub failures: Vec<String>,
}

impl LifecycleReport {
    /// A summary for people.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "lifecycle: {} orders x {} events of {} line items, {} orders in flight, {} event(s) per request\n",
            self.orders,
            STEPS.len(),
            self.items,
            self.in_flight,
            self.batch
        );
        out += &format!(
            "acked {} events in {} requests over {:.1}s: {:.0} events/s ({} retried after 429/503, {} refused)\n",
            self.events,
            self.requests,
            self.send_seconds,
            self.events_per_second,
            self.retried,
            self.refused
        );
        let l = &self.ack_latency_ms;
        out += &format!(
            "ack latency ms: p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}\n",
            l.p50, l.p99, l.p999, l.max
        );
        if let Some(e) = &self.engine {
            out += &format!(
                "engine (first request to drained outbox): {:.1} us CPU per event, {:.0} bytes written per event ({:.1} CPU s, {:.1} MB), RSS {:.0} MiB\n",
                e.cpu_us_per_event,
                e.write_bytes_per_event,
                e.cpu_seconds,
                e.write_bytes as f64 / 1e6,
                e.rss_mib
            );
            let threads: Vec<String> = e
                .cpu_us_per_event_by_thread
                .iter()
                .map(|(name, us)| format!("{name} {us:.1}"))
                .collect();
            out += &format!("  by thread, us per event: {}\n", threads.join(", "));
        }
        if let Some(us) = self.loadgen_us_per_request {
            out += &format!("loadgen's own CPU: {us:.1} us per request\n");
        }
        out += &format!(
            "outbox drained {:.1}s after the last ack; syncs: {} expected, {} delivered, {:.0} pending, {} lost, {} duplicated deliveries\n",
            self.drain_seconds,
            self.syncs_expected,
            self.syncs_delivered,
            self.syncs_pending,
            self.syncs_lost,
            self.syncs_duplicated
        );
        out += &format!(
            "orders read back: {}, not delivered: {}\n",
            self.orders_verified, self.orders_wrong_state
        );
        for example in &self.examples {
            out += &format!("  e.g. {example}\n");
        }
        if self.failures.is_empty() {
            out += "PASSED\n";
        } else {
            out += &format!("FAILED: {}\n", self.failures.join("; "));
        }
        out
    }
}

/// The key of order `n` of run `run`.
fn order_key(run: u64, n: u64) -> String {
    format!("shop:L{run}-{n:08}")
}

/// One canonical event, ~650 bytes with three line items: the order's contents, address and
/// amounts ride along as real channels' pushes carry them. Items past three are gift-set lines
/// of ~75 bytes each.
fn event_json(source: &str, run: u64, n: u64, step: usize, at_ms: i64, items: u64) -> String {
    let order = order_key(run, n);
    let state = STEPS[step];
    let qty = 1 + n % 3;
    let extra = items.saturating_sub(3);
    let mut more = String::with_capacity(90 * extra as usize);
    for k in 0..extra {
        more += &format!(
            r#",{{"sku":"SKU-{:05}","name":"Gift set, part {} of {extra}","qty":1,"price":19.90}}"#,
            (n * 17 + k) % 90_000,
            k + 1
        );
    }
    format!(
        concat!(
            r#"{{"event_id":"{order}:{state}","order":"{order}","source":"{source}","status":"{state}","occurred_at":{at},"#,
            r#""fields":{{"items":[{{"sku":"SKU-{a:05}","name":"Hydrating face cream 50ml","qty":{qty},"price":129.00}},"#,
            r#"{{"sku":"SKU-{b:05}","name":"Cleansing foam 120g","qty":1,"price":59.90}},"#,
            r#"{{"sku":"SKU-{c:05}","name":"Sheet mask, pack of 10","qty":2,"price":89.00}}{more}],"#,
            r#""address":{{"name":"Zhang San","phone":"138****{phone:04}","province":"Zhejiang","city":"Hangzhou","#,
            r#""district":"Xihu","detail":"No. {house} Wensan Road, Building 3, Unit 2, Room 1502"}},"#,
            r#""amounts":{{"total":{total:.2},"discount":20.00,"freight":0.00,"paid":{paid:.2},"currency":"CNY"}},"#,
            r#""buyer_note":"Deliver after 6pm please","shop":"flagship-store-01"}}}}"#
        ),
        order = order,
        state = state,
        source = source,
        at = at_ms,
        a = n % 90_000,
        b = (n * 7) % 90_000,
        c = (n * 13) % 90_000,
        qty = qty,
        phone = n % 10_000,
        house = n % 500,
        more = more,
        total = 129.0 * qty as f64 + 59.9 + 178.0 + 19.9 * extra as f64,
        paid = 129.0 * qty as f64 + 59.9 + 158.0 + 19.9 * extra as f64,
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `/proc/PID/io`'s `write_bytes` (needs the same user as the process).
fn write_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// CPU seconds of each of a process's threads, summed by thread name (`/proc/PID/task`).
fn thread_cpu(pid: u32) -> HashMap<String, f64> {
    let mut by_name = HashMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        *by_name.entry(name.trim().to_owned()).or_default() += (ticks(11) + ticks(12)) / 100.0;
    }
    by_name
}

/// Parses `sink=state,state`.
fn parse_expect(spec: &str) -> anyhow::Result<(String, Vec<String>)> {
    let (sink, states) = spec
        .split_once('=')
        .with_context(|| format!("--expect-syncs {spec:?} is not sink=state,state"))?;
    let states: Vec<String> = states
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    for state in &states {
        anyhow::ensure!(
            STEPS.contains(&state.as_str()),
            "--expect-syncs names {state:?}, which is not one of {STEPS:?}"
        );
    }
    Ok((sink.trim().to_owned(), states))
}

#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    events: AtomicU64,
    retried: AtomicU64,
    refused: AtomicU64,
}

/// Runs the benchmark (the events secret from `ORDERHUB_EVENTS_SECRET`).
pub async fn lifecycle(args: LifecycleArgs) -> anyhow::Result<LifecycleReport> {
    lifecycle_with(args, &crate::cli::events_key_from_env()?).await
}

/// Runs the benchmark with the decoded events key; the report's `failures` say whether it
/// passed.
pub async fn lifecycle_with(
    args: LifecycleArgs,
    events_key: &[u8],
) -> anyhow::Result<LifecycleReport> {
    anyhow::ensure!(args.orders > 0, "--orders must be at least 1");
    anyhow::ensure!(args.in_flight > 0, "--in-flight must be at least 1");
    anyhow::ensure!(
        (1..=1000).contains(&args.batch),
        "--batch must be between 1 and 1000"
    );
    let expect = parse_expect(&args.expect_syncs)?;
    let target = args.target.trim_end_matches('/').to_owned();
    let client = crate::cli::ready_client(&target, args.in_flight, None).await?;
    let poster = Arc::new(crate::http::Poster::new(&target, client.clone())?);

    let workers = args.in_flight.div_ceil(args.batch);
    let next = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Tally::default());
    let examples = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let key: Arc<[u8]> = Arc::from(events_key);

    let engine_before = args
        .engine_pid
        .and_then(|pid| Some((sample_process(pid)?.2, write_bytes(pid)?)));
    let threads_before = args.engine_pid.map(thread_cpu).unwrap_or_default();
    let own_before = sample_process(std::process::id()).map(|s| s.2);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(workers);
    for worker in 0..workers {
        let poster = poster.clone();
        let next = next.clone();
        let tally = tally.clone();
        let examples = examples.clone();
        let key = key.clone();
        let source = args.source.clone();
        let (orders, batch, run, items) = (args.orders, args.batch as u64, args.run, args.items);
        tasks.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds");
            let mut request_no = 0u64;
            loop {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                if first >= orders {
                    break;
                }
                let last = (first + batch).min(orders);
                for step in 0..STEPS.len() {
                    let at = now_ms();
                    let body = if batch == 1 {
                        event_json(&source, run, first, step, at, items)
                    } else {
                        let mut body = String::with_capacity(
                            (700 + 90 * items as usize) * (last - first) as usize,
                        );
                        body.push('[');
                        for n in first..last {
                            if n > first {
                                body.push(',');
                            }
                            body.push_str(&event_json(&source, run, n, step, at, items));
                        }
                        body.push(']');
                        body
                    };
                    request_no += 1;
                    let id = format!("lc{run}-w{worker}-{request_no}");
                    let timestamp = (at / 1000).to_string();
                    let signature = webhook_signature(&key, &id, &timestamp, &body);
                    let headers = [
                        ("content-type", "application/json"),
                        ("webhook-id", id.as_str()),
                        ("webhook-timestamp", timestamp.as_str()),
                        ("webhook-signature", signature.as_str()),
                    ];
                    let body = bytes::Bytes::from(body);
                    let sent_at = Instant::now();
                    let outcome = loop {
                        match poster.post("/v1/events", &headers, body.clone()).await {
                            Ok(answer) if (200..300).contains(&answer.status) => break Ok(()),
                            Ok(answer) if answer.status == 429 || answer.status == 503 => {
                                tally.retried.fetch_add(1, Ordering::Relaxed);
                                let wait = answer.retry_after.unwrap_or(1.0).clamp(0.05, 5.0);
                                tokio::time::sleep(Duration::from_secs_f64(wait)).await;
                            }
                            Ok(answer) => {
                                let text = String::from_utf8_lossy(&answer.body);
                                break Err(format!("{id}: {} {text}", answer.status));
                            }
                            Err(e) => break Err(format!("{id}: {e}")),
                        }
                    };
                    match outcome {
                        Ok(()) => {
                            let us = sent_at.elapsed().as_micros().max(1) as u64;
                            let _ = latency.record(us.min(600_000_000));
                            tally.requests.fetch_add(1, Ordering::Relaxed);
                            tally.events.fetch_add(last - first, Ordering::Relaxed);
                        }
                        Err(error) => {
                            tally.refused.fetch_add(1, Ordering::Relaxed);
                            let mut examples = examples.lock().unwrap_or_else(|e| e.into_inner());
                            if examples.len() < 10 {
                                examples.push(error);
                            }
                            // The order cannot go on in sequence without this event.
                            break;
                        }
                    }
                }
            }
            latency
        }));
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds");
    for task in tasks {
        let histogram = task.await.context("a sender task panicked")?;
        latency.add(&histogram).context("histogram bounds")?;
    }
    let send_seconds = started.elapsed().as_secs_f64();
    let own_cpu = own_before
        .zip(sample_process(std::process::id()).map(|s| s.2))
        .map(|(before, after)| after - before);

    let mut report = LifecycleReport {
        orders: args.orders,
        batch: args.batch,
        items: args.items,
        in_flight: args.in_flight,
        requests: tally.requests.load(Ordering::Relaxed),
        events: tally.events.load(Ordering::Relaxed),
        retried: tally.retried.load(Ordering::Relaxed),
        refused: tally.refused.load(Ordering::Relaxed),
        send_seconds,
        ack_latency_ms: Latency::from_histogram(&latency, 0.001),
        ..LifecycleReport::default()
    };
    report.events_per_second = report.events as f64 / send_seconds.max(1e-9);
    report.loadgen_us_per_request =
        own_cpu.map(|cpu| cpu * 1e6 / (report.requests + report.refused).max(1) as f64);

    // Wait for the outbox to drain: the engine's work for these events is done then.
    let drain_started = Instant::now();
    let pending = loop {
        let backlog = read_backlog(&client, &target).await;
        let pending = backlog.iter().map(|b| b.pending).sum::<f64>();
        if (pending == 0.0 && !backlog.is_empty()) || drain_started.elapsed() > args.settle {
            break pending;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    report.drain_seconds = drain_started.elapsed().as_secs_f64();
    if let (Some(pid), Some((cpu_before, written_before))) = (args.engine_pid, engine_before)
        && let (Some((rss, _, cpu_after)), Some(written_after)) =
            (sample_process(pid), write_bytes(pid))
    {
        let events = report.events.max(1) as f64;
        let cpu = cpu_after - cpu_before;
        let written = written_after.saturating_sub(written_before);
        // Threads that ended meanwhile are missing here; their time is in the total only.
        let cpu_us_per_event_by_thread = thread_cpu(pid)
            .into_iter()
            .map(|(name, after)| {
                let used = after - threads_before.get(&name).copied().unwrap_or(0.0);
                (name, used * 1e6 / events)
            })
            .filter(|(_, us)| *us >= 0.5)
            .collect();
        report.engine = Some(PerEvent {
            cpu_us_per_event_by_thread,
            cpu_seconds: cpu,
            cpu_us_per_event: cpu * 1e6 / events,
            write_bytes: written,
            write_bytes_per_event: written as f64 / events,
            rss_mib: rss,
        });
    }
    report.syncs_pending = pending;

    verify_orders(&client, &target, &args, &mut report).await;
    if let Some(sinks) = &args.sinks {
        verify_syncs(&client, sinks, &args, &expect, &mut report).await?;
    }
    report
        .examples
        .extend(examples.lock().unwrap_or_else(|e| e.into_inner()).drain(..));
    report.examples.truncate(10);

    if report.refused > 0 {
        report
            .failures
            .push(format!("{} requests refused", report.refused));
    }
    if report.orders_wrong_state > 0 {
        report.failures.push(format!(
            "{} of {} orders read back are not delivered",
            report.orders_wrong_state, report.orders_verified
        ));
    }
    if report.syncs_lost > 0 {
        report
            .failures
            .push(format!("{} syncs lost", report.syncs_lost));
    }
    report.failures.extend(crate::report::p99_failure(
        report.ack_latency_ms.p99,
        args.max_p99,
    ));
    if let Some(min) = args.min_rate
        && report.events_per_second < min
    {
        report.failures.push(format!(
            "{:.0} events/s is below --min-rate {min}",
            report.events_per_second
        ));
    }
    crate::report::write_json(&args.report, &report)?;
    Ok(report)
}

/// Reads an even sample of the orders back: each must be `delivered`.
async fn verify_orders(
    client: &reqwest::Client,
    target: &str,
    args: &LifecycleArgs,
    report: &mut LifecycleReport,
) {
    let sample = args.verify_max.min(args.orders).max(1);
    let stride = (args.orders / sample).max(1);
    for n in (0..args.orders)
        .step_by(stride as usize)
        .take(sample as usize)
    {
        let key = order_key(args.run, n);
        report.orders_verified += 1;
        let state = match client.get(format!("{target}/v1/orders/{key}")).send().await {
            Ok(r) if r.status().is_success() => r
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v["state"].as_str().map(str::to_owned)),
            _ => None,
        };
        if state.as_deref() != Some("delivered") {
            report.orders_wrong_state += 1;
            if report.examples.len() < 10 {
                report
                    .examples
                    .push(format!("{key} is {state:?}, not delivered"));
            }
        }
    }
}

/// Counts what the simulators received against what every order must have caused.
async fn verify_syncs(
    client: &reqwest::Client,
    sinks: &str,
    args: &LifecycleArgs,
    (sink, states): &(String, Vec<String>),
    report: &mut LifecycleReport,
) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct Record {
        system: String,
        order: String,
        state: String,
        count: u32,
    }
    let records: Vec<Record> = client
        .get(format!("{}/_records", sinks.trim_end_matches('/')))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("cannot read the simulators' records at {sinks}"))?
        .json()
        .await
        .context("the simulators' records are not JSON")?;
    let mut received: HashMap<(String, String), u32> = HashMap::new();
    for record in records.into_iter().filter(|r| &r.system == sink) {
        *received.entry((record.order, record.state)).or_default() += record.count;
    }
    for n in 0..args.orders {
        let order = order_key(args.run, n);
        for state in states {
            report.syncs_expected += 1;
            match received.get(&(order.clone(), state.clone())) {
                Some(count) => {
                    report.syncs_delivered += 1;
                    report.syncs_duplicated += u64::from(count.saturating_sub(1));
                }
                None => {
                    if report.examples.len() < 10 {
                        report
                            .examples
                            .push(format!("{order}: no {state} sync reached {sink}"));
                    }
                }
            }
        }
    }
    let missing = report.syncs_expected - report.syncs_delivered;
    // What the outbox still holds is pending (behind a quota), not lost.
    let pending = report.syncs_pending.round() as u64;
    report.syncs_lost = missing.saturating_sub(pending);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_about_650_bytes_of_valid_json() {
        for n in [0, 7, 123_456] {
            for (step, state) in STEPS.iter().enumerate() {
                let body = event_json("shop", 3, n, step, 1_700_000_000_000, 3);
                let value: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(value["status"], *state);
                assert_eq!(value["order"], order_key(3, n));
                assert_eq!(value["fields"]["items"].as_array().unwrap().len(), 3);
                assert!((600..=720).contains(&body.len()), "{} bytes", body.len());
            }
        }
    }

    #[test]
    fn more_items_make_longer_events_of_valid_json() {
        let three = event_json("shop", 3, 42, 0, 1_700_000_000_000, 3);
        let twenty = event_json("shop", 3, 42, 0, 1_700_000_000_000, 20);
        let value: serde_json::Value = serde_json::from_str(&twenty).unwrap();
        let items = value["fields"]["items"].as_array().unwrap();
        assert_eq!(items.len(), 20);
        assert_eq!(items[19]["name"], "Gift set, part 17 of 17");
        let per_item = (twenty.len() - three.len()) / 17;
        assert!((65..=85).contains(&per_item), "{per_item} bytes per item");
    }

    #[test]
    fn expectations_name_known_states() {
        assert_eq!(
            parse_expect("erp=paid, packed").unwrap(),
            ("erp".into(), vec!["paid".into(), "packed".into()])
        );
        assert!(parse_expect("erp=shipped").is_err());
        assert!(parse_expect("erp").is_err());
    }
}
