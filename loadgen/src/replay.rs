//! `loadgen replay`: the capacity rehearsal from real data. Reads an `orderhub export` file
//! (gzip'd JSON lines, one event each) and sends every event as a canonical event
//! (`POST /v1/events`, Standard Webhooks with the target's secret) at `speed` times its
//! original pace: an event received `t` after the file's first is due `t / speed` after the
//! replay starts, and its `occurred_at` moves with it. Each order's events go in their journal
//! order, one at a time (the next is sent once the previous is acknowledged). loadgen reads only
//! the file, never the engine's database.

use crate::report::Latency;
use hdrhistogram::Histogram;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// One exported event, as `orderhub export` writes it.
#[derive(Clone, Debug, Deserialize)]
pub struct ExportedEvent {
    /// The order key.
    pub order: String,
    /// The reporting system.
    pub source: String,
    /// The source's event id.
    pub source_event_id: String,
    /// Canonical meaning: a state name, `hold_released` or `none`.
    pub status: String,
    /// The raw status.
    pub raw_status: String,
    /// Source time, ms.
    pub occurred_at: i64,
    /// Hub time, ms.
    pub received_at: i64,
    /// Business fields.
    #[serde(default)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// Reads an export file (gzip'd, or plain when its name does not end in `.gz`).
pub fn read(path: &Path) -> Result<Vec<ExportedEvent>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let reader: Box<dyn BufRead> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(std::io::BufReader::new(flate2::read::GzDecoder::new(file)))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let mut events = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let event: ExportedEvent = serde_json::from_str(&line)
            .map_err(|e| format!("{} line {}: {e}", path.display(), n + 1))?;
        events.push(event);
    }
    Ok(events)
}

/// What a replay did.
#[derive(Debug, serde::Serialize)]
pub struct ReplayReport {
    /// Events in the file.
    pub events: usize,
    /// Orders in the file.
    pub orders: usize,
    /// The speed-up.
    pub speed: f64,
    /// The replay's intended length, seconds (the file's span over `speed`).
    pub duration_s: f64,
    /// Requests acknowledged 2xx.
    pub acked: u64,
    /// Requests refused or failed, by HTTP status ("0" = transport error).
    pub errors_by_status: BTreeMap<String, u64>,
    /// 429 answers, each retried after a second.
    pub throttled_429: u64,
    /// Events per second the file's pace asked for, over the replay's length.
    pub rate_intended: f64,
    /// The same events acknowledged, per second until the last was (at least the length).
    pub rate_achieved: f64,
    /// From each event's due time to its acknowledgement.
    pub ack_latency_ms: Latency,
    /// loadgen's own CPU while replaying.
    pub loadgen: Option<crate::report::LoadgenUsage>,
    /// Failed checks; empty when the replay passed.
    pub failures: Vec<String>,
}

impl ReplayReport {
    /// A summary for people.
    pub fn summary(&self) -> String {
        let l = &self.ack_latency_ms;
        let mut out = format!(
            "replay    {} events of {} orders at {}x over {:.1}s\n\
             requests  acked {}  refused {}  429s {}\n\
             rate      intended {:.1}/s  achieved {:.1}/s\n\
             ack       p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1} ms\n",
            self.events,
            self.orders,
            self.speed,
            self.duration_s,
            self.acked,
            self.errors_by_status.values().sum::<u64>(),
            self.throttled_429,
            self.rate_intended,
            self.rate_achieved,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max
        );
        if let Some(own) = &self.loadgen {
            out.push_str(&own.line());
        }
        if self.failures.is_empty() {
            out.push_str("PASSED\n");
        } else {
            out.push_str(&format!("FAILED: {}\n", self.failures.join("; ")));
        }
        out
    }
}

/// One sent event's result.
struct Sent {
    status: u16,
    latency: Duration,
    acked_at: Duration,
    throttled: u64,
}

