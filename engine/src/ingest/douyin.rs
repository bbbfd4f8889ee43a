//! Douyin Shop (抖店) HTTP push: a JSON array of `{tag, msg_id, data}` where `data` is itself a
//! JSON string; header `app-id` must equal the app key and `event-sign` is
//! md5hex(app_key + raw body + app_secret); answered `{"code":0,"msg":"success"}`. Tag `0` is
//! the platform's verification message (shared/reference/protocols.md §1; message shapes after
//! zsmhub/doudian-sdk `message/*.go` and the official Java SDK's `com.doudian.open.msg.*`).
//!
//! Each message of the array stands alone: a tag the status map does not know is journaled as
//! unmapped, and a malformed message is recorded without failing the others. `s_ids` (the
//! order's sub-orders) become `fields.sub_orders`; an after-sale tag (200–227) that names one
//! sub-order `s_id` moves only that part (tag 206: the order is `refunded` once every listed
//! sub-order is); tag 102/104/108's `logistics_msg.logistics_code` becomes `fields.waybill_no`
//! (so courier scans find the order) and `express_company_id` `fields.courier`.

use super::details::{DetailsClient, DetailsConfig};
use super::registry::{self, Configured, Issue, SourcePlugin};
use super::{
    Decoded, IngestError, RawRequest, Scalar, SecretLookup, SourceAdapter, SourceEntry, StatusTable,
};
use crate::signing::{md5_hex, same_signature};
use axum::response::{IntoResponse, Response};
use orderhub_actors::order::{EventAction, Millis, OrderEvent, SUB_ORDERS_FIELD};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

pub(crate) const SOURCE: &str = "douyin";
/// The source of its order-detail answers and the sink of its fetches.
pub(crate) const API_SOURCE: &str = "douyin_api";

mod details;

/// `[sources.douyin]`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DouyinConfig {
    /// Environment variable holding the app key.
    pub(crate) app_key_env: String,
    /// Environment variable holding the app secret.
    pub(crate) app_secret_env: String,
    /// Push tag → canonical status (`none` for informational).
    pub(crate) status_map: BTreeMap<String, String>,
    /// `[sources.douyin.details]`: fetch each order's contents with `order.orderDetail`.
    #[serde(default)]
    pub(crate) details: Option<DetailsConfig>,
}

/// The Douyin Shop push, `[sources.douyin]` (`POST /v1/ingest/douyin`).
pub(crate) struct Plugin;

impl SourcePlugin for Plugin {
    fn key(&self) -> &'static str {
        SOURCE
    }

    fn configure(&self, table: toml::Value) -> Result<Vec<Configured>, Issue> {
        let config: DouyinConfig = registry::parse("sources.douyin", table)?;
        registry::statuses("sources.douyin.status_map", &config.status_map)?;
        let mut configured = Vec::new();
        if let Some(table) = &config.details {
            details::SignMethod::parse(table.sign_method.as_deref())
                .map_err(|problem| ("sources.douyin.details.sign_method".to_owned(), problem))?;
            let (key_env, secret_env) = (config.app_key_env.clone(), config.app_secret_env.clone());
            configured.push(super::details::configure(
                format!("sources.{SOURCE}.details"),
                SOURCE,
                API_SOURCE,
                table,
                &details::TAKES,
                details::DEFAULT_RATE,
                &details::REFETCH_ON,
                move |table, secrets, _data_dir| {
                    let key = super::secret(secrets, &key_env)?;
                    let secret = super::secret(secrets, &secret_env)?;
                    let client = details::DouyinDetails::new(table, key, secret, secrets)?;
                    Ok(Arc::new(client) as Arc<dyn DetailsClient>)
                },
            )?);
        }
        configured.insert(0, Configured::push(SOURCE, config, build));
        Ok(configured)
    }
}

/// Time fields of `data`, most specific first; seconds since the epoch. After-sale messages
/// carry their own event time (`success_time`, …) and an RFC 3339 `update_time`, skipped here.
const TIME_FIELDS: [&str; 11] = [
    "update_time",
    "success_time",
    "close_time",
    "agree_time",
    "modify_time",
    "apply_time",
    "pay_time",
    "complete_time",
    "cancel_time",
    "create_time",
    "exp_delivery_time",
];

/// After-sale tags: they concern one sub-order (`s_id`) when they name one.
const AFTER_SALE_TAGS: std::ops::RangeInclusive<u32> = 200..=227;

pub(crate) struct DouyinAdapter {
    app_key: String,
    app_secret: String,
    status_map: StatusTable,
}

