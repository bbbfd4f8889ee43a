//! Pinduoduo order details: `pdd.order.information.get` through the router (`POST
//! {gateway}/api/router`, form-encoded `type, client_id, access_token, timestamp, data_type,
//! order_sn, sign`).
//!
//! Signing after the official SDK (and lywzx/pdd-node-sdk): `UPPER(hex(md5(secret + every
//! parameter but sign, sorted by name, as name+value + secret)))`, timestamp in seconds
//! (accepted within 10 minutes) — the same form as TOP's, with the official vector in its test.
//!
//! Token: `pdd.pop.auth.token.refresh` through the same router with `refresh_token` →
//! `pop_auth_token_refresh_response {access_token, expires_at (s), refresh_token,
//! refresh_token_expires_at}`; the latest is kept in `DATA_DIR/tokens/pdd.json` (0600).
//!
//! Errors: `{error_response: {error_code, error_msg, sub_code, sub_msg}}` — 10019 is an expired
//! token; 70031 and 52101 are call limits; 52102/52103 are the platform's own (transient); the
//! SDK treats the rest of 10000–39999 and 50000–52003 as final.
//!
//! Contents (`order_info_get_response.order_info`, pdd-origin-api `PddOrderInformationGet.ts`):
//! `order_status` (the shipping status: 1 awaiting shipment, 2 shipped, 3 received),
//! `updated_at`, `pay_amount`, `postage` (yuan), `pay_time`, `item_list[]` (`outer_id` = the
//! seller's code, `sku_id`, `goods_name`, `goods_count`, `goods_price`), the receiver's masked
//! copies (`receiver_name_mask`, `receiver_phone_mask`, `address_mask`) or ciphertext (only while
//! awaiting shipment), `province`, `city`, `town`. Decryption is allowed only inside the
//! platform's own cloud: orderhub keeps what it is given.

use crate::config::Rate;
use crate::ingest::details::{
    self, DetailsClient, DetailsConfig, FetchError, FetchFuture, Fetched, Token, TokenCache,
};
use crate::signing::top_sign;
use serde_json::{Map, Value};
use std::time::Duration;

/// The production gateway (the router is `{gateway}/api/router`).
pub(crate) const DEFAULT_GATEWAY: &str = "https://gw-api.pinduoduo.com";
/// Pinduoduo's documented limit for the order APIs: 30,000 calls per 60 s per shop.
pub(crate) const DEFAULT_RATE: Rate = Rate {
    count: 500,
    per: Duration::from_secs(1),
};
/// Statuses that fetch again beyond `paid`: none by default.
pub(crate) const REFETCH_ON: [&str; 0] = [];
/// Credential keys `[sources.pdd.details]` takes.
pub(crate) const TAKES: [&str; 2] = ["access_token_env", "refresh_token_env"];

/// The Pinduoduo order-detail client.
pub(crate) struct PddDetails {
    http: reqwest::Client,
    router: String,
    client_id: String,
    client_secret: String,
    tokens: TokenCache,
}

impl PddDetails {
    pub(crate) fn new(
        config: &DetailsConfig,
        client_id: String,
        client_secret: String,
        secrets: &crate::secrets::SecretLookup,
        data_dir: &std::path::Path,
    ) -> Result<Self, String> {
        let access = config
            .secret(secrets, &config.access_token_env)?
            .ok_or("access_token_env (the shop's authorised token) is required")?;
        let refresh = config.secret(secrets, &config.refresh_token_env)?;
        let initial = Token {
            refresh,
            ..Token::configured(access)
        };
        Ok(PddDetails {
            http: config.http_client()?,
            router: format!("{}/api/router", config.gateway_or(DEFAULT_GATEWAY)),
            client_id,
            client_secret,
            tokens: TokenCache::new(
                super::SOURCE,
                Some(initial),
                Some(data_dir.join("tokens").join("pdd.json")),
            ),
        })
    }

