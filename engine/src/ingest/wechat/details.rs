//! WeChat Channels shop order details: `POST {gateway}/channels/ec/order/get?access_token=…`
//! with `{"order_id"}`, unsigned: the token is the credential (binarywang/WxJava
//! `weixin-java-channel`, `WxChannelApiUrlConstants.ORDER_GET_URL`, `bean/order/*`).
//!
//! Token: `POST {gateway}/cgi-bin/stable_token` with `grant_type = "client_credential"`, the
//! shop's `appid` and `secret` → `access_token`, `expires_in` (7200 s). Errors are `{errcode,
//! errmsg}`: 42001 (expired), 40001 and 40014 (invalid) renew the token; 45011 (per-minute) and
//! 45009 (daily quota) are call limits; -1 is "system busy"; 40013, 40125 and 41004 refuse the
//! app's credentials.
//!
//! Contents (`order`): `status` (10 unpaid, 20 paid awaiting shipment, 21 partly shipped, 30
//! shipped, 100 done, 190/200/250 cancelled), `update_time` (s), `openid`,
//! `order_detail.product_infos[]` (`out_sku_id` = the seller's code, `sku_id`, `title`,
//! `sku_cnt`, `sale_price` fen), `order_detail.price_info {order_price, freight}` (fen),
//! `order_detail.pay_info.pay_time`, `order_detail.delivery_info.address_info {user_name,
//! tel_number, province_name, city_name, county_name, detail_info}` (masked; the full text
//! through `/channels/ec/order/sensitiveinfo/decode`, which orderhub does not call).

use crate::config::Rate;
use crate::ingest::details::{
    self, DetailsClient, DetailsConfig, FetchError, FetchFuture, Fetched, Token, TokenCache,
};
use serde_json::{Map, Value};
use std::time::Duration;

/// The production gateway.
pub(crate) const DEFAULT_GATEWAY: &str = "https://api.weixin.qq.com";
/// WeChat publishes per-API minute limits per shop [?]: a conservative default.
pub(crate) const DEFAULT_RATE: Rate = Rate {
    count: 20,
    per: Duration::from_secs(1),
};
/// Statuses that fetch again beyond `paid`: none by default.
pub(crate) const REFETCH_ON: [&str; 0] = [];
/// Credential keys `[sources.wechat.details]` takes.
pub(crate) const TAKES: [&str; 3] = ["app_id_env", "app_secret_env", "access_token_env"];
/// How long the daily quota's exhaustion (45009) holds the fetches back.
const DAILY_QUOTA_WAIT: Duration = Duration::from_secs(3600);

/// The WeChat Channels shop order-detail client.
pub(crate) struct WechatDetails {
    http: reqwest::Client,
    gateway: String,
    app: Option<(String, String)>,
    tokens: TokenCache,
}

impl WechatDetails {
    pub(crate) fn new(
        config: &DetailsConfig,
        secrets: &crate::secrets::SecretLookup,
    ) -> Result<Self, String> {
        let app_id = config.secret(secrets, &config.app_id_env)?;
        let app_secret = config.secret(secrets, &config.app_secret_env)?;
        let access = config.secret(secrets, &config.access_token_env)?;
        let app = app_id.zip(app_secret);
        if app.is_none() && access.is_none() {
            return Err("app_id_env and app_secret_env (for stable_token), or access_token_env, are required".into());
        }
        Ok(WechatDetails {
            http: config.http_client()?,
            gateway: config.gateway_or(DEFAULT_GATEWAY),
            app,
            tokens: TokenCache::new(super::SOURCE, access.map(Token::configured), None),
        })
    }

    async fn renew(&self) -> Result<Token, FetchError> {
        let Some((app_id, secret)) = &self.app else {
            return Err(FetchError::Credentials(
                "the configured access token was refused and no app_id_env/app_secret_env are set to ask for another".into(),
            ));
        };
        let now = details::now_ms();
        let answer = details::call_json(
            self.http
                .post(format!("{}/cgi-bin/stable_token", self.gateway))
                .json(&serde_json::json!({
                    "grant_type": "client_credential",
                    "appid": app_id,
                    "secret": secret,
                })),
        )
        .await?;
        if let Some(access) = answer["access_token"].as_str().filter(|t| !t.is_empty()) {
            let expires_in = answer["expires_in"].as_i64().unwrap_or(7200);
            return Ok(Token {
                access: access.to_owned(),
                expires_at: now + expires_in * 1000,
                refresh: None,
                refresh_expires_at: None,
            });
        }
        Err(match check(answer) {
            Err(FetchError::Refused(detail) | FetchError::TokenExpired(detail)) => {
                FetchError::Credentials(format!("stable_token: {detail}"))
            }
            Err(other) => other,
            Ok(_) => FetchError::Malformed("stable_token: no access_token".into()),
        })
    }

