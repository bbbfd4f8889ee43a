//! SF Express (顺丰) route push (RoutePushService): incremental courier scans, at most 10
//! `WaybillRoute`s per push of `mailno, orderid, acceptTime, acceptAddress, remark, opCode, id`
//! (all strings), in one of two modes chosen when subscribing
//! (shared/reference/protocols.md §2, after SF's RoutePushService document):
//! - **json**: `Content-Type: application/json`, body `{"Body":{"WaybillRoute":[…]}}`, answered
//!   `{"return_code":"0000","return_msg":"success"}`;
//! - **form**: `application/x-www-form-urlencoded` with one field `content` holding XML
//!   `<Request service="RoutePushService"><Body><WaybillRoute mailno=".." …/></Body></Request>`
//!   (the route's data as attributes), answered
//!   `<Response service="RoutePushService"><Head>OK</Head></Response>`.
//!
//! SF documents no signature for the push, so it is authenticated by a secret path segment:
//! `POST /v1/ingest/sf/{token}` with the token from `push_token_env` (404 without one, 401 for
//! a wrong one), and optionally a source-address allow-list `allow_from` (CIDRs, checked against
//! the TCP peer; no proxy header is trusted).
//!
//! Each route is one event (its `id` is the event id). Its order is the one whose earlier event
//! reported the waybill (`fields.waybill_no`); a scan for a waybill no order has reported yet is
//! journaled, acknowledged and kept until one does, then applied — never refused. `opcode_map`
//! maps opCodes (50 collected → in_transit, 80 signed for → delivered); `*` keeps every other
//! one in the timeline; a malformed route is recorded without failing the push's others.

use super::registry::{self, Configured, Issue, SourcePlugin};
use super::{
    Decoded, IngestError, RawRequest, Scalar, SecretLookup, SourceAdapter, SourceEntry, StatusTable,
};
use crate::signing::same_bytes;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use orderhub_actors::order::{Millis, OrderEvent};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

pub(crate) const SOURCE: &str = "sf";

/// `[sources.sf]`: SF Express route push, at `POST /v1/ingest/sf/{token}`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SfConfig {
    /// Environment variable holding the secret path segment that authenticates the push (SF
    /// signs nothing).
    #[serde(default = "default_sf_push_token_env")]
    pub(crate) push_token_env: String,
    /// Source addresses allowed to push (CIDRs or addresses); empty: any.
    #[serde(default)]
    pub(crate) allow_from: Vec<String>,
    /// Route opCode (`*` for any other) → canonical status.
    pub(crate) opcode_map: BTreeMap<String, String>,
}

fn default_sf_push_token_env() -> String {
    "ORDERHUB_SF_PUSH_TOKEN".into()
}

/// The SF Express route push, `[sources.sf]` (`POST /v1/ingest/sf/{token}`).
pub(crate) struct Plugin;

impl SourcePlugin for Plugin {
    fn key(&self) -> &'static str {
        SOURCE
    }

    fn configure(&self, table: toml::Value) -> Result<Vec<Configured>, Issue> {
        let config: SfConfig = registry::parse("sources.sf", table)?;
        registry::statuses("sources.sf.opcode_map", &config.opcode_map)?;
        for (i, cidr) in config.allow_from.iter().enumerate() {
            parse_cidr(cidr).map_err(|message| (format!("sources.sf.allow_from[{i}]"), message))?;
        }
        Ok(vec![Configured::push(SOURCE, config, build)])
    }
}

/// Routes per push at most (SF sends up to 10).
const MAX_ROUTES: usize = 100;

/// The form mode's success answer.
const XML_OK: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Response service="RoutePushService"><Head>OK</Head></Response>"#;

pub(crate) struct SfAdapter {
    push_token: String,
    allow_from: Vec<IpNet>,
    opcode_map: StatusTable,
}

pub(crate) fn build(config: &SfConfig, secrets: &SecretLookup) -> SourceEntry {
    let token = super::secret(secrets, &config.push_token_env);
    let allow_from = config
        .allow_from
        .iter()
        .map(|cidr| parse_cidr(cidr))
        .collect::<Result<Vec<_>, _>>();
    match (token, allow_from) {
        (Ok(push_token), Ok(allow_from)) => SourceEntry::Ready(Box::new(SfAdapter {
            push_token,
            allow_from,
            opcode_map: StatusTable::new(&config.opcode_map),
        })),
        (Err(reason), _) | (_, Err(reason)) => SourceEntry::Unavailable {
            name: SOURCE,
            reason,
        },
    }
}

