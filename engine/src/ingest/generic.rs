//! Configurable JSON sources for dealer portals and custom systems: `[sources.generic.NAME]`
//! serves `POST /v1/ingest/NAME`, verifies Standard Webhooks headers with the `whsec_` secret
//! the config names, and finds each event's parts by JSON pointer (RFC 6901): the order id
//! (`order_path`, key `{channel}:{id}`), the status (`status_path`, mapped by `status_map`),
//! and optionally the event id (`event_id_path`, else the `webhook-id`), the time
//! (`occurred_at_path`: milliseconds, seconds or RFC 3339) and named `fields`. A body is one
//! event, an array of them, or an object holding the array at `events_path`. Answered
//! `{"status":"accepted"}`.

use super::events::{Time, parse_time};
use super::registry::{self, Configured, Issue, SourcePlugin};
use super::{
    Decoded, IngestError, RawRequest, SecretLookup, SourceAdapter, SourceEntry, StatusTable,
};
use crate::config::HumanDuration;
use crate::signing::WebhookKey;
use axum::response::Response;
use orderhub_actors::order::{Millis, OrderEvent};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// `[sources.generic.NAME]`: a JSON source described by JSON pointers, signed with Standard
/// Webhooks.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GenericConfig {
    /// Environment variable holding the `whsec_…` secret.
    pub(crate) secret_env: String,
    /// Accepted clock difference of `webhook-timestamp`.
    #[serde(default = "registry::default_tolerance")]
    pub(crate) tolerance: HumanDuration,
    /// The order key's prefix: `{channel}:{order id}`.
    pub(crate) channel: String,
    /// Pointer to the array of events, when the body wraps them.
    #[serde(default)]
    pub(crate) events_path: Option<String>,
    /// Pointer to the order id within an event.
    pub(crate) order_path: String,
    /// Pointer to the status within an event.
    pub(crate) status_path: String,
    /// Pointer to the event id (else the `webhook-id`).
    #[serde(default)]
    pub(crate) event_id_path: Option<String>,
    /// Pointer to the event time (ms, s or RFC 3339; else the time received).
    #[serde(default)]
    pub(crate) occurred_at_path: Option<String>,
    /// Field name → pointer, kept in the order's fields (`waybill_no` links a courier).
    #[serde(default)]
    pub(crate) fields: BTreeMap<String, String>,
    /// Status value → canonical status.
    pub(crate) status_map: BTreeMap<String, String>,
}

/// Configurable JSON sources, `[sources.generic.NAME]` (`POST /v1/ingest/NAME`).
pub(crate) struct Plugin;

impl SourcePlugin for Plugin {
    fn key(&self) -> &'static str {
        "generic"
    }

    fn configure(&self, table: toml::Value) -> Result<Vec<Configured>, Issue> {
        let sources: BTreeMap<String, toml::Value> = registry::parse("sources.generic", table)?;
        let mut configured = Vec::with_capacity(sources.len());
        for (name, table) in sources {
            let path = format!("sources.generic.{name}");
            let config: GenericConfig = registry::parse(&path, table)?;
            validate(&name, &config)?;
            registry::statuses(&format!("{path}.status_map"), &config.status_map)?;
            // Sources are configured once per process: the name lives as long as it does.
            let name: &'static str = Box::leak(name.into_boxed_str());
            configured.push(Configured::Push {
                name,
                build: Box::new(move |secrets| build(name, &config, secrets)),
            });
        }
        Ok(configured)
    }
}

/// Events per request at most.
const MAX_EVENTS: usize = 1000;
/// Numbers below this are seconds, not milliseconds (it is March 1973 in ms).
const SECONDS_BELOW: i64 = 100_000_000_000;

pub(crate) struct GenericAdapter {
    name: &'static str,
    key: WebhookKey,
    tolerance_s: i64,
    config: GenericConfig,
    status_map: StatusTable,
}

/// Builds the source `name`.
pub(crate) fn build(
    name: &'static str,
    config: &GenericConfig,
    secrets: &SecretLookup,
) -> SourceEntry {
    let key = super::secret(secrets, &config.secret_env).and_then(|secret| {
        WebhookKey::parse(&secret).map_err(|e| format!("{}: {e}", config.secret_env))
    });
    match key {
        Ok(key) => SourceEntry::Ready(Box::new(GenericAdapter {
            name,
            key,
            tolerance_s: config.tolerance.0.as_secs() as i64,
            status_map: StatusTable::new(&config.status_map),
            config: config.clone(),
        })),
        Err(reason) => SourceEntry::Unavailable { name, reason },
    }
}

