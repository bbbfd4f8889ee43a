//! Kuaishou (快手小店) HTTP push: the body is base64 of AES-CBC/PKCS#5 ciphertext, key =
//! base64-decode(message key), IV = 16 zero bytes; the plaintext is JSON with `eventId`
//! (unique), `bizId` (the order), `appKey`, `event`, `status`, `updateTime`, `info` (a JSON
//! string) and `test`. Answered `{"result":1}` (shared/reference/protocols.md §1).
//!
//! There is no separate signature: a body that does not decrypt with our message key, or whose
//! `appKey` is not ours, is refused as unauthenticated (401). `test` heartbeats are acknowledged
//! and stored nowhere. Mapping: `event_map` (by event name, `prefix*` allowed) wins over
//! `status_map` (by order status code).

use super::cipher::{Padding, aes_cbc_decrypt};
use super::{
    Decoded, IngestError, RawRequest, Scalar, SecretLookup, SourceAdapter, SourceEntry, StatusTable,
};
use crate::config::KuaishouConfig;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use orderhub_actors::order::{Millis, OrderEvent};
use serde::Deserialize;
use serde_json::{Map, Value};

pub(crate) const SOURCE: &str = "kuaishou";

const ZERO_IV: [u8; 16] = [0; 16];

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
        let order_id = message
            .biz_id
            .map(Scalar::into_string)
            .filter(|id| !id.is_empty() && id != "0")
            .ok_or_else(|| IngestError::Malformed("no bizId (order id)".into()))?;
        let event = message.event.unwrap_or_default();
        let status = message.status.map(Scalar::into_string).unwrap_or_default();
        let action = self
            .event_map
            .get(&event)
            .or_else(|| self.status_map.get(&status))
            .cloned()
            .ok_or_else(|| IngestError::UnknownStatus {
                origin: SOURCE,
                status: format!("{event} status {status}"),
            })?;
        let mut fields = Map::new();
        fields.insert("kuaishou_event".into(), Value::String(event));
        if let Some(msg_id) = message.msg_id {
            fields.insert("kuaishou_msg_id".into(), Value::String(msg_id));
        }
        if let Some(info) = message.info.filter(|i| !i.is_empty()) {
            let info: Value = super::decode_json(info.as_bytes())
                .map_err(|e| IngestError::Malformed(format!("info is not JSON: {e}")))?;
            fields.insert("kuaishou_info".into(), info);
        }
        Ok(Decoded::Events(vec![OrderEvent {
            order: format!("{SOURCE}:{order_id}"),
            source: SOURCE.to_owned(),
            source_event_id: event_id,
            supersedes: None,
            raw_status: status,
            action,
            occurred_at: message
                .update_time
                .or(message.create_time)
                .filter(|t| *t > 0)
                .unwrap_or(received_at),
            received_at,
            fields,
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
        let config = crate::config::Config::embedded().unwrap();
        let secrets: SecretLookup = Arc::new(|name: &str| match name {
            "ORDERHUB_KUAISHOU_APP_KEY" => Some("ks_app_key_test".into()),
            "ORDERHUB_KUAISHOU_MESSAGE_KEY" => Some(KEY.into()),
            _ => None,
        });
        let config = config.sources.kuaishou.unwrap();
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
        adapter().decode(&RawRequest {
            headers: &headers,
            query: "",
            body: body.as_bytes(),
            received_at: 1,
        })
    }

    fn events(body: &str) -> Vec<OrderEvent> {
        match decode(body).unwrap() {
            Decoded::Events(events) => events,
            _ => panic!("events expected"),
        }
    }

    #[test]
    fn fixtures_decrypt_to_their_plaintext() {
        for name in ["pay_success", "delivering", "add_refund", "test_heartbeat"] {
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
    fn statuses_map_and_refunds_are_recorded() {
        let paid = events(include_str!(
            "../../tests/fixtures/kuaishou/pay_success.body"
        ));
        assert_eq!(paid[0].order, "kuaishou:2418800012345678");
        assert_eq!(paid[0].source_event_id, "evt_6a1b2c3d4e5f");
        assert_eq!(paid[0].occurred_at, 1_700_000_005_000);
        assert_eq!(
            paid[0].action,
            EventAction::Move {
                state: OrderState::Paid
            }
        );
        assert_eq!(paid[0].fields["kuaishou_info"]["sellerId"], 1234567);
        let shipped = events(include_str!(
            "../../tests/fixtures/kuaishou/delivering.body"
        ));
        assert_eq!(
            shipped[0].action,
            EventAction::Move {
                state: OrderState::Shipped
            }
        );
        let refund = events(include_str!(
            "../../tests/fixtures/kuaishou/add_refund.body"
        ));
        assert_eq!(refund[0].action, EventAction::Inform);
        assert!(matches!(
            decode(include_str!(
                "../../tests/fixtures/kuaishou/test_heartbeat.body"
            ))
            .unwrap(),
            Decoded::Verification
        ));
    }

    #[test]
    fn a_foreign_key_or_app_is_unauthenticated_and_garbage_is_malformed() {
        let body = include_str!("../../tests/fixtures/kuaishou/pay_success.body");
        let mut other = adapter();
        other.message_key = b"another-key-16by".to_vec();
        let headers = HeaderMap::new();
        let request = RawRequest {
            headers: &headers,
            query: "",
            body: body.as_bytes(),
            received_at: 1,
        };
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
