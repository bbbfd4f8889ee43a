//! Order details: each enriched channel's order API played by a local stand-in that answers in
//! the platform's documented shape (fixtures in `tests/fixtures/details/`, after the public
//! SDKs named in each), including expired tokens, call limits, malformed answers and timeouts.

use super::support::*;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a stand-in saw and how it answers next.
#[derive(Default)]
pub(crate) struct Platform {
    /// Every call: path and the parsed query/body.
    pub(crate) calls: Vec<(String, Value)>,
    /// Tokens issued so far.
    pub(crate) issued: u32,
    /// Order-detail answers to give before the real one, in order.
    pub(crate) script: Vec<&'static str>,
    /// Orders whose details were answered (not refused), in order.
    pub(crate) answered: Vec<String>,
}

pub(crate) type Shared = Arc<Mutex<Platform>>;

async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    base
}

fn query_map(query: &str) -> std::collections::BTreeMap<String, String> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Douyin's sign, written out here from the SDK's algorithm (independently of the engine's).
fn douyin_open_sign(
    secret: &str,
    query: &std::collections::BTreeMap<String, String>,
    body: &str,
) -> String {
    use hmac::{Hmac, Mac};
    let text = format!(
        "{secret}app_key{}method{}param_json{body}timestamp{}v2{secret}",
        query["app_key"], query["method"], query["timestamp"]
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(text.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The stand-in's answer to one call (`Err`: answer too late).
fn answer_douyin(platform: &Shared, path: &str, query: &str, body: &str) -> Result<String, ()> {
    let query = query_map(query);
    let params: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let mut platform = platform.lock().unwrap();
    platform.calls.push((path.to_owned(), params.clone()));
    let json = |v: Value| Ok(v.to_string());
    if query.get("app_key").map(String::as_str) != Some(DOUYIN_KEY)
        || query.get("sign").map(String::as_str)
            != Some(douyin_open_sign(DOUYIN_SECRET, &query, body).as_str())
        || query.get("sign_method").map(String::as_str) != Some("hmac-sha256")
    {
        return json(
            serde_json::json!({"code": 40004, "msg": "签名错误", "sub_code": "isv.invalid-sign", "sub_msg": "sign mismatch"}),
        );
    }
    let expired = serde_json::json!({"code": 40003, "msg": "access_token已过期", "sub_code": "isv.access-token-expired", "sub_msg": ""});
    match path {
        "/token/create" | "/token/refresh" => {
            let good = if path == "/token/create" {
                params["grant_type"] == "authorization_self" && params["shop_id"] == "4463798"
            } else {
                params["refresh_token"] == format!("ref-{}", platform.issued)
            };
            if !good {
                return json(
                    serde_json::json!({"code": 50001, "msg": "token error", "sub_code": "dop.token-generate-failed:token-invalid", "sub_msg": ""}),
                );
            }
            platform.issued += 1;
            let n = platform.issued;
            json(
                serde_json::json!({"code": 10000, "msg": "success", "data": {
                "access_token": format!("tok-{n}"), "expires_in": 604800,
                "refresh_token": format!("ref-{n}"), "scope": "SCOPE",
                "shop_id": 4463798, "shop_name": "orderhub test shop"}}),
            )
        }
        "/order/batchDecrypt" => {
            let plain = |cipher: &str| match cipher {
                "#eGvT3Hq1sZ0pLw#" => "王五",
                "$$Kq8sF3p2mZx0$$" => "13812345678",
                "#Rk9n3pQw#" => "锦绣路1001号",
                _ => "",
            };
            let infos: Vec<Value> = params["cipher_infos"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|info| {
                    let cipher = info["cipher_text"].as_str().unwrap_or_default();
                    serde_json::json!({"auth_id": info["auth_id"], "cipher_text": cipher,
                        "decrypt_text": plain(cipher), "err_no": 0, "err_msg": ""})
                })
                .collect();
            json(
                serde_json::json!({"code": 10000, "msg": "success", "data": {"decrypt_infos": infos}}),
            )
        }
        "/order/searchList" => {
            // The poller's window read: one order changed, on the first page (counted from 0).
            if query.get("access_token") != Some(&format!("tok-{}", platform.issued)) {
                return json(expired);
            }
            let orders = if params["page"] == 0 {
                serde_json::json!([{"order_id": "6900000000099", "order_status": 2,
                    "update_time": 1795000000}])
            } else {
                serde_json::json!([])
            };
            json(
                serde_json::json!({"code": 10000, "msg": "success", "data": {
                "shop_order_list": orders, "page": params["page"], "size": params["size"], "total": 1}}),
            )
        }
        "/order/orderDetail" => {
            let current = format!("tok-{}", platform.issued);
            if query.get("access_token") != Some(&current) {
                return json(expired);
            }
            if !platform.script.is_empty() {
                return match platform.script.remove(0) {
                    "expired" => json(expired),
                    "limited" => json(
                        serde_json::json!({"code": 60000, "msg": "触发限流，请稍后重试", "sub_code": "", "sub_msg": ""}),
                    ),
                    "malformed" => Ok("<html>busy</html>".to_owned()),
                    "slow" => Err(()),
                    other => panic!("unknown script step {other}"),
                };
            }
            let order_id = params["shop_order_id"].as_str().unwrap_or_default();
            Ok(include_str!("../fixtures/details/douyin_order_detail.json")
                .replace("ORDER_ID", order_id))
        }
        _ => json(serde_json::json!({"code": 40004, "msg": "no such method"})),
    }
}

/// The Douyin Shop open API (zsmhub/doudian-sdk response shapes): `token/create`,
/// `token/refresh` and `order/orderDetail`, checking every call's sign and token.
async fn douyin_platform(platform: Shared) -> String {
    use axum::extract::{RawQuery, State};
    async fn handle(
        State(platform): State<Shared>,
        uri: axum::http::Uri,
        RawQuery(query): RawQuery,
        body: String,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        let step = answer_douyin(&platform, uri.path(), &query.unwrap_or_default(), &body);
        match step {
            Err(()) => {
                // A call that outlasts the client's timeout.
                tokio::time::sleep(Duration::from_secs(3)).await;
                axum::Json(serde_json::json!({"code": 20000, "msg": "late"})).into_response()
            }
            Ok(text) => ([("content-type", "application/json")], text).into_response(),
        }
    }
    serve(axum::Router::new().fallback(handle).with_state(platform)).await
}

fn secrets_with_shop() -> orderhub_engine::secrets::SecretLookup {
    with_secrets(secrets(), &[("ORDERHUB_DOUYIN_SHOP_ID", "4463798")])
}

pub(crate) async fn until(
    engine: &TestEngine,
    path: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    for _ in 0..400 {
        let (status, body) = engine.get(path).await;
        if status == 200 && check(&body) {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} never satisfied the check; last answer: {last}");
}

#[tokio::test]
async fn a_douyin_order_gets_its_contents_through_expired_tokens_limits_and_bad_answers() {
    let platform: Shared = Arc::default();
    platform.lock().unwrap().script = vec!["expired", "limited", "malformed", "slow"];
    let gateway = douyin_platform(platform.clone()).await;
    let erp = FakeSink::start(|_, _| Fault::None).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[sources.douyin.details]\ngateway = \"{gateway}\"\nshop_id_env = \"ORDERHUB_DOUYIN_SHOP_ID\"\nrate = \"50/s\"\ntimeout = \"1s\"\n\n\
         {}\
         [[rules]]\nname = \"big_to_erp\"\nwhen = 'order.state == \"paid\" && order.fields.amount >= 100.0'\nsync = \"erp\"\nneeds = [\"items\"]\n",
        sinks_toml(&erp.base, "50/s", "2s")
    );
    let engine = TestEngine::start_with(&config, dir.path(), secrets_with_shop()).await;
    let order_id = format!("{}", 6_900_000_000_000u64 + fresh_id());
    let body = douyin_push("101", &format!("m-{order_id}"), &order_id, now_s());
    let (status, _) = engine.post_douyin(&body).await;
    assert_eq!(status, 200);
    let key = format!("douyin:{order_id}");
    let order = until(&engine, &format!("/v1/orders/{key}"), |o| {
        o["fields"]["items"].is_array()
    })
    .await;
    let fields = &order["fields"];
    assert_eq!(
        fields["items"],
        serde_json::json!([
            {"sku": "TEA-LJ-250", "name": "西湖龙井 250g", "qty": 2, "price": 49.0},
            {"sku": "1768123456790", "name": "茶具礼盒", "qty": 1, "price": 40.0}
        ]),
        "the seller's code, else the platform's sku id; unit prices in yuan"
    );
    assert_eq!(fields["amount"], 129.0);
    assert_eq!(fields["paid"], 129.0);
    assert_eq!(fields["currency"], "CNY");
    assert_eq!(
        fields["receiver"],
        serde_json::json!({"name": "王**", "phone": "1*******678", "province": "上海市",
            "city": "上海市", "district": "浦东新区", "address": "锦绣路****号"}),
        "masked parts as delivered"
    );
    let answer = order["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["source"] == "douyin_api")
        .expect("the answer is in the timeline");
    assert_eq!(answer["raw_status"], "105");
    let paid_seq = &order["timeline"][0]["seq"];
    assert_eq!(
        answer["source_event_id"],
        format!("{key}:{paid_seq}:douyin_api"),
        "the answer carries its fetch's idempotency key"
    );
    // The rule that needed the items fired once they came, with them.
    let mut delivered = Vec::new();
    for _ in 0..100 {
        delivered = erp.requests("/erp");
        if !delivered.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(delivered.len(), 1, "one sync to the ERP");
    assert_eq!(delivered[0].order, key);
    // Every failure on the way was retried and counted; the token was renewed, not re-created.
    let metrics = engine.metrics().await;
    for outcome in [
        "token_expired",
        "throttled",
        "malformed",
        "failed",
        "fetched",
    ] {
        let seen = sample(
            &metrics,
            "orderhub_details_fetches_total",
            &[("channel", "douyin"), ("outcome", outcome)],
        )
        .unwrap_or(0.0);
        assert!(seen >= 1.0, "{outcome}: {seen}\n{metrics}");
    }
    let calls = platform.lock().unwrap().calls.clone();
    let paths: Vec<&str> = calls.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths.iter().filter(|p| **p == "/token/create").count(),
        1,
        "{paths:?}"
    );
    assert_eq!(
        paths.iter().filter(|p| **p == "/token/refresh").count(),
        1,
        "{paths:?}"
    );
    engine.stop().await;
}

#[tokio::test]
async fn without_its_credentials_a_channel_runs_unenriched() {
    let dir = tempfile::tempdir().unwrap();
    // No ORDERHUB_DOUYIN_SHOP_ID in the environment.
    let engine = TestEngine::start(
        "[sources.douyin.details]\ngateway = \"http://127.0.0.1:9\"\nshop_id_env = \"ORDERHUB_DOUYIN_SHOP_ID\"\n",
        dir.path(),
    )
    .await;
    let order_id = format!("{}", 6_910_000_000_000u64 + fresh_id());
    let body = douyin_push("101", &format!("m-{order_id}"), &order_id, now_s());
    let (status, _) = engine.post_douyin(&body).await;
    assert_eq!(status, 200, "ingest is never blocked by enrichment");
    let order = until(&engine, &format!("/v1/orders/douyin:{order_id}"), |o| {
        o["state"] == "paid"
    })
    .await;
    assert!(order["fields"].get("items").is_none());
    let notes = order["timeline"][0]["rules"].to_string();
    assert!(!notes.contains("douyin_api"), "no fetch queued: {notes}");
    engine.stop().await;
}

#[tokio::test]
async fn phone_numbers_are_masked_for_callers_below_operator() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = with_secrets(
        secrets(),
        &[
            ("T_VIEWER", "viewer-token"),
            ("T_OPERATOR", "operator-token"),
        ],
    );
    let engine = TestEngine::start_with(
        "[[operators]]\nname = \"v\"\nrole = \"viewer\"\ntoken_env = \"T_VIEWER\"\n[[operators]]\nname = \"o\"\nrole = \"operator\"\ntoken_env = \"T_OPERATOR\"\n",
        dir.path(),
        secrets,
    )
    .await;
    let event = serde_json::json!({
        "event_id": "mask-1", "order": "shop:mask-1", "source": "dealer", "status": "paid",
        "occurred_at": now_ms(),
        "fields": {"receiver": {"name": "王五", "phone": "13812345678"}, "contact": {"mobile": "+86 139 1234 5678"}}
    })
    .to_string();
    let (status, body) = engine.post_events(&event).await;
    assert_eq!(status, 200, "{body}");
    let get = |token: &'static str| {
        let engine = &engine;
        async move {
            let response = engine
                .client
                .get(format!("{}/v1/orders/shop:mask-1", engine.base))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            read(response).await
        }
    };
    let (status, viewer) = get("viewer-token").await;
    assert_eq!(status, 200, "{viewer}");
    assert_eq!(viewer["fields"]["receiver"]["phone"], "138****5678");
    assert_eq!(viewer["fields"]["contact"]["mobile"], "861****5678");
    assert_eq!(viewer["fields"]["receiver"]["name"], "王五");
    let (_, operator) = get("operator-token").await;
    assert_eq!(operator["fields"]["receiver"]["phone"], "13812345678");
    engine.stop().await;
}

/// The Youzan open API (youzan/open-sdk-php shapes): `auth/token` (silent) and
/// `api/youzan.trade.get/4.0.0`; the first trade call answers "token expired" at the gateway.
pub(crate) async fn youzan_platform(platform: Shared) -> String {
    use axum::extract::{RawQuery, State};
    async fn handle(
        State(platform): State<Shared>,
        uri: axum::http::Uri,
        RawQuery(query): RawQuery,
        body: String,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        let query = query_map(&query.unwrap_or_default());
        let params: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let mut platform = platform.lock().unwrap();
        platform.calls.push((uri.path().to_owned(), params.clone()));
        let text = match uri.path() {
            "/auth/token" => {
                if params["client_id"] != YOUZAN_CLIENT_ID
                    || params["client_secret"] != YOUZAN_CLIENT_SECRET
                    || params["authorize_type"] != "silent"
                    || params["grant_id"] != "160001"
                {
                    serde_json::json!({"success": false, "code": 1005, "message": "client_secret错误"}).to_string()
                } else {
                    platform.issued += 1;
                    serde_json::json!({"success": true, "code": 200, "message": null, "data": {
                        "access_token": format!("yz-tok-{}", platform.issued),
                        "expires": now_ms() + 7 * 86_400_000, "scope": "trade", "authority_id": "160001"}})
                    .to_string()
                }
            }
            "/api/youzan.trade.get/4.0.0" => {
                let current = format!("yz-tok-{}", platform.issued);
                if query.get("access_token") != Some(&current) || !platform.script.is_empty() {
                    if !platform.script.is_empty() {
                        platform.script.remove(0);
                    }
                    serde_json::json!({"gw_err_resp": {"trace_id": "t", "err_code": 4202, "err_msg": "请求凭证过期"}}).to_string()
                } else {
                    platform
                        .answered
                        .push(params["tid"].as_str().unwrap_or_default().to_owned());
                    include_str!("../fixtures/details/youzan_trade_get.json")
                        .replace("\"TID\"", &params["tid"].to_string())
                }
            }
            _ => serde_json::json!({"gw_err_resp": {"err_code": 404, "err_msg": "no such api"}})
                .to_string(),
        };
        ([("content-type", "application/json")], text).into_response()
    }
    serve(axum::Router::new().fallback(handle).with_state(platform)).await
}

#[tokio::test]
async fn a_youzan_order_gets_its_contents_after_a_token_renewal() {
    let platform: Shared = Arc::default();
    platform.lock().unwrap().script = vec!["expired"];
    let gateway = youzan_platform(platform.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = with_secrets(secrets(), &[("ORDERHUB_YOUZAN_KDT_ID", "160001")]);
    let engine = TestEngine::start_with(
        &format!("[sources.youzan.details]\ngateway = \"{gateway}\"\nshop_id_env = \"ORDERHUB_YOUZAN_KDT_ID\"\n"),
        dir.path(),
        secrets,
    )
    .await;
    let paid = super::sources::fixture("youzan/trade_buyer_pay.json");
    let sign = md5_hex_of(&format!("{YOUZAN_CLIENT_ID}{paid}{YOUZAN_CLIENT_SECRET}"));
    let (status, _) = engine
        .post_source("youzan", &[("event-sign", sign)], paid)
        .await;
    assert_eq!(status, 200);
    let order = until(&engine, "/v1/orders/youzan:E20231115093012034500012", |o| {
        o["fields"]["items"].is_array()
    })
    .await;
    let fields = &order["fields"];
    assert_eq!(
        fields["items"],
        serde_json::json!([{"sku": "MUG-RED-350", "name": "陶瓷马克杯 红色 350ml", "qty": 3, "price": 66.33}])
    );
    assert_eq!(
        (fields["amount"].clone(), fields["freight"].clone()),
        (serde_json::json!(199.0), serde_json::json!(10.0))
    );
    assert_eq!(
        fields["receiver"]["phone"], "$1Zz0qYt7u$1$",
        "ciphertext as delivered"
    );
    assert_eq!(fields["receiver"]["district"], "西湖区");
    assert_eq!(fields["buyer"], "yzOpen9f8e7d6c5b");
    assert_eq!(
        order["systems"]["youzan_api"]["raw_status"],
        "WAIT_SELLER_SEND_GOODS"
    );
    let tokens = platform
        .lock()
        .unwrap()
        .calls
        .iter()
        .filter(|(path, _)| path == "/auth/token")
        .count();
    assert_eq!(
        tokens, 2,
        "one token, and one more after the gateway called it expired"
    );
    engine.stop().await;
}

fn md5_hex_of(text: &str) -> String {
    use md5::{Digest, Md5};
    format!("{:x}", Md5::digest(text.as_bytes()))
}

/// How a stand-in answers one call: `(platform, path, query, body)` → the JSON text.
type Answer = fn(&mut Platform, &str, &std::collections::BTreeMap<String, String>, &str) -> String;

/// A platform stand-in on loopback answering every call with `answer`.
async fn stand_in(platform: Shared, answer: Answer) -> String {
    use axum::extract::{RawQuery, State};
    let handle = move |State(platform): State<Shared>,
                       uri: axum::http::Uri,
                       RawQuery(query): RawQuery,
                       body: String| async move {
        use axum::response::IntoResponse;
        let query = query_map(&query.unwrap_or_default());
        let mut platform = platform.lock().unwrap();
        let parsed: Value =
            serde_json::from_str(&body).unwrap_or_else(|_| serde_json::json!(query_map(&body)));
        platform.calls.push((uri.path().to_owned(), parsed));
        let text = answer(&mut platform, uri.path(), &query, &body);
        ([("content-type", "application/json")], text).into_response()
    };
    serve(axum::Router::new().fallback(handle).with_state(platform)).await
}

/// Kuaishou's sign, written out from the documented algorithm (HMAC_SHA256, base64).
fn kuaishou_open_sign(
    query: &std::collections::BTreeMap<String, String>,
    sign_secret: &str,
) -> String {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    let text = query
        .iter()
        .filter(|(k, _)| k.as_str() != "sign")
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
        + "&signSecret="
        + sign_secret;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(sign_secret.as_bytes()).unwrap();
    mac.update(text.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The Kuaishou open API: `oauth2/refresh_token` (only the latest refresh token is alive, as
/// Kuaishou kills the previous one) and `open/order/detail` (signature and token checked; a
/// scripted "expired" answers as an expired token does).
fn kuaishou_answer(
    platform: &mut Platform,
    path: &str,
    query: &std::collections::BTreeMap<String, String>,
    body: &str,
) -> String {
    match path {
        "/oauth2/refresh_token" => {
            let form = query_map(body);
            if form.get("refresh_token") != Some(&format!("ks-ref-{}", platform.issued))
                || form.get("app_id").map(String::as_str) != Some("ks_app_key_test")
                || form.get("app_secret").map(String::as_str) != Some("ks-app-secret")
                || form.get("grant_type").map(String::as_str) != Some("refresh_token")
            {
                return serde_json::json!({"result": 100200102, "error": "access_denied", "error_msg": "refreshToken.discarded"}).to_string();
            }
            platform.issued += 1;
            let n = platform.issued;
            serde_json::json!({"result": 1, "access_token": format!("ks-tok-{n}"), "expires_in": 172800,
                "refresh_token": format!("ks-ref-{n}"), "refresh_token_expires_in": 15552000,
                "scopes": ["merchant_order"]})
            .to_string()
        }
        "/open/order/detail" => {
            if query.get("sign") != Some(&kuaishou_open_sign(query, "ks-sign"))
                || query.get("method").map(String::as_str) != Some("open.order.detail")
            {
                return serde_json::json!({"result": 28, "error_msg": "签名错误"}).to_string();
            }
            let current = format!("ks-tok-{}", platform.issued);
            if query.get("access_token") != Some(&current) || !platform.script.is_empty() {
                platform.script.clear();
                return serde_json::json!({"result": 28, "error_msg": "鉴权失败, TOKEN过期"})
                    .to_string();
            }
            let param: Value = serde_json::from_str(&query["param"]).unwrap();
            include_str!("../fixtures/details/kuaishou_order_detail.json")
                .replace("\"OID\"", &param["oid"].to_string())
        }
        _ => serde_json::json!({"result": 404, "error_msg": "no such api"}).to_string(),
    }
}

fn kuaishou_secrets() -> orderhub_engine::secrets::SecretLookup {
    with_secrets(
        secrets(),
        &[
            ("ORDERHUB_KUAISHOU_SIGN_SECRET", "ks-sign"),
            ("ORDERHUB_KUAISHOU_APP_SECRET", "ks-app-secret"),
            ("ORDERHUB_KUAISHOU_REFRESH_TOKEN", "ks-ref-0"),
        ],
    )
}

#[tokio::test]
async fn kuaishou_details_survive_a_restart_with_the_rotated_refresh_token() {
    let platform: Shared = Arc::default();
    let gateway = stand_in(platform.clone(), kuaishou_answer).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[sources.kuaishou.details]\ngateway = \"{gateway}\"\nsign_secret_env = \"ORDERHUB_KUAISHOU_SIGN_SECRET\"\n\
         app_secret_env = \"ORDERHUB_KUAISHOU_APP_SECRET\"\nrefresh_token_env = \"ORDERHUB_KUAISHOU_REFRESH_TOKEN\"\n\
         refetch_on = [\"40\", \"kwaishop_order_delivering\"]\n"
    );
    let key = "/v1/orders/kuaishou:2418800012345678";
    let engine = TestEngine::start_with(&config, dir.path(), kuaishou_secrets()).await;
    let body = super::sources::fixture("kuaishou/pay_success.body");
    let (status, _) = engine.post_source("kuaishou", &[], body).await;
    assert_eq!(status, 200);
    let order = until(&engine, key, |o| o["fields"]["items"].is_array()).await;
    assert_eq!(
        order["fields"]["items"],
        serde_json::json!([{"sku": "SOCK-BLK-M", "name": "棉袜 黑色 M", "qty": 2, "price": 29.9}])
    );
    assert_eq!(order["fields"]["amount"], 59.8);
    assert_eq!(order["fields"]["receiver"]["phone"], "139****0000");
    engine.stop().await;
    // The refresh token the engine got is kept (the configured one is dead now).
    let kept = std::fs::read_to_string(dir.path().join("tokens/kuaishou.json")).unwrap();
    assert!(kept.contains("ks-ref-1"), "{kept}");
    // After a restart the platform calls the access token expired: the engine refreshes with
    // the kept refresh token, not the configured ks-ref-0.
    platform.lock().unwrap().script = vec!["expired"];
    let engine = TestEngine::start_with(&config, dir.path(), kuaishou_secrets()).await;
    let body = super::sources::fixture("kuaishou/delivering.body");
    let (status, _) = engine.post_source("kuaishou", &[], body).await;
    assert_eq!(status, 200);
    until(&engine, key, |o| {
        o["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["source"] == "kuaishou_api")
            .count()
            == 2
    })
    .await;
    assert_eq!(
        platform.lock().unwrap().issued,
        2,
        "refreshed once more, with ks-ref-1"
    );
    engine.stop().await;
}

/// The WeChat Channels shop API (WxJava shapes): `cgi-bin/stable_token` and
/// `channels/ec/order/get`; scripted "busy" (-1) and "expired" (42001) answers come first.
fn wechat_answer(
    platform: &mut Platform,
    path: &str,
    query: &std::collections::BTreeMap<String, String>,
    body: &str,
) -> String {
    let params: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    match path {
        "/cgi-bin/stable_token" => {
            if params["appid"] != "wx-app"
                || params["secret"] != "wx-secret"
                || params["grant_type"] != "client_credential"
            {
                return serde_json::json!({"errcode": 40125, "errmsg": "invalid appsecret"})
                    .to_string();
            }
            platform.issued += 1;
            serde_json::json!({"access_token": format!("wx-tok-{}", platform.issued), "expires_in": 7200}).to_string()
        }
        "/channels/ec/order/get" => {
            if query.get("access_token") != Some(&format!("wx-tok-{}", platform.issued)) {
                return serde_json::json!({"errcode": 40001, "errmsg": "invalid credential"})
                    .to_string();
            }
            if !platform.script.is_empty() {
                return match platform.script.remove(0) {
                    "busy" => serde_json::json!({"errcode": -1, "errmsg": "system error"}),
                    _ => serde_json::json!({"errcode": 42001, "errmsg": "access_token expired"}),
                }
                .to_string();
            }
            include_str!("../fixtures/details/wechat_order_get.json")
                .replace("\"ORDER_ID\"", &params["order_id"].to_string())
        }
        _ => serde_json::json!({"errcode": 404, "errmsg": "no such api"}).to_string(),
    }
}

#[tokio::test]
async fn a_wechat_order_gets_its_contents_through_a_busy_platform_and_an_expired_token() {
    let platform: Shared = Arc::default();
    platform.lock().unwrap().script = vec!["busy", "expired"];
    let gateway = stand_in(platform.clone(), wechat_answer).await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = with_secrets(
        secrets(),
        &[
            ("ORDERHUB_WECHAT_APP_ID", "wx-app"),
            ("ORDERHUB_WECHAT_APP_SECRET", "wx-secret"),
        ],
    );
    let engine = TestEngine::start_with(
        &format!("[sources.wechat.details]\ngateway = \"{gateway}\"\napp_id_env = \"ORDERHUB_WECHAT_APP_ID\"\napp_secret_env = \"ORDERHUB_WECHAT_APP_SECRET\"\n"),
        dir.path(),
        secrets,
    )
    .await;
    let order_id = 3_705_115_058_000_000_000u64 + fresh_id();
    let push = serde_json::json!({"ToUserName": "gh_4f1e2d3c4b5a", "FromUserName": "oSx3k5Hq8tYv",
        "CreateTime": now_s(), "MsgType": "event", "Event": "channels_ec_order_pay",
        "order_info": {"order_id": order_id, "pay_time": now_s()}})
    .to_string();
    let (status, answer) = engine
        .post_source_query(
            "wechat",
            &wechat_query(now_s(), &format!("n{order_id}")),
            &[],
            push,
        )
        .await;
    assert_eq!((status, answer.as_str()), (200, "success"));
    let order = until(&engine, &format!("/v1/orders/wechat:{order_id}"), |o| {
        o["fields"]["items"].is_array()
    })
    .await;
    let fields = &order["fields"];
    assert_eq!(
        fields["items"],
        serde_json::json!([
            {"sku": "CUP-WHT", "name": "骨瓷杯 白", "qty": 1, "price": 88.0},
            {"sku": "1900000123", "name": "杯垫", "qty": 2, "price": 6.5}
        ])
    );
    assert_eq!(fields["amount"], 101.0);
    assert_eq!(fields["freight"], 0.0);
    assert_eq!(fields["receiver"]["phone"], "158****3321");
    assert_eq!(fields["receiver"]["district"], "天河区");
    assert_eq!(order["systems"]["wechat_api"]["raw_status"], "20");
    assert_eq!(
        platform.lock().unwrap().issued,
        2,
        "renewed once after 42001"
    );
    engine.stop().await;
}

/// Form-encoded parameters of a call (query and body together).
fn params_of(
    query: &std::collections::BTreeMap<String, String>,
    body: &str,
) -> std::collections::BTreeMap<String, String> {
    let mut all = query.clone();
    all.extend(query_map(body));
    all
}

/// TOP's (and Pinduoduo's and JOS's) sign, written out: UPPER(md5(secret + sorted name+value +
/// secret)) over every parameter but `sign`.
fn top_open_sign(params: &std::collections::BTreeMap<String, String>, secret: &str) -> String {
    let mut text = secret.to_owned();
    for (name, value) in params.iter().filter(|(k, _)| k.as_str() != "sign") {
        text.push_str(name);
        text.push_str(value);
    }
    text.push_str(secret);
    md5_hex_of(&text).to_ascii_uppercase()
}

/// Sends a canonical `paid` report of `order` from `source` and waits for its details.
async fn paid_then_enriched(engine: &TestEngine, source: &str, order: &str) -> Value {
    let body = canonical(&format!("paid-{order}"), order, source, "paid", now_ms());
    let (status, answer) = engine.post_events(&body).await;
    assert_eq!(status, 200, "{answer}");
    until(engine, &format!("/v1/orders/{order}"), |o| {
        o["fields"]["items"].is_array()
    })
    .await
}

/// Pinduoduo's router (pdd-origin-api shapes): `pdd.order.information.get` refuses the first
/// call with 10019 (expired), `pdd.pop.auth.token.refresh` renews with the live refresh token.
fn pdd_answer(
    platform: &mut Platform,
    _path: &str,
    query: &std::collections::BTreeMap<String, String>,
    body: &str,
) -> String {
    let params = params_of(query, body);
    if params.get("sign") != Some(&top_open_sign(&params, "pdd-secret"))
        || params.get("client_id").map(String::as_str) != Some("pdd-client")
    {
        return serde_json::json!({"error_response": {"error_code": 10016, "error_msg": "签名错误"}}).to_string();
    }
    match params.get("type").map(String::as_str) {
        Some("pdd.pop.auth.token.refresh") => {
            if params.get("refresh_token") != Some(&format!("pdd-ref-{}", platform.issued)) {
                return serde_json::json!({"error_response": {"error_code": 10019, "error_msg": "refresh_token无效"}}).to_string();
            }
            platform.issued += 1;
            let n = platform.issued;
            serde_json::json!({"pop_auth_token_refresh_response": {"access_token": format!("pdd-tok-{n}"),
                "expires_at": now_s() + 86_400, "expires_in": 86_400, "refresh_token": format!("pdd-ref-{n}"),
                "refresh_token_expires_at": now_s() + 30 * 86_400, "owner_id": "77"}})
            .to_string()
        }
        Some("pdd.order.information.get") => {
            if params.get("access_token") != Some(&format!("pdd-tok-{}", platform.issued)) {
                return serde_json::json!({"error_response": {"error_code": 10019, "error_msg": "access_token已过期"}}).to_string();
            }
            let sn = params["order_sn"].clone();
            platform.answered.push(sn.clone());
            serde_json::json!({"order_info_get_response": {"order_info": {
                "order_sn": sn, "order_status": 1, "refund_status": 1, "updated_at": "2026-11-29 20:01:02",
                "pay_time": "2026-11-29 20:00:59", "pay_amount": 39.9, "postage": "0.00",
                "receiver_name_mask": "张*", "receiver_phone_mask": "137****1234", "address_mask": "长安街****",
                "province": "北京市", "city": "北京市", "town": "东城区",
                "item_list": [{"sku_id": 7001, "outer_id": "NOTE-A5", "goods_name": "A5 笔记本",
                    "goods_count": 3, "goods_price": 13.3}]}}})
            .to_string()
        }
        _ => serde_json::json!({"error_response": {"error_code": 10000, "error_msg": "no such type"}}).to_string(),
    }
}

#[tokio::test]
async fn a_pinduoduo_order_gets_its_contents_after_a_refresh() {
    let platform: Shared = Arc::default();
    let gateway = stand_in(platform.clone(), pdd_answer).await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = with_secrets(
        secrets_with_channel("pdd"),
        &[
            ("ORDERHUB_PDD_ACCESS_TOKEN", "pdd-tok-stale"),
            ("ORDERHUB_PDD_REFRESH_TOKEN", "pdd-ref-0"),
        ],
    );
    let engine = TestEngine::start_with(
        &format!(
            "[sources.pdd]\nurl = \"ws://127.0.0.1:9\"\n[sources.pdd.details]\ngateway = \"{gateway}\"\n\
             access_token_env = \"ORDERHUB_PDD_ACCESS_TOKEN\"\nrefresh_token_env = \"ORDERHUB_PDD_REFRESH_TOKEN\"\n"
        ),
        dir.path(),
        secrets,
    )
    .await;
    let order = paid_then_enriched(&engine, "pdd", "pdd:261129-000000000000001").await;
    assert_eq!(
        order["fields"]["items"],
        serde_json::json!([{"sku": "NOTE-A5", "name": "A5 笔记本", "qty": 3, "price": 13.3}])
    );
    assert_eq!(order["fields"]["amount"], 39.9);
    assert_eq!(order["fields"]["receiver"]["phone"], "137****1234");
    assert_eq!(platform.lock().unwrap().issued, 1);
    let kept = std::fs::read_to_string(dir.path().join("tokens/pdd.json")).unwrap();
    assert!(
        kept.contains("pdd-ref-1"),
        "the rotated refresh token is kept: {kept}"
    );
    engine.stop().await;
}

/// TOP (bububa/opentaobao shapes): `taobao.trade.fullinfo.get`, the first call limited (error
/// 7, "ban will last for 1 more seconds"), then answered.
fn taobao_answer(
    platform: &mut Platform,
    _path: &str,
    query: &std::collections::BTreeMap<String, String>,
    body: &str,
) -> String {
    let params = params_of(query, body);
    if params.get("sign") != Some(&top_open_sign(&params, "tb-secret")) {
        return serde_json::json!({"error_response": {"code": 25, "msg": "Invalid signature"}})
            .to_string();
    }
    if params.get("method").map(String::as_str) == Some("taobao.top.auth.token.refresh") {
        platform.issued += 1;
        if params.get("refresh_token").map(String::as_str) != Some("tb-ref-0")
            || params.contains_key("session")
        {
            return serde_json::json!({"error_response": {"code": 15, "msg": "Remote service error",
                "sub_code": "isv.refresh-token-invalid"}})
            .to_string();
        }
        let result = serde_json::json!({"access_token": "tb-session",
            "expire_time": now_ms() + 86_400_000, "refresh_token": "tb-ref-1",
            "refresh_token_valid_time": now_ms() + 30 * 86_400_000, "re_expires_in": 2_592_000,
            "taobao_user_nick": "shop"});
        return serde_json::json!({"top_auth_token_refresh_response": {"token_result": result.to_string()}})
            .to_string();
    }
    if params.get("session").map(String::as_str) != Some("tb-session") {
        return serde_json::json!({"error_response": {"code": 27, "msg": "Invalid session",
            "sub_code": "invalid-sessionkey"}})
        .to_string();
    }
    if platform.script.pop().is_some() {
        return serde_json::json!({"error_response": {"code": 7, "msg": "App Call Limited",
            "sub_code": "accesscontrol.limited-by-app-access-count",
            "sub_msg": "This ban will last for 1 more seconds"}})
        .to_string();
    }
    let tid = params["tid"].clone();
    platform.answered.push(tid.clone());
    serde_json::json!({"trade_fullinfo_get_response": {"trade": {
        "tid": tid, "status": "WAIT_SELLER_SEND_GOODS", "modified": "2026-11-29 20:00:05",
        "pay_time": "2026-11-29 20:00:03", "payment": "258.00", "post_fee": "0.00",
        "receiver_name": "赵**", "receiver_mobile": "*******5566", "receiver_state": "江苏省",
        "receiver_city": "南京市", "receiver_district": "鼓楼区", "receiver_address": "中山路****",
        "buyer_open_uid": "AAHk5d-9",
        "orders": {"order": [{"oid": 1, "outer_sku_id": "", "outer_iid": "PEN-GIFT", "sku_id": "4455",
            "title": "钢笔礼盒", "num": 2, "price": "129.00"}]}}, "request_id": "r1"}})
    .to_string()
}

#[tokio::test]
async fn a_taobao_order_gets_its_contents_after_a_session_refresh_and_the_call_limit() {
    let platform: Shared = Arc::default();
    platform.lock().unwrap().script = vec!["limited"];
    let gateway = stand_in(platform.clone(), taobao_answer).await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = with_secrets(
        secrets_with_channel("tmc"),
        &[
            ("ORDERHUB_TAOBAO_SESSION", "tb-stale"),
            ("ORDERHUB_TAOBAO_REFRESH_TOKEN", "tb-ref-0"),
        ],
    );
    let engine = TestEngine::start_with(
        &format!(
            "[sources.tmc]\nurl = \"ws://127.0.0.1:9\"\n[sources.tmc.details]\ngateway = \"{gateway}\"\naccess_token_env = \"ORDERHUB_TAOBAO_SESSION\"\nrefresh_token_env = \"ORDERHUB_TAOBAO_REFRESH_TOKEN\"\n"
        ),
        dir.path(),
        secrets,
    )
    .await;
    let order = paid_then_enriched(&engine, "taobao", "taobao:3981234567890").await;
    assert_eq!(
        order["fields"]["items"],
        serde_json::json!([{"sku": "PEN-GIFT", "name": "钢笔礼盒", "qty": 2, "price": 129.0}])
    );
    assert_eq!(order["fields"]["amount"], 258.0);
    assert_eq!(
        order["systems"]["taobao_api"]["raw_status"],
        "WAIT_SELLER_SEND_GOODS"
    );
    assert_eq!(platform.lock().unwrap().answered, ["3981234567890"]);
    assert_eq!(
        platform.lock().unwrap().issued,
        1,
        "the stale session was refreshed once"
    );
    let kept = std::fs::read_to_string(dir.path().join("tokens/taobao.json")).unwrap();
    assert!(kept.contains("tb-ref-1"), "{kept}");
    engine.stop().await;
}

/// JOS (rise-worlds/jos shapes): `jingdong.pop.order.enGet`, answered after one transient
/// "service unavailable" (66).
fn jd_answer(
    platform: &mut Platform,
    path: &str,
    query: &std::collections::BTreeMap<String, String>,
    body: &str,
) -> String {
    if path == "/oauth2/refresh_token" {
        platform.issued += 1;
        if query.get("refresh_token").map(String::as_str) != Some("jd-ref-0")
            || query.get("app_key").map(String::as_str) != Some("jd-key")
            || query.get("app_secret").map(String::as_str) != Some("jd-secret")
            || query.get("grant_type").map(String::as_str) != Some("refresh_token")
        {
            return serde_json::json!({"code": 403, "msg": "refresh_token invalid"}).to_string();
        }
        return serde_json::json!({"access_token": "jd-token", "expires_in": 86400,
            "refresh_token": "jd-ref-1", "scope": "snsapi_base", "open_id": "o1"})
        .to_string();
    }
    let params = params_of(query, body);
    if params.get("sign") != Some(&top_open_sign(&params, "jd-secret"))
        || params.get("access_token").map(String::as_str) != Some("jd-token")
    {
        return serde_json::json!({"error_response": {"code": "19", "zh_desc": "无效access_token"}}).to_string();
    }
    if params.get("method").map(String::as_str) != Some("jingdong.pop.order.enGet") {
        // The poller's own search: nothing changed.
        return serde_json::json!({"jingdong_pop_order_search_responce": {"searchorderinfo_result": {"orderInfoList": []}}}).to_string();
    }
    if platform.script.pop().is_some() {
        return serde_json::json!({"error_response": {"code": "66", "zh_desc": "服务不可用"}})
            .to_string();
    }
    let param: Value = serde_json::from_str(&params["360buy_param_json"]).unwrap();
    let id = param["order_id"].as_str().unwrap_or_default().to_owned();
    platform.answered.push(id.clone());
    serde_json::json!({"jingdong_pop_order_enGet_responce": {"code": "0", "orderDetailInfo": {
        "apiResult": {"success": true, "numberCode": 10100000},
        "orderInfo": {"orderId": id, "orderState": "WAIT_SELLER_STOCK_OUT",
            "modified": "2026-11-29 20:00:05", "orderPayment": "99.00", "freightPrice": "0.00",
            "paymentConfirmTime": "2026-11-29 20:00:04", "open_id_buyer": "o-jd-1",
            "consigneeInfo": {"fullname": "~tde~n", "mobile": "~tde~m", "province": "四川",
                "city": "成都市", "county": "武侯区", "fullAddress": "~tde~a"},
            "itemInfoList": [{"skuId": "100012", "outerSkuId": "HONEY-500", "skuName": "蜂蜜 500g",
                "jdPrice": "49.50", "itemTotal": "2"}]}}}})
    .to_string()
}

#[tokio::test]
async fn a_jd_order_gets_its_contents_through_its_poller_credentials_and_a_refresh() {
    let platform: Shared = Arc::default();
    platform.lock().unwrap().script = vec!["unavailable"];
    let gateway = stand_in(platform.clone(), jd_answer).await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = with_secrets(
        secrets(),
        &[
            ("ORDERHUB_JD_ACCESS_TOKEN", "jd-token-old"),
            ("ORDERHUB_JD_REFRESH_TOKEN", "jd-ref-0"),
        ],
    );
    let poller = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jd/poller.toml"
    ))
    .unwrap()
    .replace("URL", &gateway);
    let engine = TestEngine::start_with(
        &format!(
            "{poller}\n[pollers.jd.details]\ngateway = \"{gateway}\"\ntoken_gateway = \"{gateway}\"\n\
             refresh_token_env = \"ORDERHUB_JD_REFRESH_TOKEN\"\n"
        ),
        dir.path(),
        secrets,
    )
    .await;
    let order = paid_then_enriched(&engine, "jd", "jd:281234567890").await;
    assert_eq!(
        order["fields"]["items"],
        serde_json::json!([{"sku": "HONEY-500", "name": "蜂蜜 500g", "qty": 2, "price": 49.5}])
    );
    assert_eq!(order["fields"]["paid"], 99.0);
    assert_eq!(platform.lock().unwrap().answered, ["281234567890"]);
    assert_eq!(
        platform.lock().unwrap().issued,
        1,
        "the refused token was refreshed once"
    );
    let kept = std::fs::read_to_string(dir.path().join("tokens/jd.json")).unwrap();
    assert!(kept.contains("jd-ref-1"), "{kept}");
    engine.stop().await;
}

#[tokio::test]
async fn a_channel_is_polled_through_its_own_signed_client_and_the_polled_order_enriched() {
    let platform: Shared = Arc::default();
    let gateway = douyin_platform(platform.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[sources.douyin.details]\ngateway = \"{gateway}\"\nshop_id_env = \"ORDERHUB_DOUYIN_SHOP_ID\"\n\
         [pollers.douyin_fallback]\nsource = \"douyin\"\nchannel = \"douyin\"\nevery = \"200ms\"\n\
         overlap = \"1s\"\nlookback = \"1h\"\nsign = \"channel\"\nmethod = \"order.searchList\"\n\
         window_start_param = \"update_time_start\"\nwindow_end_param = \"update_time_end\"\n\
         time_format = \"unix_s\"\npage_param = \"page\"\nfirst_page = 0\npage_size_param = \"size\"\n\
         page_size = 100\nitems_path = \"/shop_order_list\"\norder_path = \"/order_id\"\n\
         status_path = \"/order_status\"\nupdated_path = \"/update_time\"\n\
         [pollers.douyin_fallback.status_map]\n\"2\" = \"paid\"\n"
    );
    let engine = TestEngine::start_with(&config, dir.path(), secrets_with_shop()).await;
    let order = until(&engine, "/v1/orders/douyin:6900000000099", |o| {
        o["fields"]["items"].is_array()
    })
    .await;
    assert_eq!(order["state"], "paid");
    assert_eq!(order["fields"]["polled_by"], "douyin_fallback");
    assert_eq!(order["fields"]["amount"], 129.0);
    let calls = platform.lock().unwrap().calls.clone();
    let search = calls
        .iter()
        .find(|(path, _)| path == "/order/searchList")
        .expect("the window was read through the signed client");
    assert_eq!(search.1["page"], 0);
    assert!(search.1["update_time_start"].is_i64(), "{:?}", search.1);
    engine.stop().await;
}

#[tokio::test]
async fn douyin_receivers_are_decrypted_only_when_asked_and_phones_stay_masked_for_viewers() {
    let platform: Shared = Arc::default();
    let gateway = douyin_platform(platform.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = TestEngine::start_with(
        &format!(
            "[sources.douyin.details]\ngateway = \"{gateway}\"\nshop_id_env = \"ORDERHUB_DOUYIN_SHOP_ID\"\ndecrypt = true\n"
        ),
        dir.path(),
        secrets_with_shop(),
    )
    .await;
    let order_id = format!("{}", 6_920_000_000_000u64 + fresh_id());
    let body = douyin_push("101", &format!("m-{order_id}"), &order_id, now_s());
    assert_eq!(engine.post_douyin(&body).await.0, 200);
    let order = until(&engine, &format!("/v1/orders/douyin:{order_id}"), |o| {
        o["fields"]["items"].is_array()
    })
    .await;
    let receiver = &order["fields"]["receiver"];
    assert_eq!(receiver["name"], "王五");
    assert_eq!(receiver["address"], "锦绣路1001号");
    assert_eq!(
        receiver["phone"], "138****5678",
        "a loopback caller with no operators configured sees the phone masked"
    );
    let decrypts = platform
        .lock()
        .unwrap()
        .calls
        .iter()
        .filter(|(path, _)| path == "/order/batchDecrypt")
        .count();
    assert_eq!(decrypts, 1);
    engine.stop().await;
}
