//! WangDianTong (旺店通) WMS status push: a form POST with WDT's public parameters `sid`,
//! `appkey`, `timestamp` (unix seconds) and `sign`, and the business fields `shop_no`, `tid`
//! (the channel's order number), `status` and optionally `logistics_no` (the waybill),
//! `logistics_code` and `oper_time`. Answered `{"code":0,"message":"success"}`.
//!
//! The sign is WDT openapi2's (shared/reference/protocols.md §3): every parameter but `sign`,
//! sorted by name, each written `%02d-name:%04d-value` with lengths in UTF-8 characters, joined
//! with `;`, then md5hex(that + appsecret). [?] The push's field names and status values are
//! not in a public source we could read: they are configurable (`status_map`, `shops`) and the
//! defaults name the WMS stages and WDT's trade status codes.
//!
//! `tid` names the channel's order; `shops` maps `shop_no` to the channel (or
//! `default_channel`), giving the key `{channel}:{tid}`. A `logistics_no` is kept as
//! `fields.waybill_no`, so the courier's route pushes find the order.

use super::signature::same_signature;
use super::{
    Decoded, IngestError, RawRequest, SecretLookup, SourceAdapter, SourceEntry, StatusTable,
};
use crate::config::WdtConfig;
use axum::response::{IntoResponse, Response};
use orderhub_actors::order::{Millis, OrderEvent};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

pub(crate) const SOURCE: &str = "wdt";

pub(crate) struct WdtAdapter {
    sid: String,
    appkey: String,
    appsecret: String,
    tolerance_ms: Millis,
    shops: BTreeMap<String, String>,
    default_channel: Option<String>,
    status_map: StatusTable,
}

pub(crate) fn build(config: &WdtConfig, secrets: &SecretLookup) -> SourceEntry {
    let credentials = super::secret(secrets, &config.sid_env).and_then(|sid| {
        Ok((
            sid,
            super::secret(secrets, &config.appkey_env)?,
            super::secret(secrets, &config.appsecret_env)?,
        ))
    });
    match credentials {
        Ok((sid, appkey, appsecret)) => SourceEntry::Ready(Box::new(WdtAdapter {
            sid,
            appkey,
            appsecret,
            tolerance_ms: config.tolerance.0.as_millis() as Millis,
            shops: config.shops.clone(),
            default_channel: config.default_channel.clone(),
            status_map: StatusTable::new(&config.status_map),
        })),
        Err(reason) => SourceEntry::Unavailable {
            name: SOURCE,
            reason,
        },
    }
}

