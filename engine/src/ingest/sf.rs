//! SF Express (顺丰) route push: a form POST with `msgData` (JSON
//! `{"Body":{"WaybillRoute":[…]}}`, at most 10 routes of `mailno, orderid, acceptTime,
//! acceptAddress, remark, opCode, id`), `msgDigest` and optionally `timestamp` and
//! `partnerID`; answered `{"return_code":"0000","return_msg":"success"}`
//! (shared/reference/protocols.md §2).
//!
//! [?] The push's signing is assumed to be the std API's formula, msgDigest =
//! base64(md5(urlencode(msgData + timestamp + checkword))); both Java's and Python's
//! URL-encoding of `*` and `~` are accepted. Each route is one event (its `id` is the event id);
//! the order is the one whose earlier event carried the waybill (`fields.waybill_no`). A route
//! for a waybill no order carries yet is refused (422) so that SF re-sends it after the
//! shipping report. `opcode_map` maps opCodes (50 collected → in_transit, 80 signed for →
//! delivered); `*` keeps every other one in the timeline.

use super::signature::md5_raw;
use super::{
    Decoded, IngestError, RawRequest, SecretLookup, SourceAdapter, SourceEntry, StatusTable,
};
use crate::config::SfConfig;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use orderhub_actors::order::{Millis, OrderEvent};
use serde::Deserialize;
use serde_json::{Map, Value};

pub(crate) const SOURCE: &str = "sf";

/// Routes per push at most (SF sends up to 10).
const MAX_ROUTES: usize = 100;

pub(crate) struct SfAdapter {
    partner_id: String,
    checkword: String,
    opcode_map: StatusTable,
}

pub(crate) fn build(config: &SfConfig, secrets: &SecretLookup) -> SourceEntry {
    let credentials = super::secret(secrets, &config.partner_id_env)
        .and_then(|id| Ok((id, super::secret(secrets, &config.checkword_env)?)));
    match credentials {
        Ok((partner_id, checkword)) => SourceEntry::Ready(Box::new(SfAdapter {
            partner_id,
            checkword,
            opcode_map: StatusTable::new(&config.opcode_map),
        })),
        Err(reason) => SourceEntry::Unavailable {
            name: SOURCE,
            reason,
        },
    }
}

