//! WangDianTong (旺店通) openapi2 `trade_push.php`: a form POST with public parameters `sid`,
//! `appkey`, `timestamp` (unix seconds) and `sign`, where the sign sorts the parameters by key
//! (leaving out `sign`), writes each as `%02d-key:%04d-value` with UTF-8 *character* counts,
//! joins them with `;` and takes md5hex(string + appsecret) (lennan747/wangdingtong
//! `src/Helpers.php`). WDT keys trades by `tid`, so a re-push updates the same trade: retries
//! are idempotent.
//!
//! The trade is `payload.trade` when a rule template provides one, else the whole trade the SDK
//! sends, built from the order (lennan747/wangdingtong `test.php`, gaigeshen/tripartite
//! `TradePushParameters`): `tid`, `trade_status` (30 awaiting shipment; a cancel operation is
//! 80, the one change WDT allows a paid trade besides 60/70), `pay_status`, `delivery_term`,
//! `trade_time`, `pay_time`, `buyer_nick`, `receiver_*`, `post_amount`, `cod_amount`,
//! `ext_cod_fee`, `other_amount`, `paid` and a non-empty `order_list` — the order's
//! `fields.order_list` as given, or one line per `fields.items[] {sku, name, qty, price}`. An
//! order with neither is not pushed (a rejection naming what is missing: dead-lettered, and
//! replayable once the order has its lines). `switch` (0 non-strict, 1 strict) is the sink's
//! `options.switch`, default 1 as the SDK's test sends.

use super::{Settings, SinkError, excerpt, order_number};
use orderhub_actors::dispatch::{Delivery, DeliveryFuture, SinkConnector, SyncIntent};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Order fields copied into the trade as they are when present.
const TRADE_FIELDS: [&str; 13] = [
    "buyer_nick",
    "buyer_message",
    "seller_memo",
    "receiver_name",
    "receiver_mobile",
    "receiver_telno",
    "receiver_zip",
    "receiver_province",
    "receiver_city",
    "receiver_district",
    "receiver_address",
    "logistics_type",
    "warehouse_no",
];

/// Money fields (yuan, decimal(19,4)), 0 when the order has none.
const MONEY_FIELDS: [&str; 5] = [
    "post_amount",
    "cod_amount",
    "ext_cod_fee",
    "other_amount",
    "paid",
];

/// WDT's trade status of a paid trade awaiting shipment, and of a refunded (cancelled) one.
const AWAITING_SHIPMENT: i64 = 30;
const REFUNDED: i64 = 80;

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
            // 0 non-strict, 1 strict (slpcode/wangdiantong-sdk); 1 is what the SDK's test sends.
            switch: settings.option("switch").unwrap_or("1").to_owned(),
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
    crate::signing::wdt_sign(params.iter().map(|(k, v)| (*k, v.as_str())), appsecret)
}

/// `YYYY-MM-DD HH:MM:SS` in China time (UTC+8) of a time in seconds or milliseconds since the
/// epoch, or a text time as it is.
fn china_time(value: &Value) -> Option<String> {
    let seconds = match value {
        Value::String(text) if !text.is_empty() => return Some(text.clone()),
        Value::Number(n) => n.as_i64()?,
        _ => return None,
    };
    let seconds = if seconds > 100_000_000_000 {
        seconds / 1000
    } else {
        seconds
    };
    let offset = time::UtcOffset::from_hms(8, 0, 0).ok()?;
    let at = time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()?
        .to_offset(offset);
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    at.format(format).ok()
}

/// The order lines: `fields.order_list` as given, else one per `fields.items[]`.
fn order_list(fields: &Value, tid: &str, status: i64) -> Option<Value> {
    if let Some(Value::Array(list)) = fields.get("order_list")
        && !list.is_empty()
    {
        return Some(Value::Array(list.clone()));
    }
    let items = fields.get("items")?.as_array()?;
    let lines: Vec<Value> = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let sku = item.get("sku").and_then(|s| match s {
                Value::String(s) if !s.is_empty() => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })?;
            Some(json!({
                "oid": format!("{tid}-{}", i + 1),
                "num": item.get("qty").cloned().unwrap_or(json!(1)),
                "price": item.get("price").cloned().unwrap_or(json!(0)),
                "status": status,
                "refund_status": if status == REFUNDED { 5 } else { 0 },
                "goods_id": sku,
                "goods_no": sku,
                "spec_no": sku,
                "goods_name": item.get("name").cloned().unwrap_or(json!("")),
                "spec_name": "",
                "adjust_amount": 0,
                "discount": 0,
                "share_discount": 0,
            }))
        })
        .collect();
    (!lines.is_empty()).then_some(Value::Array(lines))
}

