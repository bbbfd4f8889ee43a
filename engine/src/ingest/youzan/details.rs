//! Youzan order details: `youzan.trade.get` 4.0.0 (`POST {gateway}/api/youzan.trade.get/4.0.0
//! ?access_token=…`, JSON body `{"tid"}`), unsigned: the token is the credential
//! (youzan/open-sdk-php `src/Open/Client.php`, `examples/trade/TradeGet.php`).
//!
//! Token: `POST {gateway}/auth/token` with `client_id`, `client_secret`, `authorize_type =
//! "silent"` and `grant_id` = the shop's `kdt_id` (a self-use app, `src/Open/Token.php`):
//! `data.access_token`, `data.expires` (Unix ms); a silent token is simply asked for again.
//!
//! Errors: the gateway answers HTTP 200 `{"gw_err_resp": {err_code, err_msg}}` — 4202 (expired)
//! and 4203 (unknown token) renew the token, 4201 (invalid credentials or lapsed authorisation)
//! needs the seller, 4101 is the call limit; business errors are `{success: false, code,
//! message}` (`500100004` and `123000042` are limits).
//!
//! Contents (`data.full_order_info`): `order_info {tid, status, update_time}`, `orders[]`
//! (`outer_sku_id`, `sku_id`, `title`, `num`, `price` yuan strings), `pay_info {payment,
//! total_fee, post_fee}`, `address_info {receiver_name, receiver_tel, delivery_province,
//! delivery_city, delivery_district, delivery_address}` (name, phone and address as `$…$`
//! ciphertext, decrypted per shop by `youzan.cloud.secret.decrypt.batch`, which orderhub does
//! not call), `buyer_info.yz_open_id`.

use crate::config::Rate;
use crate::ingest::details::{
    self, DetailsClient, DetailsConfig, FetchError, FetchFuture, Fetched, Token, TokenCache,
};
use serde_json::{Map, Value};
use std::time::Duration;

/// The production gateway.
pub(crate) const DEFAULT_GATEWAY: &str = "https://open.youzanyun.com";
/// Youzan publishes no limit for trade.get [?]: a conservative default.
pub(crate) const DEFAULT_RATE: Rate = Rate {
    count: 10,
    per: Duration::from_secs(1),
};
/// Statuses that fetch again beyond `paid`: none by default (Youzan's address changes arrive as
/// their own message types; add them with `refetch_on`).
pub(crate) const REFETCH_ON: [&str; 0] = [];
/// Credential keys `[sources.youzan.details]` takes.
pub(crate) const TAKES: [&str; 2] = ["shop_id_env", "access_token_env"];

/// The Youzan order-detail client.
pub(crate) struct YouzanDetails {
    http: reqwest::Client,
    gateway: String,
    client_id: String,
    client_secret: String,
    kdt_id: Option<String>,
    tokens: TokenCache,
}

impl YouzanDetails {
    pub(crate) fn new(
        config: &DetailsConfig,
        client_id: String,
        client_secret: String,
        secrets: &crate::secrets::SecretLookup,
    ) -> Result<Self, String> {
        let kdt_id = config.secret(secrets, &config.shop_id_env)?;
        let access = config.secret(secrets, &config.access_token_env)?;
        if kdt_id.is_none() && access.is_none() {
            return Err(
                "shop_id_env (the kdt_id, for a silent token) or access_token_env is required"
                    .into(),
            );
        }
        let initial = access.map(Token::configured);
        Ok(YouzanDetails {
            http: config.http_client()?,
            gateway: config.gateway_or(DEFAULT_GATEWAY),
            client_id,
            client_secret,
            kdt_id,
            tokens: TokenCache::new(super::SOURCE, initial, None),
        })
    }