pub(crate) fn build(config: &DouyinConfig, secrets: &SecretLookup) -> SourceEntry {
    let credentials = super::secret(secrets, &config.app_key_env)
        .and_then(|key| Ok((key, super::secret(secrets, &config.app_secret_env)?)));
    match credentials {
        Ok((app_key, app_secret)) => SourceEntry::Ready(Box::new(DouyinAdapter {
            app_key,
            app_secret,
            status_map: StatusTable::new(&config.status_map),
        })),
        Err(reason) => SourceEntry::Unavailable {
            name: SOURCE,
            reason,
        },
    }
}

/// One message; `data` is a JSON string (some samples send an object: accepted too).
#[derive(Deserialize)]
struct Message {
    tag: Scalar,
    #[serde(alias = "msgId")]
    msg_id: Scalar,
    data: Value,
}

/// An id sent as a number or a string.
fn id_of(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(id) if !id.is_empty() => Some(id.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl DouyinAdapter {
    fn map_message(
        &self,
        index: usize,
        message: Value,
        received_at: Millis,
    ) -> Option<Result<OrderEvent, IngestError>> {
        let malformed = |what: String| IngestError::Malformed(format!("message {index}: {what}"));
        let message: Message = match serde_json::from_value(message) {
            Ok(message) => message,
            Err(e) => return Some(Err(malformed(format!("not a {{tag, msg_id, data}}: {e}")))),
        };
        let tag = message.tag.into_string();
        if tag == "0" {
            return None;
        }
        Some(
            self.map_data(tag, message.msg_id.into_string(), message.data, received_at)
                .map_err(malformed),
        )
    }

    fn map_data(
        &self,
        tag: String,
        msg_id: String,
        data: Value,
        received_at: Millis,
    ) -> Result<OrderEvent, String> {
        if msg_id.is_empty() {
            return Err("empty msg_id".into());
        }
        let mut data: Map<String, Value> = match data {
            Value::String(text) => super::decode_json(text.as_bytes())
                .map_err(|e| format!("data is not a JSON object ({e})"))?,
            Value::Object(data) => data,
            _ => return Err("data is not a JSON object".into()),
        };
        let order_id = id_of(data.get("p_id")).ok_or("data has no p_id")?;
        data.remove("p_id");
        let mut action = self.status_map.map(&tag);
        let after_sale = tag
            .parse::<u32>()
            .is_ok_and(|t| AFTER_SALE_TAGS.contains(&t));
        if after_sale
            && let (EventAction::Move { state }, Some(part)) = (&action, id_of(data.get("s_id")))
        {
            action = EventAction::MovePart {
                part,
                state: *state,
            };
        }
        if let Some(Value::Array(s_ids)) = data.get("s_ids") {
            let parts: Vec<Value> = s_ids
                .iter()
                .filter_map(|id| id_of(Some(id)).map(Value::String))
                .collect();
            if !parts.is_empty() {
                data.insert(SUB_ORDERS_FIELD.into(), Value::Array(parts));
            }
        }
        if let Some(Value::Object(logistics)) = data.get("logistics_msg") {
            let waybill = id_of(logistics.get("logistics_code"));
            let courier = id_of(logistics.get("express_company_id"));
            if let Some(waybill) = waybill {
                data.insert("waybill_no".into(), Value::String(waybill));
            }
            if let Some(courier) = courier {
                data.insert("courier".into(), Value::String(courier));
            }
        }
        let occurred_at = TIME_FIELDS
            .iter()
            .find_map(|field| data.get(*field).and_then(Value::as_i64))
            .filter(|seconds| *seconds > 0)
            .map_or(received_at, |seconds| seconds * 1000);
        Ok(OrderEvent {
            order: format!("{SOURCE}:{order_id}"),
            source: SOURCE.to_owned(),
            source_event_id: msg_id,
            supersedes: None,
            log_seq: None,
            raw_status: tag,
            action,
            occurred_at,
            received_at,
            fields: data.into(),
        })
    }
}

impl SourceAdapter for DouyinAdapter {
    fn name(&self) -> &'static str {
        SOURCE
    }

    fn verify(&self, request: &RawRequest<'_>) -> Result<(), IngestError> {
        let app_id = request
            .header("app-id")
            .ok_or_else(|| IngestError::BadSignature("missing app-id header".into()))?;
        if app_id != self.app_key {
            return Err(IngestError::BadSignature(
                "app-id does not match the app key".into(),
            ));
        }
        let given = request
            .header("event-sign")
            .ok_or_else(|| IngestError::BadSignature("missing event-sign header".into()))?;
        let expected = md5_hex(&[
            self.app_key.as_bytes(),
            request.body,
            self.app_secret.as_bytes(),
        ]);
        if same_signature(&expected, given) {
            Ok(())
        } else {
            Err(IngestError::BadSignature(
                "event-sign does not match the body".into(),
            ))
        }
    }

    fn decode(&self, request: &RawRequest<'_>) -> Result<Decoded, IngestError> {
        let messages: Vec<Value> = super::decode_json(request.body).map_err(|e| {
            IngestError::Malformed(format!(
                "expected a JSON array of {{tag, msg_id, data}}: {e}"
            ))
        })?;
        if messages.is_empty() {
            return Err(IngestError::Malformed("empty push".into()));
        }
        let results: Vec<_> = messages
            .into_iter()
            .enumerate()
            .filter_map(|(index, message)| self.map_message(index, message, request.received_at))
            .collect();
        if results.is_empty() {
            return Ok(Decoded::Verification);
        }
        Ok(Decoded::from_results(results))
    }

    fn ack(&self) -> Response {
        axum::Json(serde_json::json!({ "code": 0, "msg": "success" })).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;
    use orderhub_actors::order::OrderState;
    use std::sync::Arc;

    fn adapter() -> DouyinAdapter {
        let secrets: SecretLookup = Arc::new(|name: &str| match name {
            "ORDERHUB_DOUYIN_APP_KEY" => Some("7001".into()),
            "ORDERHUB_DOUYIN_APP_SECRET" => Some("s3cret".into()),
            _ => None,
        });
        let config: DouyinConfig = super::super::registry::default_config("douyin");
        assert!(matches!(build(&config, &secrets), SourceEntry::Ready(_)));
        DouyinAdapter {
            app_key: "7001".into(),
            app_secret: "s3cret".into(),
            status_map: StatusTable::new(&config.status_map),
        }
    }

    /// Shapes after zsmhub/doudian-sdk `message/doudian_message.go` (envelope) and
    /// `message/trade_*.go`, `message/refund_*.go` (data): `data` is a JSON string.
    const PUSH: &str = r#"[{"tag":"101","msg_id":"m-1","data":"{\"p_id\":4987325601,\"s_ids\":[4987325602],\"shop_id\":77,\"order_status\":105,\"pay_time\":1700000000}"}]"#;

    fn headers(sign: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("app-id", "7001".parse().unwrap());
        headers.insert("event-sign", sign.parse().unwrap());
        headers
    }

    fn decode(body: &str) -> Result<Decoded, IngestError> {
        let headers = HeaderMap::new();
        let mut request = RawRequest::plain(&headers, "", body.as_bytes());
        request.received_at = 1_800_000_000_000;
        adapter().decode(&request)
    }

    fn events(body: &str) -> (Vec<OrderEvent>, Vec<super::super::Rejected>) {
        match decode(body).unwrap() {
            Decoded::Events { events, rejected } => (events, rejected),
            Decoded::Verification => panic!("events expected"),
        }
    }

    /// A push of one message with `tag` and `data` (an object, written as Douyin's string).
    fn push(tag: &str, data: serde_json::Value) -> String {
        serde_json::json!([{ "tag": tag, "msg_id": format!("m-{tag}"), "data": data.to_string() }])
            .to_string()
    }

    #[test]
    fn signature_is_md5_of_key_body_secret() {
        let adapter = adapter();
        // md5hex("7001" + PUSH + "s3cret"), worked out independently with `md5sum`.
        let sign = "eb10c5848b1266c397fee5884d0f16af";
        assert_eq!(md5_hex(&[b"7001", PUSH.as_bytes(), b"s3cret"]), sign);
        let good = headers(sign);
        assert!(
            adapter
                .verify(&RawRequest::plain(&good, "", PUSH.as_bytes()))
                .is_ok()
        );
        assert!(matches!(
            adapter.verify(&RawRequest::plain(&good, "", b"[]")),
            Err(IngestError::BadSignature(_))
        ));
        let mut wrong_app = headers(sign);
        wrong_app.insert("app-id", "9".parse().unwrap());
        assert!(matches!(
            adapter.verify(&RawRequest::plain(&wrong_app, "", PUSH.as_bytes())),
            Err(IngestError::BadSignature(_))
        ));
    }

    #[test]
    fn a_paid_push_maps_to_a_canonical_event_with_its_sub_orders() {
        let (events, rejected) = events(PUSH);
        assert!(rejected.is_empty());
        let event = &events[0];
        assert_eq!(event.order, "douyin:4987325601");
        assert_eq!(event.source_event_id, "m-1");
        assert_eq!(event.raw_status, "101");
        assert_eq!(
            event.action,
            EventAction::Move {
                state: OrderState::Paid
            }
        );
        assert_eq!(event.occurred_at, 1_700_000_000_000);
        assert_eq!(event.fields.to_json()["shop_id"], 77);
        assert_eq!(
            event.fields.value(SUB_ORDERS_FIELD).unwrap(),
            serde_json::json!(["4987325602"])
        );
        assert!(!event.fields.contains_key("p_id"));
    }

    #[test]
    fn every_documented_tag_is_mapped_and_an_unknown_one_is_recorded_unmapped() {
        let config: DouyinConfig = super::super::registry::default_config("douyin");
        let table = &config.status_map;
        for tag in [
            100, 101, 102, 103, 104, 105, 106, 108, 109, 110, 111, 113, 126,
        ]
        .into_iter()
        .chain(200..=227)
        {
            assert!(
                table.contains_key(&tag.to_string()),
                "tag {tag} is not mapped"
            );
        }
        let (partial, _) = events(&push(
            "108",
            serde_json::json!({"p_id": 1, "s_ids": [2, 3]}),
        ));
        assert_eq!(
            partial[0].action,
            EventAction::Inform,
            "partial shipment: recorded"
        );
        let (unknown, rejected) = events(&push("999", serde_json::json!({"p_id": "1"})));
        assert!(rejected.is_empty());
        assert_eq!(unknown[0].action, EventAction::Unmapped);
        assert_eq!(unknown[0].raw_status, "999");
    }

    #[test]
    fn a_sub_order_refund_moves_only_that_part() {
        // Tag 206 after the official SDK's RefundSuccess: one sub-order `s_id`, RFC 3339
        // update_time, epoch-second success_time.
        let (events, _) = events(&push(
            "206",
            serde_json::json!({"p_id": 4835804142146756441u64, "s_id": 4835804142146756442u64,
                "aftersale_id": 7000893114000949517u64, "refund_amount": 8900,
                "success_time": 1630306403, "update_time": "2021-08-30T14:53:23+08:00"}),
        ));
        assert_eq!(
            events[0].action,
            EventAction::MovePart {
                part: "4835804142146756442".into(),
                state: OrderState::Refunded
            }
        );
        assert_eq!(events[0].occurred_at, 1_630_306_403_000);
    }

    #[test]
    fn a_shipment_keeps_its_waybill() {
        let (events, _) = events(&push(
            "102",
            serde_json::json!({"p_id": 1, "s_ids": [1], "update_time": 1599644408,
                "logistics_msg": {"express_company_id": "shunfeng", "logistics_code": "SF1400123456789"}}),
        ));
        assert_eq!(events[0].fields.to_json()["waybill_no"], "SF1400123456789");
        assert_eq!(events[0].fields.to_json()["courier"], "shunfeng");
        assert_eq!(
            events[0].action,
            EventAction::Move {
                state: OrderState::Shipped
            }
        );
    }

    #[test]
    fn one_bad_message_never_fails_the_others() {
        let body = r#"[{"tag":"108","msg_id":"a","data":"{\"p_id\":1}"},
            {"tag":"101","msg_id":"b","data":"{\"shop_id\":1}"},
            {"tag":"101","msg_id":"c"},
            {"tag":"101","msg_id":"d","data":"{\"p_id\":2}"}]"#;
        let (events, rejected) = events(body);
        assert_eq!(
            events
                .iter()
                .map(|e| e.source_event_id.as_str())
                .collect::<Vec<_>>(),
            ["a", "d"]
        );
        assert_eq!(rejected.iter().map(|r| r.index).collect::<Vec<_>>(), [1, 2]);
        assert!(
            rejected[0].error.to_string().contains("p_id"),
            "{}",
            rejected[0].error
        );
    }

    #[test]
    fn bad_pushes_are_named() {
        assert!(matches!(decode("{"), Err(IngestError::Malformed(_))));
        assert!(matches!(decode("[]"), Err(IngestError::Malformed(_))));
        assert!(matches!(
            decode(r#"[{"tag":"0","msg_id":"m","data":"{}"}]"#),
            Ok(Decoded::Verification)
        ));
        let deep = format!("[{}]", "[".repeat(200_000));
        assert!(matches!(decode(&deep), Err(IngestError::Malformed(m)) if m.contains("nests")));
        let body = serde_json::json!([
            {"tag": "101", "msg_id": "x", "data": "[".repeat(100)},
            {"tag": "101", "msg_id": "y", "data": "{\"p_id\":2}"},
        ])
        .to_string();
        let (events, rejected) = events(&body);
        assert_eq!(events[0].source_event_id, "y");
        assert!(
            rejected[0].error.to_string().contains("nests"),
            "{}",
            rejected[0].error
        );
    }
}
