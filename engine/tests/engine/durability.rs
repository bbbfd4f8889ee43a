//! "A 2xx ingest answer means durable": the real binary is SIGKILLed while thousands of signed
//! events are in flight, restarted on the same data directory, and every event that was
//! acknowledged must be in its order's timeline.

use super::support::*;
use orderhub_actors::order::OrderState;
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;

const EVENTS: usize = 3_000;
const ORDERS: usize = 400;
const CONCURRENCY: usize = 32;
/// Kill once this many events were acknowledged.
const KILL_AFTER_ACKS: usize = 1_200;

/// Event `i`: a Douyin push or a canonical event, for order `i % ORDERS`.
fn request(
    client: &reqwest::Client,
    base: &str,
    i: usize,
) -> (reqwest::RequestBuilder, String, String) {
    let n = i % ORDERS;
    let round = i / ORDERS;
    if round == 0 {
        let id = format!("dy-{i}");
        let body = douyin_push("101", &id, &format!("{}", 900_000 + n), 1_790_000_000);
        let request = client
            .post(format!("{base}/v1/ingest/douyin"))
            .header("app-id", DOUYIN_KEY)
            .header("event-sign", douyin_sign(&body, DOUYIN_SECRET))
            .body(body);
        (request, format!("douyin:{}", 900_000 + n), id)
    } else {
        // The main line after payment: allocated … completed.
        let statuses =
            &OrderState::ALL[OrderState::Allocated as usize..=OrderState::Completed as usize];
        let status = statuses[(round - 1) % statuses.len()].as_str();
        let id = format!("ev-{i}");
        let mut body: serde_json::Value = serde_json::from_str(&canonical(
            &id,
            &format!("douyin:{}", 900_000 + n),
            "wms",
            status,
            1_790_000_000_000 + i as i64,
        ))
        .unwrap();
        // Every report of the order repeats its contents: the journal stores them once and
        // the others point at them (they must come back whole after the kill too).
        body["fields"] = contents(n);
        let body = body.to_string();
        let request = sign_events(
            client.post(format!("{base}/v1/events")),
            &body,
            &id,
            now_s(),
        );
        (request, format!("douyin:{}", 900_000 + n), id)
    }
}

