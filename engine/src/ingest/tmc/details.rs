//! Taobao/Tmall order details: `taobao.trade.fullinfo.get` through TOP (`POST {gateway}`,
//! form-encoded `method, app_key, session, timestamp, format=json, v=2.0, sign_method=md5,
//! fields, tid, sign`).
//!
//! Signing after TOP's SDKs (bububa/opentaobao `core/sign.go`): `UPPER(hex(md5(secret + every
//! parameter but sign, sorted by name, as name+value + secret)))` — `session` included (signing
//! before adding it is TOP's error 25); the timestamp is China time `yyyy-MM-dd HH:mm:ss`. The
//! official vector is in the signing tests.
//!
//! Token: the seller's `session` (access token) from `access_token_env`. TOP renews a session
//! only for apps sold through its service market: with `refresh_token_env` an expired one
//! (error 27, `invalid-sessionkey`) is renewed by `taobao.top.auth.token.refresh`, whose
//! `token_result` is a JSON string (`access_token`, `expire_time` and `refresh_token_valid_time`
//! in Unix ms, `refresh_token`; bububa/opentaobao `TaobaoTopAuthTokenRefreshAPIResponse`), kept
//! in `DATA_DIR/tokens/taobao.json`; without it, enrichment waits for a new session, with a
//! warning.
//!
//! Errors: `{error_response: {code, msg, sub_code, sub_msg}}` — 27 the session, 7 the app's call
//! limit (`sub_msg` says for how many seconds), 15 and `isp.*` the platform's own (transient).
//!
//! Contents (`trade_fullinfo_get_response.trade`, bububa/opentaobao `model/tbtrade/Trade.go`):
//! `status`, `modified`, `pay_time`, `payment`, `post_fee` (yuan strings), `receiver_name`,
//! `receiver_mobile`, `receiver_state`, `receiver_city`, `receiver_district`,
//! `receiver_address` (masked; decrypted by `taobao.top.oaid.decrypt`, not called),
//! `buyer_open_uid`, `orders` (a list, or `{order: [...]}`) with `outer_sku_id`, `outer_iid`,
//! `sku_id`, `num_iid`, `title`, `num`, `price`.

use crate::config::Rate;
use crate::ingest::details::{
    self, DetailsClient, DetailsConfig, FetchError, FetchFuture, Fetched, Token, TokenCache,
};
use crate::signing::top_sign;
use serde_json::{Map, Value};
use std::time::Duration;

/// The production gateway.
pub(crate) const DEFAULT_GATEWAY: &str = "https://eco.taobao.com/router/rest";
/// TOP's limits are per app and API, granted by the platform [?]: a conservative default.
pub(crate) const DEFAULT_RATE: Rate = Rate {
    count: 20,
    per: Duration::from_secs(1),
};
/// Statuses that fetch again beyond `paid`: none by default.
pub(crate) const REFETCH_ON: [&str; 0] = [];
/// Credential keys `[sources.tmc.details]` takes.
pub(crate) const TAKES: [&str; 2] = ["access_token_env", "refresh_token_env"];
/// The trade fields asked for.
const FIELDS: &str = "tid,status,modified,pay_time,payment,post_fee,receiver_name,receiver_mobile,receiver_state,receiver_city,receiver_district,receiver_address,buyer_open_uid,orders";

/// The Taobao/Tmall order-detail client.
pub(crate) struct TaobaoDetails {
    http: reqwest::Client,
    gateway: String,
    app_key: String,
    app_secret: String,
    tokens: TokenCache,
}

impl TaobaoDetails {
    pub(crate) fn new(
        config: &DetailsConfig,
        app_key: String,
        app_secret: String,
        secrets: &crate::secrets::SecretLookup,
        data_dir: &std::path::Path,
    ) -> Result<Self, String> {
        let session = config
            .secret(secrets, &config.access_token_env)?
            .ok_or("access_token_env (the seller's session key) is required")?;
        let refresh = config.secret(secrets, &config.refresh_token_env)?;
        let keep = refresh
            .is_some()
            .then(|| data_dir.join("tokens").join("taobao.json"));
        let initial = Token {
            refresh,
            ..Token::configured(session)
        };
        Ok(TaobaoDetails {
            http: config.http_client()?,
            gateway: config.gateway_or(DEFAULT_GATEWAY),
            app_key,
            app_secret,
            tokens: TokenCache::new(super::SOURCE, Some(initial), keep),
        })
    }