/// A scalar at `pointer` as text.
fn text_at(value: &Value, pointer: &str) -> Option<String> {
    match value.pointer(pointer)? {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

impl GenericAdapter {
    fn event(
        &self,
        index: usize,
        item: &Value,
        webhook_id: &str,
        single: bool,
        received_at: Millis,
    ) -> Result<OrderEvent, IngestError> {
        let config = &self.config;
        let order_id = text_at(item, &config.order_path).ok_or_else(|| {
            IngestError::Malformed(format!(
                "event {index}: no order id at {}",
                config.order_path
            ))
        })?;
        let status = text_at(item, &config.status_path).ok_or_else(|| {
            IngestError::Malformed(format!(
                "event {index}: no status at {}",
                config.status_path
            ))
        })?;
        let action = self.status_map.map(&status);
        let event_id = match config
            .event_id_path
            .as_deref()
            .and_then(|p| text_at(item, p))
        {
            Some(id) => id,
            None if single => webhook_id.to_owned(),
            None => format!("{webhook_id}:{index}"),
        };
        let occurred_at = match config
            .occurred_at_path
            .as_deref()
            .and_then(|p| item.pointer(p))
        {
            Some(Value::Number(n)) => match n.as_i64() {
                Some(t) if t < SECONDS_BELOW => t * 1000,
                Some(t) => t,
                None => {
                    return Err(IngestError::Malformed(format!(
                        "event {index}: occurred_at is not an integer"
                    )));
                }
            },
            Some(Value::String(text)) => parse_time(Time::Text(text.clone()), index)?,
            _ => received_at,
        };
        let mut fields = Map::new();
        for (name, pointer) in &config.fields {
            if let Some(value) = item.pointer(pointer).filter(|v| !v.is_null()) {
                fields.insert(name.clone(), value.clone());
            }
        }
        Ok(OrderEvent {
            order: format!("{}:{order_id}", config.channel),
            source: self.name.to_owned(),
            source_event_id: event_id,
            supersedes: None,
            log_seq: None,
            raw_status: status,
            action,
            occurred_at,
            received_at,
            fields: fields.into(),
        })
    }
}

impl SourceAdapter for GenericAdapter {
    fn name(&self) -> &'static str {
        self.name
    }

    fn verify(&self, request: &RawRequest<'_>) -> Result<(), IngestError> {
        super::verify_webhook(&self.key, request, self.tolerance_s)
    }

    fn decode(&self, request: &RawRequest<'_>) -> Result<Decoded, IngestError> {
        let body: Value = super::decode_json(request.body)
            .map_err(|e| IngestError::Malformed(format!("body is not JSON: {e}")))?;
        let items: Vec<&Value> = match (&self.config.events_path, &body) {
            (Some(path), _) => match body.pointer(path) {
                Some(Value::Array(items)) => items.iter().collect(),
                _ => {
                    return Err(IngestError::Malformed(format!(
                        "no array of events at {path}"
                    )));
                }
            },
            (None, Value::Array(items)) => items.iter().collect(),
            (None, item) => vec![item],
        };
        if items.is_empty() || items.len() > MAX_EVENTS {
            return Err(IngestError::Malformed(format!(
                "a request carries 1 to {MAX_EVENTS} events, got {}",
                items.len()
            )));
        }
        let webhook_id = request.header("webhook-id").unwrap_or_default();
        let single = items.len() == 1;
        Ok(Decoded::from_results(items.iter().enumerate().map(
            |(i, item)| self.event(i, item, webhook_id, single, request.received_at),
        )))
    }

    fn ack(&self) -> Response {
        super::accepted()
    }
}

/// Checks a generic source's settings; the error names the offending key.
pub(crate) fn validate(name: &str, config: &GenericConfig) -> Result<(), (String, String)> {
    let key = |field: &str| format!("sources.generic.{name}.{field}");
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    {
        return Err((
            format!("sources.generic.{name}"),
            "a source name is lowercase letters, digits, '_' and '-'".into(),
        ));
    }
    if registry::reserved(name) {
        return Err((
            format!("sources.generic.{name}"),
            format!("{name:?} is a built-in source; choose another name"),
        ));
    }
    if config.channel.is_empty() || config.channel.contains(':') {
        return Err((key("channel"), "a channel name without ':'".into()));
    }
    let pointers: BTreeMap<String, &str> = [
        (key("order_path"), Some(config.order_path.as_str())),
        (key("status_path"), Some(config.status_path.as_str())),
        (key("event_id_path"), config.event_id_path.as_deref()),
        (key("occurred_at_path"), config.occurred_at_path.as_deref()),
        (key("events_path"), config.events_path.as_deref()),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k, v?)))
    .chain(
        config
            .fields
            .iter()
            .map(|(field, pointer)| (key(&format!("fields.{field}")), pointer.as_str())),
    )
    .collect();
    for (key, pointer) in pointers {
        if !pointer.starts_with('/') {
            return Err((
                key,
                format!("{pointer:?} is not a JSON pointer (it starts with '/')"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;
    use orderhub_actors::order::{EventAction, OrderState};

    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

    fn config() -> GenericConfig {
        let config = crate::config::Config::layered(Some((
            "test.toml".into(),
            include_str!("../../tests/fixtures/generic/dealer_portal.toml").into(),
        )))
        .unwrap();
        let sources: BTreeMap<String, toml::Value> =
            super::super::registry::parse("sources.generic", config.sources["generic"].clone())
                .unwrap();
        super::super::registry::parse(
            "sources.generic.dealer_portal",
            sources["dealer_portal"].clone(),
        )
        .unwrap()
    }

    fn adapter() -> GenericAdapter {
        let config = config();
        GenericAdapter {
            name: "dealer_portal",
            key: WebhookKey::parse(SECRET).unwrap(),
            tolerance_s: 300,
            status_map: StatusTable::new(&config.status_map),
            config,
        }
    }

    fn decode(body: &str) -> Result<Vec<OrderEvent>, IngestError> {
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", "msg_1".parse().unwrap());
        super::super::events_of(adapter().decode(&RawRequest::plain(&headers, "", body.as_bytes())))
    }

    #[test]
    fn paths_status_table_and_fields_come_from_config() {
        let events = decode(include_str!(
            "../../tests/fixtures/generic/dealer_portal.json"
        ))
        .unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].order, "dealer:PO-2023-0042");
        assert_eq!(events[0].source, "dealer_portal");
        assert_eq!(events[0].source_event_id, "evt-9001");
        assert_eq!(
            events[0].action,
            EventAction::Move {
                state: OrderState::Paid
            }
        );
        assert_eq!(
            events[0].occurred_at, 1_700_000_000_000,
            "seconds become ms"
        );
        assert_eq!(events[0].fields.to_json()["amount"], 1288.5);
        assert_eq!(
            events[1].action,
            EventAction::Move {
                state: OrderState::Shipped
            }
        );
        assert_eq!(events[1].fields.to_json()["waybill_no"], "SF1400999");
        assert_eq!(events[1].occurred_at, 1_700_003_600_000, "RFC 3339");
    }

    #[test]
    fn missing_parts_are_named_and_unknown_statuses_recorded() {
        let one = r#"{"updates": [{"order": {"po": "PO-1", "state": "LOST"}}]}"#;
        let events = decode(one).unwrap();
        assert_eq!(
            events[0].action,
            EventAction::Unmapped,
            "recorded, never refused"
        );
        assert_eq!(events[0].raw_status, "LOST");
        let none = r#"{"updates": [{"order": {"state": "CONFIRMED"}}]}"#;
        match decode(none) {
            Err(IngestError::Malformed(message)) => assert!(message.contains("/order/po")),
            other => panic!("{:?}", other.err()),
        }
        // Without an event id path value, the webhook-id identifies a single event.
        let events =
            decode(r#"{"updates": [{"order": {"po": "PO-2", "state": "CONFIRMED"}}]}"#).unwrap();
        assert_eq!(events[0].source_event_id, "msg_1");
        assert!(matches!(decode("[]"), Err(IngestError::Malformed(_))));
        assert!(matches!(
            decode(r#"{"updates": []}"#),
            Err(IngestError::Malformed(_))
        ));
    }

    #[test]
    fn config_errors_name_the_key() {
        let mut bad = config();
        bad.order_path = "order.po".into();
        assert_eq!(
            validate("dealer_portal", &bad).unwrap_err().0,
            "sources.generic.dealer_portal.order_path"
        );
        assert!(
            validate("douyin", &config()).is_err(),
            "built-in names are taken"
        );
        assert!(validate("Bad Name", &config()).is_err());
    }
}