/// A CIDR (`10.0.0.0/8`) or a single address.
pub(crate) fn parse_cidr(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("allow_from: {text:?} is not a CIDR such as 203.0.113.0/24"))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Envelope {
    body: Option<Routes>,
    waybill_route: Option<Vec<Value>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Routes {
    waybill_route: Vec<Value>,
}

/// One route; XML attributes arrive as strings, JSON values as strings or numbers. The
/// snake-case aliases are the legacy BSP names.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Route {
    id: Option<Scalar>,
    mailno: Option<String>,
    orderid: Option<String>,
    #[serde(alias = "accept_time")]
    accept_time: Option<String>,
    #[serde(alias = "accept_address")]
    accept_address: Option<String>,
    remark: Option<String>,
    #[serde(alias = "opcode")]
    op_code: Option<Scalar>,
}

/// `YYYY-MM-DD HH:MM:SS` in China time (UTC+8), as SF writes times.
fn parse_china_time(text: &str) -> Option<Millis> {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let local = time::PrimitiveDateTime::parse(text.trim(), format).ok()?;
    let offset = time::UtcOffset::from_hms(8, 0, 0).ok()?;
    Some((local.assume_offset(offset).unix_timestamp_nanos() / 1_000_000) as Millis)
}

/// Which of its two modes a push came in.
fn is_form(request: &RawRequest<'_>) -> bool {
    match request.header(header::CONTENT_TYPE.as_str()) {
        Some(kind) => kind
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded"),
        None => !request.body.trim_ascii_start().starts_with(b"{"),
    }
}

