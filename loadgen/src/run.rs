//! `loadgen run`: open-model traffic. Orders arrive at the profile's rate (Poisson, seeded);
//! each report is sent at its intended time whatever the engine's latency, and its latency is
//! measured from that intended time, so a stalled engine shows up as latency instead of
//! silently lowering the load (coordinated omission corrected, as wrk2 does). A 429 is retried
//! on a compressed channel retry schedule and counted.

use crate::lifecycle::{Anomalies, Channel, Plan, System, plan};
use crate::profile::Shape;
use crate::wire::{Credentials, order_key, request};
use hdrhistogram::Histogram;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};

/// The channel retry schedule after a 429, before compression (Youzan's documented schedule:
/// 5 s, 5 min 20 s, 21 min 20 s, 2 h).
pub const RETRY_SCHEDULE: [Duration; 4] = [
    Duration::from_secs(5),
    Duration::from_secs(320),
    Duration::from_secs(1280),
    Duration::from_secs(7200),
];

/// What to send.
#[derive(Clone)]
pub struct Traffic {
    /// Engine base URL.
    pub target: String,
    /// Rate over time.
    pub shape: Shape,
    /// Channels orders come from, round-robin.
    pub channels: Vec<Channel>,
    /// Duplicate, out-of-order and cancellation rates.
    pub anomalies: Anomalies,
    /// Time between two reports of an order.
    pub gap: (Duration, Duration),
    /// Seed of every random choice.
    pub seed: u64,
    /// Run id (distinguishes orders of different runs).
    pub run: u64,
    /// The retry schedule is divided by this.
    pub retry_compression: f64,
    /// Requests in flight at most (beyond, the generator falls behind and says so).
    pub max_in_flight: usize,
    /// Signing credentials.
    pub credentials: Credentials,
}

/// One simulated order.
#[derive(Clone, Debug)]
pub struct SimOrder {
    /// Its key in the engine.
    pub key: String,
    /// Its plan.
    pub plan: Plan,
}

