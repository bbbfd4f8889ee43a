//! Syncs: what the rules decide must be told to another system.

use crate::order::Millis;
use serde::{Deserialize, Serialize};

/// A sync decided by a rule: durable before it is dispatched, identified by a stable
/// idempotency key so the sink can make delivery exactly-once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncIntent {
    /// Idempotency key: `{order}:{transition seq}:{sink}` (DESIGN.md §3).
    pub id: String,
    /// The sink it goes to.
    pub sink: String,
    /// The order.
    pub order: String,
    /// Journal sequence number of the event whose transition caused it.
    pub seq: u64,
    /// The rule that decided it.
    pub rule: String,
    /// What is sent (connectors translate it into the sink's own format), without its
    /// `fields` member when [`fields`](Self::fields) holds it: [`whole_payload`](Self::whole_payload)
    /// and [`payload_json`](Self::payload_json) put the two together.
    pub payload: serde_json::Value,
    /// The payload's `fields` (the order's contents, most of its bytes), kept as JSON text
    /// apart from the rest of a payload that is an object: they are written into a body as they
    /// are, never parsed into a tree and copied. `None`: the payload is whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<super::Fields>,
    /// The journal sequence of an event whose `fields` are exactly the payload's `fields` (the
    /// order's contents, most of a payload's bytes): the outbox then stores the payload without
    /// them and reads them back from that event, rather than writing the contents once more per
    /// sync. `None`: the payload is stored whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents: Option<u64>,
}

impl SyncIntent {
    /// The idempotency key of the sync of `order`'s transition at `seq` to `sink`.
    pub fn key(order: &str, seq: u64, sink: &str) -> String {
        format!("{order}:{seq}:{sink}")
    }

    /// The whole payload as a value, `fields` included (for connectors that look inside it;
    /// a body is written with [`payload_json`](Self::payload_json)).
    pub fn whole_payload(&self) -> std::borrow::Cow<'_, serde_json::Value> {
        match (&self.payload, &self.fields) {
            (serde_json::Value::Object(payload), Some(fields)) => {
                let mut whole = payload.clone();
                whole.insert("fields".into(), serde_json::Value::Object(fields.to_json()));
                std::borrow::Cow::Owned(serde_json::Value::Object(whole))
            }
            _ => std::borrow::Cow::Borrowed(&self.payload),
        }
    }

    /// The whole payload, to serialize: `fields` written as the text they are kept as.
    pub fn payload_json(&self) -> WholePayload<'_> {
        WholePayload(self)
    }
}

/// A sync's whole payload, serialized from its parts ([`SyncIntent::payload_json`]).
pub struct WholePayload<'a>(&'a SyncIntent);

impl Serialize for WholePayload<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match (&self.0.payload, &self.0.fields) {
            (serde_json::Value::Object(payload), Some(fields)) => {
                let mut map = serializer.serialize_map(Some(payload.len() + 1))?;
                for (name, value) in payload.iter().filter(|(name, _)| *name != "fields") {
                    map.serialize_entry(name, value)?;
                }
                map.serialize_entry("fields", fields)?;
                map.end()
            }
            (payload, _) => payload.serialize(serializer),
        }
    }
}

/// Where a sync stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncStatus {
    /// Waiting to be (re)sent.
    Pending,
    /// Acknowledged by the sink.
    Delivered,
    /// Given up on: retries exhausted or refused by the sink; kept for replay.
    Dead,
}

impl SyncStatus {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncStatus::Pending => "pending",
            SyncStatus::Delivered => "delivered",
            SyncStatus::Dead => "dead",
        }
    }
}

/// A sync as the dispatcher works on it.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingSync {
    /// Row id in the outbox: the dispatch order of a sink.
    pub row: i64,
    /// The sync (shared: the dispatcher hands it to a send while it stays at the head of its
    /// order's queue until the send is done, and copying it — its payload holds the order's
    /// contents — was 2% of the engine's CPU).
    pub intent: std::sync::Arc<SyncIntent>,
    /// Attempts made so far.
    pub attempts: u32,
    /// Not before this time.
    pub not_before: Millis,
    /// When it was decided (hub time).
    pub created_at: Millis,
    /// Why its row could not be read back whole (its payload does not parse, or the event
    /// holding its contents is gone): it is dead-lettered with this, never sent partial, and it
    /// does not hold up the sink's other syncs.
    pub unreadable: Option<String>,
}

/// The result of one delivery attempt, reported back to the outbox.
#[derive(Clone, Debug, PartialEq)]
pub struct SyncUpdate {
    /// Outbox row.
    pub row: i64,
    /// New status.
    pub status: SyncStatus,
    /// Attempts made so far.
    pub attempts: u32,
    /// Next attempt not before (pending only).
    pub not_before: Millis,
    /// What went wrong last (status code and response excerpt, or the transport error).
    pub last_error: Option<String>,
    /// When this attempt finished.
    pub at: Millis,
}