    /// Calls the API at `path` (`channels/ec/order/get`) with the JSON `body`.
    async fn request(&self, path: &str, body: &Value, token: &str) -> Result<Value, FetchError> {
        let url = details::with_query(
            &format!("{}/{}", self.gateway, path.trim_start_matches('/')),
            [("access_token", token)],
        );
        check(details::call_json(self.http.post(url).json(body)).await?)
    }
}

/// Reads WeChat's envelope: the answer when `errcode` is 0 (or absent), else the error.
fn check(answer: Value) -> Result<Value, FetchError> {
    if !answer.is_object() {
        return Err(FetchError::Malformed("not a JSON object".into()));
    }
    let code = answer["errcode"].as_i64().unwrap_or(0);
    if code == 0 {
        return Ok(answer);
    }
    let detail = format!(
        "errcode {code}: {}",
        answer["errmsg"].as_str().unwrap_or_default()
    );
    Err(match code {
        42001 | 40001 | 40014 => FetchError::TokenExpired(detail),
        45011 => FetchError::Throttled {
            retry_after: Some(Duration::from_secs(60)),
            detail,
        },
        45009 => FetchError::Throttled {
            retry_after: Some(DAILY_QUOTA_WAIT),
            detail,
        },
        40013 | 40125 | 41004 | 48001 | 61004 => FetchError::Credentials(detail),
        -1 => FetchError::Transient(detail),
        _ => FetchError::Refused(detail),
    })
}

/// The normalised fields of `order`.
pub(crate) fn normalise(answer: &Value) -> Result<Fetched, FetchError> {
    let order = &answer["order"];
    let raw_status = details::text(&order["status"])
        .ok_or_else(|| FetchError::Malformed("no order.status".into()))?;
    let detail = &order["order_detail"];
    let items = details::lines(&detail["product_infos"], |line| {
        details::item(
            details::seller_sku(&[&line["out_sku_id"]], &line["sku_id"]),
            &line["title"],
            details::count(&line["sku_cnt"]),
            details::yuan_from_fen(&line["sale_price"]),
        )
    });
    let price = &detail["price_info"];
    let address = &detail["delivery_info"]["address_info"];
    let paid = detail["pay_info"]["pay_time"]
        .as_i64()
        .is_some_and(|t| t > 0);
    let amount = details::yuan_from_fen(&price["order_price"]);
    Ok(Fetched {
        raw_status,
        updated_at: order["update_time"].as_i64().map(|s| s * 1000),
        fields: details::Contents {
            items,
            amount,
            paid,
            freight: details::yuan_from_fen(&price["freight"]),
            receiver: details::receiver([
                ("name", details::text(&address["user_name"])),
                ("phone", details::text(&address["tel_number"])),
                ("province", details::text(&address["province_name"])),
                ("city", details::text(&address["city_name"])),
                ("district", details::text(&address["county_name"])),
                ("address", details::text(&address["detail_info"])),
            ]),
            buyer: details::text(&order["openid"]),
        }
        .into_fields(),
    })
}

impl DetailsClient for WechatDetails {
    fn fetch<'a>(&'a self, order_id: &'a str) -> FetchFuture<'a, Fetched> {
        Box::pin(async move {
            let answer = details::with_token(
                &self.tokens,
                |_| self.renew(),
                |token| async move {
                    let body = serde_json::json!({ "order_id": order_id });
                    self.request("channels/ec/order/get", &body, &token).await
                },
            )
            .await?;
            normalise(&answer)
        })
    }

    fn call<'a>(&'a self, method: &'a str, params: Map<String, Value>) -> FetchFuture<'a, Value> {
        Box::pin(async move {
            let body = Value::Object(params);
            details::with_token(
                &self.tokens,
                |_| self.renew(),
                |token| {
                    let body = &body;
                    async move { self.request(method, body, &token).await }
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
    fn errors_are_classified_for_retry() {
        let kind = |code: i64| {
            check(serde_json::json!({"errcode": code, "errmsg": "x"}))
                .unwrap_err()
                .kind()
        };
        assert!(matches!(
            check(serde_json::json!({"errcode": 42001, "errmsg": "access_token expired"})),
            Err(FetchError::TokenExpired(_))
        ));
        assert_eq!(kind(45011), "throttled");
        assert_eq!(kind(45009), "throttled");
        assert_eq!(kind(-1), "failed");
        assert_eq!(kind(40125), "credentials");
        assert_eq!(kind(100002), "refused");
    }
}
