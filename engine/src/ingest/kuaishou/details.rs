//! Kuaishou shop order details: `open.order.detail` (`GET {gateway}/open/order/detail`).
//!
//! Signing after the official doc "API调用说明" (copied in AndersonBY/kwaixiaodian-python-sdk)
//! and the Java SDK: the seven parameters `access_token, appkey, method, param, signMethod,
//! timestamp` (ms) and `version`, sorted by name, written `k=v` and joined with `&`, then
//! `&signSecret=…` appended — the separate sign secret, not the app secret; `MD5` → lowercase
//! hex, `HMAC_SHA256` → base64 keyed with the sign secret. Signed before URL-encoding.
//!
//! Token: `POST {gateway}/oauth2/refresh_token` (`grant_type=refresh_token, refresh_token,
//! app_id, app_secret`) → `access_token`, `expires_in` (s, 48 h), `refresh_token`,
//! `refresh_token_expires_in`. Each refresh issues a new refresh token and kills the old one
//! within minutes, so the latest is kept in `DATA_DIR/tokens/kuaishou.json` (0600) and used
//! after a restart instead of the configured one.
//!
//! Errors: `{result: n ≠ 1, error_msg}`; limits are named in the message ("Exceed qps limit",
//! "exceed quota limit"); an expired token says "TOKEN过期"/"鉴权失败"; `result = 24` is a
//! revoked authorisation; `21` refuses the order.
//!
//! Contents (`data`): `orderBaseInfo {oid, status, updateTime ms, totalFee, expressFee}` (fen),
//! `orderItemInfo` (one object: `skuNick` = the seller's code, `skuId`, `itemTitle`, `num`,
//! `price` fen), `orderAddress {province, city, district, desensitiseConsignee,
//! desensitiseMobile, desensitiseAddress, encrypted*}` (plain text only through
//! `open.order.decrypt.batch`, which orderhub does not call).

use crate::config::Rate;
use crate::ingest::details::{
    self, DetailsClient, DetailsConfig, FetchError, FetchFuture, Fetched, Token, TokenCache,
};
use crate::signing::{hmac_sha256_base64, md5_hex};
use serde_json::{Map, Value};
use std::time::Duration;

/// The production gateway.
pub(crate) const DEFAULT_GATEWAY: &str = "https://openapi.kwaixiaodian.com";
/// Kuaishou documents 300 QPS for the order list; detail limits are per app [?]: a default
/// well below.
pub(crate) const DEFAULT_RATE: Rate = Rate {
    count: 50,
    per: Duration::from_secs(1),
};
/// Statuses that fetch again beyond `paid`: none by default.
pub(crate) const REFETCH_ON: [&str; 0] = [];
/// Credential keys `[sources.kuaishou.details]` takes.
pub(crate) const TAKES: [&str; 5] = [
    "sign_secret_env",
    "app_secret_env",
    "refresh_token_env",
    "access_token_env",
    "sign_method",
];

/// How calls are signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SignMethod {
    Md5,
    HmacSha256,
}

