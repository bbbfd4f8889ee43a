//! What an `events` row's `body` holds, and how an event is put back together from its row.
//!
//! The row's columns already hold the order key, the source, the source's event id and the
//! time orderhub received it; the body holds the rest of the event, and its `fields` only when
//! no earlier event of the order holds the same ones (`events.fields_from` names that event
//! otherwise, see `writer::SharedFields`). Both took bytes on every event: each passes the WAL
//! and again the checkpoint (BENCHMARKS.md, "2026-12-01, later"). A body written before this
//! layout holds the whole event; it reads the same (the columns are what counts).
//!
//! `schema::WHOLE_BODY` is the same assembly in SQL, for the `events_whole` view, exports and
//! the cluster's partition snapshots.

use super::JournalError;
use orderhub_actors::order::{EventAction, Fields, Millis, OrderEvent, Superseding};
use serde::{Deserialize, Serialize};

/// The part of an event its body holds, borrowed for writing.
#[derive(Serialize)]
struct Written<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    supersedes: Option<&'a Superseding>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_seq: Option<u64>,
    raw_status: &'a str,
    action: &'a EventAction,
    occurred_at: Millis,
}

/// The part of an event its body holds, as read (a body from before this layout also holds the
/// columns' values, which are ignored).
#[derive(Deserialize)]
struct Read {
    #[serde(default)]
    supersedes: Option<Superseding>,
    #[serde(default)]
    log_seq: Option<u64>,
    raw_status: String,
    action: EventAction,
    occurred_at: Millis,
    #[serde(default)]
    fields: Fields,
}

fn corrupt(seq: i64, err: serde_json::Error) -> JournalError {
    JournalError::Corrupt {
        seq: seq.max(0) as u64,
        reason: err.to_string(),
    }
}

/// An event's body without its `fields`, and its `fields` as JSON (`None` when it has none);
/// [`whole`] joins the two.
pub(crate) fn encode(event: &OrderEvent) -> Result<(String, Option<String>), JournalError> {
    let body = serde_json::to_string(&Written {
        supersedes: event.supersedes.as_ref(),
        log_seq: event.log_seq,
        raw_status: &event.raw_status,
        action: &event.action,
        occurred_at: event.occurred_at,
    })
    .map_err(|e| corrupt(0, e))?;
    if event.fields.is_empty() {
        return Ok((body, None));
    }
    let fields = serde_json::to_string(&event.fields).map_err(|e| corrupt(0, e))?;
    Ok((body, Some(fields)))
}

/// A body from [`encode`] with its `fields` put in (as its last member).
pub(crate) fn whole(mut body: String, fields: &str) -> String {
    debug_assert!(body.ends_with('}') && body.len() > 2);
    body.pop();
    body.reserve(fields.len() + 11);
    body.push_str(",\"fields\":");
    body.push_str(fields);
    body.push('}');
    body
}

/// An `events` row's columns (a body's `fields` are replaced by `fields`, when given: those of
/// the event it shares them with).
pub(crate) struct Row<'a> {
    pub(crate) seq: i64,
    pub(crate) order: &'a str,
    pub(crate) source: &'a str,
    pub(crate) source_event_id: &'a str,
    pub(crate) received_at: Millis,
    pub(crate) body: &'a str,
}

/// The event a row holds, with `fields` if it shares them (else those of its body).
pub(crate) fn decode(row: &Row<'_>, fields: Option<Fields>) -> Result<OrderEvent, JournalError> {
    let read: Read = serde_json::from_str(row.body).map_err(|e| corrupt(row.seq, e))?;
    Ok(OrderEvent {
        order: row.order.to_owned(),
        source: row.source.to_owned(),
        source_event_id: row.source_event_id.to_owned(),
        supersedes: read.supersedes,
        log_seq: read.log_seq,
        raw_status: read.raw_status,
        action: read.action,
        occurred_at: read.occurred_at,
        received_at: row.received_at,
        fields: fields.unwrap_or(read.fields),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn event(fields: Value) -> OrderEvent {
        OrderEvent {
            order: "douyin:6931234567890123456".into(),
            source: "douyin".into(),
            source_event_id: "douyin:6931234567890123456:101:1".into(),
            supersedes: Some(Superseding {
                stream: "trade".into(),
                version: 3,
            }),
            log_seq: Some(7),
            raw_status: "101".into(),
            action: EventAction::Inform,
            occurred_at: 1_796_090_338_427,
            received_at: 1_796_090_338_551,
            fields: fields.as_object().cloned().unwrap().into(),
        }
    }

    fn row<'a>(event: &'a OrderEvent, body: &'a str) -> Row<'a> {
        Row {
            seq: 1,
            order: &event.order,
            source: &event.source,
            source_event_id: &event.source_event_id,
            received_at: event.received_at,
            body,
        }
    }

    /// A body leaves out what the columns hold; it reads back as the event, whole or sharing
    /// its fields, and so does a body from before (the whole event).
    #[test]
    fn a_body_holds_what_the_columns_do_not_and_reads_back_whole() {
        let with = event(serde_json::json!({"items": [{"sku": "A", "qty": 2}], "note": "张三"}));
        let (body, fields) = encode(&with).unwrap();
        for column in [
            with.order.as_str(),
            &with.source_event_id,
            "received_at",
            "fields",
            "\"source\":",
        ] {
            assert!(!body.contains(column), "{body}");
        }
        let whole_body = whole(body.clone(), fields.as_deref().unwrap());
        assert_eq!(decode(&row(&with, &whole_body), None).unwrap(), with);
        assert_eq!(
            decode(&row(&with, &body), Some(with.fields.clone())).unwrap(),
            with
        );
        let before = serde_json::to_string(&with).unwrap();
        assert_eq!(decode(&row(&with, &before), None).unwrap(), with);

        let without = event(serde_json::json!({}));
        let (body, fields) = encode(&without).unwrap();
        assert_eq!(fields, None);
        assert_eq!(decode(&row(&without, &body), None).unwrap(), without);
    }

    #[test]
    fn a_body_that_is_not_an_event_is_named_corrupt_with_its_sequence() {
        let any = event(serde_json::json!({}));
        let mut bad = row(&any, r#"{"raw_status":"101"}"#);
        bad.seq = 42;
        match decode(&bad, None) {
            Err(JournalError::Corrupt { seq: 42, reason }) => {
                assert!(reason.contains("action"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
}
