//! The HTTP contract of DESIGN.md §3 and issue 2, against an engine on port 0.

use super::support::*;
use md5::Digest as _;
use serde_json::Value;
use std::sync::Arc;

const T: i64 = 1_790_000_000; // seconds, a fixed source time in the past
/// Layered over the default by tests that are not about SLAs (T is long past every deadline).
const NO_SLA: &str = "sla = []\n";

fn states(order: &Value) -> Vec<String> {
    order["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"]["result"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_douyin_push_is_acknowledged_in_douyins_format_and_becomes_an_order() {
    let dir = tempfile::tempdir().unwrap();
    let engine = TestEngine::start("", dir.path()).await;
    let paid_at = now_s() - 60;
    let (status, body) = engine
        .post_douyin(&douyin_push("101", "m-paid", "4987325601", paid_at))
        .await;
    assert_eq!(
        (status, body),
        (200, serde_json::json!({"code": 0, "msg": "success"}))
    );

    let order = engine
        .eventually("/v1/orders/douyin:4987325601", |o| o["state"] == "paid")
        .await;
    assert_eq!(order["key"], "douyin:4987325601");
    assert_eq!(order["systems"]["douyin"]["raw_status"], "101");
    let entry = &order["timeline"][0];
    assert_eq!(entry["source"], "douyin");
    assert_eq!(entry["raw_status"], "101");
    assert_eq!(entry["mapped"], "paid");
    assert_eq!(entry["occurred_at"], paid_at * 1000);
    assert!(entry["received_at"].as_i64().unwrap() > paid_at * 1000);
    assert_eq!(entry["outcome"]["result"], "applied");
    assert_eq!(order["sla"][0]["rule"], "allocate_within_2h");
    assert_eq!(order["sla"][0]["status"], "armed");

    // The platform's verification message is acknowledged and stores nothing.
    let (status, _) = engine
        .post_douyin(&douyin_push("0", "verify", "0", T))
        .await;
    assert_eq!(status, 200);
    let (status, _) = engine.get("/v1/orders/douyin:0").await;
    assert_eq!(status, 404);
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_named_error_counted_and_nothing_stored() {
    let dir = tempfile::tempdir().unwrap();
    let engine = TestEngine::start("[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"unused\"\nmax_body_bytes = 2048\nshutdown_grace = \"10s\"\nquery_timeout = \"2s\"\n", dir.path()).await;
    let good = douyin_push("101", "m-1", "1001", T);

    let (status, body) = engine.post_douyin_signed(&good, "wrong-secret").await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "bad_signature");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("event-sign")
    );

    let response = engine
        .client
        .post(format!("{}/v1/ingest/douyin", engine.base))
        .body(good.clone())
        .send()
        .await
        .unwrap();
    let (status, body) = read(response).await;
    assert_eq!(status, 401);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("app-id")
    );

    let (status, body) = engine.post_douyin("[{\"tag\":\"101\"").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "malformed");

    let big = douyin_push("101", &"x".repeat(4096), "1001", T);
    let (status, body) = engine.post_douyin(&big).await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "body_too_large");

    // The same body sent chunked, without a Content-Length: the limit holds while it is read.
    let status_line = chunked_post(
        &engine.base,
        "/v1/ingest/douyin",
        &[
            ("app-id", DOUYIN_KEY.to_owned()),
            ("event-sign", douyin_sign(&big, DOUYIN_SECRET)),
        ],
        big.as_bytes(),
    )
    .await;
    assert!(status_line.starts_with("HTTP/1.1 413"), "{status_line}");

    let response = engine
        .client
        .post(format!("{}/v1/ingest/tiktok", engine.base))
        .body("{}")
        .send()
        .await
        .unwrap();
    let (status, body) = read(response).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "unknown_source");

    let (status, body) = engine
        .post_events(&canonical("e1", "shop:1", "wms", "teleported", 0))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "malformed");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("teleported")
    );

    let stale = sign_events(
        engine.client.post(format!("{}/v1/events", engine.base)),
        &canonical("e2", "shop:1", "wms", "paid", 0),
        "wh-stale",
        now_s() - 3600,
    );
    let (status, body) = read(stale.send().await.unwrap()).await;
    assert_eq!(status, 401);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tolerance")
    );

    // Nothing of it was stored.
    let (status, _) = engine.get("/v1/orders/douyin:1001").await;
    assert_eq!(status, 404);
    let (_, list) = engine.get("/v1/orders").await;
    assert_eq!(list["orders"], serde_json::json!([]));
    // And every refusal was counted.
    let metrics = engine.metrics().await;
    for (source, outcome) in [
        ("douyin", "bad_signature"),
        ("douyin", "malformed"),
        ("douyin", "body_too_large"),
        ("unknown", "unknown_source"),
        ("events", "malformed"),
        ("events", "bad_signature"),
    ] {
        let count = sample(
            &metrics,
            "orderhub_ingest_requests_total",
            &[("source", source), ("outcome", outcome)],
        );
        assert!(
            count.unwrap_or(0.0) >= 1.0,
            "{source}/{outcome} not counted"
        );
    }
    engine.stop().await;
}

