//! Stock reservation end to end: the last units go to exactly as many concurrent orders as
//! there are units (the rest go on hold `oversell`), commits, cancels and expiry move the
//! ledger, and a kill -9 leaves the ledger and the orders agreeing.

use super::support::*;
use serde_json::Value;
use std::time::Duration;

const CONFIG: &str = "sla = []\nrules = []\n[stock]\nreserve_ttl = \"15m\"\n";

fn paid(order: &str, sku: &str, qty: i64) -> String {
    serde_json::json!({
        "event_id": format!("{order}-paid"), "order": order, "source": "shop", "status": "paid",
        "occurred_at": now_ms(), "fields": {"items": [{"sku": sku, "qty": qty, "name": "tea"}]}
    })
    .to_string()
}

/// Posts `bodies` to `/v1/events` at once; every one must be acknowledged.
async fn post_all(client: &reqwest::Client, base: &str, bodies: Vec<String>) {
    let mut posts = tokio::task::JoinSet::new();
    for (i, body) in bodies.into_iter().enumerate() {
        let (client, url) = (client.clone(), format!("{base}/v1/events"));
        posts.spawn(async move {
            let id = format!("msg-{i}-{}", fresh_id());
            sign_events(client.post(url), &body, &id, now_s())
                .send()
                .await
                .unwrap()
                .status()
        });
    }
    while let Some(status) = posts.join_next().await {
        assert!(status.unwrap().is_success());
    }
}

async fn put(client: &reqwest::Client, url: String, body: &str) -> (u16, Value) {
    read(client.put(url).body(body.to_owned()).send().await.unwrap()).await
}