impl SignMethod {
    pub(crate) fn parse(text: Option<&str>) -> Result<Self, String> {
        match text {
            None | Some("HMAC_SHA256") => Ok(SignMethod::HmacSha256),
            Some("MD5") => Ok(SignMethod::Md5),
            Some(other) => Err(format!(
                "unknown sign method {other:?} (HMAC_SHA256 or MD5)"
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            SignMethod::Md5 => "MD5",
            SignMethod::HmacSha256 => "HMAC_SHA256",
        }
    }
}

/// The `sign` of a call's parameters (without `sign`).
pub(crate) fn sign(params: &[(&str, &str)], sign_secret: &str, how: SignMethod) -> String {
    let mut sorted = params.to_vec();
    sorted.sort_unstable();
    let mut text = sorted
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    text.push_str("&signSecret=");
    text.push_str(sign_secret);
    match how {
        SignMethod::Md5 => md5_hex(&[text.as_bytes()]),
        SignMethod::HmacSha256 => hmac_sha256_base64(sign_secret.as_bytes(), text.as_bytes()),
    }
}

/// The Kuaishou order-detail client.
pub(crate) struct KuaishouDetails {
    http: reqwest::Client,
    gateway: String,
    app_key: String,
    app_secret: Option<String>,
    sign_secret: String,
    sign_method: SignMethod,
    tokens: TokenCache,
}

impl KuaishouDetails {
    pub(crate) fn new(
        config: &DetailsConfig,
        app_key: String,
        secrets: &crate::secrets::SecretLookup,
        data_dir: &std::path::Path,
    ) -> Result<Self, String> {
        let sign_secret = config
            .secret(secrets, &config.sign_secret_env)?
            .ok_or("sign_secret_env (the signSecret) is required")?;
        let app_secret = config.secret(secrets, &config.app_secret_env)?;
        let refresh = config.secret(secrets, &config.refresh_token_env)?;
        let access = config.secret(secrets, &config.access_token_env)?;
        if refresh.is_none() && access.is_none() {
            return Err(
                "refresh_token_env (with app_secret_env) or access_token_env is required".into(),
            );
        }
        if refresh.is_some() && app_secret.is_none() {
            return Err("app_secret_env is required to refresh the token".into());
        }
        let initial = Token {
            access: access.unwrap_or_default(),
            // A configured access token is used until refused; with only a refresh token
            // the first call refreshes.
            expires_at: if config.access_token_env.is_some() {
                i64::MAX
            } else {
                0
            },
            refresh,
            refresh_expires_at: None,
        };
        Ok(KuaishouDetails {
            http: config.http_client()?,
            gateway: config.gateway_or(DEFAULT_GATEWAY),
            app_key,
            app_secret,
            sign_secret,
            sign_method: SignMethod::parse(config.sign_method.as_deref())?,
            tokens: TokenCache::new(
                super::SOURCE,
                Some(initial),
                Some(data_dir.join("tokens").join("kuaishou.json")),
            ),
        })
    }

    async fn renew(&self, current: Option<Token>) -> Result<Token, FetchError> {
        let now = details::now_ms();
        let Some((refresh, app_secret)) = current
            .as_ref()
            .filter(|t| t.refreshable(now))
            .and_then(|t| t.refresh.clone())
            .zip(self.app_secret.clone())
        else {
            return Err(FetchError::Credentials(
                "the access token was refused and there is no live refresh token".into(),
            ));
        };
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
            ("app_id", self.app_key.as_str()),
            ("app_secret", app_secret.as_str()),
        ];
        let answer = details::post_form(
            &self.http,
            &format!("{}/oauth2/refresh_token", self.gateway),
            &form,
        )
        .await?;
        if answer["result"].as_i64() != Some(1) {
            return Err(FetchError::Credentials(format!(
                "oauth2/refresh_token: {} {}",
                answer["error"].as_str().unwrap_or_default(),
                answer["error_msg"].as_str().unwrap_or_default()
            )));
        }
        let access = answer["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| FetchError::Malformed("oauth2/refresh_token: no access_token".into()))?;
        let expires_in = answer["expires_in"].as_i64().unwrap_or(172_800);
        Ok(Token {
            access: access.to_owned(),
            expires_at: now + expires_in * 1000,
            refresh: answer["refresh_token"].as_str().map(str::to_owned),
            refresh_expires_at: answer["refresh_token_expires_in"]
                .as_i64()
                .map(|s| now + s * 1000),
        })
    }

    async fn detail(&self, order_id: &str, token: &str) -> Result<Value, FetchError> {
        // The order id is an int64: sent as a JSON number, as the SDK does.
        let param = match order_id.parse::<u64>() {
            Ok(oid) => serde_json::json!({ "oid": oid }),
            Err(_) => serde_json::json!({ "oid": order_id }),
        };
        self.request("open.order.detail", &param, token).await
    }

    /// Calls `method` (`open.order.detail` → `GET {gateway}/open/order/detail`) with `param`.
    async fn request(&self, method: &str, param: &Value, token: &str) -> Result<Value, FetchError> {
        let param = param.to_string();
        let timestamp = details::now_ms().to_string();
        let mut params = vec![
            ("access_token", token),
            ("appkey", self.app_key.as_str()),
            ("method", method),
            ("param", param.as_str()),
            ("signMethod", self.sign_method.name()),
            ("timestamp", timestamp.as_str()),
            ("version", "1"),
        ];
        let signature = sign(&params, &self.sign_secret, self.sign_method);
        params.push(("sign", signature.as_str()));
        let path = method.replace('.', "/");
        let url = details::with_query(&format!("{}/{path}", self.gateway), params);
        check(details::call_json(self.http.get(url)).await?)
    }
}

/// Reads Kuaishou's envelope: `data` when `result == 1`, else the error classified.
fn check(answer: Value) -> Result<Value, FetchError> {
    let Some(result) = answer["result"].as_i64() else {
        return Err(FetchError::Malformed(format!(
            "no result: {}",
            crate::sinks::excerpt(&answer.to_string())
        )));
    };
    if result == 1 {
        return Ok(answer["data"].clone());
    }
    let message = answer["error_msg"].as_str().unwrap_or_default();
    let detail = format!("result {result}: {message}");
    let lower = message.to_ascii_lowercase();
    Err(
        if lower.contains("exceed qps") || lower.contains("exceed quota") {
            FetchError::Throttled {
                retry_after: Some(Duration::from_secs(1)),
                detail,
            }
        } else if message.contains("TOKEN过期")
            || message.contains("鉴权失败")
            || lower.contains("access_token")
        {
            FetchError::TokenExpired(detail)
        } else if result == 24 {
            FetchError::Credentials(detail)
        } else if result == 21 {
            FetchError::Refused(detail)
        } else {
            FetchError::Transient(detail)
        },
    )
}

/// The normalised fields of `data`.
pub(crate) fn normalise(data: &Value) -> Result<Fetched, FetchError> {
    let base = &data["orderBaseInfo"];
    let raw_status = details::text(&base["status"])
        .ok_or_else(|| FetchError::Malformed("no orderBaseInfo.status".into()))?;
    // `orderItemInfo` is one object; a list is read too.
    let lines: Vec<&Value> = match &data["orderItemInfo"] {
        Value::Array(list) => list.iter().collect(),
        Value::Object(_) => vec![&data["orderItemInfo"]],
        _ => Vec::new(),
    };
    let items: Vec<Value> = lines
        .into_iter()
        .map(|line| {
            details::item(
                details::seller_sku(&[&line["skuNick"], &line["goodsCode"]], &line["skuId"]),
                &line["itemTitle"],
                details::count(&line["num"]),
                details::yuan_from_fen(&line["price"]),
            )
        })
        .collect();
    let address = &data["orderAddress"];
    let pick = |plain: &str, encrypted: &str| {
        details::text(&address[plain]).or_else(|| details::text(&address[encrypted]))
    };
    let paid = base["payTime"].as_i64().is_some_and(|t| t > 0);
    let amount = details::yuan_from_fen(&base["totalFee"]);
    Ok(Fetched {
        raw_status,
        updated_at: base["updateTime"].as_i64(),
        fields: details::Contents {
            items,
            amount,
            paid,
            freight: details::yuan_from_fen(&base["expressFee"]),
            receiver: details::receiver([
                ("name", pick("desensitiseConsignee", "encryptedConsignee")),
                ("phone", pick("desensitiseMobile", "encryptedMobile")),
                ("province", details::text(&address["province"])),
                ("city", details::text(&address["city"])),
                ("district", details::text(&address["district"])),
                ("address", pick("desensitiseAddress", "encryptedAddress")),
            ]),
            buyer: details::text(&base["buyerOpenId"]),
        }
        .into_fields(),
    })
}

impl DetailsClient for KuaishouDetails {
    fn fetch<'a>(&'a self, order_id: &'a str) -> FetchFuture<'a, Fetched> {
        Box::pin(async move {
            let data = details::with_token(
                &self.tokens,
                |current| self.renew(current),
                |token| async move { self.detail(order_id, &token).await },
            )
            .await?;
            normalise(&data)
        })
    }

    fn call<'a>(&'a self, method: &'a str, params: Map<String, Value>) -> FetchFuture<'a, Value> {
        Box::pin(async move {
            let param = Value::Object(params);
            details::with_token(
                &self.tokens,
                |current| self.renew(current),
                |token| {
                    let param = &param;
                    async move { self.request(method, param, &token).await }
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
        // The vectors of shared/reference/order-apis.md (computed from the documented algorithm).
        let param = serde_json::json!({ "oid": 2321300034950000u64 }).to_string();
        let params = |method: &'static str| {
            vec![
                ("access_token", "tok"),
                ("appkey", "ks123"),
                ("method", "open.order.detail"),
                ("param", param.as_str()),
                ("signMethod", method),
                ("timestamp", "1700000000000"),
                ("version", "1"),
            ]
        };
        assert_eq!(
            sign(&params("MD5"), "signsecret", SignMethod::Md5),
            "80e5aeef6c9db9e8ea030706a3325c4b"
        );
        assert_eq!(
            sign(&params("HMAC_SHA256"), "signsecret", SignMethod::HmacSha256),
            "WmO2gY+Jo3BJvBvaCcSQSLP+u2KecQ5HBu1q7sjETKU="
        );
    }

    #[test]
    fn the_documented_answer_is_normalised() {
        // Shape after the open.order.detail response as the Java SDK's OpenOrderDetailResponse
        // carries it (orderBaseInfo / orderItemInfo / orderAddress).
        let answer = serde_json::json!({"result": 1, "data": {
            "orderBaseInfo": {"oid": 2321300034950000u64, "status": 30, "payTime": 1795000000000u64,
                "updateTime": 1795000001000u64, "totalFee": 5980, "expressFee": 0, "buyerOpenId": "f1a2"},
            "orderItemInfo": {"skuId": 88001, "skuNick": "SOCK-BLK-M", "itemTitle": "棉袜 黑色 M",
                "num": 2, "price": 2990},
            "orderAddress": {"province": "广东省", "city": "深圳市", "district": "南山区",
                "encryptedConsignee": "#enc1#", "desensitiseConsignee": "李*",
                "encryptedMobile": "#enc2#", "desensitiseMobile": "139****0000",
                "encryptedAddress": "#enc3#", "desensitiseAddress": "科技园****"}
        }});
        let fetched = normalise(&check(answer).unwrap()).unwrap();
        assert_eq!(fetched.raw_status, "30");
        assert_eq!(fetched.updated_at, Some(1_795_000_001_000));
        assert_eq!(
            fetched.fields["items"],
            serde_json::json!([{"sku": "SOCK-BLK-M", "name": "棉袜 黑色 M", "qty": 2, "price": 29.9}])
        );
        assert_eq!(fetched.fields["amount"], 59.8);
        assert_eq!(fetched.fields["paid"], 59.8);
        assert_eq!(fetched.fields["receiver"]["phone"], "139****0000");
        assert_eq!(fetched.fields["receiver"]["district"], "南山区");
    }

    #[test]
    fn errors_are_classified_for_retry() {
        let kind = |result: i64, msg: &str| {
            check(serde_json::json!({"result": result, "error_msg": msg}))
                .unwrap_err()
                .kind()
        };
        assert_eq!(
            kind(802000, "Exceed qps limit, KEY [x], MAX_QPS [50]"),
            "throttled"
        );
        assert_eq!(kind(24, "AUTHORIZATION_REVOKED"), "credentials");
        assert_eq!(kind(21, "order operation reject"), "refused");
        assert!(matches!(
            check(serde_json::json!({"result": 28, "error_msg": "鉴权失败, TOKEN过期"})),
            Err(FetchError::TokenExpired(_))
        ));
        assert_eq!(kind(500, "system busy"), "failed");
    }
}
