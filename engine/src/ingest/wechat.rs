//! WeChat Channels shop (微信小店) message push, JSON format.
//!
//! - URL check: `GET ?signature&timestamp&nonce&echostr`, signature =
//!   sha1(concat(sort([token, timestamp, nonce]))); answered with `echostr` as plain text.
//! - Plain mode: `POST ?signature&timestamp&nonce` with `{ToUserName, FromUserName, CreateTime,
//!   MsgType:"event", Event, order_info:{order_id}}`.
//! - Safe mode: `POST ?…&encrypt_type=aes&msg_signature` with `{ToUserName, Encrypt}`;
//!   msg_signature = sha1(concat(sort([token, timestamp, nonce, Encrypt]))); `Encrypt` is
//!   base64 AES-256-CBC (key = base64(EncodingAESKey + "="), IV = its first 16 bytes, PKCS#7
//!   to 32 bytes) of 16 random bytes, a 4-byte big-endian length, the message and the app id.
//! - Answered `success` (shared/reference/protocols.md §1).
//!
//! The EncodingAESKey is decoded allowing non-zero trailing bits, as WeChat's own libraries do
//! (its sample key and most real keys are non-canonical base64). Since the signatures cover the
//! query only, both modes refuse (401 `replayed`) a `timestamp` outside ±`tolerance` and a
//! `nonce` already accepted within that window; a nonce counts once its request is accepted.
//! `channels_ec_order_deliver` with `order_info.finish_delivery = 0` (partial delivery) is
//! recorded, never `shipped`, whatever `event_map` says.
//!
//! WeChat gives events no id; the event id is `{Event}:{order_id}:{CreateTime}:{FromUserName}`,
//! the same for every re-push of one event, which is what WeChat recommends deduplicating on.

use super::cipher::{Padding, aes_cbc_decrypt};
use super::registry::{self, Configured, Issue, SourcePlugin};
use super::{
    Decoded, IngestError, RawRequest, Scalar, SecretLookup, SourceAdapter, SourceEntry, StatusTable,
};
use crate::config::HumanDuration;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use orderhub_actors::order::{EventAction, Millis, OrderEvent};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha1::{Digest, Sha1};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};

pub(crate) const SOURCE: &str = "wechat";
/// The source of its order-detail answers and the sink of its fetches.
pub(crate) const API_SOURCE: &str = "wechat_api";

mod details;

/// `[sources.wechat]`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WechatConfig {
    /// Environment variable holding the push token.
    pub(crate) token_env: String,
    /// Environment variable holding the EncodingAESKey (needed only in safe mode).
    pub(crate) aes_key_env: String,
    /// Accepted clock difference of the query's `timestamp`; a nonce is refused twice within it.
    #[serde(default = "registry::default_tolerance")]
    pub(crate) tolerance: HumanDuration,
    /// Event name (a trailing `*` matches a prefix) → canonical status.
    pub(crate) event_map: BTreeMap<String, String>,
    /// `[sources.wechat.details]`: fetch each order's contents with `channels/ec/order/get`.
    #[serde(default)]
    pub(crate) details: Option<super::details::DetailsConfig>,
}

/// The WeChat Channels shop push, `[sources.wechat]` (`GET`/`POST /v1/ingest/wechat`).
pub(crate) struct Plugin;

impl SourcePlugin for Plugin {
    fn key(&self) -> &'static str {
        SOURCE
    }

    fn configure(&self, table: toml::Value) -> Result<Vec<Configured>, Issue> {
        let config: WechatConfig = registry::parse("sources.wechat", table)?;
        registry::statuses("sources.wechat.event_map", &config.event_map)?;
        if config.tolerance.0.is_zero() {
            return Err((
                "sources.wechat.tolerance".into(),
                "must be longer than 0s".into(),
            ));
        }
        let mut configured = Vec::new();
        if let Some(table) = &config.details {
            configured.push(super::details::configure(
                format!("sources.{SOURCE}.details"),
                SOURCE,
                API_SOURCE,
                table,
                &details::TAKES,
                details::DEFAULT_RATE,
                &details::REFETCH_ON,
                |table, secrets, _data_dir| {
                    let client = details::WechatDetails::new(table, secrets)?;
                    Ok(std::sync::Arc::new(client)
                        as std::sync::Arc<dyn super::details::DetailsClient>)
                },
            )?);
        }
        configured.insert(0, Configured::push(SOURCE, config, build));
        Ok(configured)
    }
}

