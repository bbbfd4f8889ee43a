//! Douyin Shop order details: `order.orderDetail` (`POST {gateway}/order/orderDetail`).
//!
//! Signing after the official SDKs (zsmhub/doudian-sdk `core/sign.go`, doudian Java SDK
//! `SignUtil`): the common parameters go in the query (`app_key, method, timestamp` in seconds,
//! `v=2, sign, sign_method, access_token`), the body is `param_json` — compact JSON, keys sorted
//! recursively, no HTML escaping — and `sign` is over
//! `secret + "app_key"+k + "method"+m + "param_json"+pj + "timestamp"+t + "v"+"2" + secret`:
//! lowercase hex HMAC-SHA256 keyed with the secret (`sign_method = "hmac-sha256"`, the default)
//! or md5 of it (`"md5"`, announced to retire). `access_token` is not signed.
//!
//! Token: `token.create` with `grant_type=authorization_self` and the shop id (a self-use app),
//! renewed with `token.refresh` while the refresh token lives; success is `code == 10000`.
//!
//! Contents (`data.shop_order_detail`, zsmhub/doudian-sdk `api/order_orderDetail/response`):
//! `order_status`, `pay_amount`/`post_amount` (fen), `pay_time`, `update_time` (s),
//! `sku_order_list[]` (`out_sku_id`/`code` = the seller's code, `sku_id`, `product_name`,
//! `item_num`, `origin_amount` the unit price in fen), the receiver as `mask_post_receiver`,
//! `mask_post_tel`, `mask_post_addr` and `post_addr` (province/city/town names) with ciphertext
//! copies `encrypt_post_receiver`, `encrypt_post_tel`, `post_addr.encrypt_detail` (plain text
//! only through `/order/batchDecrypt`, which orderhub does not call), `doudian_open_id`.

use crate::config::Rate;
use crate::ingest::details::{
    self, DetailsClient, DetailsConfig, FetchError, FetchFuture, Fetched, Token, TokenCache,
};
use crate::signing::{hmac_sha256_hex, md5_hex};
use serde_json::{Map, Value};
use std::time::Duration;

/// The production gateway.
pub(crate) const DEFAULT_GATEWAY: &str = "https://openapi-fxg.jinritemai.com";
/// Douyin publishes no per-app limit for order.orderDetail [?]: a conservative default.
pub(crate) const DEFAULT_RATE: Rate = Rate {
    count: 20,
    per: Duration::from_secs(1),
};
/// Push tags after which the details are fetched again: address changed (105), amount changed
/// (109), address change applied (111).
pub(crate) const REFETCH_ON: [&str; 3] = ["105", "109", "111"];
/// Credential keys `[sources.douyin.details]` takes.
pub(crate) const TAKES: [&str; 4] = ["shop_id_env", "access_token_env", "sign_method", "decrypt"];
/// The API's success code.
const SUCCESS: i64 = 10000;

/// How calls are signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SignMethod {
    HmacSha256,
    Md5,
}

