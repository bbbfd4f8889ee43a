//! Telemetry: the Prometheus recorder (installed once per process) and log set-up.

use crate::cluster::Cluster;
use crate::journal::Journal;
use metrics::Gauge;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use orderhub_actors::order::SlaRule;
use orderhub_actors::shard::{Clock, OrderRouter, SystemClock};
use orderhub_actors::telemetry as t;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How often histogram upkeep runs and process metrics are collected.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);
/// Overdue orders are counted every this many upkeep ticks (15 s).
const OVERDUE_EVERY_TICKS: u32 = 3;
/// Per-order warnings are logged aggregated, one line per rule or sink every this many ticks.
const DIGEST_EVERY_TICKS: u32 = 2;

/// Writes the aggregated per-order warnings of the last interval (also at shutdown).
pub(crate) fn flush_warnings() {
    orderhub_actors::digest::flush(UPKEEP_EVERY.as_secs() * u64::from(DIGEST_EVERY_TICKS));
}

/// Latency buckets, seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// State-change delay buckets, seconds: around the 3 s that order hubs hold 99.6 % of state
/// changes to, out to an hour.
const DELAY_BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
];
/// Batch size buckets, events.
const BATCH_BUCKETS: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder as the global recorder (once per process) and describes
/// every catalogued metric.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(t::JOURNAL_BATCH_SIZE.into()),
                        &BATCH_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(t::STATE_CHANGE_DELAY.into()),
                        &DELAY_BUCKETS,
                    )
                })
                .expect("bucket lists are non-empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            t::describe_all();
            // Recovery counts orders it could not fold before anything else registers the
            // series: it exists (as 0) from the first scrape on, like every other.
            metrics::counter!(t::ACTORS_FAILURES, "kind" => "recovery").absolute(0);
            handle
        })
        .clone()
}

/// Periodic metric work off the hot path: histogram upkeep, process CPU/memory, and the
/// overdue-orders gauges counted from the order index.
pub(crate) struct Upkeep {
    prometheus: PrometheusHandle,
    process: metrics_process::Collector,
    journal: Journal,
    rules: Vec<SlaRule>,
    overdue: Vec<Gauge>,
    data_dir: std::path::PathBuf,
    disk: [Gauge; 3],
    /// Cluster mode: the node counts orders of the partitions it answers for (its store keeps
    /// those of partitions it gave away), so the gauges of all nodes add up to the cluster's.
    cluster: Option<(Cluster, OrderRouter)>,
    /// The partitions the orders-by-state gauges were last counted over, and when to count
    /// them once more after a change (actors' transitions racing the first count).
    counted: std::sync::Mutex<(Option<Vec<u32>>, Option<Instant>)>,
}

/// How long after the partitions changed their orders are counted by state once more.
const RECOUNT_SETTLE: Duration = Duration::from_secs(10);

impl Upkeep {
    /// Registers the process and overdue series (exported from start-up, before any order
    /// is overdue) and takes a first reading.
    pub(crate) fn new(
        prometheus: PrometheusHandle,
        journal: Journal,
        rules: Vec<SlaRule>,
        data_dir: std::path::PathBuf,
        cluster: Option<(Cluster, OrderRouter)>,
    ) -> Self {
        let overdue = rules
            .iter()
            .map(|r| {
                metrics::gauge!(t::ORDERS_OVERDUE, "rule" => r.name.clone(), "state" => r.from.as_str())
            })
            .collect();
        let process = metrics_process::Collector::new("orderhub_");
        process.collect();
        metrics::counter!(t::JOURNAL_ARCHIVED_ORDERS).increment(0);
        for outcome in ["ok", "failed"] {
            metrics::counter!(t::JOURNAL_COMPACTIONS, "outcome" => outcome).increment(0);
        }
        let upkeep = Upkeep {
            prometheus,
            process,
            journal,
            rules,
            overdue,
            data_dir,
            disk: [
                metrics::gauge!(t::JOURNAL_DISK_BYTES),
                metrics::gauge!(t::JOURNAL_OLDEST_EVENT_AGE),
                metrics::gauge!(t::DATA_DIR_FREE_BYTES),
            ],
            cluster,
            counted: std::sync::Mutex::new((None, None)),
        };
        upkeep.measure_disk();
        upkeep
    }

