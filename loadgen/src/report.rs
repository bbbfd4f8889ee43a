//! The run's report: a JSON file (fields kept stable for scripts) and a human summary.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;

/// Latency percentiles, milliseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Maximum.
    pub max: f64,
    /// Observations.
    pub count: u64,
}

impl Latency {
    /// From a histogram whose unit is `unit_ms` milliseconds.
    pub fn from_histogram(histogram: &Histogram<u64>, unit_ms: f64) -> Latency {
        if histogram.is_empty() {
            return Latency::default();
        }
        let at = |q: f64| histogram.value_at_quantile(q) as f64 * unit_ms;
        Latency {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: histogram.max() as f64 * unit_ms,
            count: histogram.len(),
        }
    }
}

/// The engine process's resource use, when it runs on this machine.
#[derive(Clone, Debug, Serialize)]
pub struct EngineUsage {
    /// Resident memory at the end, MiB.
    pub rss_mib: f64,
    /// Peak resident memory, MiB.
    pub peak_rss_mib: f64,
    /// CPU seconds used during the run.
    pub cpu_seconds: f64,
    /// Average cores busy during the run.
    pub cpu_cores: f64,
}

/// The load generator's own CPU use (this process; with the engine in the same process, as in
/// the test suite, both).
#[derive(Clone, Debug, Serialize)]
pub struct LoadgenUsage {
    /// CPU seconds while sending (the verification after it not counted).
    pub cpu_seconds: f64,
    /// Average cores busy.
    pub cpu_cores: f64,
    /// CPU microseconds per request sent.
    pub us_per_request: f64,
}

impl LoadgenUsage {
    /// This process's CPU since `before` (a [`sample_process`] of it), over `elapsed` and
    /// `requests`.
    pub fn since(
        before: Option<(f64, f64, f64)>,
        elapsed: std::time::Duration,
        requests: u64,
    ) -> Option<LoadgenUsage> {
        let (_, _, after) = sample_process(std::process::id())?;
        let cpu_seconds = after - before?.2;
        Some(LoadgenUsage {
            cpu_seconds,
            cpu_cores: cpu_seconds / elapsed.as_secs_f64().max(1e-9),
            us_per_request: cpu_seconds * 1e6 / (requests.max(1) as f64),
        })
    }

    /// The summary's line.
    pub fn line(&self) -> String {
        format!(
            "loadgen   cpu {:.1}s ({:.2} cores), {:.0} µs per request\n",
            self.cpu_seconds, self.cpu_cores, self.us_per_request
        )
    }
}

/// The failure a `--max-p99` bound gives, if the run's ack p99 is above it.
pub fn p99_failure(p99: f64, max: Option<f64>) -> Option<String> {
    max.filter(|max| p99 > *max)
        .map(|max| format!("ack p99 {p99:.1} ms is above --max-p99 {max}"))
}

/// Writes a report as pretty JSON to `path`.
pub fn write_json(path: &std::path::Path, report: &impl Serialize) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::write(path, serde_json::to_vec_pretty(report)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Reads a process's memory (kB fields of /proc/PID/status) and CPU ticks (/proc/PID/stat).
pub fn sample_process(pid: u32) -> Option<(f64, f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = rest.get(11)?.parse::<f64>().ok()? + rest.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some((field("VmRSS:"), field("VmHWM:"), ticks / 100.0))
}

/// The JSON report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Profile name.
    pub profile: String,
    /// Seed.
    pub seed: u64,
    /// Intended duration, seconds.
    pub duration_s: f64,
    /// Orders simulated.
    pub orders: usize,
    /// Requests sent (first attempts; 429 retries not counted again).
    pub sent: u64,
    /// Requests acknowledged 2xx.
    pub acked: u64,
    /// Requests finally refused or failed.
    pub rejected: u64,
    /// Final failures by HTTP status ("0" = transport error).
    pub errors_by_status: BTreeMap<String, u64>,
    /// 429 answers (each retried on the compressed schedule).
    pub throttled_429: u64,
    /// Requests started late because the in-flight cap was reached.
    pub late_starts: u64,
    /// Requests intended within the arrival window, per second of it.
    pub rate_intended: f64,
    /// The same requests acknowledged, per second until the last of them was (at least the
    /// window): ~`rate_intended` when the engine keeps up.
    pub rate_achieved: f64,
    /// Requests the profile intended in each second of the run.
    pub intended_per_second: Vec<f64>,
    /// Acks in each second of the run.
    pub acks_per_second: Vec<u64>,
    /// Ack latency from the intended send time.
    pub ack_latency_ms: Latency,
    /// From the intended send time of the causing report to the sync's arrival.
    pub e2e_latency_ms: Latency,
    /// Orders whose final state was checked.
    pub orders_verified: usize,
    /// Orders not in their expected final state.
    pub orders_wrong_state: usize,
    /// Whether syncs were verified against simulators.
    pub syncs_verified: bool,
    /// Syncs the traffic must have caused.
    pub syncs_expected: usize,
    /// Received by a simulator.
    pub syncs_delivered: usize,
    /// Never received, and the engine has no record of them or dead-lettered them.
    pub syncs_lost: usize,
    /// Not received yet, pending in the engine's outbox (behind a sink's quota): not lost.
    pub syncs_pending: usize,
    /// The engine's outbox per sink when verification ended (`orderhub_dispatch_backlog`).
    pub dispatch_backlog: Vec<crate::verify::SinkBacklog>,
    /// Seconds the backlog at the start of verification takes at the sinks' quotas.
    pub drain_estimate_s: f64,
    /// Not due: the engine never entered their state (a later state was reported first).
    pub syncs_skipped: usize,
    /// Deliveries beyond the first of one idempotency key.
    pub syncs_duplicated: u64,
    /// Syncs the engine shows as not delivered, pending or dead (verified orders).
    pub engine_syncs_undelivered: usize,
    /// Of those, dead-lettered.
    pub engine_syncs_dead: usize,
    /// Up to 10 examples of what failed.
    pub examples: Vec<String>,
    /// Engine resource use, if `--engine-pid` was given.
    pub engine: Option<EngineUsage>,
    /// loadgen's own CPU use (Linux).
    pub loadgen: Option<LoadgenUsage>,
    /// Failed checks; empty when the run passed.
    pub failures: Vec<String>,
}