    /// Calls `method` with the business parameters `business`.
    async fn request(
        &self,
        method: &str,
        business: &[(&str, &str)],
        session: &str,
    ) -> Result<Value, FetchError> {
        let timestamp = crate::ingest::poll::china_datetime(details::now_ms());
        let mut params = vec![
            ("method", method),
            ("app_key", self.app_key.as_str()),
            ("timestamp", timestamp.as_str()),
            ("format", "json"),
            ("v", "2.0"),
            ("sign_method", "md5"),
        ];
        if !session.is_empty() {
            params.push(("session", session));
        }
        params.extend_from_slice(business);
        let sign = top_sign(params.iter().copied(), &self.app_secret);
        params.push(("sign", sign.as_str()));
        let answer = details::post_form(&self.http, &self.gateway, &params).await?;
        check(answer)
    }
}

impl TaobaoDetails {
    /// Renews the session with the refresh token, when there is a live one.
    async fn renew(&self, current: Option<Token>) -> Result<Token, FetchError> {
        let now = details::now_ms();
        let Some(refresh) = current
            .filter(|t| t.refreshable(now))
            .and_then(|t| t.refresh)
        else {
            return Err(FetchError::Credentials(
                "the session expired and there is no live refresh token (TOP renews sessions only for service-market apps); set a new session in access_token_env".into(),
            ));
        };
        // The refresh call is signed like any other; it takes no session.
        let answer = self
            .request(
                "taobao.top.auth.token.refresh",
                &[("refresh_token", refresh.as_str())],
                "",
            )
            .await
            .map_err(|err| match err {
                FetchError::Refused(detail) | FetchError::TokenExpired(detail) => {
                    FetchError::Credentials(format!("taobao.top.auth.token.refresh: {detail}"))
                }
                other => other,
            })?;
        let result: Value = answer["top_auth_token_refresh_response"]["token_result"]
            .as_str()
            .and_then(|text| serde_json::from_str(text).ok())
            .ok_or_else(|| FetchError::Malformed("token refresh: no token_result".into()))?;
        let access = result["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| FetchError::Malformed("token refresh: no access_token".into()))?;
        Ok(Token {
            access: access.to_owned(),
            expires_at: result["expire_time"].as_i64().unwrap_or(now + 86_400_000),
            refresh: result["refresh_token"].as_str().map(str::to_owned),
            refresh_expires_at: result["refresh_token_valid_time"].as_i64(),
        })
    }
}

/// Reads TOP's envelope: the answer, or its `error_response` classified.
fn check(answer: Value) -> Result<Value, FetchError> {
    let Some(error) = answer.get("error_response") else {
        if answer.is_object() {
            return Ok(answer);
        }
        return Err(FetchError::Malformed("not a JSON object".into()));
    };
    let code = error["code"].as_i64().unwrap_or_default();
    let sub_code = error["sub_code"].as_str().unwrap_or_default();
    let sub_msg = error["sub_msg"].as_str().unwrap_or_default();
    let detail = format!(
        "error {code} {sub_code}: {} {sub_msg}",
        error["msg"].as_str().unwrap_or_default()
    );
    Err(match code {
        27 | 26 => FetchError::TokenExpired(detail),
        7 => FetchError::Throttled {
            retry_after: Some(
                ban_seconds(sub_msg).map_or(Duration::from_secs(1), |s| Duration::from_secs(s + 1)),
            ),
            detail,
        },
        _ if sub_code.starts_with("isp.") => FetchError::Transient(detail),
        _ => FetchError::Refused(detail),
    })
}

/// The seconds in "This ban will last for N more seconds".
fn ban_seconds(sub_msg: &str) -> Option<u64> {
    let after = sub_msg.split("last for ").nth(1)?;
    after.split_whitespace().next()?.parse().ok()
}

/// The normalised fields of `trade`.
pub(crate) fn normalise(answer: &Value) -> Result<Fetched, FetchError> {
    let trade = &answer["trade_fullinfo_get_response"]["trade"];
    if !trade.is_object() {
        return Err(FetchError::Malformed(
            "no trade_fullinfo_get_response.trade".into(),
        ));
    }
    let raw_status = details::text(&trade["status"])
        .ok_or_else(|| FetchError::Malformed("no trade.status".into()))?;
    let lines = match &trade["orders"] {
        Value::Array(list) => list.as_slice(),
        other => other["order"].as_array().map_or(&[][..], Vec::as_slice),
    };
    let items: Vec<Value> = lines
        .iter()
        .map(|line| {
            details::item(
                details::seller_sku(
                    &[&line["outer_sku_id"], &line["outer_iid"]],
                    &line["sku_id"],
                ),
                &line["title"],
                details::count(&line["num"]),
                details::yuan(&line["price"]),
            )
        })
        .collect();
    let paid = details::text(&trade["pay_time"]).is_some();
    let amount = details::yuan(&trade["payment"]);
    Ok(Fetched {
        raw_status,
        updated_at: trade["modified"]
            .as_str()
            .and_then(crate::ingest::poll::parse_china_datetime),
        fields: details::Contents {
            items,
            amount,
            paid,
            freight: details::yuan(&trade["post_fee"]),
            receiver: details::receiver([
                ("name", details::text(&trade["receiver_name"])),
                ("phone", details::text(&trade["receiver_mobile"])),
                ("province", details::text(&trade["receiver_state"])),
                ("city", details::text(&trade["receiver_city"])),
                ("district", details::text(&trade["receiver_district"])),
                ("address", details::text(&trade["receiver_address"])),
            ]),
            buyer: details::text(&trade["buyer_open_uid"]),
        }
        .into_fields(),
    })
}

impl DetailsClient for TaobaoDetails {
    fn fetch<'a>(&'a self, order_id: &'a str) -> FetchFuture<'a, Fetched> {
        Box::pin(async move {
            let answer = details::with_token(
                &self.tokens,
                |current| self.renew(current),
                |session| async move {
                    self.request(
                        "taobao.trade.fullinfo.get",
                        &[("fields", FIELDS), ("tid", order_id)],
                        &session,
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
                |session| {
                    let pairs = details::pairs(&texts);
                    async move { self.request(method, &pairs, &session).await }
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
    fn signs_like_top() {
        // TOP's official vector (shared/reference/order-apis.md).
        let params = [
            ("app_key", "12345678"),
            ("fields", "num_iid,title,nick,price,num"),
            ("format", "json"),
            ("method", "taobao.item.seller.get"),
            ("num_iid", "11223344"),
            ("session", "test"),
            ("sign_method", "md5"),
            ("timestamp", "2016-01-01 12:00:00"),
            ("v", "2.0"),
        ];
        assert_eq!(
            top_sign(params, "helloworld"),
            "66987CB115214E59E6EC978214934FB8"
        );
    }

    #[test]
    fn the_documented_answer_is_normalised() {
        let answer = serde_json::json!({"trade_fullinfo_get_response": {"trade": {
            "tid": 3981234567890u64, "status": "WAIT_SELLER_SEND_GOODS",
            "modified": "2026-11-29 20:00:05", "pay_time": "2026-11-29 20:00:03",
            "payment": "258.00", "post_fee": "0.00", "receiver_name": "赵**",
            "receiver_mobile": "*******5566", "receiver_state": "江苏省",
            "receiver_city": "南京市", "receiver_district": "鼓楼区",
            "receiver_address": "中山路****", "buyer_open_uid": "AAHk5d-9",
            "orders": {"order": [{"oid": 3981234567891u64, "outer_sku_id": "", "outer_iid": "PEN-GIFT",
                "sku_id": "4455", "title": "钢笔礼盒", "num": 2, "price": "129.00"}]}
        }, "request_id": "r1"}});
        let fetched = normalise(&check(answer).unwrap()).unwrap();
        assert_eq!(fetched.raw_status, "WAIT_SELLER_SEND_GOODS");
        assert_eq!(
            fetched.fields["items"],
            serde_json::json!([{"sku": "PEN-GIFT", "name": "钢笔礼盒", "qty": 2, "price": 129.0}])
        );
        assert_eq!(fetched.fields["amount"], 258.0);
        assert_eq!(fetched.fields["receiver"]["province"], "江苏省");
    }

    #[test]
    fn errors_are_classified_for_retry() {
        let error = |code: i64, sub_code: &str, sub_msg: &str| {
            check(
                serde_json::json!({"error_response": {"code": code, "msg": "m",
                "sub_code": sub_code, "sub_msg": sub_msg}}),
            )
            .unwrap_err()
        };
        assert!(matches!(
            error(27, "invalid-sessionkey", ""),
            FetchError::TokenExpired(_)
        ));
        assert_eq!(
            error(7, "accesscontrol.limited-by-app-access-count", "This ban will last for 12 more seconds"),
            FetchError::Throttled {
                retry_after: Some(Duration::from_secs(13)),
                detail: "error 7 accesscontrol.limited-by-app-access-count: m This ban will last for 12 more seconds".into()
            }
        );
        assert_eq!(error(15, "isp.remote-service-error", "").kind(), "failed");
        assert_eq!(error(15, "isv.trade-not-exist", "").kind(), "refused");
    }
}
