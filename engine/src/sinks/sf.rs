//! SF Express (丰桥) standard API, service `EXP_RECE_CREATE_ORDER`: a form POST to
//! `/std/service` with `partnerID`, `requestID`, `serviceCode`, `timestamp`, `msgDigest` and
//! `msgData` (JSON), where msgDigest = base64(md5(urlencode_plus(msgData + timestamp +
//! checkword))) (sytpb/XExpressDemo `callExpressRequest.py`). The answer carries
//! `apiResultCode` (`A1000` = accepted [?]) and `apiResultData`, a JSON string with `success`,
//! `errorCode` and `errorMsg`.
//!
//! `msgData` is `payload.msgData` when a rule template provides it, else built from the order:
//! `orderId` = channel order number (SF refuses a second order with the same id, so a retry
//! that already went through is treated as delivered [?: error code 8016, not verified]),
//! `cargoDetails` and `contactInfoList` from the order's fields, `monthlyCard` and
//! `expressTypeId` from the sink's options.

use super::{Settings, SinkError, excerpt, order_number};
use base64::Engine as _;
use md5::{Digest, Md5};
use orderhub_actors::dispatch::{Delivery, DeliveryFuture, SinkConnector, SyncIntent};

const SERVICE_CODE: &str = "EXP_RECE_CREATE_ORDER";
/// `apiResultCode` of an accepted request [?].
const ACCEPTED: &str = "A1000";
/// `errorCode` of "order id already used" [?].
const DUPLICATE_ORDER: &str = "8016";

pub(crate) struct SfConnector {
    client: reqwest::Client,
    url: String,
    partner_id: String,
    checkword: String,
    monthly_card: Option<String>,
    express_type: i64,
}

impl SfConnector {
    pub(crate) fn new(client: reqwest::Client, settings: &Settings<'_>) -> Result<Self, SinkError> {
        Ok(SfConnector {
            client,
            url: settings.url().to_owned(),
            partner_id: settings.credential("partner_id")?,
            checkword: settings.credential("checkword")?,
            monthly_card: settings.option("monthly_card").map(str::to_owned),
            express_type: settings
                .option("express_type_id")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1),
        })
    }

    /// `msgData` for `sync`.
    fn msg_data(&self, sync: &SyncIntent) -> serde_json::Value {
        if let Some(data) = sync.payload.get("msgData").filter(|d| d.is_object()) {
            return data.clone();
        }
        let whole = sync.whole_payload();
        let fields = &whole["fields"];
        let mut data = serde_json::json!({
            "orderId": order_number(&sync.order),
            "language": "zh-CN",
            "expressTypeId": self.express_type,
            "payMethod": 1,
            "parcelQty": 1,
            "isOneselfPickup": 0,
            "cargoDetails": fields.get("cargoDetails").cloned().unwrap_or_else(|| serde_json::json!([{ "name": "goods", "count": 1 }])),
            "contactInfoList": fields.get("contactInfoList").cloned().unwrap_or_else(|| serde_json::json!([])),
        });
        if let Some(card) = &self.monthly_card {
            data["monthlyCard"] = card.clone().into();
        }
        data
    }
}

