//! Douyin Shop (抖店) HTTP push: a JSON array of `{tag, msg_id, data}` where `data` is itself a
//! JSON string; header `app-id` must equal the app key and `event-sign` is
//! md5hex(app_key + raw body + app_secret); answered `{"code":0,"msg":"success"}`. Tag `0` is
//! the platform's verification message (shared/reference/protocols.md §1).

use super::signature::{md5_hex, same_signature};
use super::{Decoded, IngestError, RawRequest, SecretLookup, SourceAdapter, SourceEntry};
use crate::config::DouyinConfig;
use axum::response::{IntoResponse, Response};
use orderhub_actors::order::{EventAction, Millis, OrderEvent};
use serde::Deserialize;
use std::collections::HashMap;

pub(crate) const SOURCE: &str = "douyin";

/// Time fields of `data`, most specific first; seconds since the epoch.
const TIME_FIELDS: [&str; 5] = [
    "update_time",
    "pay_time",
    "complete_time",
    "cancel_time",
    "create_time",
];

pub(crate) struct DouyinAdapter {
    app_key: String,
    app_secret: String,
    status_map: HashMap<String, EventAction>,
}

pub(crate) fn build(config: &DouyinConfig, secrets: &SecretLookup) -> SourceEntry {
    let credentials = super::secret(secrets, &config.app_key_env)
        .and_then(|key| Ok((key, super::secret(secrets, &config.app_secret_env)?)));
    match credentials {
        Ok((app_key, app_secret)) => SourceEntry::Ready(Box::new(DouyinAdapter {
            app_key,
            app_secret,
            status_map: config
                .status_map
                .iter()
                .filter_map(|(tag, status)| Some((tag.clone(), super::parse_status(status)?)))
                .collect(),
        })),
        Err(reason) => SourceEntry::Unavailable {
            name: SOURCE,
            reason,
        },
    }
}

#[derive(Deserialize)]
struct Message {
    tag: super::Scalar,
    msg_id: String,
    data: String,
}

impl DouyinAdapter {
    fn map_message(
        &self,
        index: usize,
        message: Message,
        received_at: Millis,
    ) -> Result<Option<OrderEvent>, IngestError> {
        let tag = message.tag.into_string();
        if tag == "0" {
            return Ok(None);
        }
        if message.msg_id.is_empty() {
            return Err(IngestError::Malformed(format!(
                "message {index}: empty msg_id"
            )));
        }
        let mut data: serde_json::Map<String, serde_json::Value> =
            super::decode_json(message.data.as_bytes()).map_err(|e| {
                IngestError::Malformed(format!("message {index}: data is not a JSON object ({e})"))
            })?;
        let order_id = match data.remove("p_id") {
            Some(serde_json::Value::String(id)) if !id.is_empty() => id,
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => {
                return Err(IngestError::Malformed(format!(
                    "message {index}: data has no p_id"
                )));
            }
        };
        let action = self
            .status_map
            .get(&tag)
            .cloned()
            .ok_or(IngestError::UnknownStatus {
                origin: SOURCE,
                status: tag.clone(),
            })?;
        let occurred_at = TIME_FIELDS
            .iter()
            .find_map(|field| data.get(*field).and_then(serde_json::Value::as_i64))
            .filter(|seconds| *seconds > 0)
            .map_or(received_at, |seconds| seconds * 1000);
        Ok(Some(OrderEvent {
            order: format!("{SOURCE}:{order_id}"),
            source: SOURCE.to_owned(),
            source_event_id: message.msg_id,
            supersedes: None,
            raw_status: tag,
            action,
            occurred_at,
            received_at,
            fields: data,
        }))
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
        let messages: Vec<Message> = super::decode_json(request.body).map_err(|e| {
            IngestError::Malformed(format!(
                "expected a JSON array of {{tag, msg_id, data}}: {e}"
            ))
        })?;
        if messages.is_empty() {
            return Err(IngestError::Malformed("empty push".into()));
        }
        let mut events = Vec::with_capacity(messages.len());
        for (index, message) in messages.into_iter().enumerate() {
            if let Some(event) = self.map_message(index, message, request.received_at)? {
                events.push(event);
            }
        }
        if events.is_empty() {
            return Ok(Decoded::Verification);
        }
        Ok(Decoded::Events(events))
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
        let config = crate::config::Config::embedded().unwrap();
        let secrets: SecretLookup = Arc::new(|name: &str| match name {
            "ORDERHUB_DOUYIN_APP_KEY" => Some("7001".into()),
            "ORDERHUB_DOUYIN_APP_SECRET" => Some("s3cret".into()),
            _ => None,
        });
        match build(config.sources.douyin.as_ref().unwrap(), &secrets) {
            SourceEntry::Ready(_) => {}
            SourceEntry::Unavailable { reason, .. } => panic!("{reason}"),
        }
        DouyinAdapter {
            app_key: "7001".into(),
            app_secret: "s3cret".into(),
            status_map: config
                .sources
                .douyin
                .unwrap()
                .status_map
                .iter()
                .map(|(k, v)| (k.clone(), super::super::parse_status(v).unwrap()))
                .collect(),
        }
    }