/// URL-encoding with `+` for space: unreserved characters kept, the rest `%XX`. Java's
/// URLEncoder keeps `*` and encodes `~`; Python's quote_plus does the opposite.
fn urlencode_plus(text: &str, java: bool) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' => out.push(byte as char),
            b'*' if java => out.push('*'),
            b'~' if !java => out.push('~'),
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// The std API's msgDigest, in Java's (`true`) or Python's URL-encoding.
pub(crate) fn msg_digest(msg_data: &str, timestamp: &str, checkword: &str, java: bool) -> String {
    let encoded = urlencode_plus(&format!("{msg_data}{timestamp}{checkword}"), java);
    STANDARD.encode(md5_raw(encoded.as_bytes()))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Envelope {
    body: Option<Routes>,
    waybill_route: Option<Vec<Route>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Routes {
    waybill_route: Vec<Route>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Route {
    id: Option<super::Scalar>,
    mailno: Option<String>,
    orderid: Option<String>,
    accept_time: Option<String>,
    accept_address: Option<String>,
    remark: Option<String>,
    op_code: Option<super::Scalar>,
}

/// `YYYY-MM-DD HH:MM:SS` in China time (UTC+8), as SF writes times.
fn parse_china_time(text: &str) -> Option<Millis> {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let local = time::PrimitiveDateTime::parse(text.trim(), format).ok()?;
    let offset = time::UtcOffset::from_hms(8, 0, 0).ok()?;
    Some((local.assume_offset(offset).unix_timestamp_nanos() / 1_000_000) as Millis)
}

impl SfAdapter {
    fn form(body: &[u8]) -> Vec<(String, String)> {
        form_urlencoded::parse(body).into_owned().collect()
    }

    fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn map_route(
        &self,
        index: usize,
        route: Route,
        received_at: Millis,
    ) -> Result<OrderEvent, IngestError> {
        let id = route
            .id
            .map(super::Scalar::into_string)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| IngestError::Malformed(format!("route {index}: no id")))?;
        let waybill = route
            .mailno
            .filter(|m| !m.is_empty())
            .ok_or_else(|| IngestError::Malformed(format!("route {index}: no mailno")))?;
        let op_code = route
            .op_code
            .map(super::Scalar::into_string)
            .ok_or_else(|| IngestError::Malformed(format!("route {index}: no opCode")))?;
        let action =
            self.opcode_map
                .get(&op_code)
                .cloned()
                .ok_or_else(|| IngestError::UnknownStatus {
                    origin: SOURCE,
                    status: format!("opCode {op_code}"),
                })?;
        let occurred_at = match route.accept_time.as_deref() {
            Some(text) => parse_china_time(text).ok_or_else(|| {
                IngestError::Malformed(format!(
                    "route {index}: acceptTime {text:?} is not YYYY-MM-DD HH:MM:SS"
                ))
            })?,
            None => received_at,
        };
        let mut fields = Map::new();
        fields.insert("waybill_no".into(), Value::String(waybill));
        fields.insert("sf_op_code".into(), Value::String(op_code.clone()));
        for (name, value) in [
            ("sf_order_id", route.orderid),
            ("sf_remark", route.remark),
            ("sf_accept_address", route.accept_address),
        ] {
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                fields.insert(name.into(), Value::String(value));
            }
        }
        Ok(OrderEvent {
            order: String::new(),
            source: SOURCE.to_owned(),
            source_event_id: id,
            supersedes: None,
            raw_status: op_code,
            action,
            occurred_at,
            received_at,
            fields,
        })
    }
}

impl SourceAdapter for SfAdapter {
    fn name(&self) -> &'static str {
        SOURCE
    }

    fn verify(&self, request: &RawRequest<'_>) -> Result<(), IngestError> {
        let form = Self::form(request.body);
        if let Some(partner) = Self::field(&form, "partnerID")
            && partner != self.partner_id
        {
            return Err(IngestError::BadSignature(
                "partnerID does not match the configured partner".into(),
            ));
        }
        let msg_data = Self::field(&form, "msgData")
            .ok_or_else(|| IngestError::Malformed("no msgData form field".into()))?;
        let given = Self::field(&form, "msgDigest")
            .ok_or_else(|| IngestError::BadSignature("no msgDigest form field".into()))?;
        let timestamp = Self::field(&form, "timestamp").unwrap_or("");
        let matches = [true, false].into_iter().any(|java| {
            let expected = msg_digest(msg_data, timestamp, &self.checkword, java);
            super::signature::same_bytes(expected.as_bytes(), given.trim().as_bytes())
        });
        if matches {
            Ok(())
        } else {
            Err(IngestError::BadSignature(
                "msgDigest does not match msgData".into(),
            ))
        }
    }

    fn decode(&self, request: &RawRequest<'_>) -> Result<Decoded, IngestError> {
        let form = Self::form(request.body);
        let msg_data = Self::field(&form, "msgData")
            .ok_or_else(|| IngestError::Malformed("no msgData form field".into()))?;
        let envelope: Envelope = super::decode_json(msg_data.as_bytes())
            .map_err(|e| IngestError::Malformed(format!("msgData is not a route push: {e}")))?;
        let routes = envelope
            .body
            .map(|b| b.waybill_route)
            .or(envelope.waybill_route)
            .ok_or_else(|| IngestError::Malformed("msgData has no WaybillRoute".into()))?;
        if routes.is_empty() || routes.len() > MAX_ROUTES {
            return Err(IngestError::Malformed(format!(
                "a push carries 1 to {MAX_ROUTES} routes, got {}",
                routes.len()
            )));
        }
        let events = routes
            .into_iter()
            .enumerate()
            .map(|(index, route)| self.map_route(index, route, request.received_at))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Decoded::ByWaybill(events))
    }

    fn ack(&self) -> Response {
        axum::Json(serde_json::json!({ "return_code": "0000", "return_msg": "success" }))
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;
    use orderhub_actors::order::{EventAction, OrderState};
    use std::sync::Arc;

    const CHECKWORD: &str = "sf-checkword-test";

    fn adapter() -> SfAdapter {
        let config = crate::config::Config::embedded().unwrap();
        let config = config.sources.sf.unwrap();
        let secrets: SecretLookup = Arc::new(|name: &str| match name {
            "ORDERHUB_SF_PARTNER_ID" => Some("OH_PARTNER".into()),
            "ORDERHUB_SF_CHECKWORD" => Some(CHECKWORD.into()),
            _ => None,
        });
        assert!(matches!(build(&config, &secrets), SourceEntry::Ready(_)));
        SfAdapter {
            partner_id: "OH_PARTNER".into(),
            checkword: CHECKWORD.into(),
            opcode_map: StatusTable::new(&config.opcode_map),
        }
    }

    fn fixture() -> String {
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/sf/route_push.form"
        ))
        .unwrap()
    }

    fn request<'a>(headers: &'a HeaderMap, body: &'a str) -> RawRequest<'a> {
        RawRequest {
            headers,
            query: "",
            body: body.as_bytes(),
            received_at: 1,
        }
    }

    #[test]
    fn msg_digest_matches_worked_values() {
        // Worked values from Python: base64(md5(quote_plus("{\"a\":\"b c*~\"}" + "1700000000" +
        // "sf-checkword-test"))), and the same with Java's encoding of `*` and `~`.
        let data = r#"{"a":"b c*~"}"#;
        assert_eq!(
            msg_digest(data, "1700000000", CHECKWORD, false),
            "K3DB31H6o1EvofV+0Zbkpw=="
        );
        assert_eq!(
            msg_digest(data, "1700000000", CHECKWORD, true),
            "n0z+g+p+vAmOF+1WEsq7nA=="
        );
    }

    #[test]
    fn a_route_push_is_verified_and_mapped_by_opcode() {
        let headers = HeaderMap::new();
        let body = fixture();
        let adapter = adapter();
        adapter.verify(&request(&headers, &body)).unwrap();
        let Decoded::ByWaybill(events) = adapter.decode(&request(&headers, &body)).unwrap() else {
            panic!("courier events expected");
        };
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].fields["waybill_no"], "SF1400123456789");
        assert_eq!(events[0].source_event_id, "158918741444476");
        assert_eq!(
            events[0].action,
            EventAction::Move {
                state: OrderState::InTransit
            }
        );
        // 2023-11-04 10:30:56 in China is 02:30:56 UTC.
        assert_eq!(events[0].occurred_at, 1_699_065_056_000);
        assert_eq!(
            events[1].action,
            EventAction::Inform,
            "opCode 30: timeline only"
        );
        assert_eq!(
            events[2].action,
            EventAction::Move {
                state: OrderState::Delivered
            }
        );
        let tampered = body.replace("SF1400123456789", "SF1400123456780");
        assert!(matches!(
            adapter.verify(&request(&headers, &tampered)),
            Err(IngestError::BadSignature(_))
        ));
    }

    #[test]
    fn bad_routes_are_named() {
        let headers = HeaderMap::new();
        let adapter = adapter();
        let form = |data: &str| {
            form_urlencoded::Serializer::new(String::new())
                .append_pair("msgData", data)
                .finish()
        };
        for (data, expected) in [
            (r#"{"Body":{"WaybillRoute":[]}}"#, "1 to"),
            (r#"{"Body":{}}"#, "route push"),
            (
                r#"{"Body":{"WaybillRoute":[{"id":"1","opCode":"50"}]}}"#,
                "mailno",
            ),
            (
                r#"{"Body":{"WaybillRoute":[{"id":"1","mailno":"SF1","opCode":"50","acceptTime":"04/11/2023"}]}}"#,
                "acceptTime",
            ),
        ] {
            let body = form(data);
            match adapter.decode(&request(&headers, &body)) {
                Err(IngestError::Malformed(message)) => {
                    assert!(message.contains(expected), "{message}")
                }
                other => panic!("{data}: {:?}", other.err()),
            }
        }
    }
}