    /// Calls `method` with `params` (plus the common ones) and returns the answer.
    async fn request(
        &self,
        method: &str,
        params: &[(&str, &str)],
        access_token: Option<&str>,
    ) -> Result<Value, FetchError> {
        let timestamp = (details::now_ms() / 1000).to_string();
        let mut all: Vec<(&str, &str)> = vec![
            ("type", method),
            ("client_id", self.client_id.as_str()),
            ("timestamp", timestamp.as_str()),
            ("data_type", "JSON"),
        ];
        if let Some(token) = access_token {
            all.push(("access_token", token));
        }
        all.extend_from_slice(params);
        let sign = top_sign(all.iter().copied(), &self.client_secret);
        all.push(("sign", sign.as_str()));
        let answer = details::post_form(&self.http, &self.router, &all).await?;
        check(answer)
    }

    async fn renew(&self, current: Option<Token>) -> Result<Token, FetchError> {
        let now = details::now_ms();
        let Some(refresh) = current
            .filter(|t| t.refreshable(now))
            .and_then(|t| t.refresh)
        else {
            return Err(FetchError::Credentials(
                "the access token expired and there is no live refresh token (refresh_token_env)"
                    .into(),
            ));
        };
        let answer = self
            .request(
                "pdd.pop.auth.token.refresh",
                &[("refresh_token", refresh.as_str())],
                None,
            )
            .await
            .map_err(|err| match err {
                FetchError::Refused(detail) | FetchError::TokenExpired(detail) => {
                    FetchError::Credentials(format!("pdd.pop.auth.token.refresh: {detail}"))
                }
                other => other,
            })?;
        let data = &answer["pop_auth_token_refresh_response"];
        let access = data["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| FetchError::Malformed("token refresh: no access_token".into()))?;
        Ok(Token {
            access: access.to_owned(),
            expires_at: data["expires_at"]
                .as_i64()
                .map_or(now + 86_400_000, |s| s * 1000),
            refresh: data["refresh_token"].as_str().map(str::to_owned),
            refresh_expires_at: data["refresh_token_expires_at"].as_i64().map(|s| s * 1000),
        })
    }
}

/// Reads the router's envelope: the answer, or its `error_response` classified.
fn check(answer: Value) -> Result<Value, FetchError> {
    let Some(error) = answer.get("error_response") else {
        if answer.is_object() {
            return Ok(answer);
        }
        return Err(FetchError::Malformed("not a JSON object".into()));
    };
    let code = error["error_code"].as_i64().unwrap_or_default();
    let detail = format!(
        "error {code} {}: {} {}",
        error["sub_code"].as_str().unwrap_or_default(),
        error["error_msg"].as_str().unwrap_or_default(),
        error["sub_msg"].as_str().unwrap_or_default()
    );
    Err(match code {
        10019 => FetchError::TokenExpired(detail),
        70031 | 52101 => FetchError::Throttled {
            retry_after: Some(Duration::from_secs(1)),
            detail,
        },
        52102 | 52103 => FetchError::Transient(detail),
        10000..=39999 | 50000..=52003 => FetchError::Refused(detail),
        _ => FetchError::Transient(detail),
    })
}

/// The normalised fields of `order_info`.
pub(crate) fn normalise(answer: &Value) -> Result<Fetched, FetchError> {
    let order = &answer["order_info_get_response"]["order_info"];
    if !order.is_object() {
        return Err(FetchError::Malformed(
            "no order_info_get_response.order_info".into(),
        ));
    }
    let raw_status = details::text(&order["order_status"])
        .ok_or_else(|| FetchError::Malformed("no order_info.order_status".into()))?;
    let items = details::lines(&order["item_list"], |line| {
        details::item(
            details::seller_sku(&[&line["outer_id"]], &line["sku_id"]),
            &line["goods_name"],
            details::count(&line["goods_count"]),
            details::yuan(&line["goods_price"]),
        )
    });
    let pick = |masked: &str, plain: &str| {
        details::text(&order[masked]).or_else(|| details::text(&order[plain]))
    };
    let paid = details::text(&order["pay_time"]).is_some();
    let amount = details::yuan(&order["pay_amount"]);
    Ok(Fetched {
        raw_status,
        updated_at: order["updated_at"]
            .as_str()
            .and_then(crate::ingest::poll::parse_china_datetime),
        fields: details::Contents {
            items,
            amount,
            paid,
            freight: details::yuan(&order["postage"]),
            receiver: details::receiver([
                ("name", pick("receiver_name_mask", "receiver_name")),
                ("phone", pick("receiver_phone_mask", "receiver_phone")),
                ("province", details::text(&order["province"])),
                ("city", details::text(&order["city"])),
                ("district", details::text(&order["town"])),
                ("address", pick("address_mask", "receiver_address")),
            ]),
            buyer: None,
        }
        .into_fields(),
    })
}

impl DetailsClient for PddDetails {
    fn fetch<'a>(&'a self, order_id: &'a str) -> FetchFuture<'a, Fetched> {
        Box::pin(async move {
            let answer = details::with_token(
                &self.tokens,
                |current| self.renew(current),
                |token| async move {
                    self.request(
                        "pdd.order.information.get",
                        &[("order_sn", order_id)],
                        Some(&token),
                    )
                    .await
                },
            )
            .await?;
            normalise(&answer)
        })
    }