/// The delivery event whose `finish_delivery = 0` means only part of the order was sent.
const DELIVER_EVENT: &str = "channels_ec_order_deliver";

pub(crate) struct WechatAdapter {
    token: String,
    /// The AES key of safe mode; `Err` names the variable when it is not set.
    aes_key: Result<Vec<u8>, String>,
    event_map: StatusTable,
    nonces: NonceWindow,
}

/// Nonces accepted within the timestamp tolerance (the signature covers only the query, so
/// this is what stops a logged query string from carrying another body).
struct NonceWindow {
    tolerance_s: i64,
    /// nonce → the request's timestamp.
    seen: DashMap<String, i64>,
    last_pruned_s: AtomicI64,
}

impl NonceWindow {
    fn new(tolerance_s: i64) -> Self {
        NonceWindow {
            tolerance_s,
            seen: DashMap::new(),
            last_pruned_s: AtomicI64::new(0),
        }
    }

    /// Checks the timestamp against `now_s` and reserves the nonce.
    fn reserve(&self, timestamp: &str, nonce: &str, now_s: i64) -> Result<(), IngestError> {
        let at: i64 = timestamp.parse().map_err(|_| {
            IngestError::BadSignature(format!("timestamp {timestamp:?} is not a number"))
        })?;
        if (now_s - at).abs() > self.tolerance_s {
            return Err(IngestError::Replayed(format!(
                "timestamp {at} is more than {} s from the engine's clock",
                self.tolerance_s
            )));
        }
        if now_s - self.last_pruned_s.load(Ordering::Relaxed) > self.tolerance_s {
            self.last_pruned_s.store(now_s, Ordering::Relaxed);
            self.seen
                .retain(|_, seen| now_s - *seen <= self.tolerance_s);
        }
        match self.seen.entry(nonce.to_owned()) {
            Entry::Occupied(_) => Err(IngestError::Replayed(format!(
                "nonce {nonce:?} was already used within {} s",
                self.tolerance_s
            ))),
            Entry::Vacant(slot) => {
                slot.insert(at);
                Ok(())
            }
        }
    }

    /// Frees a nonce whose request was not accepted (the platform may retry with it).
    fn release(&self, nonce: &str) {
        self.seen.remove(nonce);
    }
}

pub(crate) fn build(config: &WechatConfig, secrets: &SecretLookup) -> SourceEntry {
    let token = match super::secret(secrets, &config.token_env) {
        Ok(token) => token,
        Err(reason) => {
            return SourceEntry::Unavailable {
                name: SOURCE,
                reason,
            };
        }
    };
    let aes_key = match super::secret(secrets, &config.aes_key_env) {
        Ok(encoded) => match decode_aes_key(&encoded) {
            Ok(key) => Ok(key),
            Err(reason) => {
                return SourceEntry::Unavailable {
                    name: SOURCE,
                    reason: format!("{}: {reason}", config.aes_key_env),
                };
            }
        },
        Err(reason) => Err(format!("safe mode needs the AES key: {reason}")),
    };
    SourceEntry::Ready(Box::new(WechatAdapter {
        token,
        aes_key,
        event_map: StatusTable::new(&config.event_map),
        nonces: NonceWindow::new(config.tolerance.0.as_secs() as i64),
    }))
}

/// Base64 as WeChat's libraries decode the EncodingAESKey: non-zero trailing bits allowed,
/// with or without the padding `=`.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// EncodingAESKey is 43 characters of base64 without its `=`.
fn decode_aes_key(encoded: &str) -> Result<Vec<u8>, String> {
    let key = LENIENT
        .decode(encoded.trim())
        .map_err(|e| format!("not an EncodingAESKey (43 base64 characters): {e}"))?;
    if key.len() != 32 {
        return Err(format!(
            "EncodingAESKey must decode to 32 bytes, got {}",
            key.len()
        ));
    }
    Ok(key)
}