/// What sending produced.
pub struct Sent {
    /// Every order.
    pub orders: Vec<SimOrder>,
    /// Requests sent (first attempts).
    pub sent: u64,
    /// Requests answered 2xx (after any retries).
    pub acked: u64,
    /// Requests finally refused or failed.
    pub rejected: u64,
    /// Final non-2xx answers by status (0: transport error).
    pub errors_by_status: HashMap<u16, u64>,
    /// 429 answers received (each retried).
    pub throttled: u64,
    /// Requests that started late because `max_in_flight` were in flight.
    pub late_starts: u64,
    /// Ack latency from the intended send time, microseconds.
    pub ack_latency_us: Histogram<u64>,
    /// Acks per second of the run.
    pub acks_per_second: Vec<u64>,
    /// Requests intended within the arrival window (the rates' common base).
    pub window_sent: u64,
    /// Of those, acknowledged 2xx.
    pub window_acked: u64,
    /// When the last of those was acknowledged, from the start.
    pub window_last_ack: Duration,
    /// Intended send time (wall ms) of the first report of each (order, state).
    pub intended_ms: HashMap<(String, &'static str), i64>,
    /// Wall time of the run's start and end (ms).
    pub started_ms: i64,
    /// How long sending took.
    pub elapsed: Duration,
}

/// Live counters for the progress display.
#[derive(Default)]
pub struct Live {
    /// Sent.
    pub sent: AtomicU64,
    /// Acked.
    pub acked: AtomicU64,
    /// 429s.
    pub throttled: AtomicU64,
    /// Failed.
    pub failed: AtomicU64,
}

struct Result {
    status: u16,
    latency: Duration,
    acked_at: Duration,
    throttled: u64,
    /// Intended within the arrival window.
    in_window: bool,
}

pub(crate) fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Average reports per order, to turn a request rate into an order arrival rate.
fn reports_per_order(anomalies: Anomalies) -> f64 {
    let steps = 9.0 * (1.0 - anomalies.cancel) + 3.0 * anomalies.cancel;
    steps * (1.0 + anomalies.duplicate)
}

/// Sends the traffic and returns what happened.
pub async fn send(traffic: Traffic, poster: Arc<crate::http::Poster>, live: Arc<Live>) -> Sent {
    let mut rng = fastrand::Rng::with_seed(traffic.seed);
    let per_order = reports_per_order(traffic.anomalies);
    let duration = traffic.shape.duration;
    let start = Instant::now();
    let started_ms = wall_ms();
    let (results_tx, mut results_rx) = mpsc::unbounded_channel::<Result>();
    let permits = Arc::new(Semaphore::new(traffic.max_in_flight));
    let mut orders: Vec<SimOrder> = Vec::new();
    let mut heap: BinaryHeap<Reverse<(Duration, u32, u16)>> = BinaryHeap::new();
    let mut intended_ms = HashMap::new();
    let mut next_arrival = Duration::ZERO;
    let mut sent = 0u64;
    let mut window_sent = 0u64;
    let mut late_starts = 0u64;

    let collector = tokio::spawn(async move {
        let mut histogram =
            Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
        let (mut acked, mut rejected, mut throttled) = (0u64, 0u64, 0u64);
        let (mut window_acked, mut window_last_ack) = (0u64, Duration::ZERO);
        let mut errors: HashMap<u16, u64> = HashMap::new();
        let mut per_second: Vec<u64> = Vec::new();
        while let Some(result) = results_rx.recv().await {
            throttled += result.throttled;
            if (200..300).contains(&result.status) {
                acked += 1;
                if result.in_window {
                    window_acked += 1;
                    window_last_ack = window_last_ack.max(result.acked_at);
                }
                let _ = histogram.record((result.latency.as_micros() as u64).max(1));
                let second = result.acked_at.as_secs() as usize;
                if per_second.len() <= second {
                    per_second.resize(second + 1, 0);
                }
                per_second[second] += 1;
            } else {
                rejected += 1;
                *errors.entry(result.status).or_default() += 1;
            }
        }
        (
            histogram,
            acked,
            rejected,
            throttled,
            errors,
            per_second,
            (window_acked, window_last_ack),
        )
    });

    loop {
        let arrival_due = next_arrival < duration;
        let event_due = heap.peek().map(|Reverse((at, _, _))| *at);
        let take_arrival = match event_due {
            Some(at) => arrival_due && next_arrival <= at,
            None => arrival_due,
        };
        if take_arrival {
            let n = orders.len() as u64;
            let channel = traffic.channels[(n as usize) % traffic.channels.len()];
            let key = order_key(channel, traffic.run, n);
            let plan = plan(&mut rng, traffic.anomalies, traffic.gap);
            for (i, step) in plan.steps.iter().enumerate() {
                heap.push(Reverse((next_arrival + step.at, n as u32, i as u16)));
            }
            orders.push(SimOrder { key, plan });
            let rate = traffic.shape.rate_at(next_arrival.as_secs_f64()) / per_order;
            let gap = -(1.0 - rng.f64()).ln() / rate.max(1e-6);
            next_arrival += Duration::from_secs_f64(gap.min(3600.0));
            continue;
        }
        let Some(Reverse((at, n, i))) = heap.pop() else {
            break;
        };
        tokio::time::sleep_until((start + at).into()).await;
        let order = &orders[n as usize];
        let step = &order.plan.steps[i as usize];
        let channel = Channel::of_key(&order.key);
        let intended_wall = started_ms + at.as_millis() as i64;
        if !step.duplicate {
            intended_ms
                .entry((order.key.clone(), step.state))
                .or_insert(intended_wall);
        }
        let system = step.system;
        let event_id = format!("lg-{}-{}-{}", traffic.run, n, step_id(system, step.state));
        let wire = request(
            &traffic.credentials,
            channel,
            &order.key,
            system,
            step.state,
            &event_id,
            intended_wall,
        );
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                late_starts += 1;
                permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("semaphore open")
            }
        };
        sent += 1;
        let in_window = at < duration;
        window_sent += u64::from(in_window);
        live.sent.fetch_add(1, Ordering::Relaxed);
        let poster = poster.clone();
        let results = results_tx.clone();
        let live = live.clone();
        let compression = traffic.retry_compression;
        let intended = start + at;
        tokio::spawn(async move {
            let mut throttled = 0u64;
            let mut status;
            let mut attempt = 0usize;
            let headers: Vec<(&'static str, &str)> = wire
                .headers
                .iter()
                .map(|(name, value)| (*name, value.as_str()))
                .collect();
            let body = bytes::Bytes::from(wire.body);
            loop {
                status = match poster.post(wire.path, &headers, body.clone()).await {
                    Ok(answer) => answer.status,
                    Err(_) => 0,
                };
                if status != 429 || attempt >= RETRY_SCHEDULE.len() {
                    break;
                }
                throttled += 1;
                live.throttled.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(RETRY_SCHEDULE[attempt].div_f64(compression)).await;
                attempt += 1;
            }
            if (200..300).contains(&status) {
                live.acked.fetch_add(1, Ordering::Relaxed);
            } else {
                live.failed.fetch_add(1, Ordering::Relaxed);
            }
            let _ = results.send(Result {
                status,
                latency: intended.elapsed(),
                acked_at: start.elapsed(),
                throttled,
                in_window,
            });
            drop(permit);
        });
    }
    drop(results_tx);
    let (
        ack_latency_us,
        acked,
        rejected,
        throttled,
        errors_by_status,
        acks_per_second,
        (window_acked, window_last_ack),
    ) = collector.await.expect("collector finished");
    Sent {
        orders,
        sent,
        acked,
        rejected,
        errors_by_status,
        throttled,
        late_starts,
        ack_latency_us,
        acks_per_second,
        window_sent,
        window_acked,
        window_last_ack,
        intended_ms,
        started_ms,
        elapsed: start.elapsed(),
    }
}

/// A stable id for one report of an order (a redelivery reuses it).
fn step_id(system: System, state: &str) -> String {
    let system = match system {
        System::Channel => "ch",
        System::Wms => "wms",
        System::Courier => "cr",
    };
    format!("{system}-{state}")
}