impl SignMethod {
    pub(crate) fn parse(text: Option<&str>) -> Result<Self, String> {
        match text {
            None | Some("hmac-sha256") => Ok(SignMethod::HmacSha256),
            Some("md5") => Ok(SignMethod::Md5),
            Some(other) => Err(format!(
                "unknown sign method {other:?} (hmac-sha256 or md5)"
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            SignMethod::HmacSha256 => "hmac-sha256",
            SignMethod::Md5 => "md5",
        }
    }
}

/// The `sign` of a call.
pub(crate) fn sign(
    app_key: &str,
    secret: &str,
    method: &str,
    param_json: &str,
    timestamp: &str,
    how: SignMethod,
) -> String {
    let text = format!(
        "{secret}app_key{app_key}method{method}param_json{param_json}timestamp{timestamp}v2{secret}"
    );
    match how {
        SignMethod::HmacSha256 => hmac_sha256_hex(secret.as_bytes(), text.as_bytes()),
        SignMethod::Md5 => md5_hex(&[text.as_bytes()]),
    }
}

/// The Douyin Shop order-detail client.
pub(crate) struct DouyinDetails {
    http: reqwest::Client,
    gateway: String,
    app_key: String,
    app_secret: String,
    shop_id: Option<String>,
    sign_method: SignMethod,
    decrypt: bool,
    tokens: TokenCache,
}

impl DouyinDetails {
    /// Builds the client from the source's app credentials and the details table.
    pub(crate) fn new(
        config: &DetailsConfig,
        app_key: String,
        app_secret: String,
        secrets: &crate::secrets::SecretLookup,
    ) -> Result<Self, String> {
        let shop_id = config.secret(secrets, &config.shop_id_env)?;
        let access = config.secret(secrets, &config.access_token_env)?;
        if shop_id.is_none() && access.is_none() {
            return Err(
                "shop_id_env (for token.create) or access_token_env is required".to_owned(),
            );
        }
        let initial = access.map(Token::configured);
        Ok(DouyinDetails {
            http: config.http_client()?,
            gateway: config.gateway_or(DEFAULT_GATEWAY),
            app_key,
            app_secret,
            shop_id,
            sign_method: SignMethod::parse(config.sign_method.as_deref())?,
            decrypt: config.decrypt,
            tokens: TokenCache::new(super::SOURCE, initial, None),
        })
    }

    /// Calls `method` with `params`; the answer's `data` on success.
    async fn request(
        &self,
        method: &str,
        params: &Value,
        access_token: Option<&str>,
    ) -> Result<Value, FetchError> {
        let param_json = params.to_string();
        let timestamp = (details::now_ms() / 1000).to_string();
        let sign = sign(
            &self.app_key,
            &self.app_secret,
            method,
            &param_json,
            &timestamp,
            self.sign_method,
        );
        let mut query = vec![
            ("app_key", self.app_key.as_str()),
            ("method", method),
            ("timestamp", timestamp.as_str()),
            ("v", "2"),
            ("sign", sign.as_str()),
            ("sign_method", self.sign_method.name()),
        ];
        if let Some(token) = access_token {
            query.push(("access_token", token));
        }
        let url = details::with_query(
            &format!("{}/{}", self.gateway, method.replace('.', "/")),
            query,
        );
        let request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(param_json);
        let answer = details::call_json(request).await?;
        check(answer)
    }

    async fn renew(&self, current: Option<Token>) -> Result<Token, FetchError> {
        let now = details::now_ms();
        let params = match current.as_ref().filter(|t| t.refreshable(now)) {
            Some(token) => serde_json::json!({
                "grant_type": "refresh_token",
                "refresh_token": token.refresh,
            }),
            None => {
                let Some(shop_id) = &self.shop_id else {
                    return Err(FetchError::Credentials(
                        "the configured access token was refused and no shop_id_env is set to create another".into(),
                    ));
                };
                serde_json::json!({
                    "code": "",
                    "grant_type": "authorization_self",
                    "shop_id": shop_id,
                })
            }
        };
        let method = if params["grant_type"] == "refresh_token" {
            "token.refresh"
        } else {
            "token.create"
        };
        let data = self
            .request(method, &params, None)
            .await
            .map_err(|err| match err {
                // A refused token call means the app's credentials or authorisation are wrong.
                FetchError::Refused(detail) | FetchError::TokenExpired(detail) => {
                    FetchError::Credentials(format!("{method}: {detail}"))
                }
                other => other,
            })?;
        let access = data["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| FetchError::Malformed(format!("{method}: no data.access_token")))?;
        // The SDK's core calls `expires_in` a lifetime in seconds, its generated types a Unix
        // time in seconds: a value past 2001 is read as the latter.
        let expires_in = data["expires_in"].as_i64().unwrap_or(3600);
        let expires_at = if expires_in > 1_000_000_000 {
            expires_in * 1000
        } else {
            now + expires_in * 1000
        };
        Ok(Token {
            access: access.to_owned(),
            expires_at,
            refresh: data["refresh_token"].as_str().map(str::to_owned),
            // The refresh token lives 14 days from issue; no field says so.
            refresh_expires_at: Some(now + 14 * 86_400 * 1000),
        })
    }
}

impl DouyinDetails {
    /// Replaces the receiver's masked name, phone and address with the plain text
    /// `order.batchDecrypt` gives for their ciphertexts (zsmhub/doudian-sdk
    /// `api/order_batchDecrypt`: `cipher_infos[] {auth_id, cipher_text}` →
    /// `decrypt_infos[] {cipher_text, decrypt_text, err_no}`). A failure keeps what was
    /// delivered; the plain text is never logged.
    async fn decrypt_receiver(&self, order_id: &str, data: &Value, fetched: &mut Fetched) {
        let order = &data["shop_order_detail"];
        let ciphers: Vec<(&str, String)> = [
            ("name", &order["encrypt_post_receiver"]),
            ("phone", &order["encrypt_post_tel"]),
            ("address", &order["post_addr"]["encrypt_detail"]),
        ]
        .into_iter()
        .filter_map(|(field, value)| Some((field, details::text(value)?)))
        .collect();
        if ciphers.is_empty() {
            return;
        }
        let params = serde_json::json!({
            "cipher_infos": ciphers
                .iter()
                .map(|(_, cipher)| serde_json::json!({"auth_id": order_id, "cipher_text": cipher}))
                .collect::<Vec<_>>(),
        });
        let answer = details::with_token(
            &self.tokens,
            |current| self.renew(current),
            |token| {
                let params = &params;
                async move {
                    self.request("order.batchDecrypt", params, Some(&token))
                        .await
                }
            },
        )
        .await;
        let infos = match answer {
            Ok(data) => data["decrypt_infos"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            Err(err) => {
                tracing::warn!(
                    channel = "douyin",
                    problem = err.kind(),
                    "order.batchDecrypt failed; the receiver stays as delivered"
                );
                return;
            }
        };
        let Some(receiver) = fetched
            .fields
            .get_mut("receiver")
            .and_then(Value::as_object_mut)
        else {
            return;
        };
        for (field, cipher) in &ciphers {
            let plain = infos.iter().find(|info| {
                info["cipher_text"].as_str() == Some(cipher.as_str())
                    && info["err_no"].as_i64().unwrap_or(0) == 0
            });
            if let Some(text) = plain.and_then(|info| info["decrypt_text"].as_str()) {
                receiver.insert((*field).to_owned(), Value::from(text));
            }
        }
    }
}

/// Reads Douyin's envelope: `data` when `code` is 10000, else the error classified.
fn check(answer: Value) -> Result<Value, FetchError> {
    let code = answer["code"].as_i64();
    if code == Some(SUCCESS) {
        return Ok(answer["data"].clone());
    }
    let sub_code = answer["sub_code"].as_str().unwrap_or_default();
    let detail = format!(
        "code {} {}: {} {}",
        code.map_or_else(|| "?".to_owned(), |c| c.to_string()),
        sub_code,
        answer["msg"].as_str().unwrap_or_default(),
        answer["sub_msg"].as_str().unwrap_or_default(),
    );
    let Some(code) = code else {
        return Err(FetchError::Malformed(format!(
            "no code: {}",
            crate::sinks::excerpt(&answer.to_string())
        )));
    };
    Err(classify(code, sub_code, detail))
}

/// Douyin's error codes (its error-code guide, as public SDKs and samples carry it): 40003 with
/// `isv.access-token-*` is an expired or unknown token (renewed once); 30001 (the shop's
/// authorisation lapsed) and 50001 `dop.token-generate-failed` (a dead refresh token) need the
/// seller; 60000 is the call limit; 20000-range and `isp.*` are the platform's own (transient);
/// the rest refuse the call for good.
fn classify(code: i64, sub_code: &str, detail: String) -> FetchError {
    if sub_code.starts_with("isv.access-token") {
        FetchError::TokenExpired(detail)
    } else if code == 30001 || sub_code.starts_with("dop.") {
        FetchError::Credentials(detail)
    } else if code == 60000 || sub_code.contains("limit") {
        FetchError::Throttled {
            retry_after: Some(Duration::from_secs(1)),
            detail,
        }
    } else if (20000..30000).contains(&code) || sub_code.starts_with("isp.") {
        FetchError::Transient(detail)
    } else {
        FetchError::Refused(detail)
    }
}

/// The normalised fields of `data.shop_order_detail`.
pub(crate) fn normalise(data: &Value) -> Result<Fetched, FetchError> {
    let order = &data["shop_order_detail"];
    if !order.is_object() {
        return Err(FetchError::Malformed("no data.shop_order_detail".into()));
    }
    let raw_status = details::text(&order["order_status"])
        .ok_or_else(|| FetchError::Malformed("no shop_order_detail.order_status".into()))?;
    let items = details::lines(&order["sku_order_list"], |sku| {
        details::item(
            details::seller_sku(&[&sku["out_sku_id"], &sku["code"]], &sku["sku_id"]),
            &sku["product_name"],
            details::count(&sku["item_num"]),
            // origin_amount is the unit price (fen); sum_amount the line.
            details::yuan_from_fen(&sku["origin_amount"]),
        )
    });
    let paid = order["pay_time"].as_i64().is_some_and(|t| t > 0);
    let amount = details::yuan_from_fen(&order["pay_amount"]);
    let addr = &order["post_addr"];
    let masked_detail = order["mask_post_addr"]["detail"]
        .as_str()
        .map(str::to_owned);
    let receiver = details::receiver([
        (
            "name",
            details::text(&order["mask_post_receiver"])
                .or_else(|| details::text(&order["encrypt_post_receiver"])),
        ),
        (
            "phone",
            details::text(&order["mask_post_tel"])
                .or_else(|| details::text(&order["encrypt_post_tel"])),
        ),
        ("province", details::text(&addr["province"]["name"])),
        ("city", details::text(&addr["city"]["name"])),
        ("district", details::text(&addr["town"]["name"])),
        (
            "address",
            masked_detail.or_else(|| details::text(&addr["encrypt_detail"])),
        ),
    ]);
    let fields = details::Contents {
        items,
        amount,
        paid,
        freight: details::yuan_from_fen(&order["post_amount"]),
        receiver,
        buyer: details::text(&order["doudian_open_id"]),
    }
    .into_fields();
    Ok(Fetched {
        raw_status,
        updated_at: order["update_time"].as_i64().map(|s| s * 1000),
        fields,
    })
}

impl DetailsClient for DouyinDetails {
    fn fetch<'a>(&'a self, order_id: &'a str) -> FetchFuture<'a, Fetched> {
        Box::pin(async move {
            let params = serde_json::json!({ "shop_order_id": order_id });
            let data = details::with_token(
                &self.tokens,
                |current| self.renew(current),
                |token| {
                    let params = &params;
                    async move {
                        self.request("order.orderDetail", params, Some(&token))
                            .await
                    }
                },
            )
            .await?;
            let mut fetched = normalise(&data)?;
            if self.decrypt {
                self.decrypt_receiver(order_id, &data, &mut fetched).await;
            }
            Ok(fetched)
        })
    }

    fn call<'a>(&'a self, method: &'a str, params: Map<String, Value>) -> FetchFuture<'a, Value> {
        Box::pin(async move {
            let params = Value::Object(params);
            details::with_token(
                &self.tokens,
                |current| self.renew(current),
                |token| {
                    let params = &params;
                    async move { self.request(method, params, Some(&token)).await }
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
        // The vector of shared/reference/order-apis.md (computed from the SDK's algorithm).
        let pj = r#"{"shop_order_id":"4984023467827309610"}"#;
        let params = serde_json::json!({ "shop_order_id": "4984023467827309610" });
        assert_eq!(params.to_string(), pj, "compact, keys sorted");
        assert_eq!(
            sign(
                "app123",
                "secret456",
                "order.orderDetail",
                pj,
                "1700000000",
                SignMethod::Md5
            ),
            "d458a0e976be38df71bebfccdb32e921"
        );
        assert_eq!(
            sign(
                "app123",
                "secret456",
                "order.orderDetail",
                pj,
                "1700000000",
                SignMethod::HmacSha256
            ),
            "93c0a4e7885fec846514821fece9e2105c2dd945e5b2ef68ed253a9528051803"
        );
    }

    #[test]
    fn errors_are_classified_for_retry() {
        let answer = |code: i64, sub: &str| {
            check(serde_json::json!({"code": code, "msg": "x", "sub_code": sub, "sub_msg": "y"}))
                .unwrap_err()
                .kind()
        };
        let expired = |sub: &str| {
            matches!(
                check(serde_json::json!({"code": 40003, "sub_code": sub})),
                Err(FetchError::TokenExpired(_))
            )
        };
        assert!(expired("isv.access-token-expired") && expired("isv.access-token-no-existed"));
        assert_eq!(answer(30001, "dop.authorization-no-existed"), "credentials");
        assert_eq!(answer(60000, ""), "throttled");
        assert_eq!(answer(20000, "isp.service-error"), "failed");
        assert_eq!(answer(40004, "isv.business-failed"), "refused");
        assert_eq!(
            check(serde_json::json!({"oops": 1})).unwrap_err().kind(),
            "malformed"
        );
    }
}
