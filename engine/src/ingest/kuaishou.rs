//! Kuaishou (快手小店) HTTP push: the body is base64 of AES-CBC/PKCS#5 ciphertext, key =
//! base64-decode(message key), IV = 16 zero bytes; the plaintext is JSON with `eventId`
//! (unique), `bizId`, `appKey`, `event`, `status`, `updateTime`, `info` (a JSON string) and
//! `test`. Answered `{"result":1}` (shared/reference/protocols.md §1; message shapes after
//! zsmhub/ks-sdk `message/*.go`).
//!
//! The top-level `status` is the message's *delivery* status (0–3), kept as
//! `fields.kuaishou_delivery_status` and never mapped. The order is `info.oid` (order events) or
//! `info.orderId` (after-sale events, whose `bizId` is the *refund* id, kept as
//! `fields.kuaishou_refund_id`); the order status is `info.status`.
//!
//! There is no separate signature: a body that does not decrypt with our message key, or whose
//! `appKey` is not ours, is refused as unauthenticated (401). `test` heartbeats are acknowledged
//! and stored nowhere. Mapping: `event_map` (by event name, `prefix*` allowed) wins over
//! `status_map` (by `info.status`); anything else is journaled as unmapped.

use super::cipher::{Padding, aes_cbc_decrypt};
use super::registry::{self, Configured, Issue, SourcePlugin};
use super::{
    Decoded, IngestError, RawRequest, Scalar, SecretLookup, SourceAdapter, SourceEntry, StatusTable,
};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use orderhub_actors::order::{EventAction, Millis, OrderEvent};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

pub(crate) const SOURCE: &str = "kuaishou";
/// The source of its order-detail answers and the sink of its fetches.
pub(crate) const API_SOURCE: &str = "kuaishou_api";

mod details;

/// `[sources.kuaishou]`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KuaishouConfig {
    /// Environment variable holding the app key (pushes naming another are refused).
    pub(crate) app_key_env: String,
    /// Environment variable holding the base64 message key (AES).
    pub(crate) message_key_env: String,
    /// Order status code → canonical status.
    pub(crate) status_map: BTreeMap<String, String>,
    /// Event name (a trailing `*` matches a prefix) → canonical status; checked first.
    #[serde(default)]
    pub(crate) event_map: BTreeMap<String, String>,
    /// `[sources.kuaishou.details]`: fetch each order's contents with `open.order.detail`.
    #[serde(default)]
    pub(crate) details: Option<super::details::DetailsConfig>,
}

/// The Kuaishou push, `[sources.kuaishou]` (`POST /v1/ingest/kuaishou`).
pub(crate) struct Plugin;

impl SourcePlugin for Plugin {
    fn key(&self) -> &'static str {
        SOURCE
    }

    fn configure(&self, table: toml::Value) -> Result<Vec<Configured>, Issue> {
        let config: KuaishouConfig = registry::parse("sources.kuaishou", table)?;
        registry::statuses("sources.kuaishou.status_map", &config.status_map)?;
        registry::statuses("sources.kuaishou.event_map", &config.event_map)?;
        let mut configured = Vec::new();
        if let Some(table) = &config.details {
            details::SignMethod::parse(table.sign_method.as_deref())
                .map_err(|problem| ("sources.kuaishou.details.sign_method".to_owned(), problem))?;
            let key_env = config.app_key_env.clone();
            configured.push(super::details::configure(
                format!("sources.{SOURCE}.details"),
                SOURCE,
                API_SOURCE,
                table,
                &details::TAKES,
                details::DEFAULT_RATE,
                &details::REFETCH_ON,
                move |table, secrets, data_dir| {
                    let key = super::secret(secrets, &key_env)?;
                    let client = details::KuaishouDetails::new(table, key, secrets, data_dir)?;
                    Ok(std::sync::Arc::new(client)
                        as std::sync::Arc<dyn super::details::DetailsClient>)
                },
            )?);
        }
        configured.insert(0, Configured::push(SOURCE, config, build));
        Ok(configured)
    }
}

const ZERO_IV: [u8; 16] = [0; 16];

/// Events about an after-sale (refund): `bizId` is the refund id, the order is in `info`.
const AFTER_SALE_PREFIX: &str = "kwaishop_aftersales_";

pub(crate) struct KuaishouAdapter {
    app_key: String,
    message_key: Vec<u8>,
    status_map: StatusTable,
    event_map: StatusTable,
}

pub(crate) fn build(config: &KuaishouConfig, secrets: &SecretLookup) -> SourceEntry {
    let credentials = super::secret(secrets, &config.app_key_env).and_then(|app_key| {
        let encoded = super::secret(secrets, &config.message_key_env)?;
        let key = STANDARD
            .decode(encoded.trim())
            .map_err(|e| format!("{} is not base64: {e}", config.message_key_env))?;
        if ![16, 24, 32].contains(&key.len()) {
            return Err(format!(
                "{} must decode to 16, 24 or 32 bytes, got {}",
                config.message_key_env,
                key.len()
            ));
        }
        Ok((app_key, key))
    });
    match credentials {
        Ok((app_key, message_key)) => SourceEntry::Ready(Box::new(KuaishouAdapter {
            app_key,
            message_key,
            status_map: StatusTable::new(&config.status_map),
            event_map: StatusTable::new(&config.event_map),
        })),
        Err(reason) => SourceEntry::Unavailable {
            name: SOURCE,
            reason,
        },
    }
}

