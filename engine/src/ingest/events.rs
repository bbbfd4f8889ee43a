//! `POST /v1/events`: canonical events for any custom system, signed with Standard Webhooks
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature`). The body is one event or an array:
//! `{"event_id", "order", "source", "status", "raw_status"?, "occurred_at"?, "fields"?}` where
//! `status` is a canonical state name, `hold_released`, or `none`.

use super::registry::{self, Configured, Issue, SourcePlugin};
use super::{Decoded, IngestError, RawRequest, SecretLookup, SourceAdapter, SourceEntry};
use crate::config::HumanDuration;
use crate::signing::WebhookKey;
use axum::response::{IntoResponse, Response};
use orderhub_actors::order::{INTERNAL_SOURCE, Millis, OrderEvent};
use serde::Deserialize;

pub(crate) const SOURCE: &str = "events";

/// `[sources.events]`: canonical events signed with Standard Webhooks.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsConfig {
    /// Environment variable holding the `whsec_…` secret.
    pub(crate) secret_env: String,
    /// Accepted clock difference of `webhook-timestamp`.
    pub(crate) tolerance: HumanDuration,
}

/// Canonical events, `[sources.events]` (`POST /v1/events`).
pub(crate) struct Plugin;

impl SourcePlugin for Plugin {
    fn key(&self) -> &'static str {
        SOURCE
    }

    fn configure(&self, table: toml::Value) -> Result<Vec<Configured>, Issue> {
        let config: EventsConfig = registry::parse("sources.events", table)?;
        Ok(vec![Configured::push(SOURCE, config, build)])
    }
}

/// Longest accepted order key, source name and event id.
const MAX_KEY_LEN: usize = 256;

pub(crate) struct EventsAdapter {
    key: WebhookKey,
    tolerance_s: i64,
}

pub(crate) fn build(config: &EventsConfig, secrets: &SecretLookup) -> SourceEntry {
    let key = super::secret(secrets, &config.secret_env).and_then(|secret| {
        WebhookKey::parse(&secret).map_err(|e| format!("{}: {e}", config.secret_env))
    });
    match key {
        Ok(key) => SourceEntry::Ready(Box::new(EventsAdapter {
            key,
            tolerance_s: config.tolerance.0.as_secs() as i64,
        })),
        Err(reason) => SourceEntry::Unavailable {
            name: SOURCE,
            reason,
        },
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum Time {
    Millis(i64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CanonicalEvent {
    event_id: Option<String>,
    order: String,
    source: String,
    status: String,
    raw_status: Option<String>,
    occurred_at: Option<Time>,
    #[serde(default)]
    fields: orderhub_actors::order::Fields,
}

fn check_name(what: &str, value: &str, index: usize) -> Result<(), IngestError> {
    if value.is_empty() || value.len() > MAX_KEY_LEN || value.chars().any(char::is_control) {
        return Err(IngestError::Malformed(format!(
            "event {index}: {what} must be 1 to {MAX_KEY_LEN} printable characters"
        )));
    }
    Ok(())
}

pub(crate) fn parse_time(time: Time, index: usize) -> Result<Millis, IngestError> {
    match time {
        Time::Millis(ms) => Ok(ms),
        Time::Text(text) => {
            time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as Millis)
                .map_err(|e| {
                    IngestError::Malformed(format!(
                        "event {index}: occurred_at {text:?} is not RFC 3339 ({e})"
                    ))
                })
        }
    }
}

impl SourceAdapter for EventsAdapter {
    fn name(&self) -> &'static str {
        SOURCE
    }

    fn verify(&self, request: &RawRequest<'_>) -> Result<(), IngestError> {
        super::verify_webhook(&self.key, request, self.tolerance_s)
    }

    fn decode(&self, request: &RawRequest<'_>) -> Result<Decoded, IngestError> {
        // The shape is chosen by the first byte, so serde's error names the actual problem
        // (an unknown or missing field) rather than "matched no variant".
        let first = request.body.iter().find(|b| !b.is_ascii_whitespace());
        let webhook_id = request.header("webhook-id").unwrap_or_default();
        // The common case, a well-formed event or array of them, is parsed straight into
        // events (one pass, no intermediate JSON values); anything else goes the slow way below,
        // which names what is wrong with each event.
        let typed = match first {
            Some(b'[') => super::decode_json_keeping_text::<Vec<CanonicalEvent>>(request.body).ok(),
            Some(b'{') => super::decode_json_keeping_text::<CanonicalEvent>(request.body)
                .ok()
                .map(|event| vec![event]),
            _ => None,
        };
        if let Some(batch) = typed.filter(|batch| !batch.is_empty()) {
            let single = batch.len() == 1;
            return Ok(Decoded::from_results(batch.into_iter().enumerate().map(
                |(index, event)| self.map(index, event, webhook_id, single, request.received_at),
            )));
        }
        // Each event is parsed on its own, so that one bad event of an array is rejected alone.
        let batch: Vec<serde_json::Value> = match first {
            Some(b'[') => super::decode_json(request.body),
            Some(b'{') => super::decode_json(request.body).map(|event| vec![event]),
            _ => Err(IngestError::Malformed("not JSON".into())),
        }
        .map_err(|e| match e {
            IngestError::Malformed(detail) => IngestError::Malformed(format!(
                "expected a canonical event object or an array of them: {detail}"
            )),
            other => other,
        })?;
        if batch.is_empty() {
            return Err(IngestError::Malformed("empty event array".into()));
        }
        let single = batch.len() == 1;
        Ok(Decoded::from_results(batch.into_iter().enumerate().map(
            |(index, event)| {
                let event: CanonicalEvent = serde_json::from_value(event)
                    .map_err(|e| IngestError::Malformed(format!("event {index}: {e}")))?;
                self.map(index, event, webhook_id, single, request.received_at)
            },
        )))
    }

    fn ack(&self) -> Response {
        super::accepted()
    }

    fn ack_partial(&self, _request: &RawRequest<'_>, rejected: &[super::Rejected]) -> Response {
        let rejected: Vec<_> = rejected
            .iter()
            .map(|r| serde_json::json!({ "index": r.index, "code": r.error.kind(), "error": r.error.to_string() }))
            .collect();
        axum::Json(serde_json::json!({ "status": "accepted", "rejected": rejected }))
            .into_response()
    }
}

impl EventsAdapter {
    fn map(
        &self,
        index: usize,
        event: CanonicalEvent,
        webhook_id: &str,
        single: bool,
        received_at: Millis,
    ) -> Result<OrderEvent, IngestError> {
        check_name("order", &event.order, index)?;
        check_name("source", &event.source, index)?;
        if event.source == INTERNAL_SOURCE {
            return Err(IngestError::Malformed(format!(
                "event {index}: source {INTERNAL_SOURCE:?} is reserved for orderhub itself"
            )));
        }
        let action = super::parse_status(&event.status).ok_or_else(|| {
            IngestError::Malformed(format!(
                "event {index}: unknown canonical status {:?} (a state name, hold_released or none)",
                event.status
            ))
        })?;
        // Without an event_id the webhook-id (stable across retries) identifies the event.
        let event_id = match event.event_id {
            Some(id) => id,
            None if single => webhook_id.to_owned(),
            None => format!("{webhook_id}:{index}"),
        };
        check_name("event_id", &event_id, index)?;
        let occurred_at = match event.occurred_at {
            Some(time) => parse_time(time, index)?,
            None => received_at,
        };
        Ok(OrderEvent {
            order: event.order,
            source: event.source,
            source_event_id: event_id,
            supersedes: None,
            log_seq: None,
            raw_status: event.raw_status.unwrap_or(event.status),
            action,
            occurred_at,
            received_at,
            fields: event.fields,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;
    use orderhub_actors::order::{EventAction, OrderState};

    fn adapter() -> EventsAdapter {
        EventsAdapter {
            key: WebhookKey::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap(),
            tolerance_s: 300,
        }
    }

    fn decode(body: &str) -> Result<Vec<OrderEvent>, IngestError> {
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", "wh-1".parse().unwrap());
        let mut request = RawRequest::plain(&headers, "", body.as_bytes());
        request.received_at = 5_000;
        match adapter().decode(&request)? {
            Decoded::Events { rejected, .. } if !rejected.is_empty() => {
                Err(rejected.into_iter().next().unwrap().error)
            }
            Decoded::Events { events, .. } => Ok(events),
            Decoded::Verification => panic!("plain events expected"),
        }
    }

    #[test]
    fn one_bad_event_of_an_array_is_rejected_alone() {
        let headers = HeaderMap::new();
        let body = r#"[{"order":"a:1","source":"wms","status":"paid","event_id":"e1"},{"order":"a:1","source":"wms","status":"shiped"},{"order":"a:2"}]"#;
        let Decoded::Events { events, rejected } = adapter()
            .decode(&RawRequest::plain(&headers, "", body.as_bytes()))
            .unwrap()
        else {
            panic!("events expected")
        };
        assert_eq!(events.len(), 1);
        assert_eq!(rejected.iter().map(|r| r.index).collect::<Vec<_>>(), [1, 2]);
        let deep = format!(
            r#"{{"order":"a:1","source":"wms","status":"paid","fields":{{"x":{}}}}}"#,
            "[".repeat(200_000)
        );
        assert!(matches!(
            adapter().decode(&RawRequest::plain(&headers, "", deep.as_bytes())),
            Err(IngestError::Malformed(m)) if m.contains("nests")
        ));
    }

    #[test]
    fn canonical_events_decode_with_times_and_ids() {
        let events = decode(
            r#"{"event_id":"e1","order":"douyin:1","source":"wms","status":"picked","raw_status":"PICK_DONE","occurred_at":"2024-05-01T10:00:00+08:00","fields":{"waybill_no":"SF1"}}"#,
        )
        .unwrap();
        assert_eq!(
            events[0].action,
            EventAction::Move {
                state: OrderState::Picked
            }
        );
        assert_eq!(events[0].raw_status, "PICK_DONE");
        assert_eq!(events[0].occurred_at, 1_714_528_800_000);
        assert_eq!(events[0].fields.to_json()["waybill_no"], "SF1");

        let events = decode(
            r#"[{"order":"a:1","source":"wms","status":"none"},{"order":"a:1","source":"ops","status":"hold_released","occurred_at":42}]"#,
        )
        .unwrap();
        assert_eq!(events[0].source_event_id, "wh-1:0");
        assert_eq!(events[0].occurred_at, 5_000);
        assert_eq!(events[1].action, EventAction::ReleaseHold);
        assert_eq!(events[1].occurred_at, 42);
    }

    #[test]
    fn bad_events_are_named() {
        assert!(matches!(
            decode(r#"{"order":"a:1","source":"wms","status":"shiped"}"#),
            Err(IngestError::Malformed(m)) if m.contains("\"shiped\"")
        ));
        assert!(matches!(
            decode(r#"{"order":"","source":"wms","status":"paid"}"#),
            Err(IngestError::Malformed(m)) if m.contains("order")
        ));
        assert!(matches!(
            decode(r#"{"order":"a:1","source":"orderhub","status":"paid"}"#),
            Err(IngestError::Malformed(m)) if m.contains("reserved")
        ));
        assert!(matches!(
            decode(r#"{"order":"a:1","source":"wms","status":"paid","colour":"red"}"#),
            Err(IngestError::Malformed(m)) if m.contains("colour")
        ));
        assert!(matches!(
            decode(r#"{"order":"a:1","source":"wms","status":"paid","occurred_at":"yesterday"}"#),
            Err(IngestError::Malformed(m)) if m.contains("RFC 3339")
        ));
    }
}
