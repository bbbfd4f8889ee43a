//! JD order details: `jingdong.pop.order.enGet` through JOS (`POST {gateway}`, form-encoded
//! `method, app_key, access_token, timestamp, v=2.0, 360buy_param_json, sign`).
//!
//! JD has no push source in orderhub: its orders come from a `[pollers.NAME]` with `channel =
//! "jd"`, whose `[pollers.NAME.details]` table turns this on with the poller's own `jos`
//! credentials. Signing after rise-worlds/jos and JD's SDKs: `UPPER(hex(md5(secret + every
//! parameter but sign, sorted, as name+value + secret)))`, `360buy_param_json` and
//! `access_token` included — the official vector is in the test.
//!
//! Token: the seller's access token (`access_token_env` of the poller). With `refresh_token_env`
//! an invalid one (error 19) is renewed at `GET {token_gateway}/oauth2/refresh_token?app_key,
//! app_secret, grant_type=refresh_token, refresh_token` (default `https://open-oauth.jd.com`;
//! answer `access_token`, `expires_in` s, `refresh_token` [v*]) and the latest kept in
//! `DATA_DIR/tokens/jd.json`; without it, enrichment waits for a new token, with a warning.
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
use serde_json::{Map, Value};
use std::time::Duration;

/// The production gateway.
pub(crate) const DEFAULT_GATEWAY: &str = "https://api.jd.com/routerjson";
/// JOS grants limits per app [?]: a conservative default.
pub(crate) const DEFAULT_RATE: Rate = Rate {
    count: 20,
    per: Duration::from_secs(1),
};
/// Where JD renews tokens.
pub(crate) const DEFAULT_TOKEN_GATEWAY: &str = "https://open-oauth.jd.com";
/// Keys `[pollers.NAME.details]` takes beyond the poller's own credentials.
pub(crate) const TAKES: [&str; 2] = ["refresh_token_env", "token_gateway"];

/// The order fields asked for.
const OPTIONAL_FIELDS: &str = "orderId,orderState,modified,orderPayment,freightPrice,paymentConfirmTime,consigneeInfo,itemInfoList,open_id_buyer";

/// The JD order-detail client.
pub(crate) struct JdDetails {
    http: reqwest::Client,
    gateway: String,
    token_gateway: String,
    app_key: String,
    app_secret: String,
    tokens: TokenCache,
}

impl JdDetails {
    pub(crate) fn new(
        config: &DetailsConfig,
        credentials: (String, String, String),
        secrets: &crate::secrets::SecretLookup,
        data_dir: &std::path::Path,
    ) -> Result<Self, String> {
        let (app_key, app_secret, access_token) = credentials;
        let refresh = config.secret(secrets, &config.refresh_token_env)?;
        let keep = refresh
            .is_some()
            .then(|| data_dir.join("tokens").join("jd.json"));
        let initial = Token {
            refresh,
            ..Token::configured(access_token)
        };
        Ok(JdDetails {
            http: config.http_client()?,
            gateway: config.gateway_or(DEFAULT_GATEWAY),
            token_gateway: config
                .token_gateway
                .as_deref()
                .unwrap_or(DEFAULT_TOKEN_GATEWAY)
                .trim_end_matches('/')
                .to_owned(),
            app_key,
            app_secret,
            tokens: TokenCache::new("jd", Some(initial), keep),
        })
    }