    fn call<'a>(&'a self, method: &'a str, params: Map<String, Value>) -> FetchFuture<'a, Value> {
        Box::pin(async move {
            let texts = details::form_params(&params);
            details::with_token(
                &self.tokens,
                |current| self.renew(current),
                |token| {
                    let pairs = details::pairs(&texts);
                    async move { self.request(method, &pairs, Some(&token)).await }
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
    fn signs_like_the_sdk() {
        // The official vector (shared/reference/order-apis.md).
        let params = [
            ("access_token", "asd78172s8ds9a921j9qqwda12312w1w21211"),
            ("client_id", "1"),
            ("data_type", "XML"),
            ("order_status", "1"),
            ("page", "1"),
            ("page_size", "10"),
            ("timestamp", "1480411125"),
            ("type", "pdd.order.number.list.get"),
        ];
        assert_eq!(
            top_sign(params, "testSecret"),
            "E4DE3ED21002510DED352819E7AE6775"
        );
    }

    #[test]
    fn the_documented_answer_is_normalised() {
        let answer = serde_json::json!({"order_info_get_response": {"order_info": {
            "order_sn": "261129-123456789012345", "order_status": 1, "refund_status": 1,
            "updated_at": "2026-11-29 20:01:02", "pay_time": "2026-11-29 20:00:59",
            "pay_amount": "39.90", "goods_amount": "39.90", "postage": "0.00",
            "receiver_name_mask": "张*", "receiver_phone_mask": "137****1234",
            "address_mask": "长安街****", "receiver_name": "~enc~", "province": "北京市",
            "city": "北京市", "town": "东城区",
            "item_list": [{"sku_id": 7001, "outer_id": "NOTE-A5", "goods_name": "A5 笔记本",
                "goods_count": 3, "goods_price": 13.3}]
        }}});
        let fetched = normalise(&check(answer).unwrap()).unwrap();
        assert_eq!(fetched.raw_status, "1");
        assert_eq!(
            fetched.fields["items"],
            serde_json::json!([{"sku": "NOTE-A5", "name": "A5 笔记本", "qty": 3, "price": 13.3}])
        );
        assert_eq!(fetched.fields["amount"], 39.9);
        assert_eq!(fetched.fields["receiver"]["name"], "张*");
        assert_eq!(fetched.fields["receiver"]["district"], "东城区");
        assert!(fetched.updated_at.is_some());
    }

    #[test]
    fn errors_are_classified_for_retry() {
        let kind = |code: i64| {
            check(serde_json::json!({"error_response": {"error_code": code, "error_msg": "x"}}))
                .unwrap_err()
                .kind()
        };
        assert!(matches!(
            check(
                serde_json::json!({"error_response": {"error_code": 10019, "error_msg": "access_token已过期"}})
            ),
            Err(FetchError::TokenExpired(_))
        ));
        assert_eq!(kind(70031), "throttled");
        assert_eq!(kind(52101), "throttled");
        assert_eq!(kind(52103), "failed");
        assert_eq!(kind(20004), "refused");
        assert_eq!(kind(60000), "failed");
    }
}