/// 200,000 nested `[`: deep enough to overflow any recursive decoder's stack.
fn deeply_nested() -> String {
    "[".repeat(200_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_can_take_the_engine_down() {
    let dir = tempfile::tempdir().unwrap();
    let engine = TestEngine::start("sla = []", dir.path()).await;
    let (status, _) = engine
        .post_douyin(&douyin_push("101", "m-before", "7001", now_s()))
        .await;
    assert_eq!(status, 200);
    let deep = deeply_nested();
    // Correctly signed where the source signs, so the body reaches its decoder.
    let (status, body) = engine.post_douyin(&deep).await;
    assert_eq!(status, 400, "{body}");
    let youzan_sign = format!(
        "{:x}",
        md5::Md5::digest(format!("{YOUZAN_CLIENT_ID}{deep}{YOUZAN_CLIENT_SECRET}").as_bytes())
    );
    let fresh = wechat_query(now_s(), "deep-1");
    let sf = format!("sf/{SF_PUSH_TOKEN}");
    let json = ("content-type", "application/json".to_owned());
    for (source, query, headers) in [
        ("youzan", "", vec![("event-sign", youzan_sign)]),
        ("kuaishou", "", vec![]),
        ("wechat", fresh.as_str(), vec![]),
        (sf.as_str(), "", vec![json.clone()]),
    ] {
        let (status, answer) = engine
            .post_source_query(source, query, &headers, deep.clone())
            .await;
        assert!((400..500).contains(&status), "{source}: {status} {answer}");
    }
    let (status, body) = engine.post_events(&deep).await;
    assert_eq!(status, 400, "{body}");
    let nested_fields =
        format!(r#"{{"order":"shop:1","source":"wms","status":"paid","fields":{{"x":{deep}}}}}"#);
    let (status, body) = engine.post_events(&nested_fields).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("nests"),
        "{body}"
    );
    // Still up, and what was acknowledged before is intact.
    let (status, _) = engine.get("/healthz").await;
    assert_eq!(status, 200);
    let order = engine
        .eventually("/v1/orders/douyin:7001", |o| o["state"] == "paid")
        .await;
    assert_eq!(order["timeline"].as_array().unwrap().len(), 1);
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_message_of_a_batch_never_fails_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let engine = TestEngine::start("sla = []", dir.path()).await;
    // A paid message, a partial shipment (recorded), a tag nobody mapped (recorded, unmapped)
    // and a message without its order id, in one signed push.
    let good = |tag: &str, id: &str, p_id: &str| {
        serde_json::from_str::<Value>(&douyin_push(tag, id, p_id, now_s())).unwrap()[0].clone()
    };
    let body = serde_json::json!([
        good("101", "b-1", "8001"),
        good("108", "b-2", "8001"),
        good("777", "b-3", "8001"),
        {"tag": "101", "msg_id": "b-4", "data": "{\"shop_id\":77}"},
        good("101", "b-5", "8002"),
    ])
    .to_string();
    let (status, answer) = engine.post_douyin(&body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, serde_json::json!({"code": 0, "msg": "success"}));
    let order = engine
        .eventually("/v1/orders/douyin:8001", |o| {
            o["timeline"].as_array().unwrap().len() == 3
        })
        .await;
    assert_eq!(order["state"], "paid");
    assert_eq!(order["timeline"][2]["unmapped"], true);
    engine
        .eventually("/v1/orders/douyin:8002", |o| o["state"] == "paid")
        .await;
    let douyin = engine.source("douyin").await;
    assert_eq!(douyin["rejected"]["total"], 1, "{douyin}");
    assert_eq!(douyin["rejected"]["recent"][0]["index"], 3);
    assert!(
        douyin["rejected"]["recent"][0]["error"]
            .as_str()
            .unwrap()
            .contains("p_id")
    );
    assert_eq!(douyin["unmapped"][0]["raw_status"], "777");
    let metrics = engine.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "orderhub_ingest_events_total",
            &[("source", "douyin"), ("outcome", "rejected")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "orderhub_ingest_unmapped_total",
            &[("source", "douyin")]
        ),
        Some(1.0)
    );
    // A push whose every message is malformed is refused as a whole.
    let (status, answer) = engine
        .post_douyin(r#"[{"tag":"101","msg_id":"b-6","data":"{}"}]"#)
        .await;
    assert_eq!(status, 400, "{answer}");
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_without_credentials_answers_503_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let engine = TestEngine::start_with("", dir.path(), Arc::new(|_: &str| None)).await;
    let (status, body) = engine.post_douyin(&douyin_push("101", "m-1", "1", T)).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "source_unavailable");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ORDERHUB_DOUYIN_APP_KEY")
    );
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_push_is_acknowledged_again_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = TestEngine::start(NO_SLA, dir.path()).await;
    let push = douyin_push("101", "m-dup", "2002", T);
    for _ in 0..3 {
        let (status, body) = engine.post_douyin(&push).await;
        assert_eq!((status, body["code"].as_i64()), (200, Some(0)));
    }
    let order = engine
        .eventually("/v1/orders/douyin:2002", |o| o["state"] == "paid")
        .await;
    assert_eq!(order["timeline"].as_array().unwrap().len(), 1);
    let metrics = engine.metrics().await;
    let duplicates = sample(
        &metrics,
        "orderhub_ingest_requests_total",
        &[("source", "douyin"), ("outcome", "duplicate")],
    );
    assert!(duplicates.unwrap() >= 2.0);
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_and_out_of_order_reports_are_kept_but_never_move_the_order_back() {
    let dir = tempfile::tempdir().unwrap();
    let engine = TestEngine::start(NO_SLA, dir.path()).await;
    let order = "shop:ooo";
    let t = T * 1000;
    for (id, source, status, at) in [
        ("e-ship", "wms", "shipped", t + 3000),
        ("e-paid", "douyin", "paid", t),
        ("e-pick", "wms", "picked", t + 2000),
        ("e-ship-again", "wms", "shipped", t + 3001),
        ("e-cancel", "douyin", "cancelled", t + 4000),
    ] {
        let (status, _) = engine
            .post_events(&canonical(id, order, source, status, at))
            .await;
        assert_eq!(status, 200);
    }
    let order = engine
        .eventually("/v1/orders/shop:ooo", |o| {
            o["timeline"].as_array().unwrap().len() == 5
        })
        .await;
    assert_eq!(order["state"], "shipped");
    assert_eq!(
        states(&order),
        ["applied", "stale", "stale", "unchanged", "conflict"]
    );
    assert_eq!(order["systems"]["wms"]["raw_status"], "shipped");
    assert_eq!(order["systems"]["douyin"]["raw_status"], "cancelled");
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sla_breach_shows_on_the_order_in_the_list_and_in_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[[sla]]\nname = \"allocate_fast\"\nfrom = \"paid\"\nwithin = \"300ms\"\n";
    let engine = TestEngine::start(config, dir.path()).await;
    let now_ms = now_ms();
    let (status, _) = engine
        .post_events(&canonical("s1", "shop:slow", "douyin", "paid", now_ms))
        .await;
    assert_eq!(status, 200);
    let (status, _) = engine
        .post_events(&canonical("s2", "shop:quick", "douyin", "paid", now_ms))
        .await;
    assert_eq!(status, 200);
    let (status, _) = engine
        .post_events(&canonical(
            "s3",
            "shop:quick",
            "wms",
            "allocated",
            now_ms + 1,
        ))
        .await;
    assert_eq!(status, 200);

    let list = engine
        .eventually("/v1/orders?sla=breached", |l| {
            !l["orders"].as_array().unwrap().is_empty()
        })
        .await;
    let keys: Vec<&str> = list["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["shop:slow"]);
    let (_, order) = engine.get("/v1/orders/shop:slow").await;
    assert_eq!(order["sla"][0]["status"], "breached");
    assert_eq!(order["sla"][0]["late"], false);
    assert_eq!(order["timeline"][1]["source"], "orderhub");
    assert_eq!(order["timeline"][1]["outcome"]["result"], "sla_breached");
    let (_, quick) = engine.get("/v1/orders/shop:quick").await;
    assert_eq!(quick["sla"], serde_json::json!([]));
    let metrics = engine.metrics().await;
    let breaches = sample(
        &metrics,
        "orderhub_sla_breaches_total",
        &[("rule", "allocate_fast"), ("late", "false")],
    );
    assert!(breaches.unwrap() >= 1.0);
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_filter_by_state_and_age_and_reject_bad_queries() {
    let dir = tempfile::tempdir().unwrap();
    let engine = TestEngine::start("", dir.path()).await;
    let now = now_s() * 1000;
    for (id, order, status, at) in [
        ("l1", "shop:old", "packed", now - 3 * 3_600_000),
        ("l2", "shop:new", "packed", now),
        ("l3", "shop:other", "paid", now - 5 * 3_600_000),
    ] {
        assert_eq!(
            engine
                .post_events(&canonical(id, order, "wms", status, at))
                .await
                .0,
            200
        );
    }
    let list = engine
        .eventually("/v1/orders?state=packed", |l| {
            l["orders"].as_array().unwrap().len() == 2
        })
        .await;
    assert_eq!(list["orders"][0]["key"], "shop:old", "oldest first");
    let (_, stuck) = engine.get("/v1/orders?state=packed&stuck_for=2h").await;
    assert_eq!(stuck["orders"].as_array().unwrap().len(), 1);
    assert_eq!(stuck["orders"][0]["key"], "shop:old");
    // The paid order's summary is written behind: wait for it rather than race it.
    engine
        .eventually("/v1/orders?limit=1", |l| {
            l["orders"][0]["key"] == "shop:other"
        })
        .await;

    for query in [
        "state=shipping",
        "stuck_for=soon",
        "sla=maybe",
        "colour=red",
    ] {
        let (status, body) = engine.get(&format!("/v1/orders?{query}")).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(body["error"]["code"], "bad_query");
    }
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_and_a_restart_finds_every_order() {
    let dir = tempfile::tempdir().unwrap();
    let engine = TestEngine::start("", dir.path()).await;
    assert_eq!(engine.get("/readyz").await.0, 200);
    for i in 0..50 {
        let push = douyin_push("101", &format!("r-{i}"), &format!("{}", 5000 + i), T);
        assert_eq!(engine.post_douyin(&push).await.0, 200);
    }
    engine.stop().await;

    let engine = TestEngine::start("", dir.path()).await;
    let (_, list) = engine.get("/v1/orders?state=paid&limit=1000").await;
    assert_eq!(list["orders"].as_array().unwrap().len(), 50);
    let (_, order) = engine.get("/v1/orders/douyin:5049").await;
    assert_eq!(order["state"], "paid");
    // The gauge is the process's, and the other tests' engines move it too while they run:
    // it must come back to this engine's count (set at start-up from the index).
    let mut paid = None;
    for _ in 0..60 {
        let text = engine.metrics().await;
        paid = sample(&text, "orderhub_orders_by_state", &[("state", "paid")]);
        if paid == Some(50.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        paid.is_some_and(|n| n >= 50.0),
        "the restart counts its 50 paid orders: {paid:?}"
    );
    engine.stop().await;
}

/// `orderhub check-config ARGS…`.
fn check_config(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_orderhub"))
        .arg("check-config")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn check_config_names_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[sla]]\nname = \"a\"\nfrom = \"payed\"\nwithin = \"1h\"\n",
    )
    .unwrap();
    let output = check_config(&[bad.as_os_str()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(stderr.contains("sla[0].from"), "{stderr}");

    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[actors]\nshards = 4\nidle_timeout = \"1m\"\nmax_active_per_shard = 100\n",
    )
    .unwrap();
    let output = check_config(&[good.as_os_str()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // One key of a table keeps the table's other defaults; --print shows what runs.
    let partial = dir.path().join("partial.toml");
    std::fs::write(
        &partial,
        "[actors]\nshards = 4\n[sources.douyin.status_map]\n\"999\" = \"none\"\n",
    )
    .unwrap();
    let output = check_config(&["--print".as_ref(), partial.as_os_str()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    let effective: toml::Table = toml::from_str(&printed).unwrap();
    assert_eq!(effective["actors"]["shards"].as_integer(), Some(4));
    assert_eq!(effective["actors"]["idle_timeout"].as_str(), Some("5m"));
    assert_eq!(
        effective["sources"]["douyin"]["status_map"]["999"].as_str(),
        Some("none")
    );
    assert_eq!(
        effective["sources"]["douyin"]["status_map"]["101"].as_str(),
        Some("paid")
    );
    assert!(effective["sources"].get("youzan").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_missed_while_down_fires_at_restart_flagged_late() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[[sla]]\nname = \"allocate_soon\"\nfrom = \"paid\"\nwithin = \"2s\"\n";
    let engine = TestEngine::start(config, dir.path()).await;
    // Paid 1.5 s ago: the deadline is 0.5 s away, and the engine is stopped before it.
    let paid_at = now_ms() - 1500;
    let body = canonical("d1", "shop:down", "douyin", "paid", paid_at);
    assert_eq!(engine.post_events(&body).await.0, 200);
    engine
        .eventually("/v1/orders?sla=armed", |l| {
            l["orders"].as_array().unwrap().len() == 1
        })
        .await;
    engine.stop().await;

    // Down across the deadline (real time: the deadline lives in the journal, not in tokio).
    let deadline = paid_at + 2000;
    let wait = deadline + LATE_MARGIN_MS - now_ms();
    if wait > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(wait as u64)).await;
    }

    let engine = TestEngine::start(config, dir.path()).await;
    let list = engine
        .eventually("/v1/orders?sla=breached", |l| {
            l["orders"].as_array().unwrap().len() == 1
        })
        .await;
    assert_eq!(list["orders"][0]["key"], "shop:down");
    let (_, order) = engine.get("/v1/orders/shop:down").await;
    assert_eq!(order["sla"][0]["status"], "breached");
    assert_eq!(order["sla"][0]["late"], true);
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_operators_configured_the_api_needs_a_token_and_a_role() {
    let dir = tempfile::tempdir().unwrap();
    let config = "sla = []\n\
        [[operators]]\nname = \"li.na\"\nrole = \"operator\"\ntoken_env = \"ORDERHUB_TOKEN_LINA\"\n\
        [[operators]]\nname = \"wang.wei\"\nrole = \"viewer\"\ntoken_env = \"ORDERHUB_TOKEN_WANG\"\n";
    let base = secrets();
    let with_tokens: orderhub_engine::secrets::SecretLookup =
        Arc::new(move |name: &str| match name {
            "ORDERHUB_TOKEN_LINA" => Some("lina-token".into()),
            "ORDERHUB_TOKEN_WANG" => Some("wang-token".into()),
            other => base(other),
        });
    let engine = TestEngine::start_with(config, dir.path(), with_tokens).await;
    let call = |method: reqwest::Method, path: &str, token: Option<&str>| {
        let mut request = engine
            .client
            .request(method, format!("{}{path}", engine.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let response = call(reqwest::Method::GET, "/v1/orders", None)
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let (_, body) = read(response).await;
    assert_eq!(body["error"]["code"], "unauthorized");
    let response = call(reqwest::Method::GET, "/v1/orders", Some("guess"))
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    for path in ["/v1/orders", "/v1/sources", "/v1/dispatch/dead-letters"] {
        let response = call(reqwest::Method::GET, path, Some("wang-token"))
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let retry = "/v1/dispatch/dead-letters/1/retry";
    let response = call(reqwest::Method::POST, retry, Some("wang-token"))
        .await
        .unwrap();
    let (status, body) = read(response).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "forbidden");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("wang.wei")
    );
    let response = call(reqwest::Method::POST, retry, Some("lina-token"))
        .await
        .unwrap();
    let (status, body) = read(response).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("unknown_dead_letter"))
    );
    // Health, metrics and signed ingest are not behind operators.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let response = call(reqwest::Method::GET, path, None).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let (status, _) = engine
        .post_douyin(&douyin_push("101", "m-auth", "4242", T))
        .await;
    assert_eq!(status, 200);
    engine.stop().await;
}

/// POSTs `body` to `path` over a raw HTTP/1.1 connection with `Transfer-Encoding: chunked` (no
/// `Content-Length`), in 512-byte chunks; the answer's status line.
async fn chunked_post(base: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    for chunk in body.chunks(512) {
        bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        bytes.extend_from_slice(chunk);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    // The engine may answer and close before it has read everything: a failed write is fine.
    let _ = stream.write_all(&bytes).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    answer.lines().next().unwrap_or_default().to_owned()
}