/// Lowercase hex SHA-1 of the sorted, concatenated parts.
pub(crate) fn sorted_sha1(parts: &[&str]) -> String {
    let mut sorted = parts.to_vec();
    sorted.sort_unstable();
    let digest = Sha1::digest(sorted.concat().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Envelope {
    encrypt: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Message {
    to_user_name: Option<String>,
    from_user_name: Option<String>,
    create_time: Option<i64>,
    msg_type: Option<String>,
    event: Option<String>,
    #[serde(rename = "order_info")]
    order_info: Option<Map<String, Value>>,
}

impl WechatAdapter {
    fn check(&self, request_query: &str, parts: &[&str], name: &str) -> Result<(), IngestError> {
        let given = super::query_param(request_query, name)
            .ok_or_else(|| IngestError::BadSignature(format!("missing {name} query parameter")))?;
        let expected = sorted_sha1(parts);
        if crate::signing::same_signature(&expected, &given) {
            Ok(())
        } else {
            Err(IngestError::BadSignature(format!(
                "{name} does not match the token"
            )))
        }
    }

    fn envelope(body: &[u8]) -> Result<Envelope, IngestError> {
        super::decode_json(body)
            .map_err(|e| IngestError::Malformed(format!("expected a WeChat JSON message: {e}")))
    }

    fn timestamp_and_nonce(query: &str) -> Result<(String, String), IngestError> {
        let timestamp = super::query_param(query, "timestamp")
            .ok_or_else(|| IngestError::BadSignature("missing timestamp query parameter".into()))?;
        let nonce = super::query_param(query, "nonce")
            .ok_or_else(|| IngestError::BadSignature("missing nonce query parameter".into()))?;
        Ok((timestamp, nonce))
    }

    /// The message JSON of safe mode's `Encrypt`.
    fn decrypt(&self, encrypt: &str) -> Result<(Vec<u8>, String), IngestError> {
        let key = self
            .aes_key
            .as_ref()
            .map_err(|reason| IngestError::SourceUnavailable {
                origin: SOURCE,
                reason: reason.clone(),
            })?;
        let ciphertext = STANDARD
            .decode(encrypt.trim())
            .map_err(|e| IngestError::Malformed(format!("Encrypt is not base64: {e}")))?;
        let iv: [u8; 16] = key[..16].try_into().expect("32-byte key");
        let plain = aes_cbc_decrypt(key, &iv, &ciphertext, Padding::Pkcs7Block32)
            .map_err(|e| IngestError::BadSignature(format!("Encrypt does not decrypt: {e}")))?;
        if plain.len() < 20 {
            return Err(IngestError::Malformed(
                "decrypted message is too short".into(),
            ));
        }
        let len = u32::from_be_bytes(plain[16..20].try_into().expect("4 bytes")) as usize;
        let message = plain
            .get(20..20 + len)
            .ok_or_else(|| IngestError::Malformed("decrypted length is wrong".into()))?;
        let app_id = String::from_utf8_lossy(&plain[20 + len..]).into_owned();
        Ok((message.to_vec(), app_id))
    }

    fn map(&self, message: Message, received_at: Millis) -> Result<Decoded, IngestError> {
        if message.msg_type.as_deref() != Some("event") {
            return Err(IngestError::Malformed(format!(
                "MsgType {:?} is not an event",
                message.msg_type.unwrap_or_default()
            )));
        }
        let event = message
            .event
            .filter(|e| !e.is_empty())
            .ok_or_else(|| IngestError::Malformed("no Event".into()))?;
        let mut info = message.order_info.unwrap_or_default();
        let order_id = info
            .remove("order_id")
            .and_then(|id| serde_json::from_value::<Scalar>(id).ok())
            .map(Scalar::into_string)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| IngestError::Malformed("no order_info.order_id".into()))?;
        let partial = event == DELIVER_EVENT
            && info.get("finish_delivery").and_then(Value::as_i64) == Some(0);
        let action = if partial {
            EventAction::Inform
        } else {
            self.event_map.map(&event)
        };
        let created = message.create_time.unwrap_or(0);
        let from = message.from_user_name.unwrap_or_default();
        let mut fields = Map::new();
        if let Some(shop) = message.to_user_name {
            fields.insert("wechat_shop".into(), Value::String(shop));
        }
        if !info.is_empty() {
            fields.insert("wechat_order_info".into(), Value::Object(info));
        }
        Ok(Decoded::events(vec![OrderEvent {
            order: format!("{SOURCE}:{order_id}"),
            source: SOURCE.to_owned(),
            source_event_id: format!("{event}:{order_id}:{created}:{from}"),
            supersedes: None,
            log_seq: None,
            raw_status: if partial {
                format!("{event} finish_delivery=0")
            } else {
                event
            },
            action,
            occurred_at: if created > 0 {
                created * 1000
            } else {
                received_at
            },
            received_at,
            fields: fields.into(),
        }]))
    }
}

impl SourceAdapter for WechatAdapter {
    fn name(&self) -> &'static str {
        SOURCE
    }

    /// Plain mode's `signature` covers the query; safe mode's `msg_signature` also covers the
    /// body's `Encrypt`. Then the timestamp window and the nonce.
    fn verify(&self, request: &RawRequest<'_>) -> Result<(), IngestError> {
        let (timestamp, nonce) = Self::timestamp_and_nonce(request.query)?;
        if super::query_param(request.query, "encrypt_type").as_deref() == Some("aes") {
            let encrypt = Self::envelope(request.body)?.encrypt.ok_or_else(|| {
                IngestError::Malformed("encrypt_type=aes but the body has no Encrypt".into())
            })?;
            self.check(
                request.query,
                &[&self.token, &timestamp, &nonce, &encrypt],
                "msg_signature",
            )?;
        } else {
            self.check(
                request.query,
                &[&self.token, &timestamp, &nonce],
                "signature",
            )?;
        }
        self.nonces
            .reserve(&timestamp, &nonce, request.received_at.div_euclid(1000))
    }

    fn settle(&self, request: &RawRequest<'_>, accepted: bool) {
        if !accepted && let Some(nonce) = super::query_param(request.query, "nonce") {
            self.nonces.release(&nonce);
        }
    }

    fn decode(&self, request: &RawRequest<'_>) -> Result<Decoded, IngestError> {
        let envelope = Self::envelope(request.body)?;
        let encrypted = super::query_param(request.query, "encrypt_type").as_deref() == Some("aes");
        let (message, app_id) = match (encrypted, envelope.encrypt) {
            (true, Some(encrypt)) => {
                let (message, app_id) = self.decrypt(&encrypt)?;
                (message, Some(app_id))
            }
            (true, None) => {
                return Err(IngestError::Malformed(
                    "encrypt_type=aes but the body has no Encrypt".into(),
                ));
            }
            (false, _) => (request.body.to_vec(), None),
        };
        let message: Message = super::decode_json(&message)
            .map_err(|e| IngestError::Malformed(format!("not a WeChat event message: {e}")))?;
        let mut decoded = self.map(message, request.received_at)?;
        if let (Decoded::Events { events, .. }, Some(app_id)) = (&mut decoded, app_id) {
            for event in events {
                event
                    .fields
                    .insert_value("wechat_app_id", &Value::String(app_id.clone()));
            }
        }
        Ok(decoded)
    }

    fn ack(&self) -> Response {
        "success".into_response()
    }

    fn url_verification(&self, query: &str) -> Option<Result<Response, IngestError>> {
        let answer = Self::timestamp_and_nonce(query).and_then(|(timestamp, nonce)| {
            self.check(query, &[&self.token, &timestamp, &nonce], "signature")?;
            let echo = super::query_param(query, "echostr")
                .ok_or_else(|| IngestError::Malformed("missing echostr query parameter".into()))?;
            Ok(echo.into_response())
        });
        Some(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;
    use orderhub_actors::order::OrderState;
    use std::sync::Arc;

    const TOKEN: &str = "orderhub-wechat-token";
    /// WeChat's own sample EncodingAESKey: non-canonical base64 (non-zero trailing bits). The
    /// safe-mode fixture was encrypted with it by an independent implementation
    /// (`tests/fixtures/wechat/generate.py`, Python `cryptography`).
    const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    fn adapter() -> WechatAdapter {
        let config: WechatConfig = super::super::registry::default_config("wechat");
        let secrets: SecretLookup = Arc::new(|name: &str| match name {
            "ORDERHUB_WECHAT_TOKEN" => Some(TOKEN.into()),
            "ORDERHUB_WECHAT_AES_KEY" => Some(AES_KEY.into()),
            _ => None,
        });
        assert!(matches!(build(&config, &secrets), SourceEntry::Ready(_)));
        WechatAdapter {
            token: TOKEN.into(),
            aes_key: decode_aes_key(AES_KEY),
            event_map: StatusTable::new(&config.event_map),
            nonces: NonceWindow::new(300),
        }
    }

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!(
            "{}/tests/fixtures/wechat/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    /// A request received when the query's timestamp says it was sent.
    fn request<'a>(headers: &'a HeaderMap, query: &'a str, body: &'a str) -> RawRequest<'a> {
        let mut request = RawRequest::plain(headers, query, body.as_bytes());
        let sent: i64 = query_param(query, "timestamp").unwrap().parse().unwrap();
        request.received_at = sent * 1000 + 1500;
        request
    }

    fn query_param(query: &str, name: &str) -> Option<String> {
        super::super::query_param(query, name)
    }

    fn events(adapter: &WechatAdapter, query: &str, body: &str) -> Vec<OrderEvent> {
        let headers = HeaderMap::new();
        adapter.verify(&request(&headers, query, body)).unwrap();
        super::super::events_of(adapter.decode(&request(&headers, query, body))).unwrap()
    }

    #[test]
    fn the_signature_is_sha1_of_the_sorted_parts() {
        // Worked value: sha1("1700000000" + "nonce42" + "orderhub-wechat-token").
        assert_eq!(
            sorted_sha1(&[TOKEN, "1700000000", "nonce42"]),
            "d6afdea7ab9e428af328dbd1d6791bc3eec01244"
        );
        let adapter = adapter();
        let check = fixture("url_check.query");
        let Some(Ok(_)) = adapter.url_verification(&check) else {
            panic!("the URL check passes");
        };
        let forged = check.replace("signature=d6", "signature=e6");
        assert!(matches!(
            adapter.url_verification(&forged),
            Some(Err(IngestError::BadSignature(_)))
        ));
    }

    #[test]
    fn wechats_sample_key_and_other_non_canonical_keys_decode() {
        // Strict base64 refuses the sample key's last character; WeChat's libraries do not.
        assert!(STANDARD.decode(format!("{AES_KEY}=")).is_err());
        let key = decode_aes_key(AES_KEY).unwrap();
        assert_eq!(key.len(), 32);
        // The same bytes as the canonical spelling of that key (trailing bits cleared).
        let canonical = STANDARD
            .decode("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFE=")
            .unwrap();
        assert_eq!(key, canonical);
        assert!(decode_aes_key("short").is_err());
    }

    #[test]
    fn a_plain_push_is_verified_and_maps_by_event() {
        let headers = HeaderMap::new();
        let (query, body) = (fixture("order_pay.query"), fixture("order_pay.json"));
        let adapter = adapter();
        let events = events(&adapter, &query, &body);
        assert_eq!(events[0].order, "wechat:3705115058471208928");
        assert_eq!(
            events[0].source_event_id,
            "channels_ec_order_pay:3705115058471208928:1700000100:oSx3k5Hq8tYv"
        );
        assert_eq!(
            events[0].action,
            EventAction::Move {
                state: OrderState::Paid
            }
        );
        assert_eq!(events[0].occurred_at, 1_700_000_100_000);
        assert_eq!(
            events[0].fields.to_json()["wechat_order_info"]["pay_time"],
            1700000099
        );
        let tampered = query.replace("nonce=1597530", "nonce=1597531");
        assert!(matches!(
            adapter.verify(&request(&headers, &tampered, &body)),
            Err(IngestError::BadSignature(_))
        ));
    }

    #[test]
    fn a_query_is_good_once_and_only_near_its_timestamp() {
        let headers = HeaderMap::new();
        let (query, body) = (fixture("order_pay.query"), fixture("order_pay.json"));
        let adapter = adapter();
        let first = request(&headers, &query, &body);
        adapter.verify(&first).unwrap();
        adapter.settle(&first, true);
        // The same signed query again — with any body — is a replay.
        let again = request(&headers, &query, "{}");
        assert!(
            matches!(adapter.verify(&again), Err(IngestError::Replayed(m)) if m.contains("nonce"))
        );
        // A nonce whose request was not accepted may come again (the platform retries).
        let other = super::tests::adapter();
        let refused = request(&headers, &query, &body);
        other.verify(&refused).unwrap();
        other.settle(&refused, false);
        other.verify(&request(&headers, &query, &body)).unwrap();
        // Outside ±5 minutes the signature is not enough.
        let mut late = request(&headers, &query, &body);
        late.received_at += 301_000;
        assert!(matches!(
            super::tests::adapter().verify(&late),
            Err(IngestError::Replayed(m)) if m.contains("timestamp")
        ));
    }

    #[test]
    fn a_safe_mode_push_decrypts_to_the_plain_message() {
        let headers = HeaderMap::new();
        let query = fixture("order_deliver.safe.query");
        let body = fixture("order_deliver.safe.json");
        let adapter = adapter();
        let events = events(&adapter, &query, &body);
        assert_eq!(events[0].order, "wechat:3705115058471208928");
        assert_eq!(
            events[0].action,
            EventAction::Move {
                state: OrderState::Shipped
            }
        );
        assert_eq!(
            events[0].fields.to_json()["wechat_app_id"],
            "wx5f0c1b2a3d4e5f60"
        );
        // A msg_signature over another Encrypt is refused.
        let forged = body.replacen("\"Encrypt\": \"", "\"Encrypt\": \"A", 1);
        assert!(matches!(
            adapter.verify(&request(&headers, &query, &forged)),
            Err(IngestError::BadSignature(_))
        ));
        // Without the AES key, safe mode says which variable is missing.
        let mut no_key = super::tests::adapter();
        no_key.aes_key = Err("ORDERHUB_WECHAT_AES_KEY is not set".into());
        match no_key.decode(&request(&headers, &query, &body)) {
            Err(IngestError::SourceUnavailable { reason, .. }) => {
                assert!(reason.contains("ORDERHUB_WECHAT_AES_KEY"))
            }
            other => panic!("{:?}", other.err()),
        }
    }

    #[test]
    fn a_partial_delivery_is_recorded_never_shipped() {
        let events = events(
            &adapter(),
            &fixture("order_deliver_partial.query"),
            &fixture("order_deliver_partial.json"),
        );
        assert_eq!(events[0].action, EventAction::Inform);
        assert_eq!(
            events[0].raw_status,
            "channels_ec_order_deliver finish_delivery=0"
        );
    }

    #[test]
    fn unknown_events_are_recorded_and_non_events_named() {
        let headers = HeaderMap::new();
        let query = fixture("order_pay.query");
        let body =
            fixture("order_pay.json").replace("channels_ec_order_pay", "channels_ec_new_kind");
        let events =
            super::super::events_of(adapter().decode(&request(&headers, &query, &body))).unwrap();
        assert_eq!(events[0].action, EventAction::Unmapped);
        assert_eq!(events[0].raw_status, "channels_ec_new_kind");
        let body = fixture("order_pay.json").replace("\"event\"", "\"text\"");
        assert!(matches!(
            adapter().decode(&request(&headers, &query, &body)),
            Err(IngestError::Malformed(_))
        ));
        let deep = format!("{{\"ToUserName\":{}}}", "[".repeat(200_000));
        assert!(matches!(
            adapter().decode(&request(&headers, &query, &deep)),
            Err(IngestError::Malformed(m)) if m.contains("nests")
        ));
    }
}
