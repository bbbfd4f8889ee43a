//! JD order details: `jingdong.pop.order.enGet` through JOS (`POST {gateway}`, form-encoded
//! `method, app_key, access_token, timestamp, v=2.0, 360buy_param_json, sign`).
//!
//! JD has no push source in orderhub: its orders come from a `[pollers.NAME]` with `channel =
//! "jd"`, whose `[pollers.NAME.details]` table turns this on with the poller's own `jos`
//! credentials. Signing after rise-worlds/jos and JD's SDKs: `UPPER(hex(md5(secret + every
//! parameter but sign, sorted, as name+value + secret)))`, `360buy_param_json` and
//! `access_token` included — the official vector is in the test.
//!
//! Token: the seller's access token (`access_token_env` of the poller). Its refresh goes through
//! `open-oauth.jd.com` [?]; an invalid token (error 19) turns enrichment into waiting for a new
//! one, with a warning.
//!
//! Answer (rise-worlds/jos `api/order/popOrderEnGet.go`): `jingdong_pop_order_enGet_responce`
//! (JD's spelling) `{code, orderDetailInfo: {orderInfo, apiResult: {success, chineseErrCode}}}`
//! or `{error_response: {code, zh_desc, en_desc}}`. `orderInfo`: `orderState`, `modified`,
//! `orderPayment`, `freightPrice` (yuan strings), `paymentConfirmTime`, `consigneeInfo
//! {fullname, mobile, province, city, county, fullAddress}` (TDE ciphertext), `itemInfoList[]
//! {skuId, outerSkuId, skuName, jdPrice, itemTotal}`, `open_id_buyer`.

use crate::config::Rate;
use crate::ingest::details::{
    self, DetailsClient, DetailsConfig, FetchError, FetchFuture, Fetched, Token, TokenCache,
};
use crate::signing::top_sign;
use serde_json::Value;
use std::time::Duration;

/// The production gateway.
pub(crate) const DEFAULT_GATEWAY: &str = "https://api.jd.com/routerjson";
/// JOS grants limits per app [?]: a conservative default.
pub(crate) const DEFAULT_RATE: Rate = Rate {
    count: 20,
    per: Duration::from_secs(1),
};
/// The order fields asked for.
const OPTIONAL_FIELDS: &str = "orderId,orderState,modified,orderPayment,freightPrice,paymentConfirmTime,consigneeInfo,itemInfoList,open_id_buyer";

/// The JD order-detail client.
pub(crate) struct JdDetails {
    http: reqwest::Client,
    gateway: String,
    app_key: String,
    app_secret: String,
    tokens: TokenCache,
}

impl JdDetails {
    pub(crate) fn new(
        config: &DetailsConfig,
        app_key: String,
        app_secret: String,
        access_token: String,
    ) -> Result<Self, String> {
        Ok(JdDetails {
            http: config.http_client()?,
            gateway: config.gateway_or(DEFAULT_GATEWAY),
            app_key,
            app_secret,
            tokens: TokenCache::new("jd", Some(Token::configured(access_token)), None),
        })
    }

    async fn order(&self, order_id: &str, token: &str) -> Result<Value, FetchError> {
        let timestamp = super::china_datetime(details::now_ms());
        let param_json = serde_json::json!({
            "order_id": order_id,
            "optional_fields": OPTIONAL_FIELDS,
        })
        .to_string();
        let mut params = vec![
            ("method", "jingdong.pop.order.enGet"),
            ("app_key", self.app_key.as_str()),
            ("access_token", token),
            ("timestamp", timestamp.as_str()),
            ("v", "2.0"),
            ("360buy_param_json", param_json.as_str()),
        ];
        let sign = top_sign(params.iter().copied(), &self.app_secret);
        params.push(("sign", sign.as_str()));
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        let answer = details::call_json(
            self.http
                .post(&self.gateway)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded;charset=utf-8",
                )
                .body(body),
        )
        .await?;
        check(answer)
    }
}

/// Reads JOS's envelopes: `orderDetailInfo.orderInfo` on success, else the error classified.
fn check(answer: Value) -> Result<Value, FetchError> {
    if let Some(error) = answer.get("error_response") {
        let code = details::text(&error["code"]).unwrap_or_default();
        let detail = format!(
            "error {code}: {}",
            error["zh_desc"]
                .as_str()
                .or(error["en_desc"].as_str())
                .unwrap_or_default()
        );
        return Err(match code.as_str() {
            "19" => FetchError::TokenExpired(detail),
            // JOS's own failures: service unavailable, timeouts.
            "66" | "67" | "86" => FetchError::Transient(detail),
            _ if detail.contains("频繁") || detail.contains("limit") => FetchError::Throttled {
                retry_after: Some(Duration::from_secs(1)),
                detail,
            },
            _ => FetchError::Refused(detail),
        });
    }
    let info = &answer["jingdong_pop_order_enGet_responce"]["orderDetailInfo"];
    if !info.is_object() {
        return Err(FetchError::Malformed(format!(
            "no jingdong_pop_order_enGet_responce.orderDetailInfo: {}",
            crate::sinks::excerpt(&answer.to_string())
        )));
    }
    if info["apiResult"]["success"].as_bool() == Some(false) {
        return Err(FetchError::Refused(format!(
            "apiResult {}: {}",
            details::text(&info["apiResult"]["numberCode"]).unwrap_or_default(),
            info["apiResult"]["chineseErrCode"]
                .as_str()
                .unwrap_or_default()
        )));
    }
    Ok(info["orderInfo"].clone())
}