impl Report {
    /// A summary for people.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let l = |x: &Latency| {
            format!(
                "p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1} ms",
                x.p50, x.p90, x.p99, x.p999, x.max
            )
        };
        out.push_str(&format!(
            "profile {} for {:.0}s, seed {}, {} orders\n",
            self.profile, self.duration_s, self.seed, self.orders
        ));
        out.push_str(&format!(
            "requests  sent {}  acked {}  rejected {}  429s {}  late starts {}\n",
            self.sent, self.acked, self.rejected, self.throttled_429, self.late_starts
        ));
        out.push_str(&format!(
            "rate      intended {:.1}/s  achieved {:.1}/s\n",
            self.rate_intended, self.rate_achieved
        ));
        out.push_str(&format!("ack       {}\n", l(&self.ack_latency_ms)));
        if self.syncs_verified {
            out.push_str(&format!("event→sync {}\n", l(&self.e2e_latency_ms)));
            out.push_str(&format!(
                "syncs     expected {}  delivered {}  pending {}  lost {}  not due {}  duplicated {}\n",
                self.syncs_expected,
                self.syncs_delivered,
                self.syncs_pending,
                self.syncs_lost,
                self.syncs_skipped,
                self.syncs_duplicated
            ));
            let waiting: Vec<String> = self
                .dispatch_backlog
                .iter()
                .filter(|b| b.pending > 0.0)
                .map(|b| {
                    format!(
                        "{} {:.0} (drains in ~{:.0}s at {}/s)",
                        b.sink,
                        b.pending,
                        b.drain_s(),
                        b.quota_per_second
                    )
                })
                .collect();
            if self.syncs_pending > 0 || !waiting.is_empty() {
                let detail = if waiting.is_empty() {
                    String::new()
                } else {
                    format!(": {}", waiting.join(", "))
                };
                out.push_str(&format!(
                    "outbox    {} syncs pending in the engine's outbox (quota or retries), not lost{detail}\n",
                    self.syncs_pending
                ));
            }
        }
        out.push_str(&format!(
            "orders    verified {}  wrong state {}\n",
            self.orders_verified, self.orders_wrong_state
        ));
        if let Some(engine) = &self.engine {
            out.push_str(&format!(
                "engine    rss {:.0} MiB (peak {:.0})  cpu {:.1}s ({:.2} cores)\n",
                engine.rss_mib, engine.peak_rss_mib, engine.cpu_seconds, engine.cpu_cores
            ));
        }
        if let Some(own) = &self.loadgen {
            out.push_str(&own.line());
        }
        if self.failures.is_empty() {
            out.push_str("PASSED\n");
        } else {
            out.push_str(&format!("FAILED: {}\n", self.failures.join("; ")));
            for example in &self.examples {
                out.push_str(&format!("  {example}\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_p99_above_its_bound_fails_the_run() {
        assert_eq!(
            p99_failure(50.5, Some(50.0)).as_deref(),
            Some("ack p99 50.5 ms is above --max-p99 50")
        );
        assert_eq!(p99_failure(50.0, Some(50.0)), None);
        assert_eq!(p99_failure(900.0, None), None);
    }
}
