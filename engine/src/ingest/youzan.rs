//! Youzan (有赞) HTTP push: one JSON object per request with `client_id`, `id`, `kdt_id`, `msg`
//! (URL-encoded JSON), `msg_id`, `status`, `test`, `type` and `version` (message shapes after
//! TsangJx/YouZanYunSDK `Msg/*.cs`). The order is `msg.tid` (or, in the full-trade messages,
//! `msg.full_order_info.order_info.tid`); the top-level `id` names the order only for `trade_*`
//! messages without either, and never for `trade_refund_*`, where it is the message's own id. Header `Event-Sign` is md5hex(client_id + raw body + client_secret); answered
//! `{"code":0,"msg":"success"}` (shared/reference/protocols.md §1; the ack shape is [?]).
//!
//! Mapping: `type_map` (by message type; a trailing `*` matches a prefix) wins over
//! `status_map` (by trade status), so refund messages can be recorded without moving the
//! order. Within one `type` a higher `version` supersedes a lower one; the version is kept in
//! the event's fields and the order's monotone state machine never moves back for a late one.
//! `test` messages are acknowledged and stored nowhere.

use super::registry::{self, Configured, Issue, SourcePlugin};
use super::{
    Decoded, IngestError, RawRequest, SecretLookup, SourceAdapter, SourceEntry, StatusTable,
};
use crate::signing::{md5_hex, same_signature};
use axum::response::{IntoResponse, Response};
use orderhub_actors::order::{EventAction, OrderEvent, Superseding};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

pub(crate) const SOURCE: &str = "youzan";
/// The source of its order-detail answers and the sink of its fetches.
pub(crate) const API_SOURCE: &str = "youzan_api";

mod details;

/// `[sources.youzan]`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct YouzanConfig {
    /// Environment variable holding the client id.
    pub(crate) client_id_env: String,
    /// Environment variable holding the client secret.
    pub(crate) client_secret_env: String,
    /// Trade status → canonical status (`none` for informational).
    pub(crate) status_map: BTreeMap<String, String>,
    /// Message type (a trailing `*` matches a prefix) → canonical status; checked first.
    #[serde(default)]
    pub(crate) type_map: BTreeMap<String, String>,
    /// `[sources.youzan.details]`: fetch each order's contents with `youzan.trade.get`.
    #[serde(default)]
    pub(crate) details: Option<super::details::DetailsConfig>,
}

/// The Youzan push, `[sources.youzan]` (`POST /v1/ingest/youzan`).
pub(crate) struct Plugin;

impl SourcePlugin for Plugin {
    fn key(&self) -> &'static str {
        SOURCE
    }

    fn configure(&self, table: toml::Value) -> Result<Vec<Configured>, Issue> {
        let config: YouzanConfig = registry::parse("sources.youzan", table)?;
        registry::statuses("sources.youzan.status_map", &config.status_map)?;
        registry::statuses("sources.youzan.type_map", &config.type_map)?;
        let mut configured = Vec::new();
        if let Some(table) = &config.details {
            let (id_env, secret_env) = (
                config.client_id_env.clone(),
                config.client_secret_env.clone(),
            );
            configured.push(super::details::configure(
                format!("sources.{SOURCE}.details"),
                SOURCE,
                API_SOURCE,
                table,
                &details::TAKES,
                details::DEFAULT_RATE,
                &details::REFETCH_ON,
                move |table, secrets, _data_dir| {
                    let id = super::secret(secrets, &id_env)?;
                    let secret = super::secret(secrets, &secret_env)?;
                    let client = details::YouzanDetails::new(table, id, secret, secrets)?;
                    Ok(std::sync::Arc::new(client)
                        as std::sync::Arc<dyn super::details::DetailsClient>)
                },
            )?);
        }
        configured.insert(0, Configured::push(SOURCE, config, build));
        Ok(configured)
    }
}