    /// Renews the access token with the refresh token, when there is a live one.
    async fn renew(&self, current: Option<Token>) -> Result<Token, FetchError> {
        let now = details::now_ms();
        let Some(refresh) = current
            .filter(|t| t.refreshable(now))
            .and_then(|t| t.refresh)
        else {
            return Err(FetchError::Credentials(
                "JD refused the access token and there is no live refresh token (refresh_token_env); set a new one in the poller's access_token_env".into(),
            ));
        };
        let url = details::with_query(
            &format!("{}/oauth2/refresh_token", self.token_gateway),
            [
                ("app_key", self.app_key.as_str()),
                ("app_secret", self.app_secret.as_str()),
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.as_str()),
            ],
        );
        let answer = details::call_json(self.http.get(url)).await?;
        let Some(access) = answer["access_token"].as_str().filter(|t| !t.is_empty()) else {
            return Err(FetchError::Credentials(format!(
                "oauth2/refresh_token: {}",
                crate::sinks::excerpt(&answer.to_string())
            )));
        };
        Ok(Token {
            access: access.to_owned(),
            expires_at: now + answer["expires_in"].as_i64().unwrap_or(86_400) * 1000,
            refresh: answer["refresh_token"].as_str().map(str::to_owned),
            refresh_expires_at: None,
        })
    }

    /// Calls `method` with `business` as its `360buy_param_json`; the raw answer.
    async fn request(
        &self,
        method: &str,
        business: &Value,
        token: &str,
    ) -> Result<Value, FetchError> {
        let timestamp = super::china_datetime(details::now_ms());
        let param_json = business.to_string();
        let mut params = vec![
            ("method", method),
            ("app_key", self.app_key.as_str()),
            ("access_token", token),
            ("timestamp", timestamp.as_str()),
            ("v", "2.0"),
            ("360buy_param_json", param_json.as_str()),
        ];
        let sign = top_sign(params.iter().copied(), &self.app_secret);
        params.push(("sign", sign.as_str()));
        let answer = details::post_form(&self.http, &self.gateway, &params).await?;
        refused(&answer)?;
        Ok(answer)
    }
}

/// JOS's `error_response`, classified.
fn refused(answer: &Value) -> Result<(), FetchError> {
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
    Ok(())
}

/// Reads `jingdong.pop.order.enGet`'s answer: `orderDetailInfo.orderInfo` on success, else the
/// error classified.
fn check(answer: Value) -> Result<Value, FetchError> {
    refused(&answer)?;
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
    let items = details::lines(&order["itemInfoList"], |line| {
        details::item(
            details::seller_sku(&[&line["outerSkuId"]], &line["skuId"]),
            &line["skuName"],
            details::count(&line["itemTotal"]),
            details::yuan(&line["jdPrice"]),
        )
    });
    let consignee = &order["consigneeInfo"];
    let paid = details::text(&order["paymentConfirmTime"]).is_some();
    let amount = details::yuan(&order["orderPayment"]);
    Ok(Fetched {
        raw_status,
        updated_at: order["modified"]
            .as_str()
            .and_then(super::parse_china_datetime),
        fields: details::Contents {
            items,
            amount,
            paid,
            freight: details::yuan(&order["freightPrice"]),
            receiver: details::receiver([
                ("name", details::text(&consignee["fullname"])),
                ("phone", details::text(&consignee["mobile"])),
                ("province", details::text(&consignee["province"])),
                ("city", details::text(&consignee["city"])),
                ("district", details::text(&consignee["county"])),
                ("address", details::text(&consignee["fullAddress"])),
            ]),
            buyer: details::text(&order["open_id_buyer"]),
        }
        .into_fields(),
    })
}

impl DetailsClient for JdDetails {
    fn fetch<'a>(&'a self, order_id: &'a str) -> FetchFuture<'a, Fetched> {
        Box::pin(async move {
            let answer = details::with_token(
                &self.tokens,
                |current| self.renew(current),
                |token| async move {
                    let business = serde_json::json!({
                        "order_id": order_id,
                        "optional_fields": OPTIONAL_FIELDS,
                    });
                    self.request("jingdong.pop.order.enGet", &business, &token)
                        .await
                },
            )
            .await?;
            normalise(&check(answer)?)
        })
    }

    fn call<'a>(&'a self, method: &'a str, params: Map<String, Value>) -> FetchFuture<'a, Value> {
        Box::pin(async move {
            let business = Value::Object(params);
            details::with_token(
                &self.tokens,
                |current| self.renew(current),
                |token| {
                    let business = &business;
                    async move { self.request(method, business, &token).await }
                },
            )
            .await
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