/// Python's `urllib.parse.quote_plus`: unreserved bytes kept, space as `+`, the rest `%XX`.
fn quote_plus(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => {
                out.push(byte as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// msgDigest = base64(md5(quote_plus(msgData + timestamp + checkword))).
pub(crate) fn digest(msg_data: &str, timestamp: &str, checkword: &str) -> String {
    let quoted = quote_plus(&format!("{msg_data}{timestamp}{checkword}"));
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(quoted.as_bytes()))
}

/// Reads SF's answer.
fn answer(body: &str) -> Delivery {
    let answer: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let Some(code) = answer["apiResultCode"].as_str() else {
        return Delivery::Failed {
            retry_after: None,
            detail: format!("unexpected answer: {}", excerpt(body)),
        };
    };
    if code != ACCEPTED {
        // Authentication, digest or platform errors: retried, and dead-lettered if they last.
        return Delivery::Failed {
            retry_after: None,
            detail: format!("{code}: {}", answer["apiErrorMsg"]),
        };
    }
    let data: serde_json::Value = answer["apiResultData"]
        .as_str()
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or_default();
    match (data["success"].as_bool(), data["errorCode"].as_str()) {
        (Some(true), _) => Delivery::Delivered,
        (_, Some(DUPLICATE_ORDER)) => Delivery::Delivered,
        _ => Delivery::Rejected {
            detail: format!("{}: {}", data["errorCode"], data["errorMsg"]),
        },
    }
}

/// A UUID-shaped request id.
fn request_id() -> String {
    let (a, b) = (fastrand::u64(..), fastrand::u64(..));
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0x0fff,
        (b >> 48) & 0x3fff | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

impl SinkConnector for SfConnector {
    fn deliver(&self, sync: std::sync::Arc<SyncIntent>, _attempt: u32) -> DeliveryFuture {
        let msg_data = self.msg_data(&sync).to_string();
        let timestamp = (super::unix_ms() / 1000).to_string();
        let form = [
            ("partnerID", self.partner_id.clone()),
            ("requestID", request_id()),
            ("serviceCode", SERVICE_CODE.to_owned()),
            ("msgDigest", digest(&msg_data, &timestamp, &self.checkword)),
            ("timestamp", timestamp),
            ("msgData", msg_data),
        ];
        let request = self.client.post(&self.url).form(&form);
        super::deliver_parsed(request, answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_a_worked_value() {
        // Worked out with Python's urllib.parse.quote_plus, hashlib.md5 and base64, as the
        // SDK does.
        let msg = r#"{"orderId":"A1","remark":"a b/c"}"#;
        assert_eq!(
            quote_plus(&format!("{msg}1700000000cw1")),
            "%7B%22orderId%22%3A%22A1%22%2C%22remark%22%3A%22a+b%2Fc%22%7D1700000000cw1"
        );
        assert_eq!(digest(msg, "1700000000", "cw1"), "3/R29jhthnOU87U980/Dfw==");
    }

    #[test]
    fn msg_data_comes_from_the_order_or_the_template() {
        let connector = SfConnector {
            client: crate::http_client::builder().build().unwrap(),
            url: "https://sfapi-sbox.sf-express.com/std/service".into(),
            partner_id: "P".into(),
            checkword: "C".into(),
            monthly_card: Some("7551234567".into()),
            express_type: 2,
        };
        let mut sync = SyncIntent {
            id: "douyin:77:5:sf".into(),
            sink: "sf".into(),
            order: "douyin:77".into(),
            seq: 5,
            rule: "ship".into(),
            payload: serde_json::json!({ "fields": { "contactInfoList": [{ "contactType": 2, "mobile": "1" }] } }),
            fields: None,
            contents: None,
        };
        let data = connector.msg_data(&sync);
        assert_eq!(data["orderId"], "77");
        assert_eq!(data["monthlyCard"], "7551234567");
        assert_eq!(data["expressTypeId"], 2);
        assert_eq!(data["contactInfoList"][0]["contactType"], 2);
        sync.payload = serde_json::json!({ "msgData": { "orderId": "custom" } });
        assert_eq!(
            connector.msg_data(&sync),
            serde_json::json!({ "orderId": "custom" })
        );
    }

    #[test]
    fn answers_are_read() {
        let ok = r#"{"apiResultCode":"A1000","apiErrorMsg":"","apiResultData":"{\"success\":true,\"errorCode\":\"S0000\"}"}"#;
        assert_eq!(answer(ok), Delivery::Delivered);
        let duplicate = r#"{"apiResultCode":"A1000","apiResultData":"{\"success\":false,\"errorCode\":\"8016\",\"errorMsg\":\"重复下单\"}"}"#;
        assert_eq!(answer(duplicate), Delivery::Delivered);
        let refused = r#"{"apiResultCode":"A1000","apiResultData":"{\"success\":false,\"errorCode\":\"1010\",\"errorMsg\":\"寄件地址不能为空\"}"}"#;
        assert!(
            matches!(answer(refused), Delivery::Rejected { detail } if detail.contains("1010"))
        );
        let auth = r#"{"apiResultCode":"A1004","apiErrorMsg":"无对应服务权限"}"#;
        assert!(matches!(answer(auth), Delivery::Failed { .. }));
        assert_eq!(request_id().len(), 36);
    }
}