    async fn renew(&self) -> Result<Token, FetchError> {
        let Some(kdt_id) = &self.kdt_id else {
            return Err(FetchError::Credentials(
                "the configured access token was refused and no shop_id_env is set to ask for another".into(),
            ));
        };
        let now = details::now_ms();
        let body = serde_json::json!({
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "authorize_type": "silent",
            "grant_id": kdt_id,
        });
        let answer = details::call_json(
            self.http
                .post(format!("{}/auth/token", self.gateway))
                .json(&body),
        )
        .await?;
        let data = check(answer).map_err(|err| match err {
            FetchError::Refused(detail) | FetchError::TokenExpired(detail) => {
                FetchError::Credentials(format!("auth/token: {detail}"))
            }
            other => other,
        })?;
        let access = data["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| FetchError::Malformed("auth/token: no data.access_token".into()))?;
        Ok(Token {
            access: access.to_owned(),
            // Unix ms; a token without it is used for a day.
            expires_at: data["expires"].as_i64().unwrap_or(now + 86_400_000),
            refresh: None,
            refresh_expires_at: None,
        })
    }

    /// Calls `api` (`youzan.trade.get/4.0.0`: the method and its version) with `body`.
    async fn request(&self, api: &str, body: &Value, token: &str) -> Result<Value, FetchError> {
        if !api.contains('/') {
            return Err(FetchError::Refused(format!(
                "{api:?} names no version (e.g. youzan.trades.sold.get/4.0.0)"
            )));
        }
        let url = details::with_query(
            &format!("{}/api/{api}", self.gateway),
            [("access_token", token)],
        );
        let answer = details::call_json(self.http.post(url).json(body)).await?;
        check(answer)
    }
}

/// Reads Youzan's envelopes: `data` on success, else the error classified.
fn check(answer: Value) -> Result<Value, FetchError> {
    if let Some(gateway) = answer.get("gw_err_resp") {
        let code = gateway["err_code"].as_i64().unwrap_or_default();
        let detail = format!(
            "gateway {code}: {}",
            gateway["err_msg"].as_str().unwrap_or_default()
        );
        return Err(match code {
            4202 | 4203 => FetchError::TokenExpired(detail),
            4201 | 4204 => FetchError::Credentials(detail),
            4101 => FetchError::Throttled {
                retry_after: Some(Duration::from_secs(3)),
                detail,
            },
            _ => FetchError::Transient(detail),
        });
    }
    if answer["success"].as_bool() == Some(true) {
        return Ok(answer["data"].clone());
    }
    let Some(code) = answer["code"].as_i64() else {
        return Err(FetchError::Malformed(format!(
            "neither success nor an error: {}",
            crate::sinks::excerpt(&answer.to_string())
        )));
    };
    let detail = format!(
        "code {code}: {}",
        answer["message"].as_str().unwrap_or_default()
    );
    Err(match code {
        500_100_004 | 123_000_042 => FetchError::Throttled {
            retry_after: Some(Duration::from_secs(3)),
            detail,
        },
        // Youzan's server-side failures.
        5000..=5999 => FetchError::Transient(detail),
        _ => FetchError::Refused(detail),
    })
}

/// The normalised fields of `data.full_order_info`.
pub(crate) fn normalise(data: &Value) -> Result<Fetched, FetchError> {
    let full = &data["full_order_info"];
    let info = &full["order_info"];
    let raw_status = details::text(&info["status"])
        .ok_or_else(|| FetchError::Malformed("no full_order_info.order_info.status".into()))?;
    let items = details::lines(&full["orders"], |line| {
        details::item(
            details::seller_sku(
                &[&line["outer_sku_id"], &line["outer_item_id"]],
                &line["sku_id"],
            ),
            &line["title"],
            details::count(&line["num"]),
            details::yuan(&line["price"]),
        )
    });
    let pay = &full["pay_info"];
    let address = &full["address_info"];
    let paid = details::text(&info["pay_time"]).is_some();
    let amount = details::yuan(&pay["payment"]);
    let receiver = details::receiver([
        ("name", details::text(&address["receiver_name"])),
        ("phone", details::text(&address["receiver_tel"])),
        ("province", details::text(&address["delivery_province"])),
        ("city", details::text(&address["delivery_city"])),
        ("district", details::text(&address["delivery_district"])),
        ("address", details::text(&address["delivery_address"])),
    ]);
    Ok(Fetched {
        raw_status,
        updated_at: info["update_time"]
            .as_str()
            .and_then(crate::ingest::poll::parse_china_datetime),
        fields: details::Contents {
            items,
            amount,
            paid,
            freight: details::yuan(&pay["post_fee"]),
            receiver,
            buyer: details::text(&full["buyer_info"]["yz_open_id"]),
        }
        .into_fields(),
    })
}

impl DetailsClient for YouzanDetails {
    fn fetch<'a>(&'a self, order_id: &'a str) -> FetchFuture<'a, Fetched> {
        Box::pin(async move {
            let data = details::with_token(
                &self.tokens,
                |_| self.renew(),
                |token| async move {
                    let body = serde_json::json!({ "tid": order_id });
                    self.request("youzan.trade.get/4.0.0", &body, &token).await
                },
            )
            .await?;
            normalise(&data)
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
        let kind = |answer: Value| check(answer).unwrap_err();
        assert!(matches!(
            kind(serde_json::json!({"gw_err_resp": {"err_code": 4202, "err_msg": "请求凭证过期"}})),
            FetchError::TokenExpired(_)
        ));
        assert_eq!(
            kind(serde_json::json!({"gw_err_resp": {"err_code": 4101, "err_msg": "请求太频繁"}}))
                .kind(),
            "throttled"
        );
        assert_eq!(
            kind(
                serde_json::json!({"gw_err_resp": {"err_code": 4201, "err_msg": "非法的请求凭证"}})
            )
            .kind(),
            "credentials"
        );
        assert_eq!(
            kind(serde_json::json!({"success": false, "code": 101600004, "message": "订单不存在"}))
                .kind(),
            "refused"
        );
        assert_eq!(kind(serde_json::json!({"hello": 1})).kind(), "malformed");
    }
}
