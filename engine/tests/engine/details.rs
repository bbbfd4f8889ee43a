//! Order details: each enriched channel's order API played by a local stand-in that answers in
//! the platform's documented shape (fixtures in `tests/fixtures/details/`, after the public
//! SDKs named in each), including expired tokens, call limits, malformed answers and timeouts.

use super::support::*;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a stand-in saw and how it answers next.
#[derive(Default)]
struct Platform {
    /// Every call: path and the parsed query/body.
    calls: Vec<(String, Value)>,
    /// Tokens issued so far.
    issued: u32,
    /// Order-detail answers to give before the real one, in order.
    script: Vec<&'static str>,
}

type Shared = Arc<Mutex<Platform>>;

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
    let base = secrets();
    Arc::new(move |name: &str| match name {
        "ORDERHUB_DOUYIN_SHOP_ID" => Some("4463798".into()),
        other => base(other),
    })
}

async fn until(engine: &TestEngine, path: &str, check: impl Fn(&Value) -> bool) -> Value {
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
    let secrets = {
        let base = secrets();
        Arc::new(move |name: &str| match name {
            "T_VIEWER" => Some("viewer-token".into()),
            "T_OPERATOR" => Some("operator-token".into()),
            other => base(other),
        }) as orderhub_engine::secrets::SecretLookup
    };
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
async fn youzan_platform(platform: Shared) -> String {
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
    let secrets = {
        let base = secrets();
        Arc::new(move |name: &str| match name {
            "ORDERHUB_YOUZAN_KDT_ID" => Some("160001".into()),
            other => base(other),
        }) as orderhub_engine::secrets::SecretLookup
    };
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