/// After-sale messages: their top-level `id` is not the order.
const REFUND_PREFIX: &str = "trade_refund_";

pub(crate) struct YouzanAdapter {
    client_id: String,
    client_secret: String,
    status_map: StatusTable,
    type_map: StatusTable,
}

pub(crate) fn build(config: &YouzanConfig, secrets: &SecretLookup) -> SourceEntry {
    let credentials = super::secret(secrets, &config.client_id_env)
        .and_then(|id| Ok((id, super::secret(secrets, &config.client_secret_env)?)));
    match credentials {
        Ok((client_id, client_secret)) => SourceEntry::Ready(Box::new(YouzanAdapter {
            client_id,
            client_secret,
            status_map: StatusTable::new(&config.status_map),
            type_map: StatusTable::new(&config.type_map),
        })),
        Err(reason) => SourceEntry::Unavailable {
            name: SOURCE,
            reason,
        },
    }
}

/// The push body. Ids arrive as strings or numbers.
#[derive(Deserialize)]
struct Push {
    client_id: Option<super::Scalar>,
    id: Option<super::Scalar>,
    kdt_id: Option<super::Scalar>,
    kdt_name: Option<String>,
    #[serde(default)]
    msg: String,
    msg_id: Option<String>,
    status: Option<String>,
    #[serde(default)]
    test: bool,
    #[serde(rename = "type")]
    kind: Option<String>,
    version: Option<i64>,
}

/// `msg` is URL-encoded JSON (`+` for space); an empty one decodes to no fields.
fn decode_msg(msg: &str) -> Result<Option<Value>, IngestError> {
    if msg.is_empty() {
        return Ok(None);
    }
    let spaced = msg.replace('+', " ");
    let text = percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map_err(|e| IngestError::Malformed(format!("msg is not URL-encoded UTF-8: {e}")))?;
    let value: Value = super::decode_json(text.as_bytes())
        .map_err(|e| IngestError::Malformed(format!("msg is not URL-encoded JSON: {e}")))?;
    Ok(Some(value))
}

impl YouzanAdapter {
    fn map(&self, push: Push, received_at: i64) -> Result<Decoded, IngestError> {
        if push.test {
            return Ok(Decoded::Verification);
        }
        if let Some(client_id) = push.client_id.map(super::Scalar::into_string)
            && client_id != self.client_id
        {
            return Err(IngestError::BadSignature(
                "client_id does not match the configured client".into(),
            ));
        }
        let kind = push
            .kind
            .filter(|k| !k.is_empty())
            .ok_or_else(|| IngestError::Malformed("no type".into()))?;
        let msg = decode_msg(&push.msg)?;
        let tid = msg.as_ref().and_then(|msg| {
            ["/tid", "/full_order_info/order_info/tid"]
                .into_iter()
                .find_map(|path| match msg.pointer(path) {
                    Some(Value::String(tid)) if !tid.is_empty() => Some(tid.clone()),
                    Some(Value::Number(tid)) => Some(tid.to_string()),
                    _ => None,
                })
        });
        let refund = kind.starts_with(REFUND_PREFIX);
        let order_id = match tid {
            Some(tid) => tid,
            None if refund => {
                return Err(IngestError::Malformed(format!(
                    "{kind}: msg has no tid (the order number)"
                )));
            }
            None => push
                .id
                .map(super::Scalar::into_string)
                .filter(|id| !id.is_empty())
                .ok_or_else(|| IngestError::Malformed("no msg.tid and no id".into()))?,
        };
        let msg_id = push
            .msg_id
            .filter(|id| !id.is_empty())
            .ok_or_else(|| IngestError::Malformed("no msg_id".into()))?;
        let status = push.status.unwrap_or_default();
        let action = (self.type_map.get(&kind))
            .or_else(|| self.status_map.get(&status))
            .cloned()
            .unwrap_or(EventAction::Unmapped);
        let mut fields = Map::new();
        if let Some(kdt_id) = push.kdt_id {
            fields.insert("kdt_id".into(), Value::String(kdt_id.into_string()));
        }
        if let Some(name) = push.kdt_name {
            fields.insert("kdt_name".into(), Value::String(name));
        }
        fields.insert("youzan_type".into(), Value::String(kind.clone()));
        if let Some(version) = push.version {
            fields.insert("youzan_version".into(), Value::from(version));
        }
        if let Some(msg) = msg {
            fields.insert("youzan_msg".into(), msg);
        }
        Ok(Decoded::events(vec![OrderEvent {
            order: format!("{SOURCE}:{order_id}"),
            source: SOURCE.to_owned(),
            source_event_id: msg_id,
            supersedes: push.version.map(|version| Superseding {
                stream: kind.clone(),
                version,
            }),
            log_seq: None,
            raw_status: if status.is_empty() { kind } else { status },
            action,
            occurred_at: received_at,
            received_at,
            fields: fields.into(),
        }]))
    }
}

