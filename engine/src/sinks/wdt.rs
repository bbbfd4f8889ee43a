//! WangDianTong (旺店通) openapi2 `trade_push.php`: a form POST with public parameters `sid`,
//! `appkey`, `timestamp` (unix seconds) and `sign`, where the sign sorts the parameters by key
//! (leaving out `sign`), writes each as `%02d-key:%04d-value` with UTF-8 *character* counts,
//! joins them with `;` and takes md5hex(string + appsecret) (lennan747/wangdingtong
//! `src/Helpers.php`). WDT keys trades by `tid`, so a re-push updates the same trade: retries
//! are idempotent.
//!
//! The trade is `payload.trade` when a rule template provides one, else built from the order:
//! `tid` = channel order number, `trade_status` 30 (awaiting shipment) or 90 (closed) for a
//! cancel operation, fields `receiver_*`, `paid`, `post_amount`, `order_list` passed through.

use super::{Settings, SinkError, excerpt, order_number};
use orderhub_actors::dispatch::{Delivery, DeliveryFuture, SinkConnector, SyncIntent};
use std::collections::BTreeMap;

/// Order fields copied into the trade when present.
const TRADE_FIELDS: [&str; 11] = [
    "receiver_name",
    "receiver_mobile",
    "receiver_province",
    "receiver_city",
    "receiver_district",
    "receiver_address",
    "buyer_nick",
    "paid",
    "post_amount",
    "pay_time",
    "order_list",
];

pub(crate) struct WdtConnector {
    client: reqwest::Client,
    url: String,
    sid: String,
    appkey: String,
    appsecret: String,
    shop_no: String,
    switch: String,
}

impl WdtConnector {
    pub(crate) fn new(client: reqwest::Client, settings: &Settings<'_>) -> Result<Self, SinkError> {
        Ok(WdtConnector {
            client,
            url: settings.url().to_owned(),
            sid: settings.credential("sid")?,
            appkey: settings.credential("appkey")?,
            appsecret: settings.credential("appsecret")?,
            shop_no: settings.required("shop_no")?.to_owned(),
            // [?] The meaning of `switch` is not documented in the sources read; 0 is what the
            // SDK's tests send.
            switch: settings.option("switch").unwrap_or("0").to_owned(),
        })
    }

    /// The signed form of a push of `trades` at `timestamp`.
    fn form(&self, trades: &serde_json::Value, timestamp: i64) -> BTreeMap<&'static str, String> {
        let mut form = BTreeMap::from([
            ("sid", self.sid.clone()),
            ("appkey", self.appkey.clone()),
            ("timestamp", timestamp.to_string()),
            ("shop_no", self.shop_no.clone()),
            ("switch", self.switch.clone()),
            ("trade_list", trades.to_string()),
        ]);
        let signature = sign(&form, &self.appsecret);
        form.insert("sign", signature);
        form
    }
}

/// WangDianTong's sign over `params` (`sign` left out).
pub(crate) fn sign(params: &BTreeMap<&str, String>, appsecret: &str) -> String {
    crate::ingest::signature::wdt_sign(params.iter().map(|(k, v)| (*k, v.as_str())), appsecret)
}

/// The trade pushed for `sync`.
pub(crate) fn trade(sync: &SyncIntent) -> serde_json::Value {
    if let Some(trade) = sync.payload.get("trade").filter(|t| t.is_object()) {
        return trade.clone();
    }
    let operation = sync.payload["operation"].as_str().unwrap_or_default();
    let mut trade = serde_json::json!({
        "tid": order_number(&sync.order),
        "trade_status": if operation.contains("cancel") { 90 } else { 30 },
        "pay_status": 2,
        "delivery_term": 1,
    });
    let fields = &sync.payload["fields"];
    for name in TRADE_FIELDS {
        if let Some(value) = fields.get(name) {
            trade[name] = value.clone();
        }
    }
    trade
}

/// Reads `{"code":0,"message":…}`.
fn answer(body: &str) -> Delivery {
    let answer: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    match answer["code"].as_i64() {
        Some(0) => Delivery::Delivered,
        Some(code) => Delivery::Rejected {
            detail: format!("code {code}: {}", answer["message"]),
        },
        None => Delivery::Failed {
            retry_after: None,
            detail: format!("unexpected answer: {}", excerpt(body)),
        },
    }
}

impl SinkConnector for WdtConnector {
    fn deliver(&self, sync: SyncIntent, _attempt: u32) -> DeliveryFuture {
        let now = super::unix_ms() / 1000;
        let form = self.form(&serde_json::json!([trade(&sync)]), now);
        let request = self.client.post(&self.url).form(&form);
        super::deliver_parsed(request, answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_matches_a_worked_value_with_character_counts() {
        // Worked out with a Python transcription of Helpers.php (iconv_strlen counts 店铺1 as 3).
        let params = BTreeMap::from([
            ("sid", "s1".to_owned()),
            ("appkey", "k1".to_owned()),
            ("timestamp", "1700000000".to_owned()),
            ("shop_no", "店铺1".to_owned()),
            ("trade_list", r#"[{"tid":"1"}]"#.to_owned()),
            ("sign", "ignored".to_owned()),
        ]);
        assert_eq!(sign(&params, "sec1"), "2710cc0255f5d31d4bf6aee3fe78b166");
    }

    #[test]
    fn the_trade_comes_from_the_order_or_the_template() {
        let mut sync = SyncIntent {
            id: "douyin:88:4:wms".into(),
            sink: "wms".into(),
            order: "douyin:88".into(),
            seq: 4,
            rule: "wms_cancel_before_shipping".into(),
            payload: serde_json::json!({
                "operation": "cancel_outbound",
                "fields": { "receiver_name": "张三", "paid": 99.5, "shop_id": 7 }
            }),
        };
        let built = trade(&sync);
        assert_eq!(built["tid"], "88");
        assert_eq!(built["trade_status"], 90);
        assert_eq!(built["receiver_name"], "张三");
        assert!(built.get("shop_id").is_none());
        sync.payload = serde_json::json!({ "trade": { "tid": "X", "trade_status": 30 } });
        assert_eq!(trade(&sync)["tid"], "X");
    }

    #[test]
    fn the_form_carries_the_public_parameters_and_a_sign_over_them() {
        let connector = WdtConnector {
            client: crate::sinks::client_builder().build().unwrap(),
            url: "https://api.wangdian.cn/openapi2/trade_push.php".into(),
            sid: "s1".into(),
            appkey: "k1".into(),
            appsecret: "sec1".into(),
            shop_no: "店铺1".into(),
            switch: "0".into(),
        };
        let form = connector.form(&serde_json::json!([{ "tid": "1" }]), 1_700_000_000);
        let keys: Vec<&str> = form.keys().copied().collect();
        assert_eq!(
            keys,
            [
                "appkey",
                "shop_no",
                "sid",
                "sign",
                "switch",
                "timestamp",
                "trade_list"
            ]
        );
        assert_eq!(form["trade_list"], r#"[{"tid":"1"}]"#);
        assert_eq!(form["sign"], sign(&form, "sec1"));
    }

    #[test]
    fn answers_are_read() {
        assert_eq!(answer(r#"{"code":0,"message":"ok"}"#), Delivery::Delivered);
        assert!(
            matches!(answer(r#"{"code":2010,"message":"店铺不存在"}"#), Delivery::Rejected { detail } if detail.contains("2010"))
        );
        assert!(matches!(answer(""), Delivery::Failed { .. }));
    }
}