    const PUSH: &str = r#"[{"tag":"101","msg_id":"m-1","data":"{\"p_id\":4987325601,\"s_ids\":[4987325602],\"shop_id\":77,\"order_status\":105,\"pay_time\":1700000000}"}]"#;

    fn headers(sign: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("app-id", "7001".parse().unwrap());
        headers.insert("event-sign", sign.parse().unwrap());
        headers
    }

    #[test]
    fn signature_is_md5_of_key_body_secret() {
        let adapter = adapter();
        // md5hex("7001" + PUSH + "s3cret"), worked out independently with `md5sum`.
        let sign = "eb10c5848b1266c397fee5884d0f16af";
        assert_eq!(md5_hex(&[b"7001", PUSH.as_bytes(), b"s3cret"]), sign);
        let good = headers(sign);
        let request = RawRequest {
            headers: &good,
            query: "",
            body: PUSH.as_bytes(),
            received_at: 1,
        };
        assert!(adapter.verify(&request).is_ok());
        let tampered = RawRequest {
            headers: &good,
            query: "",
            body: b"[]",
            received_at: 1,
        };
        assert!(matches!(
            adapter.verify(&tampered),
            Err(IngestError::BadSignature(_))
        ));
        let mut wrong_app = headers(sign);
        wrong_app.insert("app-id", "9".parse().unwrap());
        let request = RawRequest {
            headers: &wrong_app,
            query: "",
            body: PUSH.as_bytes(),
            received_at: 1,
        };
        assert!(matches!(
            adapter.verify(&request),
            Err(IngestError::BadSignature(_))
        ));
    }

    #[test]
    fn a_paid_push_maps_to_a_canonical_event() {
        let headers = HeaderMap::new();
        let request = RawRequest {
            headers: &headers,
            query: "",
            body: PUSH.as_bytes(),
            received_at: 1_800_000_000_000,
        };
        let Decoded::Events(events) = adapter().decode(&request).unwrap() else {
            panic!("expected events")
        };
        assert_eq!(events.len(), 1);
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
        assert_eq!(event.fields["shop_id"], 77);
        assert!(!event.fields.contains_key("p_id"));
    }

    #[test]
    fn bad_pushes_are_named() {
        let adapter = adapter();
        let headers = HeaderMap::new();
        let decode = |body: &str| {
            adapter.decode(&RawRequest {
                headers: &headers,
                query: "",
                body: body.as_bytes(),
                received_at: 1,
            })
        };
        assert!(matches!(decode("{"), Err(IngestError::Malformed(_))));
        assert!(matches!(decode("[]"), Err(IngestError::Malformed(_))));
        assert!(matches!(
            decode(r#"[{"tag":"999","msg_id":"m","data":"{\"p_id\":\"1\"}"}]"#),
            Err(IngestError::UnknownStatus { status, .. }) if status == "999"
        ));
        assert!(matches!(
            decode(r#"[{"tag":"101","msg_id":"m","data":"{\"shop_id\":1}"}]"#),
            Err(IngestError::Malformed(m)) if m.contains("p_id")
        ));
        assert!(matches!(
            decode(r#"[{"tag":"0","msg_id":"m","data":"{}"}]"#),
            Ok(Decoded::Verification)
        ));
    }
}
