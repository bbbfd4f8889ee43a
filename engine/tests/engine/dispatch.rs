//! Issue 3's promise: every sync caused by an accepted event reaches its sink, through faults,
//! outages and `kill -9`, in order per order, at most at the sink's rate.

use super::support::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const RATE: usize = 40;

/// Checks per-order order and the rate, and returns the distinct keys answered 2xx.
fn check_path(sink: &FakeSink, path: &str) -> usize {
    let requests = sink.requests(path);
    // Never above the quota: at most RATE (+1 for the edge) in any one-second window.
    for (i, first) in requests.iter().enumerate() {
        let in_window = requests[i..]
            .iter()
            .take_while(|r| r.at.duration_since(first.at) < Duration::from_secs(1))
            .count();
        assert!(
            in_window <= RATE + 1,
            "{path}: {in_window} requests within one second"
        );
    }
    // Per order, operations were first delivered in transition order.
    let mut first_delivery: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for r in requests.iter().filter(|r| (200..300).contains(&r.answered)) {
        if seen.insert(r.id.clone()) {
            first_delivery
                .entry(r.order.clone())
                .or_default()
                .push(r.operation.clone());
        }
    }
    for (order, operations) in &first_delivery {
        if operations.contains(&"cancel_outbound".to_owned()) {
            assert_eq!(
                operations,
                &["create_outbound", "cancel_outbound"],
                "{order}"
            );
        }
    }
    // Duplicates are only retries of the same key: every request carries a key we expect.
    assert!(requests.iter().all(|r| !r.id.is_empty()));
    seen.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sync_arrives_through_503s_429s_stalls_and_a_30_second_outage() {
    let outage = Duration::from_secs(2)..Duration::from_secs(32);
    let sink = FakeSink::start(move |n, t| {
        if outage.contains(&t) || n % 7 == 3 {
            Fault::Status(503)
        } else if n % 11 == 5 {
            Fault::TooManyRequests { retry_after_s: 1 }
        } else if n % 23 == 9 {
            Fault::Stall(Duration::from_secs(3))
        } else {
            Fault::None
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "sla = []\n{}",
        sinks_toml(&sink.base, &format!("{RATE}/s"), "1s")
    );
    let engine = TestEngine::start(&config, dir.path()).await;
    let orders = 60;
    let started = Instant::now();
    for i in 0..orders {
        let order = format!("shop:{i}");
        let at = now_ms();
        assert_eq!(
            engine
                .post_events(&canonical(&format!("p{i}"), &order, "douyin", "paid", at))
                .await
                .0,
            200
        );
        if i % 3 == 0 {
            assert_eq!(
                engine
                    .post_events(&canonical(
                        &format!("c{i}"),
                        &order,
                        "douyin",
                        "cancelled",
                        at + 1
                    ))
                    .await
                    .0,
                200
            );
        }
        if i % 3 == 1 {
            assert_eq!(
                engine
                    .post_events(&canonical(
                        &format!("t{i}"),
                        &order,
                        "courier",
                        "in_transit",
                        at + 1
                    ))
                    .await
                    .0,
                200
            );
        }
    }
    let expected = [
        ("/erp", orders),
        ("/wms", orders + orders / 3),
        ("/notify", orders / 3),
    ];
    loop {
        let done = expected
            .iter()
            .all(|(path, n)| sink.delivered(path).len() >= *n);
        if done {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "not all syncs delivered: {:?}",
            expected
                .iter()
                .map(|(p, _)| (p, sink.delivered(p).len()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (path, n) in expected {
        assert_eq!(check_path(&sink, path), n, "{path}");
    }
    // The engine's own record agrees: every sync delivered, none dead.
    let order = engine
        .eventually("/v1/orders/shop:0", |o| {
            o["syncs"]
                .as_array()
                .is_some_and(|s| s.iter().all(|s| s["status"] == "delivered"))
        })
        .await;
    let syncs = order["syncs"].as_array().unwrap();
    assert_eq!(
        syncs.len(),
        3,
        "erp create, wms create, wms cancel: {syncs:?}"
    );
    assert_eq!(
        syncs[0]["id"],
        format!(
            "shop:0:{}:erp",
            syncs[0]["id"].as_str().unwrap().split(':').nth(2).unwrap()
        )
    );
    let (_, dead) = engine.get("/v1/dispatch/dead-letters").await;
    assert_eq!(dead["dead_letters"], serde_json::json!([]));
    let retried =
        sink.received.lock().unwrap().len() - expected.iter().map(|(_, n)| n).sum::<usize>();
    eprintln!(
        "dispatch faults: {retried} retried requests, all {} syncs delivered in {:?}",
        expected.iter().map(|(_, n)| n).sum::<usize>(),
        started.elapsed()
    );
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_sync_is_dead_lettered_with_its_response_and_can_be_replayed() {
    let refuse = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sink = {
        let refuse = refuse.clone();
        FakeSink::start(move |_, _| {
            if refuse.load(std::sync::atomic::Ordering::Relaxed) {
                Fault::Status(422)
            } else {
                Fault::None
            }
        })
        .await
    };
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "sla = []\n{}\n[[rules]]\nname = \"erp_on_paid\"\nwhen = 'order.state == \"paid\"'\nsync = \"erp\"\n",
        sinks_toml(&sink.base, "100/s", "1s")
    );
    let engine = TestEngine::start(&config, dir.path()).await;
    assert_eq!(
        engine
            .post_events(&canonical("p1", "shop:dl", "douyin", "paid", now_ms()))
            .await
            .0,
        200
    );
    let dead = engine
        .eventually("/v1/dispatch/dead-letters", |d| {
            d["dead_letters"].as_array().unwrap().len() == 1
        })
        .await;
    let letter = &dead["dead_letters"][0];
    assert_eq!(letter["sink"], "erp");
    assert_eq!(letter["order"], "shop:dl");
    assert!(
        letter["last_error"]
            .as_str()
            .unwrap()
            .starts_with("HTTP 422")
    );
    let row = letter["row"].as_i64().unwrap();

    refuse.store(false, std::sync::atomic::Ordering::Relaxed);
    let response = engine
        .client
        .post(format!(
            "{}/v1/dispatch/dead-letters/{row}/retry",
            engine.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let order = engine
        .eventually("/v1/orders/shop:dl", |o| {
            o["syncs"][0]["status"] == "delivered"
                && o["timeline"].as_array().is_some_and(|t| t.len() == 2)
        })
        .await;
    assert_eq!(sink.delivered("/erp").len(), 1);
    let retried = &order["timeline"][1];
    assert_eq!(
        (
            retried["source"].as_str(),
            retried["raw_status"].as_str(),
            retried["by"].as_str()
        ),
        (
            Some("operator"),
            Some("retry_dead_letter"),
            Some("loopback")
        ),
        "the timeline says who sent it again"
    );
    let response = engine
        .client
        .post(format!(
            "{}/v1/dispatch/dead-letters/{row}/retry",
            engine.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404, "no longer a dead letter");
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_sink_blocks_neither_ingest_nor_other_sinks_until_the_backlog_limit() {
    let sink = FakeSink::start(|_, _| Fault::None).await;
    // erp points at a port nothing listens on: every attempt fails to connect.
    let dead = format!("http://127.0.0.1:{}", {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    });
    let toml = sinks_toml(&sink.base, "100/s", "1s").replacen(
        &format!("{}/erp", sink.base),
        &format!("{dead}/erp"),
        1,
    );
    let config = format!("sla = []\n[dispatch]\nmax_backlog = 20\n{toml}");
    let dir = tempfile::tempdir().unwrap();
    let engine = TestEngine::start(&config, dir.path()).await;
    let mut accepted = 0;
    let mut throttled = 0;
    // Until ingest pushes back (a few times), bounded: the syncs count towards the backlog once
    // their events are applied, which trails the acknowledgements on a busy machine.
    for i in 0..400 {
        if throttled >= 3 {
            break;
        }
        let (status, body) = engine
            .post_events(&canonical(
                &format!("b{i}"),
                &format!("shop:b{i}"),
                "douyin",
                "paid",
                now_ms(),
            ))
            .await;
        match status {
            200 => accepted += 1,
            429 => {
                throttled += 1;
                assert_eq!(body["error"]["code"], "throttled");
                assert!(
                    body["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("sync backlog")
                );
            }
            other => panic!("unexpected {other}: {body}"),
        }
        // Let wms drain so only erp's stuck syncs count towards the backlog.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(
        accepted >= 20,
        "ingest kept accepting while under the limit ({accepted})"
    );
    assert!(throttled > 0, "past the backlog limit ingest answers 429");
    // wms got every accepted order's sync although erp is down.
    let started = Instant::now();
    while sink.delivered("/wms").len() < accepted {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "wms stalled behind the dead erp"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = engine.metrics().await;
    let delivered = sample(
        &metrics,
        "orderhub_dispatch_requests_total",
        &[("sink", "wms"), ("outcome", "delivered")],
    );
    assert!(delivered.unwrap_or(0.0) >= accepted as f64);
    let failed = sample(
        &metrics,
        "orderhub_dispatch_requests_total",
        &[("sink", "erp"), ("outcome", "failed")],
    );
    assert!(failed.unwrap_or(0.0) >= 1.0);
    let backlog = engine
        .eventually("/v1/orders/shop:b0", |o| {
            o["syncs"].as_array().is_some_and(|s| s.len() == 2)
        })
        .await;
    let erp = backlog["syncs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sink"] == "erp")
        .unwrap()
        .clone();
    assert_eq!(erp["status"], "pending");
    assert!(erp["attempts"].as_u64().unwrap() >= 1);
    assert!(
        erp["last_error"]
            .as_str()
            .unwrap()
            .contains("connection failed"),
        "{erp}"
    );
    engine.stop().await;
}