/// The decrypted message.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Message {
    event_id: Option<String>,
    msg_id: Option<String>,
    biz_id: Option<Scalar>,
    app_key: Option<String>,
    event: Option<String>,
    status: Option<Scalar>,
    update_time: Option<Millis>,
    create_time: Option<Millis>,
    info: Option<String>,
    #[serde(default)]
    test: bool,
}

impl KuaishouAdapter {
    /// The plaintext of a push body.
    fn decrypt(&self, body: &[u8]) -> Result<Vec<u8>, IngestError> {
        let text = std::str::from_utf8(body)
            .map_err(|_| IngestError::Malformed("body is not base64 text".into()))?;
        let ciphertext = STANDARD
            .decode(text.trim())
            .map_err(|e| IngestError::Malformed(format!("body is not base64: {e}")))?;
        aes_cbc_decrypt(&self.message_key, &ZERO_IV, &ciphertext, Padding::Pkcs7).map_err(|e| {
            IngestError::BadSignature(format!("body does not decrypt with the message key: {e}"))
        })
    }

    fn map(&self, message: Message, received_at: Millis) -> Result<Decoded, IngestError> {
        if message.app_key.as_deref() != Some(self.app_key.as_str()) {
            return Err(IngestError::BadSignature(
                "appKey does not match the configured app key".into(),
            ));
        }
        if message.test {
            return Ok(Decoded::Verification);
        }
        let event_id = message
            .event_id
            .filter(|id| !id.is_empty())
            .ok_or_else(|| IngestError::Malformed("no eventId".into()))?;
        let event = message.event.unwrap_or_default();
        let mut info: Map<String, Value> = match message.info.filter(|i| !i.is_empty()) {
            Some(info) => super::decode_json(info.as_bytes())
                .map_err(|e| IngestError::Malformed(format!("info is not a JSON object: {e}")))?,
            None => Map::new(),
        };
        let after_sale = event.starts_with(AFTER_SALE_PREFIX);
        let id_at = |info: &Map<String, Value>, key: &str| {
            info.get(key)
                .cloned()
                .and_then(|id| serde_json::from_value::<Scalar>(id).ok())
                .map(Scalar::into_string)
                .filter(|id| !id.is_empty() && id != "0")
        };
        // An after-sale's bizId is its refund id: the order is named in `info` only.
        let order_id = if after_sale {
            id_at(&info, "orderId").or_else(|| id_at(&info, "oid"))
        } else {
            id_at(&info, "oid").or_else(|| message.biz_id.map(Scalar::into_string))
        }
        .filter(|id| !id.is_empty() && id != "0")
        .ok_or_else(|| {
            IngestError::Malformed(format!(
                "{event}: no order id in info ({})",
                if after_sale { "orderId" } else { "oid" }
            ))
        })?;
        let status = id_at(&info, "status");
        let (action, raw_status) = match (self.event_map.get(&event), status) {
            (Some(action), _) => (action.clone(), event.clone()),
            (None, Some(status)) if !after_sale => (self.status_map.map(&status), status),
            (None, Some(status)) => (EventAction::Unmapped, format!("{event} status {status}")),
            (None, None) => (EventAction::Unmapped, event.clone()),
        };
        let mut fields = Map::new();
        fields.insert("kuaishou_event".into(), Value::String(event));
        if let Some(msg_id) = message.msg_id {
            fields.insert("kuaishou_msg_id".into(), Value::String(msg_id));
        }
        if let Some(delivery) = message.status {
            fields.insert(
                "kuaishou_delivery_status".into(),
                Value::String(delivery.into_string()),
            );
        }
        if after_sale {
            if let Some(refund) = id_at(&info, "refundId") {
                fields.insert("kuaishou_refund_id".into(), Value::String(refund));
            }
            info.remove("orderId");
        }
        if !info.is_empty() {
            fields.insert("kuaishou_info".into(), Value::Object(info));
        }
        Ok(Decoded::events(vec![OrderEvent {
            order: format!("{SOURCE}:{order_id}"),
            source: SOURCE.to_owned(),
            source_event_id: event_id,
            supersedes: None,
            log_seq: None,
            raw_status,
            action,
            occurred_at: message
                .update_time
                .or(message.create_time)
                .filter(|t| *t > 0)
                .unwrap_or(received_at),
            received_at,
            fields: fields.into(),
        }]))
    }
}

