//! Courier scans that name no order, in cluster mode. A single node resolves a scan through its
//! journal's waybill index or parks it there; in a cluster the order and the scan can be on
//! different partitions, so:
//!
//! - the owner of an order that reports a waybill records `waybill → order` in the
//!   `orderhub_waybills` KV bucket;
//! - ingest resolves a scan through that bucket and publishes it to its order's partition;
//! - a scan whose waybill no order has reported yet is published (durably, acknowledged as
//!   parked) to its own subject `orderhub.scans.{waybill}`;
//! - when the owner later applies the event that reports the waybill, it moves the scans
//!   waiting there into the order's partition and purges the subject.
//!
//! A scan published as parked is checked against the bucket once more after its PubAck, and
//! the owner writes the bucket before it looks for waiting scans, so one of the two always
//! sees the other: no scan is left behind.

use super::{Cluster, Inner, placement, subject_of};
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures_util::StreamExt as _;
use orderhub_actors::order::OrderEvent;
use std::borrow::Cow;
use std::time::Duration;

/// `waybill → order` (the order whose event last carried the waybill).
pub const WAYBILLS_BUCKET: &str = "orderhub_waybills";

/// The waybill of an event (`fields.waybill_no`), if it carries one.
pub(crate) fn waybill_of(event: &OrderEvent) -> Option<Cow<'_, str>> {
    event
        .fields
        .str("waybill_no")
        .filter(|waybill| !waybill.is_empty())
}

/// A waybill (or a sync's key) as a KV key and a subject token: itself when it is plain
/// letters, digits, `-` and `_` (as carriers' numbers are), else `=` and its bytes in hex (`=`
/// never starts a plain one, so the two cannot collide).
pub(crate) fn token(text: &str) -> String {
    let plain = text.len() <= 128
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        text.to_owned()
    } else {
        let mut hex = String::with_capacity(1 + text.len() * 2);
        hex.push('=');
        for byte in text.bytes() {
            hex.push_str(&format!("{byte:02x}"));
        }
        hex
    }
}

/// The subject where scans of `waybill` wait for their order.
pub(crate) fn parked_subject(waybill: &str) -> String {
    format!("orderhub.scans.{}", token(waybill))
}

impl Cluster {
    /// The order that reported `waybill`, from the bucket.
    pub(crate) async fn order_of_waybill(&self, waybill: &str) -> Option<String> {
        // From the bucket stream's leader (a direct get may answer from a replica that has not
        // seen the owner's write yet, and the parked-scan re-check relies on seeing it).
        let subject = format!("$KV.{WAYBILLS_BUCKET}.{}", token(waybill));
        match self
            .inner
            .waybills_stream
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(message) if !message.payload.is_empty() => {
                Some(String::from_utf8_lossy(&message.payload).into_owned())
            }
            _ => None,
        }
    }
}

/// Waiting scans read at most for one listing (their count above it comes from the stream's
/// per-subject totals, without their sources).
const LIST_READ_LIMIT: u64 = 10_000;

/// Scans waiting in the stream for their order, by source.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Waiting {
    /// Source → (scans, earliest `received_at`).
    pub(crate) by_source: std::collections::BTreeMap<String, (u64, i64)>,
    /// Scans counted in the stream but not read (beyond the read limit, or the read stopped
    /// early): their sources are unknown.
    pub(crate) unread: u64,
    /// Why the read stopped before the read limit, if it did.
    pub(crate) stopped: Option<String>,
}