/// The `WaybillRoute` elements of form mode's XML, each as an object of its attributes.
fn routes_of_xml(xml: &str) -> Result<Vec<Value>, IngestError> {
    use quick_xml::events::Event;
    let malformed = |e: &dyn std::fmt::Display| {
        IngestError::Malformed(format!("content is not route XML: {e}"))
    };
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut routes = Vec::new();
    let mut depth = 0usize;
    loop {
        match reader.read_event().map_err(|e| malformed(&e))? {
            Event::Start(element) | Event::Empty(element)
                if element.name().as_ref() == b"WaybillRoute" =>
            {
                let mut route = Map::new();
                for attribute in element.attributes() {
                    let attribute = attribute.map_err(|e| malformed(&e))?;
                    let name = String::from_utf8_lossy(attribute.key.as_ref()).into_owned();
                    let value = attribute.unescape_value().map_err(|e| malformed(&e))?;
                    route.insert(name, Value::String(value.into_owned()));
                }
                routes.push(Value::Object(route));
                if routes.len() > MAX_ROUTES {
                    break;
                }
            }
            Event::Start(_) => {
                depth += 1;
                if depth > super::MAX_JSON_DEPTH {
                    return Err(malformed(&"elements nest too deep"));
                }
            }
            Event::End(_) => depth = depth.saturating_sub(1),
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(routes)
}

impl SfAdapter {
    /// The routes of a push, in either mode.
    fn routes(request: &RawRequest<'_>) -> Result<Vec<Value>, IngestError> {
        let routes = if is_form(request) {
            let content = form_urlencoded::parse(request.body)
                .find(|(name, _)| name == "content")
                .map(|(_, value)| value.into_owned())
                .ok_or_else(|| {
                    IngestError::Malformed("form mode: no content field (route XML)".into())
                })?;
            routes_of_xml(&content)?
        } else {
            let envelope: Envelope = super::decode_json(request.body).map_err(|e| {
                IngestError::Malformed(format!(
                    "expected {{\"Body\":{{\"WaybillRoute\":[…]}}}}: {e}"
                ))
            })?;
            envelope
                .body
                .map(|b| b.waybill_route)
                .or(envelope.waybill_route)
                .ok_or_else(|| IngestError::Malformed("no Body.WaybillRoute".into()))?
        };
        if routes.is_empty() || routes.len() > MAX_ROUTES {
            return Err(IngestError::Malformed(format!(
                "a push carries 1 to {MAX_ROUTES} routes, got {}",
                routes.len()
            )));
        }
        Ok(routes)
    }

    fn map_route(
        &self,
        index: usize,
        route: Value,
        received_at: Millis,
    ) -> Result<OrderEvent, IngestError> {
        let malformed = |what: String| IngestError::Malformed(format!("route {index}: {what}"));
        let route: Route = serde_json::from_value(route).map_err(|e| malformed(e.to_string()))?;
        let id = route
            .id
            .map(Scalar::into_string)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| malformed("no id".into()))?;
        let waybill = route
            .mailno
            .filter(|m| !m.is_empty())
            .ok_or_else(|| malformed("no mailno".into()))?;
        let op_code = route
            .op_code
            .map(Scalar::into_string)
            .filter(|op| !op.is_empty())
            .ok_or_else(|| malformed("no opCode".into()))?;
        let action = self.opcode_map.map(&op_code);
        let occurred_at = match route.accept_time.as_deref().filter(|t| !t.is_empty()) {
            Some(text) => parse_china_time(text).ok_or_else(|| {
                malformed(format!("acceptTime {text:?} is not YYYY-MM-DD HH:MM:SS"))
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
            // Found through the waybill by the journal (see the module doc).
            order: String::new(),
            source: SOURCE.to_owned(),
            source_event_id: id,
            supersedes: None,
            log_seq: None,
            raw_status: op_code,
            action,
            occurred_at,
            received_at,
            fields: fields.into(),
        })
    }
}

impl SourceAdapter for SfAdapter {
    fn name(&self) -> &'static str {
        SOURCE
    }

    fn verify(&self, request: &RawRequest<'_>) -> Result<(), IngestError> {
        let token = request.path_token.ok_or_else(|| {
            IngestError::NoSuchRoute(
                "SF route pushes are posted to /v1/ingest/sf/{token} (the secret of push_token_env)"
                    .into(),
            )
        })?;
        if !same_bytes(self.push_token.as_bytes(), token.as_bytes()) {
            return Err(IngestError::BadSignature("wrong push token".into()));
        }
        if !self.allow_from.is_empty() {
            let allowed = request
                .peer
                .is_some_and(|peer| self.allow_from.iter().any(|net| net.contains(&peer)));
            if !allowed {
                return Err(IngestError::BadSignature(format!(
                    "{} is not in sources.sf.allow_from",
                    request
                        .peer
                        .map_or("an unknown address".into(), |p| p.to_string())
                )));
            }
        }
        Ok(())
    }

    fn decode(&self, request: &RawRequest<'_>) -> Result<Decoded, IngestError> {
        let routes = Self::routes(request)?;
        Ok(Decoded::from_results(routes.into_iter().enumerate().map(
            |(index, route)| self.map_route(index, route, request.received_at),
        )))
    }

    fn ack(&self) -> Response {
        axum::Json(serde_json::json!({ "return_code": "0000", "return_msg": "success" }))
            .into_response()
    }

    fn ack_for(&self, request: &RawRequest<'_>) -> Response {
        if is_form(request) {
            (
                [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
                XML_OK,
            )
                .into_response()
        } else {
            self.ack()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;
    use orderhub_actors::order::{EventAction, OrderState};
    use std::sync::Arc;

    const TOKEN: &str = "sf-push-token-test";

    fn adapter() -> SfAdapter {
        let config: SfConfig = super::super::registry::default_config("sf");
        let secrets: SecretLookup = Arc::new(|name: &str| match name {
            "ORDERHUB_SF_PUSH_TOKEN" => Some(TOKEN.into()),
            _ => None,
        });
        assert!(matches!(build(&config, &secrets), SourceEntry::Ready(_)));
        SfAdapter {
            push_token: TOKEN.into(),
            allow_from: Vec::new(),
            opcode_map: StatusTable::new(&config.opcode_map),
        }
    }

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!(
            "{}/tests/fixtures/sf/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    fn headers(content_type: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        headers
    }

    fn request<'a>(headers: &'a HeaderMap, body: &'a str) -> RawRequest<'a> {
        let mut request = RawRequest::plain(headers, "", body.as_bytes());
        request.path_token = Some(TOKEN);
        request
    }

    fn assert_three_routes(events: &[OrderEvent]) {
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].fields.to_json()["waybill_no"], "SF1400123456789");
        assert_eq!(
            events[0].order, "",
            "found through the waybill by the journal"
        );
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
        assert_eq!(
            events[0].fields.to_json()["sf_remark"],
            "顺丰速运 已收取快件"
        );
    }

    #[test]
    fn json_mode_and_form_mode_carry_the_same_routes() {
        let adapter = adapter();
        let json = headers("application/json;charset=UTF-8");
        let body = fixture("route_push.json");
        let events = super::super::events_of(adapter.decode(&request(&json, &body))).unwrap();
        assert_three_routes(&events);
        let form = headers("application/x-www-form-urlencoded");
        let body = fixture("route_push.form");
        let events = super::super::events_of(adapter.decode(&request(&form, &body))).unwrap();
        assert_three_routes(&events);
    }

    #[test]
    fn each_mode_is_answered_in_its_own_format() {
        let adapter = adapter();
        let form = headers("application/x-www-form-urlencoded");
        let answer = adapter.ack_for(&request(&form, "content=x"));
        assert_eq!(
            answer.headers()[header::CONTENT_TYPE],
            "application/xml; charset=utf-8"
        );
        let json = headers("application/json");
        let answer = adapter.ack_for(&request(&json, "{}"));
        assert_eq!(answer.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn the_push_is_authenticated_by_its_path_token_and_address() {
        let mut adapter = adapter();
        let json = headers("application/json");
        let body = fixture("route_push.json");
        assert!(adapter.verify(&request(&json, &body)).is_ok());
        let mut no_token = request(&json, &body);
        no_token.path_token = None;
        assert!(matches!(
            adapter.verify(&no_token),
            Err(IngestError::NoSuchRoute(_))
        ));
        let mut wrong = request(&json, &body);
        wrong.path_token = Some("guess");
        assert!(matches!(
            adapter.verify(&wrong),
            Err(IngestError::BadSignature(_))
        ));
        adapter.allow_from = vec![
            parse_cidr("203.0.113.0/24").unwrap(),
            parse_cidr("::1").unwrap(),
        ];
        let mut inside = request(&json, &body);
        inside.peer = Some("203.0.113.7".parse().unwrap());
        assert!(adapter.verify(&inside).is_ok());
        let mut outside = request(&json, &body);
        outside.peer = Some("198.51.100.7".parse().unwrap());
        assert!(
            matches!(adapter.verify(&outside), Err(IngestError::BadSignature(m)) if m.contains("198.51.100.7"))
        );
        assert!(parse_cidr("10.0.0.0/33").is_err());
    }

    #[test]
    fn bad_routes_are_named_and_do_not_fail_the_others() {
        let adapter = adapter();
        let json = headers("application/json");
        for (data, expected) in [
            (r#"{"Body":{"WaybillRoute":[]}}"#, "1 to"),
            (r#"{"Body":{}}"#, "WaybillRoute"),
            (
                r#"{"Body":{"WaybillRoute":[{"id":"1","opCode":"50"}]}}"#,
                "mailno",
            ),
            (
                r#"{"Body":{"WaybillRoute":[{"id":"1","mailno":"SF1","opCode":"50","acceptTime":"04/11/2023"}]}}"#,
                "acceptTime",
            ),
        ] {
            match super::super::events_of(adapter.decode(&request(&json, data))) {
                Err(IngestError::Malformed(message)) => {
                    assert!(message.contains(expected), "{message}")
                }
                other => panic!("{data}: {:?}", other.err()),
            }
        }
        let mixed = r#"{"Body":{"WaybillRoute":[{"id":"1","opCode":"50"},{"id":"2","mailno":"SF2","opCode":"999"}]}}"#;
        let Decoded::Events { events, rejected } = adapter.decode(&request(&json, mixed)).unwrap()
        else {
            panic!("events expected")
        };
        assert_eq!((events.len(), rejected.len()), (1, 1));
        assert_eq!(
            events[0].action,
            EventAction::Inform,
            "`*` catches other opCodes"
        );
        let form = headers("application/x-www-form-urlencoded");
        assert!(matches!(
            adapter.decode(&request(&form, "msgData=x")),
            Err(IngestError::Malformed(m)) if m.contains("content")
        ));
        let deep = format!("content={}", "%3Ca%3E".repeat(1000));
        assert!(matches!(
            adapter.decode(&request(&form, &deep)),
            Err(IngestError::Malformed(_))
        ));
    }
}