/// The normalised fields of `orderInfo`.
pub(crate) fn normalise(order: &Value) -> Result<Fetched, FetchError> {
    let raw_status = details::text(&order["orderState"])
        .ok_or_else(|| FetchError::Malformed("no orderInfo.orderState".into()))?;
    let items: Vec<Value> = order["itemInfoList"]
        .as_array()
        .map(|lines| {
            lines
                .iter()
                .map(|line| {
                    details::item(
                        details::seller_sku(&[&line["outerSkuId"]], &line["skuId"]),
                        &line["skuName"],
                        details::count(&line["itemTotal"]),
                        details::yuan(&line["jdPrice"]),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let consignee = &order["consigneeInfo"];
    let paid = details::text(&order["paymentConfirmTime"]).is_some();
    let amount = details::yuan(&order["orderPayment"]);
    Ok(Fetched {
        raw_status,
        updated_at: order["modified"]
            .as_str()
            .and_then(super::parse_china_datetime),
        fields: details::fields(vec![
            ("items", Some(Value::Array(items))),
            ("amount", amount.clone()),
            ("paid", if paid { amount } else { None }),
            ("freight", details::yuan(&order["freightPrice"])),
            ("currency", Some(Value::from("CNY"))),
            (
                "receiver",
                Some(details::receiver([
                    ("name", details::text(&consignee["fullname"])),
                    ("phone", details::text(&consignee["mobile"])),
                    ("province", details::text(&consignee["province"])),
                    ("city", details::text(&consignee["city"])),
                    ("district", details::text(&consignee["county"])),
                    ("address", details::text(&consignee["fullAddress"])),
                ])),
            ),
            (
                "buyer",
                details::text(&order["open_id_buyer"]).map(Value::from),
            ),
        ]),
    })
}

impl DetailsClient for JdDetails {
    fn fetch<'a>(&'a self, order_id: &'a str) -> FetchFuture<'a, Fetched> {
        Box::pin(async move {
            let order = details::with_token(
                &self.tokens,
                |_| async {
                    Err(FetchError::Credentials(
                        "JD refused the access token: set a new one in the poller's access_token_env".into(),
                    ))
                },
                |token| async move { self.order(order_id, &token).await },
            )
            .await?;
            normalise(&order)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_like_jos() {
        // JD's official vector (shared/reference/order-apis.md).
        let params = [
            (
                "360buy_param_json",
                r#"{"end_date":null,"optional_fields":null,"order_state":"WAIT_SELLER_STOCK_OUT","page":"1","page_size":"200","start_date":null}"#,
            ),
            ("access_token", "yourtoken"),
            ("app_key", "yourappkey"),
            ("method", "jingdong.pop.order.search"),
            ("timestamp", "2021-05-07 09:20:39.683+0800"),
            ("v", "2.0"),
        ];
        assert_eq!(
            top_sign(params, "yourappSecret"),
            "D70825340F4084360B9362B60DFD7930"
        );
    }

    #[test]
    fn the_documented_answer_is_normalised() {
        let answer = serde_json::json!({"jingdong_pop_order_enGet_responce": {"code": "0",
            "orderDetailInfo": {"apiResult": {"success": true, "numberCode": 10100000},
            "orderInfo": {"orderId": "281234567890", "orderState": "WAIT_SELLER_STOCK_OUT",
                "modified": "2026-11-29 20:00:05", "orderPayment": "99.00", "freightPrice": "0.00",
                "paymentConfirmTime": "2026-11-29 20:00:04", "open_id_buyer": "o-jd-1",
                "consigneeInfo": {"fullname": "~tde~n", "mobile": "~tde~m", "province": "四川",
                    "city": "成都市", "county": "武侯区", "fullAddress": "~tde~a"},
                "itemInfoList": [{"skuId": "100012", "outerSkuId": "HONEY-500", "skuName": "蜂蜜 500g",
                    "jdPrice": "49.50", "itemTotal": "2"}]}}}});
        let fetched = normalise(&check(answer).unwrap()).unwrap();
        assert_eq!(fetched.raw_status, "WAIT_SELLER_STOCK_OUT");
        assert_eq!(
            fetched.fields["items"],
            serde_json::json!([{"sku": "HONEY-500", "name": "蜂蜜 500g", "qty": 2, "price": 49.5}])
        );
        assert_eq!(fetched.fields["paid"], 99.0);
        assert_eq!(fetched.fields["receiver"]["phone"], "~tde~m");
    }

    #[test]
    fn errors_are_classified_for_retry() {
        let error = |code: &str, desc: &str| {
            check(serde_json::json!({"error_response": {"code": code, "zh_desc": desc}}))
                .unwrap_err()
        };
        assert!(matches!(
            error("19", "无效access_token"),
            FetchError::TokenExpired(_)
        ));
        assert_eq!(error("66", "服务不可用").kind(), "failed");
        assert_eq!(error("1", "调用过于频繁").kind(), "throttled");
        assert_eq!(error("40", "参数错误").kind(), "refused");
        assert_eq!(
            check(serde_json::json!({"jingdong_pop_order_enGet_responce": {"code": "0",
                "orderDetailInfo": {"apiResult": {"success": false, "chineseErrCode": "订单不存在"}}}}))
            .unwrap_err()
            .kind(),
            "refused"
        );
    }
}