impl Cluster {
    /// The courier scans waiting in the stream for an order to report their waybill (the
    /// cluster's `parked_scans`: they wait there, not in any node's journal).
    pub(crate) async fn parked_scans(&self) -> Result<Waiting, String> {
        let stream = &self.inner.stream;
        let mut subjects = stream
            .info_with_subjects("orderhub.scans.>")
            .await
            .map_err(|e| format!("stream {}: {e}", super::EVENTS_STREAM))?;
        let mut total = 0u64;
        while let Some(subject) = subjects.next().await {
            let (_, count) = subject.map_err(|e| e.to_string())?;
            total += count as u64;
        }
        let mut waiting = Waiting::default();
        if total == 0 {
            return Ok(waiting);
        }
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: "orderhub.scans.>".to_owned(),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
        let mut read = 0u64;
        while read < total.min(LIST_READ_LIMIT) {
            let next = tokio::time::timeout(Duration::from_secs(2), messages.next()).await;
            let Ok(Some(Ok(message))) = next else {
                // Purged meanwhile (their order came), or NATS is slow: what was read counts.
                waiting.stopped = Some(match next {
                    Err(_) => format!("read {read} of {total} waiting scans: no message within 2s"),
                    Ok(Some(Err(err))) => format!("read {read} of {total} waiting scans: {err}"),
                    _ => format!("read {read} of {total} waiting scans: the consumer ended"),
                });
                break;
            };
            read += 1;
            let pending = message.info().map(|info| info.pending).unwrap_or(0);
            if let Ok(scan) = serde_json::from_slice::<OrderEvent>(&message.payload) {
                let entry = waiting
                    .by_source
                    .entry(scan.source)
                    .or_insert((0, scan.received_at));
                entry.0 += 1;
                entry.1 = entry.1.min(scan.received_at);
            }
            if pending == 0 {
                break;
            }
        }
        waiting.unread = if waiting.stopped.is_none() {
            // The last one read had none pending after it: any others were purged meanwhile.
            total
                .saturating_sub(read)
                .min(total.saturating_sub(LIST_READ_LIMIT))
        } else {
            total.saturating_sub(read)
        };
        Ok(waiting)
    }
}

impl Inner {
    /// After the owner applied `events`: records the waybills they report and moves the scans
    /// waiting for them into their orders' partitions.
    pub(crate) async fn index_waybills(&self, events: &[OrderEvent]) -> Result<(), String> {
        for event in events {
            if event.order.is_empty() {
                continue;
            }
            let Some(waybill) = waybill_of(event) else {
                continue;
            };
            self.waybills
                .put(token(&waybill), event.order.clone().into_bytes().into())
                .await
                .map_err(|e| format!("waybill {waybill}: {e}"))?;
            self.unpark(&waybill, &event.order).await?;
        }
        Ok(())
    }

    async fn unpark(&self, waybill: &str, order: &str) -> Result<(), String> {
        let subject = parked_subject(waybill);
        if self
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .is_err()
        {
            return Ok(()); // nothing waits for this waybill
        }
        let consumer = self
            .stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: subject.clone(),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
        let mut scans = Vec::new();
        // Every waiting scan is read, up to the last one there was, or none is moved (the
        // caller retries): the purge below removes exactly what was read.
        let last_read = loop {
            let next = tokio::time::timeout(Duration::from_secs(2), messages.next()).await;
            let Ok(Some(Ok(message))) = next else {
                return Err(format!("could not read every scan waiting on {subject}"));
            };
            let info = message.info().map_err(|e| e.to_string())?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            match serde_json::from_slice::<OrderEvent>(&message.payload) {
                Ok(scan) => scans.push(scan),
                Err(err) => {
                    tracing::error!(seq, error = %err, "a parked scan is unreadable; dropped")
                }
            }
            if pending == 0 {
                break seq;
            }
        };
        let partition = placement::partition_of(order, self.config.partitions);
        let mut acks = Vec::with_capacity(scans.len());
        for mut scan in scans {
            scan.order = order.to_owned();
            let payload = serde_json::to_vec(&scan).map_err(|e| e.to_string())?;
            let publish = async_nats::jetstream::message::PublishMessage::build()
                .payload(payload.into())
                .message_id(format!("unparked:{}:{}", scan.source, scan.source_event_id));
            acks.push(
                self.js
                    .send_publish(subject_of(partition), publish)
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        let moved = acks.len();
        for ack in acks {
            ack.await.map_err(|e| e.to_string())?;
        }
        // Only once they are in their order's partition, and only up to the last one read: a
        // scan parked meanwhile stays for the next report of the waybill or its own re-check.
        self.stream
            .purge()
            .filter(subject)
            .sequence(last_read + 1)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(
            waybill,
            order,
            scans = moved,
            "courier scans that waited for their order moved to it"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waybills_become_keys_and_subject_tokens() {
        assert_eq!(token("SF1234567890"), "SF1234567890");
        assert_eq!(token("JD-001_2"), "JD-001_2");
        assert_eq!(token("a.b"), "=612e62");
        assert_eq!(token("douyin:1:7:erp"), "=646f7579696e3a313a373a657270");
        assert_eq!(parked_subject("SF1"), "orderhub.scans.SF1");
    }
}