impl SourceAdapter for YouzanAdapter {
    fn name(&self) -> &'static str {
        SOURCE
    }

    fn verify(&self, request: &RawRequest<'_>) -> Result<(), IngestError> {
        let given = request
            .header("event-sign")
            .ok_or_else(|| IngestError::BadSignature("missing Event-Sign header".into()))?;
        let expected = md5_hex(&[
            self.client_id.as_bytes(),
            request.body,
            self.client_secret.as_bytes(),
        ]);
        if same_signature(&expected, given) {
            Ok(())
        } else {
            Err(IngestError::BadSignature(
                "Event-Sign does not match the body".into(),
            ))
        }
    }

    fn decode(&self, request: &RawRequest<'_>) -> Result<Decoded, IngestError> {
        let push: Push = super::decode_json(request.body)
            .map_err(|e| IngestError::Malformed(format!("expected a Youzan push object: {e}")))?;
        self.map(push, request.received_at)
    }

    fn ack(&self) -> Response {
        axum::Json(serde_json::json!({ "code": 0, "msg": "success" })).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;
    use orderhub_actors::order::{EventAction, OrderState};
    use std::sync::Arc;

    // Push bodies after TsangJx/YouZanYunSDK `Msg/*.cs` (fields and types) and a captured
    // trade_refund_BuyerCreated payload (its msg carries tid, refund_id, refunded_fee as text).
    const PAID: &str = include_str!("../../tests/fixtures/youzan/trade_buyer_pay.json");
    const REFUND: &str = include_str!("../../tests/fixtures/youzan/trade_refund.json");
    const TEST: &str = include_str!("../../tests/fixtures/youzan/test_message.json");

    fn adapter() -> YouzanAdapter {
        let youzan: YouzanConfig = super::super::registry::default_config("youzan");
        let secrets: SecretLookup = Arc::new(|name: &str| match name {
            "ORDERHUB_YOUZAN_CLIENT_ID" => Some("yz-client".into()),
            "ORDERHUB_YOUZAN_CLIENT_SECRET" => Some("yz-secret".into()),
            _ => None,
        });
        match build(&youzan, &secrets) {
            SourceEntry::Ready(_) => {}
            SourceEntry::Unavailable { reason, .. } => panic!("{reason}"),
        }
        YouzanAdapter {
            client_id: "yz-client".into(),
            client_secret: "yz-secret".into(),
            status_map: StatusTable::new(&youzan.status_map),
            type_map: StatusTable::new(&youzan.type_map),
        }
    }

    fn request<'a>(headers: &'a HeaderMap, body: &'a str) -> RawRequest<'a> {
        RawRequest::plain(headers, "", body.as_bytes())
    }

    fn events(body: &str) -> Result<Vec<OrderEvent>, IngestError> {
        let headers = HeaderMap::new();
        super::super::events_of(adapter().decode(&request(&headers, body)))
    }

    #[test]
    fn event_sign_is_md5_of_client_id_body_and_secret() {
        // Worked value: md5hex("yz-client" + "{}" + "yz-secret").
        assert_eq!(
            md5_hex(&[b"yz-client", b"{}", b"yz-secret"]),
            "8d9ef8a68fc1e0ee0c79db37917683d3"
        );
        let adapter = adapter();
        let mut headers = HeaderMap::new();
        let sign = md5_hex(&[b"yz-client", PAID.as_bytes(), b"yz-secret"]);
        headers.insert("event-sign", sign.parse().unwrap());
        assert!(adapter.verify(&request(&headers, PAID)).is_ok());
        headers.insert("event-sign", "0".repeat(32).parse().unwrap());
        assert!(matches!(
            adapter.verify(&request(&headers, PAID)),
            Err(IngestError::BadSignature(_))
        ));
        assert!(matches!(
            adapter.verify(&request(&HeaderMap::new(), PAID)),
            Err(IngestError::BadSignature(_))
        ));
    }

    #[test]
    fn a_payment_maps_to_paid_with_its_fields() {
        let events = events(PAID).unwrap();
        let event = &events[0];
        assert_eq!(event.order, "youzan:E20231115093012034500012");
        assert_eq!(
            event.source_event_id,
            "7d6c0f1e-6a4b-4a8e-9c1d-3f2b1a0e9d8c"
        );
        assert_eq!(
            event.action,
            EventAction::Move {
                state: OrderState::Paid
            }
        );
        assert_eq!(event.raw_status, "WAIT_SELLER_SEND_GOODS");
        assert_eq!(event.fields.to_json()["kdt_id"], "160001");
        assert_eq!(event.fields.to_json()["youzan_version"], 1700000123456i64);
        assert_eq!(
            event.fields.to_json()["youzan_msg"]["tid"],
            "E20231115093012034500012"
        );
        assert_eq!(
            event.fields.to_json()["youzan_msg"]["buyer_memo"],
            "请尽快发货 thanks"
        );
    }

    #[test]
    fn refunds_are_recorded_on_msg_tid_by_type_and_test_messages_store_nothing() {
        let headers = HeaderMap::new();
        let refund = events(REFUND).unwrap();
        assert_eq!(refund[0].action, EventAction::Inform);
        assert_eq!(
            refund[0].order, "youzan:E20231115093012034500012",
            "msg.tid, not id"
        );
        assert_eq!(refund[0].raw_status, "trade_refund_BuyerCreated");
        let no_tid = REFUND.replace("%22tid%22", "%22tidx%22");
        assert!(matches!(events(&no_tid), Err(IngestError::Malformed(m)) if m.contains("tid")));
        assert!(matches!(
            adapter().decode(&request(&headers, TEST)).unwrap(),
            Decoded::Verification
        ));
    }

    #[test]
    fn unknown_statuses_are_recorded_and_missing_ids_named() {
        let headers = HeaderMap::new();
        let body = PAID.replace("WAIT_SELLER_SEND_GOODS", "WAIT_GROUP");
        let unknown = events(&body).unwrap();
        assert_eq!(unknown[0].action, EventAction::Unmapped);
        assert_eq!(unknown[0].raw_status, "WAIT_GROUP");
        let body = PAID.replace("\"msg_id\"", "\"msg_idx\"");
        match adapter().decode(&request(&headers, &body)) {
            Err(IngestError::Malformed(message)) => assert!(message.contains("msg_id")),
            other => panic!("{:?}", other.err()),
        }
        let body = PAID.replace("\"yz-client\"", "\"someone-else\"");
        assert!(matches!(
            adapter().decode(&request(&headers, &body)),
            Err(IngestError::BadSignature(_))
        ));
        assert!(matches!(
            adapter().decode(&request(&headers, "[1,2]")),
            Err(IngestError::Malformed(_))
        ));
    }
}