/// The contents the WMS reports with every event of order `n`.
fn contents(n: usize) -> serde_json::Value {
    serde_json::json!({
        "items": [{"sku": format!("SKU-{n}"), "name": "Hydrating face cream 50ml", "qty": 1 + n % 3}],
        "warehouse": "HZ-01",
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = orderhub_engine::http_client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut child = spawn_orderhub(dir.path(), port);
    wait_ready(&client, &base).await;

    let acked: Arc<Mutex<BTreeMap<String, BTreeSet<String>>>> = Arc::default();
    let ack_count = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (client, base) = (client.clone(), base.clone());
        let (acked, ack_count, failed, next) = (
            acked.clone(),
            ack_count.clone(),
            failed.clone(),
            next.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= EVENTS {
                    return;
                }
                let (request, order, id) = request(&client, &base, i);
                match request.send().await {
                    Ok(response) if response.status().is_success() => {
                        acked.lock().await.entry(order).or_default().insert(id);
                        ack_count.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(response) if response.status().as_u16() == 429 => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(response) => panic!("event {i} refused: {}", response.status()),
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    while ack_count.load(Ordering::Relaxed) < KILL_AFTER_ACKS {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.kill().expect("SIGKILL"); // std's kill() is SIGKILL on Unix
    child.wait().unwrap();
    for worker in workers {
        worker.await.unwrap();
    }
    let acked = Arc::try_unwrap(acked).unwrap().into_inner();
    let acked_events: usize = acked.values().map(BTreeSet::len).sum();
    assert!(acked_events >= KILL_AFTER_ACKS);
    assert!(
        failed.load(Ordering::Relaxed) > 0,
        "the kill must land mid-stream (some requests fail)"
    );

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn_orderhub(dir.path(), port);
    wait_ready(&client, &base).await;
    let mut missing = Vec::new();
    for (order, ids) in &acked {
        let response = client
            .get(format!("{base}/v1/orders/{order}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "order {order} lost");
        let body: serde_json::Value = response.json().await.unwrap();
        let seen: BTreeSet<String> = body["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["source_event_id"].as_str().unwrap().to_owned())
            .collect();
        missing.extend(ids.difference(&seen).cloned());
        if ids.iter().any(|id| id.starts_with("ev-")) {
            let n: usize = order
                .trim_start_matches("douyin:")
                .parse::<usize>()
                .unwrap()
                - 900_000;
            assert_eq!(
                body["fields"]["items"],
                contents(n)["items"],
                "order {order}"
            );
        }
    }
    assert!(
        missing.is_empty(),
        "{} acknowledged events lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    eprintln!(
        "durability: {acked_events} acknowledged events across {} orders all survived SIGKILL",
        acked.len()
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // The contents above came back from events that point at the one holding them.
    let journal = rusqlite::Connection::open(dir.path().join("orderhub.db")).unwrap();
    let sharing: i64 = journal
        .query_row(
            "SELECT count(*) FROM events WHERE fields_from IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(sharing > 0, "no event shared its order's contents");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = orderhub_engine::http_client::builder().build().unwrap();
    let mut child = spawn_orderhub(dir.path(), port);
    wait_ready(&client, &base).await;
    for i in 0..ORDERS {
        let (request, _, _) = request(&client, &base, i);
        assert!(request.send().await.unwrap().status().is_success());
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "SIGTERM exit status: {exit}");

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn_orderhub(dir.path(), port);
    wait_ready(&client, &base).await;
    let list = get_json(&client, &format!("{base}/v1/orders?state=paid&limit=1000")).await;
    assert_eq!(list["orders"].as_array().unwrap().len(), ORDERS);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sync_is_delivered_after_sigkill_mid_dispatch() {
    let sink = FakeSink::start(|_, _| Fault::None).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("orderhub.toml");
    // Slow sinks (10/s each), so the kill lands with syncs pending and in flight.
    std::fs::write(
        &config,
        format!("sla = []\n{}", sinks_toml(&sink.base, "10/s", "2s")),
    )
    .unwrap();
    let spawn = |port: u16| {
        Command::new(env!("CARGO_BIN_EXE_orderhub"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--config",
            ])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("ORDERHUB_EVENTS_SECRET", EVENTS_SECRET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    };
    let client = orderhub_engine::http_client::builder().build().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn(port);
    wait_ready(&client, &base).await;
    let orders = 40;
    for i in 0..orders {
        let body = canonical(
            &format!("k{i}"),
            &format!("shop:{i}"),
            "douyin",
            "paid",
            now_ms(),
        );
        let request = sign_events(
            client.post(format!("{base}/v1/events")),
            &body,
            &format!("wk{i}"),
            now_s(),
        );
        assert!(request.send().await.unwrap().status().is_success());
    }
    while sink.delivered("/erp").len() + sink.delivered("/wms").len() < 15 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = sink.delivered("/erp").len() + sink.delivered("/wms").len();
    assert!(
        before < 2 * orders,
        "the kill must land mid-dispatch ({before} delivered)"
    );

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn(port);
    wait_ready(&client, &base).await;
    let started = std::time::Instant::now();
    while sink.delivered("/erp").len() < orders || sink.delivered("/wms").len() < orders {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "syncs lost after kill -9: erp {} wms {}",
            sink.delivered("/erp").len(),
            sink.delivered("/wms").len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for path in ["/erp", "/wms"] {
        let keys = sink.delivered(path);
        let orders_seen: BTreeSet<String> =
            sink.requests(path).into_iter().map(|r| r.order).collect();
        assert_eq!(orders_seen.len(), orders, "{path}: every order synced");
        assert_eq!(
            keys.len(),
            orders,
            "{path}: one idempotency key per sync, retries reuse it"
        );
    }
    let requests = sink.received.lock().unwrap().len();
    eprintln!(
        "dispatch kill -9: {before} of {} delivered before the kill, all after restart ({requests} requests, {} resends)",
        2 * orders,
        requests - 2 * orders
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