impl SourceAdapter for KuaishouAdapter {
    fn name(&self) -> &'static str {
        SOURCE
    }

    /// Authentication is the decryption itself, done once in [`Self::decode`].
    fn verify(&self, _request: &RawRequest<'_>) -> Result<(), IngestError> {
        Ok(())
    }

    fn decode(&self, request: &RawRequest<'_>) -> Result<Decoded, IngestError> {
        let plain = self.decrypt(request.body)?;
        let message: Message = super::decode_json(&plain).map_err(|e| {
            IngestError::Malformed(format!("decrypted body is not a Kuaishou message: {e}"))
        })?;
        self.map(message, request.received_at)
    }

    fn ack(&self) -> Response {
        axum::Json(serde_json::json!({ "result": 1 })).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;
    use orderhub_actors::order::{EventAction, OrderState};
    use std::sync::Arc;

    /// base64("kuaishou-msg-key"); the fixtures were encrypted with it by an independent
    /// implementation (Python `cryptography`).
    const KEY: &str = "a3VhaXNob3UtbXNnLWtleQ==";

    fn adapter() -> KuaishouAdapter {
        let secrets: SecretLookup = Arc::new(|name: &str| match name {
            "ORDERHUB_KUAISHOU_APP_KEY" => Some("ks_app_key_test".into()),
            "ORDERHUB_KUAISHOU_MESSAGE_KEY" => Some(KEY.into()),
            _ => None,
        });
        let config: KuaishouConfig = super::super::registry::default_config("kuaishou");
        assert!(matches!(build(&config, &secrets), SourceEntry::Ready(_)));
        KuaishouAdapter {
            app_key: "ks_app_key_test".into(),
            message_key: STANDARD.decode(KEY).unwrap(),
            status_map: StatusTable::new(&config.status_map),
            event_map: StatusTable::new(&config.event_map),
        }
    }

    fn decode(body: &str) -> Result<Decoded, IngestError> {
        let headers = HeaderMap::new();
        adapter().decode(&RawRequest::plain(&headers, "", body.as_bytes()))
    }

    fn events(body: &str) -> Vec<OrderEvent> {
        super::super::events_of(decode(body)).unwrap()
    }

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!(
            "{}/tests/fixtures/kuaishou/{name}.body",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn fixtures_decrypt_to_their_plaintext() {
        for name in [
            "pay_success",
            "delivering",
            "add_refund",
            "unknown_status",
            "test_heartbeat",
        ] {
            let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kuaishou/");
            let body = std::fs::read(format!("{dir}{name}.body")).unwrap();
            let plain: Value = serde_json::from_slice(&adapter().decrypt(&body).unwrap()).unwrap();
            let expected: Value =
                serde_json::from_slice(&std::fs::read(format!("{dir}{name}.json")).unwrap())
                    .unwrap();
            assert_eq!(plain, expected, "{name}");
        }
    }

    #[test]
    fn the_order_status_is_info_status_never_the_delivery_status() {
        let paid = events(&fixture("pay_success"));
        assert_eq!(paid[0].order, "kuaishou:2418800012345678");
        assert_eq!(paid[0].source_event_id, "243_4027_6a1b2c3d4e5f");
        assert_eq!(paid[0].occurred_at, 1_700_000_005_000);
        assert_eq!(paid[0].raw_status, "30");
        assert_eq!(
            paid[0].action,
            EventAction::Move {
                state: OrderState::Paid
            }
        );
        assert_eq!(paid[0].fields.to_json()["kuaishou_delivery_status"], "2");
        assert_eq!(
            paid[0].fields.to_json()["kuaishou_info"]["sellerId"],
            1234567
        );
        let shipped = events(&fixture("delivering"));
        assert_eq!(
            shipped[0].action,
            EventAction::Move {
                state: OrderState::Shipped
            }
        );
        let unknown = events(&fixture("unknown_status"));
        assert_eq!(unknown[0].action, EventAction::Unmapped);
        assert_eq!(unknown[0].raw_status, "35");
        assert!(matches!(
            decode(&fixture("test_heartbeat")).unwrap(),
            Decoded::Verification
        ));
    }

    #[test]
    fn an_after_sale_is_recorded_on_its_order_never_on_the_refund_id() {
        let refund = events(&fixture("add_refund"));
        assert_eq!(refund[0].order, "kuaishou:2418800012345678");
        assert_eq!(
            refund[0].fields.to_json()["kuaishou_refund_id"],
            "2102345678901234"
        );
        assert_eq!(refund[0].action, EventAction::Inform);
        assert_eq!(refund[0].raw_status, "kwaishop_aftersales_addRefund");
    }

    #[test]
    fn a_foreign_key_or_app_is_unauthenticated_and_garbage_is_malformed() {
        let body = include_str!("../../tests/fixtures/kuaishou/pay_success.body");
        let mut other = adapter();
        other.message_key = b"another-key-16by".to_vec();
        let headers = HeaderMap::new();
        let request = RawRequest::plain(&headers, "", body.as_bytes());
        assert!(matches!(
            other.decode(&request),
            Err(IngestError::BadSignature(_) | IngestError::Malformed(_))
        ));
        let mut foreign = adapter();
        foreign.app_key = "someone-else".into();
        assert!(matches!(
            foreign.decode(&request),
            Err(IngestError::BadSignature(_))
        ));
        assert!(matches!(decode("%%%"), Err(IngestError::Malformed(_))));
        assert!(matches!(decode("AAAA"), Err(IngestError::BadSignature(_))));
    }
}