/// WDT's sign over form parameters (`sign` itself excluded).
pub(crate) fn wdt_sign(params: &[(String, String)], appsecret: &str) -> String {
    super::signature::wdt_sign(
        params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        appsecret,
    )
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

impl WdtAdapter {
    fn map(&self, form: &[(String, String)], received_at: Millis) -> Result<Decoded, IngestError> {
        let required = |name: &str| {
            field(form, name).ok_or_else(|| IngestError::Malformed(format!("no {name} form field")))
        };
        let tid = required("tid")?;
        let status = required("status")?;
        let shop = field(form, "shop_no").unwrap_or("");
        let channel = self
            .shops
            .get(shop)
            .or(self.default_channel.as_ref())
            .ok_or_else(|| {
                IngestError::Malformed(format!(
                    "shop_no {shop:?} is not mapped to a channel (sources.wdt.shops or default_channel)"
                ))
            })?;
        let action = self.status_map.map(status);
        let waybill = field(form, "logistics_no");
        let mut fields = Map::new();
        if let Some(waybill) = waybill {
            fields.insert("waybill_no".into(), Value::String(waybill.to_owned()));
        }
        for (name, key) in [
            ("logistics_code", "logistics_code"),
            ("shop_no", "wdt_shop_no"),
            ("oper_time", "wdt_oper_time"),
        ] {
            if let Some(value) = field(form, name) {
                fields.insert(key.into(), Value::String(value.to_owned()));
            }
        }
        let occurred_at = field(form, "timestamp")
            .and_then(|t| t.parse::<i64>().ok())
            .map_or(received_at, |seconds| seconds * 1000);
        Ok(Decoded::events(vec![OrderEvent {
            order: format!("{channel}:{tid}"),
            source: SOURCE.to_owned(),
            // The same status of the same trade (and parcel) is one event, however often the
            // push is repeated.
            source_event_id: format!("{shop}:{tid}:{status}:{}", waybill.unwrap_or("")),
            supersedes: None,
            raw_status: status.to_owned(),
            action,
            occurred_at,
            received_at,
            fields,
        }]))
    }
}

impl SourceAdapter for WdtAdapter {
    fn name(&self) -> &'static str {
        SOURCE
    }

    fn verify(&self, request: &RawRequest<'_>) -> Result<(), IngestError> {
        let form: Vec<(String, String)> =
            form_urlencoded::parse(request.body).into_owned().collect();
        if field(&form, "sid") != Some(self.sid.as_str()) {
            return Err(IngestError::BadSignature("sid does not match".into()));
        }
        if field(&form, "appkey") != Some(self.appkey.as_str()) {
            return Err(IngestError::BadSignature("appkey does not match".into()));
        }
        let timestamp = field(&form, "timestamp")
            .and_then(|t| t.parse::<i64>().ok())
            .ok_or_else(|| IngestError::BadSignature("no timestamp in unix seconds".into()))?;
        if (timestamp * 1000 - request.received_at).abs() > self.tolerance_ms {
            return Err(IngestError::BadSignature(
                "timestamp is outside the accepted tolerance".into(),
            ));
        }
        let given = field(&form, "sign")
            .ok_or_else(|| IngestError::BadSignature("no sign form field".into()))?;
        if same_signature(&wdt_sign(&form, &self.appsecret), given) {
            Ok(())
        } else {
            Err(IngestError::BadSignature(
                "sign does not match the parameters".into(),
            ))
        }
    }

    fn decode(&self, request: &RawRequest<'_>) -> Result<Decoded, IngestError> {
        let form: Vec<(String, String)> =
            form_urlencoded::parse(request.body).into_owned().collect();
        self.map(&form, request.received_at)
    }

    fn ack(&self) -> Response {
        axum::Json(serde_json::json!({ "code": 0, "message": "success" })).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;
    use orderhub_actors::order::{EventAction, OrderState};
    use std::sync::Arc;

    const SECRET: &str = "wdt-appsecret";
    /// The fixture's timestamp.
    const AT: Millis = 1_700_000_000_000;

    fn adapter() -> WdtAdapter {
        let config = crate::config::Config::layered(Some((
            "test.toml".into(),
            "[sources.wdt]\nsid_env = \"S\"\nappkey_env = \"K\"\nappsecret_env = \"A\"\n\
             default_channel = \"douyin\"\n[sources.wdt.shops]\nyz01 = \"youzan\"\n\
             [sources.wdt.status_map]\npacked = \"packed\"\nshipped = \"shipped\"\n"
                .into(),
        )))
        .unwrap();
        let config = config.sources.wdt.unwrap();
        let secrets: SecretLookup = Arc::new(|name: &str| match name {
            "S" => Some("wdtsid".into()),
            "K" => Some("wdtkey".into()),
            "A" => Some(SECRET.into()),
            _ => None,
        });
        assert!(matches!(build(&config, &secrets), SourceEntry::Ready(_)));
        WdtAdapter {
            sid: "wdtsid".into(),
            appkey: "wdtkey".into(),
            appsecret: SECRET.into(),
            tolerance_ms: config.tolerance.0.as_millis() as Millis,
            shops: config.shops,
            default_channel: config.default_channel,
            status_map: StatusTable::new(&config.status_map),
        }
    }

    fn fixture() -> String {
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/wdt/shipped.form"
        ))
        .unwrap()
    }

    fn request<'a>(headers: &'a HeaderMap, body: &'a str) -> RawRequest<'a> {
        let mut request = RawRequest::plain(headers, "", body.as_bytes());
        request.received_at = AT + 30_000;
        request
    }

    #[test]
    fn the_sign_counts_characters_not_bytes() {
        // Worked value from Python: md5("06-appkey:0002-k1;08-goods_no:0004-商品编码" + "s").
        let params = vec![
            ("goods_no".to_owned(), "商品编码".to_owned()),
            ("sign".to_owned(), "ignored".to_owned()),
            ("appkey".to_owned(), "k1".to_owned()),
        ];
        assert_eq!(wdt_sign(&params, "s"), "61bd4bc7e0090c893a157aabae238ac1");
    }

    #[test]
    fn a_signed_push_maps_to_the_channel_order_with_its_waybill() {
        let headers = HeaderMap::new();
        let body = fixture();
        let adapter = adapter();
        adapter.verify(&request(&headers, &body)).unwrap();
        let events = super::super::events_of(adapter.decode(&request(&headers, &body))).unwrap();
        assert_eq!(events[0].order, "youzan:E20231115093012034500012");
        assert_eq!(
            events[0].action,
            EventAction::Move {
                state: OrderState::Shipped
            }
        );
        assert_eq!(events[0].fields["waybill_no"], "SF1400123456789");
        assert_eq!(events[0].occurred_at, AT);
        let tampered = body.replace("status=shipped", "status=packed");
        assert!(matches!(
            adapter.verify(&request(&headers, &tampered)),
            Err(IngestError::BadSignature(_))
        ));
        let late = RawRequest {
            received_at: AT + 3_600_000,
            ..request(&headers, &body)
        };
        assert!(matches!(
            adapter.verify(&late),
            Err(IngestError::BadSignature(_))
        ));
    }

    #[test]
    fn unknown_statuses_are_named_and_unmapped_shops_fall_back_to_the_default_channel() {
        let headers = HeaderMap::new();
        let adapter = adapter();
        let body = "tid=1&status=weighed&shop_no=yz01";
        let events = super::super::events_of(adapter.decode(&request(&headers, body))).unwrap();
        assert_eq!(events[0].action, EventAction::Unmapped);
        assert_eq!(events[0].raw_status, "weighed");
        let events = super::super::events_of(
            adapter.decode(&request(&headers, "tid=9&status=packed&shop_no=other")),
        )
        .unwrap();
        assert_eq!(events[0].order, "douyin:9");
        assert!(matches!(
            adapter.decode(&request(&headers, "status=packed")),
            Err(IngestError::Malformed(_))
        ));
    }
}