/// Replays `events` against `target` at `speed`, signing with `events_key` (the decoded
/// `whsec_` secret); `run` tags the event ids so a replay is not a duplicate of another.
pub async fn replay(
    poster: Arc<crate::http::Poster>,
    events: Vec<ExportedEvent>,
    speed: f64,
    events_key: &[u8],
    run: u64,
    max_in_flight: usize,
) -> ReplayReport {
    let total = events.len();
    let first = events.iter().map(|e| e.received_at).min().unwrap_or(0);
    let last = events.iter().map(|e| e.received_at).max().unwrap_or(0);
    let duration = Duration::from_secs_f64(((last - first) as f64 / 1000.0 / speed).max(0.001));
    let mut by_order: BTreeMap<String, Vec<ExportedEvent>> = BTreeMap::new();
    for event in events {
        by_order.entry(event.order.clone()).or_default().push(event);
    }
    let orders = by_order.len();
    let own_before = crate::report::sample_process(std::process::id());
    let start = Instant::now();
    let start_wall = crate::run::wall_ms();
    let permits = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let key = Arc::new(events_key.to_vec());
    let (results, mut received) = tokio::sync::mpsc::unbounded_channel::<Sent>();
    for (_, events) in by_order {
        let (poster, key, permits, results) = (
            poster.clone(),
            key.clone(),
            permits.clone(),
            results.clone(),
        );
        tokio::spawn(async move {
            // One order's events in order: the next once the previous is acknowledged.
            for event in events {
                let offset =
                    Duration::from_secs_f64((event.received_at - first) as f64 / 1000.0 / speed);
                let due = start + offset;
                tokio::time::sleep_until(due.into()).await;
                let occurred_at = start_wall + ((event.occurred_at - first) as f64 / speed) as i64;
                let id = format!("rp{run}-{}-{}", event.source, event.source_event_id);
                let body = serde_json::json!({
                    "event_id": id, "order": event.order, "source": event.source,
                    "status": event.status, "raw_status": event.raw_status,
                    "occurred_at": occurred_at, "fields": event.fields,
                })
                .to_string();
                let payload = bytes::Bytes::from(body.clone());
                let permit = permits.clone().acquire_owned().await.expect("open");
                let mut throttled = 0;
                let status = loop {
                    let timestamp = (crate::run::wall_ms() / 1000).to_string();
                    let signature = crate::wire::webhook_signature(&key, &id, &timestamp, &body);
                    let headers = [
                        ("content-type", "application/json"),
                        ("webhook-id", id.as_str()),
                        ("webhook-timestamp", timestamp.as_str()),
                        ("webhook-signature", signature.as_str()),
                    ];
                    let answer = poster
                        .post("/v1/events", &headers, payload.clone())
                        .await
                        .map_or(0, |answer| answer.status);
                    if answer != 429 || throttled >= 5 {
                        break answer;
                    }
                    throttled += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                };
                drop(permit);
                let _ = results.send(Sent {
                    status,
                    latency: due.elapsed(),
                    acked_at: start.elapsed(),
                    throttled,
                });
                if !(200..300).contains(&status) {
                    // The order's later events would be judged against a state it never got.
                    break;
                }
            }
        });
    }
    drop(results);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds");
    let mut report = ReplayReport {
        events: total,
        orders,
        speed,
        duration_s: duration.as_secs_f64(),
        acked: 0,
        errors_by_status: BTreeMap::new(),
        throttled_429: 0,
        rate_intended: total as f64 / duration.as_secs_f64(),
        rate_achieved: 0.0,
        ack_latency_ms: Latency::default(),
        loadgen: None,
        failures: Vec::new(),
    };
    let mut last_ack = Duration::ZERO;
    while let Some(sent) = received.recv().await {
        report.throttled_429 += sent.throttled;
        if (200..300).contains(&sent.status) {
            report.acked += 1;
            last_ack = last_ack.max(sent.acked_at);
            let _ = histogram.record((sent.latency.as_micros() as u64).max(1));
        } else {
            *report
                .errors_by_status
                .entry(sent.status.to_string())
                .or_default() += 1;
        }
    }
    let requests = report.acked + report.errors_by_status.values().sum::<u64>();
    report.loadgen = crate::report::LoadgenUsage::since(own_before, start.elapsed(), requests);
    report.rate_achieved = report.acked as f64 / last_ack.max(duration).as_secs_f64();
    report.ack_latency_ms = Latency::from_histogram(&histogram, 0.001);
    let refused: u64 = report.errors_by_status.values().sum();
    if refused > 0 {
        report
            .failures
            .push(format!("{refused} events refused or failed"));
    }
    let unsent = total as u64 - report.acked - refused;
    if unsent > 0 {
        report.failures.push(format!(
            "{unsent} events not sent: an earlier event of their order was refused"
        ));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_lines_are_read_plain_or_gzipped() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let line = r#"{"order":"douyin:1","source":"douyin","source_event_id":"m-1","status":"paid","raw_status":"101","occurred_at":1000,"received_at":1200,"fields":{"shop_id":77}}"#;
        let plain = dir.path().join("e.jsonl");
        std::fs::write(&plain, format!("{line}\n\n{line}\n")).unwrap();
        assert_eq!(read(&plain).unwrap().len(), 2);
        let gz = dir.path().join("e.jsonl.gz");
        let mut encoder = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz).unwrap(),
            flate2::Compression::default(),
        );
        writeln!(encoder, "{line}").unwrap();
        encoder.finish().unwrap();
        let events = read(&gz).unwrap();
        assert_eq!(events[0].status, "paid");
        assert_eq!(events[0].fields["shop_id"], 77);
        std::fs::write(&plain, "{not json}\n").unwrap();
        assert!(read(&plain).unwrap_err().contains("line 1"));
    }
}