/// Each order's stock state, once every one has an answer (reserved or short).
async fn settled(client: &reqwest::Client, base: &str, orders: &[String]) -> Vec<(String, Value)> {
    let mut last = Vec::new();
    for _ in 0..600 {
        last.clear();
        for order in orders {
            let body = get_json(client, &format!("{base}/v1/orders/{order}")).await;
            last.push((order.clone(), body));
        }
        if last
            .iter()
            .all(|(_, o)| matches!(o["stock"]["state"].as_str(), Some("reserved" | "short")))
        {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "not every order's stock settled: {:?}",
        last.iter()
            .map(|(k, o)| (k, o["stock"]["state"].clone()))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_units_go_to_as_many_concurrent_orders_as_there_are_units() {
    let dir = tempfile::tempdir().unwrap();
    let engine = TestEngine::start(CONFIG, dir.path()).await;
    let client = &engine.client;
    let base = &engine.base;
    // Bad settings are refused, naming what is wrong.
    let (status, body) = put(
        client,
        format!("{base}/v1/stock/TEA"),
        r#"{"available": -1}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = put(client, format!("{base}/v1/stock/TEA"), r#"{"qty": 1}"#).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = put(
        client,
        format!("{base}/v1/stock"),
        "sku,available\nTEA,lots\n",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 2"),
        "{body}"
    );
    let (status, body) = get_as_json(client, &format!("{base}/v1/stock/TEA")).await;
    assert_eq!(status, 404, "{body}");
    // Five units of tea; a CSV sets coffee.
    let (status, body) = put(
        client,
        format!("{base}/v1/stock/TEA"),
        r#"{"available": 5}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["available"].as_i64(), body["reserved"].as_i64()),
        (Some(5), Some(0))
    );
    let (status, body) = put(
        client,
        format!("{base}/v1/stock"),
        "sku,available,warehouse\nCOFFEE,2\nCOFFEE,1,hz\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["updated"], 2);

    // Forty orders at once want one tea each.
    let orders: Vec<String> = (0..40).map(|i| format!("shop:t{i}")).collect();
    post_all(
        client,
        base,
        orders.iter().map(|o| paid(o, "TEA", 1)).collect(),
    )
    .await;
    let settled = settled(client, base, &orders).await;
    let reserved: Vec<&String> = settled
        .iter()
        .filter(|(_, o)| o["stock"]["state"] == "reserved")
        .map(|(k, _)| k)
        .collect();
    assert_eq!(reserved.len(), 5, "exactly as many as there were units");
    for (key, order) in &settled {
        if order["stock"]["state"] == "short" {
            assert_eq!(order["state"], "on_hold", "{key}: {order}");
            assert_eq!(order["hold"]["by"], "stock");
            assert!(
                order["hold"]["reason"]
                    .as_str()
                    .unwrap()
                    .starts_with("oversell: TEA wants 1, 0 left"),
                "{order}"
            );
        } else {
            assert_eq!(order["state"], "paid");
        }
    }
    let (_, tea) = get_as_json(client, &format!("{base}/v1/stock/TEA")).await;
    assert_eq!(
        (tea["available"].as_i64(), tea["reserved"].as_i64()),
        (Some(0), Some(5)),
        "{tea}"
    );

    // An untracked SKU reserves nothing and holds nothing.
    post_all(client, base, vec![paid("shop:u1", "UNTRACKED", 3)]).await;
    let untracked = engine
        .eventually("/v1/orders/shop:u1", |o| o["stock"]["state"] == "untracked")
        .await;
    assert_eq!(untracked["state"], "paid");

    // The warehouse takes two; one is cancelled: its unit can be sold again.
    let at = now_ms();
    let event = |order: &str, status: &str| {
        serde_json::json!({"event_id": format!("{order}-{status}"), "order": order,
            "source": "wms", "status": status, "occurred_at": at})
        .to_string()
    };
    post_all(
        client,
        base,
        vec![
            event(reserved[0], "allocated"),
            event(reserved[1], "allocated"),
            event(reserved[2], "cancelled"),
        ],
    )
    .await;
    let tea = engine
        .eventually("/v1/stock/TEA", |t| {
            t["reserved"] == 2 && t["available"] == 1
        })
        .await;
    assert_eq!(tea["records"][0]["warehouse"], "");
    let committed = engine
        .eventually(&format!("/v1/orders/{}", reserved[0]), |o| {
            o["stock"]["state"] == "committed"
        })
        .await;
    assert_eq!(committed["stock"]["lines"][0]["sku"], "TEA");
    // The ledger survives a restart as it was.
    engine.stop().await;
    let engine = TestEngine::start(CONFIG, dir.path()).await;
    let (_, tea) = get_as_json(&engine.client, &format!("{}/v1/stock/TEA", engine.base)).await;
    assert_eq!(
        (tea["available"].as_i64(), tea["reserved"].as_i64()),
        (Some(1), Some(2)),
        "{tea}"
    );
    let (_, all) = get_as_json(&engine.client, &format!("{}/v1/stock", engine.base)).await;
    assert_eq!(all["stock"].as_array().unwrap().len(), 3, "{all}");
    let metrics = engine.metrics().await;
    assert!(
        sample(
            &metrics,
            "orderhub_stock_requests_total",
            &[("op", "reserve"), ("result", "short")]
        )
        .is_some(),
        "exported from start-up"
    );
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_is_off_until_configured() {
    let dir = tempfile::tempdir().unwrap();
    let engine = TestEngine::start("sla = []\n", dir.path()).await;
    let (status, body) = put(
        &engine.client,
        format!("{}/v1/stock/TEA", engine.base),
        r#"{"available": 5}"#,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_configured");
    engine.stop().await;
}

async fn get_as_json(client: &reqwest::Client, url: &str) -> (u16, Value) {
    read(client.get(url).send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_the_ledger_and_the_orders_agree() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("orderhub.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = orderhub_engine::http_client::builder().build().unwrap();
    let args = [std::ffi::OsStr::new("--config"), config.as_os_str()];
    let mut child = spawn_orderhub_with(&data, port, &args);
    wait_ready(&client, &base).await;
    let (status, _) = put(
        &client,
        format!("{base}/v1/stock/TEA"),
        r#"{"available": 5}"#,
    )
    .await;
    assert_eq!(status, 200);
    let orders: Vec<String> = (0..30).map(|i| format!("shop:k{i}")).collect();
    post_all(
        &client,
        &base,
        orders.iter().map(|o| paid(o, "TEA", 1)).collect(),
    )
    .await;
    // Killed the moment the last order is acknowledged: some requests may not be answered yet.
    child.kill().unwrap();
    child.wait().unwrap();
    let mut child = spawn_orderhub_with(&data, port, &args);
    wait_ready(&client, &base).await;
    let settled = settled(&client, &base, &orders).await;
    let reserved = settled
        .iter()
        .filter(|(_, o)| o["stock"]["state"] == "reserved")
        .count();
    assert_eq!(reserved, 5, "every unit to one order, none twice");
    let (_, tea) = get_as_json(&client, &format!("{base}/v1/stock/TEA")).await;
    assert_eq!(
        (tea["available"].as_i64(), tea["reserved"].as_i64()),
        (Some(0), Some(5)),
        "{tea}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