    /// Runs until the task is dropped.
    pub(crate) async fn run(self) {
        let upkeep = std::sync::Arc::new(self);
        let mut tick = tokio::time::interval(UPKEEP_EVERY);
        let mut ticks = 0u32;
        loop {
            tick.tick().await;
            upkeep.prometheus.run_upkeep();
            upkeep.process.collect();
            if ticks.is_multiple_of(DIGEST_EVERY_TICKS) {
                flush_warnings();
            }
            if upkeep.cluster.is_some() {
                let upkeep = upkeep.clone();
                let _ = tokio::task::spawn_blocking(move || upkeep.count_by_state()).await;
            }
            if ticks.is_multiple_of(OVERDUE_EVERY_TICKS) {
                let upkeep = upkeep.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    upkeep.count_overdue();
                    upkeep.measure_disk();
                })
                .await;
            }
            ticks = ticks.wrapping_add(1);
        }
    }

    /// The journal's size and oldest event, and the space left on its file system.
    fn measure_disk(&self) {
        let [journal_bytes, oldest_age, free] = &self.disk;
        journal_bytes.set(crate::journal::retention::disk_bytes(&self.data_dir) as f64);
        match self.journal.oldest_event_at() {
            Ok(Some(at)) => {
                oldest_age.set((SystemClock.now_ms() - at).max(0) as f64 / 1000.0);
            }
            Ok(None) => oldest_age.set(0.0),
            Err(err) => tracing::warn!(error = %err, "cannot read the journal's oldest event"),
        }
        match rustix::fs::statvfs(&self.data_dir) {
            Ok(vfs) => free.set(vfs.f_bavail as f64 * vfs.f_frsize as f64),
            Err(err) => {
                tracing::warn!(error = %err, dir = %self.data_dir.display(), "cannot read the data directory's free space")
            }
        }
    }

    /// Cluster mode: sets the orders-by-state gauges to the orders of the partitions this node
    /// answers for, when those changed (and once more a little later). In between, order
    /// actors move the gauges as orders change state, as on a single node.
    fn count_by_state(&self) {
        let Some((cluster, router)) = &self.cluster else {
            return;
        };
        let current = cluster.current_partitions();
        let now = Instant::now();
        let due = {
            let mut counted = self.counted.lock().unwrap_or_else(|e| e.into_inner());
            if counted.0.as_ref() != Some(&current) {
                *counted = (Some(current.clone()), Some(now + RECOUNT_SETTLE));
                true
            } else if counted.1.is_some_and(|at| at <= now) {
                counted.1 = None;
                true
            } else {
                false
            }
        };
        if !due {
            return;
        }
        match self
            .journal
            .count_by_state(&|key| cluster.in_partitions(&current, key))
        {
            Ok(counts) => router.set_orders_by_state(&counts),
            Err(err) => tracing::warn!(error = %err, "cannot count this node's orders by state"),
        }
    }

    fn count_overdue(&self) {
        let now = SystemClock.now_ms();
        let counted = match &self.cluster {
            None => self.journal.overdue(&self.rules, now),
            Some((cluster, _)) => {
                let current = cluster.current_partitions();
                let keep = |key: &str| cluster.in_partitions(&current, key);
                self.journal.overdue_kept(&self.rules, now, &keep)
            }
        };
        match counted {
            Ok(counts) => {
                for (gauge, count) in self.overdue.iter().zip(counts) {
                    gauge.set(count as f64);
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot count overdue orders"),
        }
    }
}

/// Sets up logging from `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}