/// The trade pushed for `sync`, or why there is none.
pub(crate) fn trade(sync: &SyncIntent) -> Result<Value, String> {
    if let Some(trade) = sync.payload.get("trade").filter(|t| t.is_object()) {
        return Ok(trade.clone());
    }
    let operation = sync.payload["operation"].as_str().unwrap_or_default();
    let status = if operation.contains("cancel") {
        REFUNDED
    } else {
        AWAITING_SHIPMENT
    };
    let tid = order_number(&sync.order).to_owned();
    let whole = sync.whole_payload();
    let fields = &whole["fields"];
    let lines = order_list(fields, &tid, status).ok_or_else(|| {
        format!(
            "order {} has no lines for WDT's order_list (fields.order_list or fields.items[].sku):              fetch its details or template the trade",
            sync.order
        )
    })?;
    let pay_time = ["pay_time", "paid_at"]
        .iter()
        .find_map(|name| fields.get(*name).and_then(china_time));
    let trade_time = ["trade_time", "create_time", "created"]
        .iter()
        .find_map(|name| fields.get(*name).and_then(china_time))
        .or_else(|| pay_time.clone())
        .unwrap_or_else(|| "0000-00-00 00:00:00".into());
    let mut trade = json!({
        "tid": tid,
        "trade_status": status,
        "pay_status": 2,
        "delivery_term": 1,
        "trade_time": trade_time,
        "pay_time": pay_time.unwrap_or_else(|| "0000-00-00 00:00:00".into()),
        "buyer_nick": "",
        "order_list": lines,
    });
    for name in TRADE_FIELDS {
        if let Some(value) = fields.get(name).filter(|v| !v.is_null()) {
            trade[name] = value.clone();
        }
    }
    for name in MONEY_FIELDS {
        trade[name] = fields.get(name).cloned().unwrap_or(json!(0));
    }
    if fields.get("paid").is_none_or(|v| v.is_null())
        && let Some(amount) = fields.get("amount")
    {
        trade["paid"] = amount.clone();
    }
    Ok(trade)
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
    fn deliver(&self, sync: std::sync::Arc<SyncIntent>, _attempt: u32) -> DeliveryFuture {
        let now = super::unix_ms() / 1000;
        let trade = match trade(&sync) {
            Ok(trade) => trade,
            Err(detail) => return Box::pin(async move { Delivery::Rejected { detail } }),
        };
        let form = self.form(&serde_json::json!([trade]), now);
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

    fn sync(operation: &str, fields: Value) -> SyncIntent {
        SyncIntent {
            id: "douyin:88:4:wms".into(),
            sink: "wms".into(),
            order: "douyin:88".into(),
            seq: 4,
            rule: "wms_rule".into(),
            payload: json!({ "operation": operation, "fields": fields }),
            fields: None,
            contents: None,
        }
    }

    #[test]
    fn the_trade_is_the_whole_trade_the_sdk_sends() {
        let built = trade(&sync(
            "create_outbound",
            json!({ "receiver_name": "张三", "paid": 99.5, "shop_id": 7, "pay_time": 1700000000,
                    "items": [{"sku": "SKU-1", "name": "杯子", "qty": 2, "price": 49.75}] }),
        ))
        .unwrap();
        assert_eq!(built["tid"], "88");
        assert_eq!(built["trade_status"], 30);
        assert_eq!(built["pay_status"], 2);
        assert_eq!(built["receiver_name"], "张三");
        assert_eq!(built["paid"], 99.5);
        // 1700000000 is 2023-11-15 06:13:20 in China.
        assert_eq!(built["pay_time"], "2023-11-15 06:13:20");
        assert_eq!(built["trade_time"], "2023-11-15 06:13:20");
        for name in [
            "trade_time",
            "cod_amount",
            "ext_cod_fee",
            "other_amount",
            "post_amount",
        ] {
            assert!(built.get(name).is_some(), "{name} is sent");
        }
        let line = &built["order_list"][0];
        assert_eq!(line["oid"], "88-1");
        assert_eq!(line["spec_no"], "SKU-1");
        assert_eq!(line["num"], 2);
        assert_eq!(line["status"], 30);
        assert!(built.get("shop_id").is_none());
    }

    #[test]
    fn a_cancel_is_80_a_template_wins_and_an_order_without_lines_is_not_pushed() {
        let cancel = trade(&sync(
            "cancel_outbound",
            json!({ "order_list": [{"oid": "o1", "num": 1, "price": 5, "goods_id": "g", "spec_no": "s"}] }),
        ))
        .unwrap();
        assert_eq!(
            cancel["trade_status"], 80,
            "a paid trade may only move to 70 or 80"
        );
        assert_eq!(cancel["order_list"][0]["oid"], "o1");
        let mut templated = sync("create_outbound", json!({}));
        templated.payload = json!({ "trade": { "tid": "X", "trade_status": 30 } });
        assert_eq!(trade(&templated).unwrap()["tid"], "X");
        let error = trade(&sync("create_outbound", json!({}))).unwrap_err();
        assert!(error.contains("order_list"), "{error}");
    }

    #[test]
    fn the_form_carries_the_public_parameters_and_a_sign_over_them() {
        let connector = WdtConnector {
            client: crate::http_client::builder().build().unwrap(),
            url: "https://api.wangdian.cn/openapi2/trade_push.php".into(),
            sid: "s1".into(),
            appkey: "k1".into(),
            appsecret: "sec1".into(),
            shop_no: "店铺1".into(),
            switch: "1".into(),
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
