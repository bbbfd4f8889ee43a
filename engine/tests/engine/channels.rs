//! Issue 5, connection-based channels: the engine is the client of a WebSocket that speaks the
//! platform's documented frames (here a local server on loopback).

use super::support::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

const PDD_CLIENT: &str = "pdd-client";
const PDD_SECRET: &str = "pdd-secret";

fn pdd_sign(ts: &str) -> String {
    use base64::Engine as _;
    use md5::{Digest, Md5};
    let hex = format!("{:x}", Md5::digest(format!("{PDD_CLIENT}{ts}{PDD_SECRET}")));
    let b64 = base64::engine::general_purpose::STANDARD.encode(hex);
    b64.replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

fn frame(id: u64, kind: &str, tid: &str) -> String {
    serde_json::json!({
        "id": id, "commandType": "Common", "sendTime": now_ms(),
        "message": { "type": kind, "mallID": 1200001,
                     "content": serde_json::json!({ "tid": tid, "mall_id": 1200001 }).to_string() }
    })
    .to_string()
}

/// What the server saw on one connection: the request path and every text frame.
#[derive(Debug)]
enum Seen {
    Connected(String),
    Frame(Value),
}

// The handshake callback's signature (and its large error type) is tungstenite's.
#[allow(clippy::result_large_err)]
/// A message service that sends `script[n]` on its n-th connection, reports what it receives,
/// and drops connection n when told to.
async fn message_service(
    script: Vec<Vec<String>>,
) -> (
    String,
    mpsc::UnboundedReceiver<Seen>,
    mpsc::UnboundedSender<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/message", listener.local_addr().unwrap());
    let (seen, seen_rx) = mpsc::unbounded_channel();
    let (drop_tx, mut drop_rx) = mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        for frames in script {
            let (stream, _) = listener.accept().await.unwrap();
            let path = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
            let recorded = path.clone();
            let mut socket = tokio_tungstenite::accept_hdr_async(
                stream,
                move |request: &Request, response: Response| {
                    *recorded.lock().unwrap() = request.uri().path().to_owned();
                    Ok(response)
                },
            )
            .await
            .unwrap();
            let _ = seen.send(Seen::Connected(path.lock().unwrap().clone()));
            for text in frames {
                socket.send(Message::Text(text.into())).await.unwrap();
            }
            loop {
                tokio::select! {
                    _ = drop_rx.recv() => break,
                    message = socket.next() => match message {
                        Some(Ok(Message::Text(text))) => {
                            let _ = seen.send(Seen::Frame(serde_json::from_str(&text).unwrap()));
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    }
                }
            }
            // Dropped without a close frame: the connection just dies.
        }
    });
    (url, seen_rx, drop_tx)
}

/// Waits for the next ack (skipping heartbeats) or `None` after `wait`.
async fn next_ack(seen: &mut mpsc::UnboundedReceiver<Seen>, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, seen.recv()).await {
            Ok(Some(Seen::Frame(frame))) if frame["commandType"] == "Ack" => return Some(frame),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}

async fn next_connection(seen: &mut mpsc::UnboundedReceiver<Seen>) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), seen.recv()).await {
            Ok(Some(Seen::Connected(path))) => return path,
            Ok(Some(_)) => continue,
            other => panic!("no connection: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pdd_messages_are_journaled_then_acked_across_a_dropped_connection() {
    let (url, mut seen, drop_connection) = message_service(vec![
        vec![
            frame(1, "pdd_trade_TradeConfirmed", "T-1"),
            frame(1, "pdd_trade_TradeConfirmed", "T-1"),
            r#"{"commandType":"HeartBeat","time":1}"#.to_owned(),
        ],
        vec![
            frame(2, "pdd_trade_TradeSellerShip", "T-1"),
            frame(3, "pdd_trade_TradeTeleported", "T-1"),
        ],
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "sla = []\n[sources.pdd]\nclient_id_env = \"ORDERHUB_PDD_CLIENT_ID\"\n\
         client_secret_env = \"ORDERHUB_PDD_CLIENT_SECRET\"\nurl = \"{url}\"\nheartbeat = \"200ms\"\n\
         order_field = \"tid\"\n[sources.pdd.type_map]\npdd_trade_TradeConfirmed = \"paid\"\n\
         pdd_trade_TradeSellerShip = \"shipped\"\n"
    );
    let engine = TestEngine::start_with(&config, dir.path(), secrets_with_channel("pdd")).await;

    // The connect path is /message/{clientId}/{ts}/{sign}.
    let path = next_connection(&mut seen).await;
    let parts: Vec<&str> = path.split('/').collect();
    assert_eq!(parts[..3], ["", "message", PDD_CLIENT], "{path}");
    assert_eq!(parts[4], pdd_sign(parts[3]), "{path}");
    // Both deliveries of message 1 are acknowledged (the second is a duplicate), each with its
    // id, and the client sends heartbeats.
    for _ in 0..2 {
        let ack = next_ack(&mut seen, Duration::from_secs(10))
            .await
            .expect("an ack");
        assert_eq!(
            (ack["id"].as_u64(), ack["type"].as_str()),
            (Some(1), Some("pdd_trade_TradeConfirmed"))
        );
    }
    let mut beats = 0;
    while beats == 0 {
        match tokio::time::timeout(Duration::from_secs(5), seen.recv()).await {
            Ok(Some(Seen::Frame(frame))) if frame["commandType"] == "HeartBeat" => beats += 1,
            Ok(Some(_)) => {}
            other => panic!("no heartbeat: {other:?}"),
        }
    }
    // The connection dies; the client reconnects and carries on.
    drop_connection.send(()).unwrap();
    next_connection(&mut seen).await;
    let ack = next_ack(&mut seen, Duration::from_secs(10))
        .await
        .expect("an ack");
    assert_eq!(ack["id"], 2);
    // An unknown type is journaled as unmapped and acknowledged: never lost, never refused.
    let ack = next_ack(&mut seen, Duration::from_secs(10))
        .await
        .expect("an ack for the unknown type");
    assert_eq!(ack["id"], 3);
    let order = engine
        .eventually("/v1/orders/pdd:T-1", |o| {
            o["state"] == "shipped" && o["timeline"].as_array().is_some_and(|t| t.len() == 3)
        })
        .await;
    assert_eq!(order["timeline"][2]["unmapped"], true);
    assert_eq!(
        order["timeline"][2]["raw_status"],
        "pdd_trade_TradeTeleported"
    );
    let metrics = engine.metrics().await;
    assert!(
        sample(
            &metrics,
            "orderhub_channel_reconnects_total",
            &[("source", "pdd")]
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        sample(&metrics, "orderhub_channel_connected", &[("source", "pdd")]),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "orderhub_ingest_unmapped_total",
            &[("source", "pdd")]
        ),
        Some(1.0)
    );
    engine.stop().await;
}

/// A JOS endpoint on loopback: checks each request's signature, records its window, and
/// answers with whatever orders the test set.
struct FakeJos {
    url: String,
    windows: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    orders: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

async fn fake_jos() -> FakeJos {
    use axum::extract::{Query, State};
    use std::collections::BTreeMap;
    type Shared = (
        std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
        std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    );
    async fn routerjson(
        State((windows, orders)): State<Shared>,
        Query(params): Query<BTreeMap<String, String>>,
    ) -> axum::Json<Value> {
        use md5::{Digest, Md5};
        let mut unsigned = params.clone();
        let sign = unsigned.remove("sign").unwrap_or_default();
        let text: String = unsigned.iter().map(|(k, v)| format!("{k}{v}")).collect();
        let expected = format!("{:X}", Md5::digest(format!("jd-secret{text}jd-secret")));
        if sign != expected || params.get("app_key").map(String::as_str) != Some("jd-key") {
            return axum::Json(
                serde_json::json!({"error_response": {"code": "19", "zh_desc": "sign"}}),
            );
        }
        let business: Value = serde_json::from_str(&params["360buy_param_json"]).unwrap();
        windows.lock().unwrap().push((
            business["start_date"].as_str().unwrap().to_owned(),
            business["end_date"].as_str().unwrap().to_owned(),
        ));
        let list = orders.lock().unwrap().clone();
        axum::Json(serde_json::json!({"jingdong_pop_order_search_responce": {
            "code": "0", "searchorderinfo_result": {"orderTotal": list.len(), "orderInfoList": list}}}))
    }
    let windows = std::sync::Arc::default();
    let orders = std::sync::Arc::default();
    let app = axum::Router::new()
        .route("/routerjson", axum::routing::get(routerjson))
        .with_state((
            std::sync::Arc::clone(&windows),
            std::sync::Arc::clone(&orders),
        ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/routerjson", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    FakeJos {
        url,
        windows,
        orders,
    }
}

fn jd_config(url: &str) -> String {
    let poller = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jd/poller.toml"
    ))
    .unwrap()
    .replace("URL", url)
    .replace("every = \"5m\"", "every = \"200ms\"")
    .replace("overlap = \"2m\"", "overlap = \"1s\"");
    format!("sla = []\n{poller}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jd_is_polled_incrementally_deduplicated_against_pushes_and_resumes_from_its_cursor() {
    let jos = fake_jos().await;
    let order = |id: &str, state: &str| serde_json::json!({"orderId": id, "orderState": state, "modified": "2023-11-15 06:13:20"});
    let dir = tempfile::tempdir().unwrap();
    let engine = TestEngine::start(&jd_config(&jos.url), dir.path()).await;
    // A push already told us 30003 shipped; a poll saying "paid" then adds nothing, even right
    // after the push (before the order index is written).
    let (status, _) = engine
        .post_events(&canonical("push-1", "jd:30003", "jd", "shipped", now_ms()))
        .await;
    assert_eq!(status, 200);
    *jos.orders.lock().unwrap() = vec![
        order("30001", "WAIT_SELLER_STOCK_OUT"),
        order("30002", "FINISHED_L"),
        order("30003", "WAIT_SELLER_STOCK_OUT"),
    ];
    engine
        .eventually("/v1/orders/jd:30001", |o| o["state"] == "paid")
        .await;
    engine
        .eventually("/v1/orders/jd:30002", |o| o["state"] == "completed")
        .await;
    // Several more polls later, every order still has one report.
    let polls = jos.windows.lock().unwrap().len();
    while jos.windows.lock().unwrap().len() < polls + 3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for key in ["jd:30001", "jd:30002", "jd:30003"] {
        let (_, found) = engine.get(&format!("/v1/orders/{key}")).await;
        assert_eq!(
            found["timeline"].as_array().unwrap().len(),
            1,
            "{key}: {found}"
        );
    }
    let (_, pushed) = engine.get("/v1/orders/jd:30003").await;
    assert_eq!(pushed["state"], "shipped");
    // The first window reached back an hour; later ones start at the cursor less the overlap.
    {
        let windows = jos.windows.lock().unwrap();
        assert!(windows[0].0 < windows[windows.len() - 1].0, "{windows:?}");
    }
    // An unknown state is journaled as unmapped (never lost, never read again forever).
    jos.orders
        .lock()
        .unwrap()
        .push(order("30004", "SEND_TO_DISTRIBUTION_CENER"));
    let unknown = engine
        .eventually("/v1/orders/jd:30004", |o| {
            !o["timeline"].as_array().unwrap().is_empty()
        })
        .await;
    assert_eq!(unknown["timeline"][0]["unmapped"], true);
    assert_eq!(
        unknown["timeline"][0]["raw_status"],
        "SEND_TO_DISTRIBUTION_CENER"
    );
    // An item without its status cannot be read: counted, and the cursor stops so the window
    // is read again.
    jos.orders
        .lock()
        .unwrap()
        .push(serde_json::json!({"orderId": "30005", "modified": "2023-11-15 06:23:00"}));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stuck_from = jos.windows.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    {
        let windows = jos.windows.lock().unwrap();
        let starts: std::collections::BTreeSet<&String> = windows[stuck_from..]
            .iter()
            .map(|(start, _)| start)
            .collect();
        assert_eq!(
            starts.len(),
            1,
            "the cursor holds: {:?}",
            &windows[stuck_from..]
        );
    }
    let metrics = engine.metrics().await;
    assert!(
        sample(
            &metrics,
            "orderhub_poll_items_total",
            &[("source", "jd"), ("outcome", "refused")]
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        sample(
            &metrics,
            "orderhub_poll_items_total",
            &[("source", "jd"), ("outcome", "known")]
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        sample(
            &metrics,
            "orderhub_ingest_unmapped_total",
            &[("source", "jd")]
        ),
        Some(1.0)
    );
    jos.orders.lock().unwrap().pop();
    tokio::time::sleep(Duration::from_millis(600)).await;
    engine.stop().await;

    // Restarted on the same journal, the poller resumes at its cursor, not an hour back.
    let before = jos.windows.lock().unwrap().len();
    let last_start = jos.windows.lock().unwrap()[before - 1].0.clone();
    let engine = TestEngine::start(&jd_config(&jos.url), dir.path()).await;
    while jos.windows.lock().unwrap().len() == before {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resumed = jos.windows.lock().unwrap()[before].0.clone();
    assert!(
        resumed >= last_start,
        "resumed at {resumed}, last start {last_start}"
    );
    engine.stop().await;
}

/// TOP's link framing, written independently of the engine's codec (the subset TMC uses).
mod top {
    pub(super) enum V {
        S(String),
        L(i64),
    }

    fn counted(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as i32).to_le_bytes());
        out.extend_from_slice(bytes);
    }

    pub(super) fn frame(kind: u8, token: Option<&str>, content: &[(&str, V)]) -> Vec<u8> {
        let mut out = vec![2, kind];
        if let Some(token) = token {
            out.extend_from_slice(&[5, 0]);
            counted(&mut out, token.as_bytes());
        }
        for (name, value) in content {
            out.extend_from_slice(&[1, 0]);
            counted(&mut out, name.as_bytes());
            match value {
                V::S(s) => {
                    out.push(1);
                    counted(&mut out, s.as_bytes());
                }
                V::L(l) => {
                    out.push(5);
                    out.extend_from_slice(&l.to_le_bytes());
                }
            }
        }
        out.extend_from_slice(&[0, 0]);
        out
    }

    /// `(type, token, content as text)` of a frame.
    pub(super) fn parse(bytes: &[u8]) -> (u8, Option<String>, Vec<(String, String)>) {
        let mut at = 2;
        let int = |at: &mut usize| {
            let v = i32::from_le_bytes(bytes[*at..*at + 4].try_into().unwrap());
            *at += 4;
            v
        };
        let text = |at: &mut usize| {
            let len = i32::from_le_bytes(bytes[*at..*at + 4].try_into().unwrap()) as usize;
            *at += 4;
            let s = String::from_utf8(bytes[*at..*at + len].to_vec()).unwrap();
            *at += len;
            s
        };
        let (mut token, mut content) = (None, Vec::new());
        loop {
            let header = i16::from_le_bytes(bytes[at..at + 2].try_into().unwrap());
            at += 2;
            match header {
                0 => break,
                4 => {
                    int(&mut at);
                }
                5 => token = Some(text(&mut at)),
                1 => {
                    let name = text(&mut at);
                    let format = bytes[at];
                    at += 1;
                    let value = match format {
                        1 => text(&mut at),
                        4 => int(&mut at).to_string(),
                        5 => {
                            let v = i64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
                            at += 8;
                            v.to_string()
                        }
                        other => panic!("format {other}"),
                    };
                    content.push((name, value));
                }
                other => panic!("header {other}"),
            }
        }
        (bytes[1], token, content)
    }
}

#[allow(clippy::result_large_err)]
async fn tmc_server(
    script: Vec<Vec<Vec<u8>>>,
) -> (
    String,
    mpsc::UnboundedReceiver<Seen>,
    mpsc::UnboundedSender<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let (seen, seen_rx) = mpsc::unbounded_channel();
    let (drop_tx, mut drop_rx) = mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        for (n, frames) in script.into_iter().enumerate() {
            let (stream, _) = listener.accept().await.unwrap();
            let mut socket = tokio_tungstenite::accept_async(stream).await.unwrap();
            // The connect frame, then our answer with the session token.
            let Some(Ok(Message::Binary(hello))) = socket.next().await else {
                panic!("no connect frame");
            };
            let (kind, _, content) = top::parse(&hello);
            assert_eq!(kind, 0);
            let get = |name: &str| content.iter().find(|(k, _)| k == name).unwrap().1.clone();
            let signed = format!(
                "app_key{}group_name{}timestamp{}",
                get("app_key"),
                get("group_name"),
                get("timestamp")
            );
            let expected = {
                use md5::{Digest, Md5};
                format!("{:X}", Md5::digest(format!("tb-secret{signed}tb-secret")))
            };
            assert_eq!(get("sign"), expected);
            let _ = seen.send(Seen::Connected(format!("connect {n}")));
            let token = format!("tok-{n}");
            socket
                .send(Message::Binary(top::frame(1, Some(&token), &[]).into()))
                .await
                .unwrap();
            for frame in frames {
                socket.send(Message::Binary(frame.into())).await.unwrap();
            }
            loop {
                tokio::select! {
                    _ = drop_rx.recv() => break,
                    message = socket.next() => match message {
                        Some(Ok(Message::Binary(bytes))) => {
                            let (kind, token, content) = top::parse(&bytes);
                            let mut frame = serde_json::json!({"type": kind, "token": token});
                            for (k, v) in content {
                                frame[k] = Value::String(v);
                            }
                            let _ = seen.send(Seen::Frame(frame));
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    }
                }
            }
        }
    });
    (url, seen_rx, drop_tx)
}

fn tmc_data(id: i64, topic: &str, status: &str) -> Vec<u8> {
    let content = format!(r#"{{"tid":3820011234567,"status":"{status}","seller_nick":"小店"}}"#);
    top::frame(
        2,
        None,
        &[
            ("id", top::V::L(id)),
            ("topic", top::V::S(topic.into())),
            ("content", top::V::S(content)),
        ],
    )
}

/// The next confirmation (`__kind` 2), skipping pulls, or `None` after `wait`.
async fn next_confirm(seen: &mut mpsc::UnboundedReceiver<Seen>, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, seen.recv()).await {
            Ok(Some(Seen::Frame(frame))) if frame["__kind"] == "2" => return Some(frame),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmc_messages_are_confirmed_once_journaled_and_the_client_reconnects() {
    let paid = tmc_data(
        90001,
        "taobao_trade_TradeBuyerPay",
        "WAIT_SELLER_SEND_GOODS",
    );
    let (url, mut seen, drop_connection) = tmc_server(vec![
        vec![
            paid.clone(),
            paid,
            tmc_data(90002, "taobao_trade_TradeChanged", "SOMETHING_NEW"),
        ],
        vec![tmc_data(
            90003,
            "taobao_trade_TradeChanged",
            "WAIT_BUYER_CONFIRM_GOODS",
        )],
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let default = orderhub_engine::config::Config::embedded().unwrap();
    assert!(default.sources.contains_key("tmc"));
    let config = format!(
        "sla = []\n[sources.tmc]\napp_key_env = \"ORDERHUB_TAOBAO_APP_KEY\"\n\
         app_secret_env = \"ORDERHUB_TAOBAO_APP_SECRET\"\nurl = \"{url}\"\ngroup = \"default\"\n\
         pull_every = \"200ms\"\n[sources.tmc.topic_map]\ntaobao_trade_TradeBuyerPay = \"paid\"\n\
         [sources.tmc.status_map]\nWAIT_BUYER_CONFIRM_GOODS = \"shipped\"\n"
    );
    let engine = TestEngine::start_with(&config, dir.path(), secrets_with_channel("tmc")).await;
    next_connection(&mut seen).await;
    for _ in 0..2 {
        let confirm = next_confirm(&mut seen, Duration::from_secs(10))
            .await
            .expect("a confirmation");
        assert_eq!(
            (confirm["id"].as_str(), confirm["token"].as_str()),
            (Some("90001"), Some("tok-0"))
        );
    }
    // An unknown status is journaled as unmapped and confirmed: never lost, never refused.
    let confirm = next_confirm(&mut seen, Duration::from_secs(10))
        .await
        .expect("a confirmation of the unknown status");
    assert_eq!(confirm["id"], "90002");
    // Pull requests carry the session token.
    loop {
        match tokio::time::timeout(Duration::from_secs(5), seen.recv()).await {
            Ok(Some(Seen::Frame(frame))) if frame["__kind"] == "1" => {
                assert_eq!(frame["token"], "tok-0");
                break;
            }
            Ok(Some(_)) => {}
            other => panic!("no pull request: {other:?}"),
        }
    }
    drop_connection.send(()).unwrap();
    next_connection(&mut seen).await;
    let confirm = next_confirm(&mut seen, Duration::from_secs(10))
        .await
        .expect("a confirmation");
    assert_eq!(
        (confirm["id"].as_str(), confirm["token"].as_str()),
        (Some("90003"), Some("tok-1"))
    );
    let order = engine
        .eventually("/v1/orders/taobao:3820011234567", |o| {
            o["state"] == "shipped"
        })
        .await;
    assert_eq!(order["timeline"].as_array().unwrap().len(), 3);
    assert_eq!(order["timeline"][1]["unmapped"], true);
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_taken_for_dead_and_replaced() {
    // The first connection delivers one message, then nothing ever arrives on it again (a
    // half-open connection: the TCP socket stays up).
    let (url, mut seen, _drop) = message_service(vec![
        vec![frame(1, "pdd_trade_TradeConfirmed", "T-9")],
        vec![frame(2, "pdd_trade_TradeSellerShip", "T-9")],
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "sla = []\n[sources.pdd]\nclient_id_env = \"ORDERHUB_PDD_CLIENT_ID\"\n\
         client_secret_env = \"ORDERHUB_PDD_CLIENT_SECRET\"\nurl = \"{url}\"\nheartbeat = \"100ms\"\n\
         idle_timeout = \"600ms\"\norder_field = \"tid\"\n[sources.pdd.type_map]\n\
         pdd_trade_TradeConfirmed = \"paid\"\npdd_trade_TradeSellerShip = \"shipped\"\n"
    );
    let engine = TestEngine::start_with(&config, dir.path(), secrets_with_channel("pdd")).await;
    next_connection(&mut seen).await;
    let ack = next_ack(&mut seen, Duration::from_secs(10)).await.unwrap();
    assert_eq!(ack["id"], 1);
    // Heartbeats go out, nothing comes back: after idle_timeout the client reconnects.
    next_connection(&mut seen).await;
    let ack = next_ack(&mut seen, Duration::from_secs(10)).await.unwrap();
    assert_eq!(ack["id"], 2);
    engine
        .eventually("/v1/orders/pdd:T-9", |o| o["state"] == "shipped")
        .await;
    let metrics = engine.metrics().await;
    assert!(
        sample(
            &metrics,
            "orderhub_channel_reconnects_total",
            &[("source", "pdd")]
        )
        .unwrap()
            >= 1.0
    );
    engine.stop().await;
}

/// A WangDianTong openapi2 stand-in: `logistics_sync_query.php` returns the shipped rows not
/// yet acknowledged (at most `limit`), `logistics_sync_ack.php` records acks — failing the first
/// call with HTTP 500, as a crash between the journal commit and the ack would leave things.
struct FakeWdt {
    url: String,
    acks: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    queries: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

async fn fake_wdt(rows: Vec<Value>) -> FakeWdt {
    use axum::extract::{Path, State};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    type Shared = (
        Arc<Mutex<Vec<Value>>>,
        Arc<Mutex<Vec<Value>>>,
        Arc<AtomicUsize>,
        Arc<AtomicUsize>,
    );
    async fn call(
        State((rows, acks, queries, ack_calls)): State<Shared>,
        Path(method): Path<String>,
        body: String,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        use md5::{Digest, Md5};
        let form: std::collections::BTreeMap<String, String> =
            form_urlencoded::parse(body.as_bytes())
                .into_owned()
                .collect();
        // openapi2's sign: sorted pairs `%02d-key:%04d-value` (character counts) joined by `;`.
        let joined = form
            .iter()
            .filter(|(k, _)| *k != "sign")
            .map(|(k, v)| format!("{:02}-{k}:{:04}-{v}", k.chars().count(), v.chars().count()))
            .collect::<Vec<_>>()
            .join(";");
        let expected = format!("{:x}", Md5::digest(format!("{joined}wdt-appsecret")));
        if form.get("sign") != Some(&expected)
            || form.get("sid").map(String::as_str) != Some("wdtsid")
        {
            return axum::Json(serde_json::json!({"code": 1010, "message": "sign error"}))
                .into_response();
        }
        match method.as_str() {
            "logistics_sync_query.php" => {
                queries.fetch_add(1, Ordering::SeqCst);
                let limit: usize = form["limit"].parse().unwrap();
                let acked: Vec<String> = acks
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|a| a["rec_id"].as_str().unwrap().to_owned())
                    .collect();
                let waiting: Vec<Value> = rows
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|r| !acked.contains(&r["rec_id"].as_str().unwrap().to_owned()))
                    .take(limit)
                    .cloned()
                    .collect();
                axum::Json(serde_json::json!({"code": 0, "message": "", "total_count": waiting.len(), "trades": waiting})).into_response()
            }
            "logistics_sync_ack.php" => {
                if ack_calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
                }
                let list: Vec<Value> = serde_json::from_str(&form["logistics_list"]).unwrap();
                acks.lock().unwrap().extend(list);
                axum::Json(serde_json::json!({"code": 0, "message": "", "errors": []}))
                    .into_response()
            }
            _ => axum::http::StatusCode::NOT_FOUND.into_response(),
        }
    }
    let acks: Arc<Mutex<Vec<Value>>> = Arc::default();
    let queries: Arc<AtomicUsize> = Arc::default();
    let app = axum::Router::new()
        .route("/openapi2/{method}", axum::routing::post(call))
        .with_state((
            Arc::new(Mutex::new(rows)),
            acks.clone(),
            queries.clone(),
            Arc::default(),
        ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/openapi2", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    FakeWdt { url, acks, queries }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wdt_shipments_are_pulled_journaled_then_acknowledged_exactly() {
    let page: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/wdt/logistics_sync_query.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let wdt = fake_wdt(page["trades"].as_array().unwrap().clone()).await;
    let dir = tempfile::tempdir().unwrap();
    // Pages of two rows: the three waiting rows take two requests per round.
    let config = format!(
        "sla = []\n[sources.events]\nsecret_env = \"ORDERHUB_EVENTS_SECRET\"\ntolerance = \"5m\"\n\
         [sources.wdt]\nsid_env = \"ORDERHUB_WDT_SID\"\nappkey_env = \"ORDERHUB_WDT_APPKEY\"\n\
         appsecret_env = \"ORDERHUB_WDT_APPSECRET\"\nurl = \"{}\"\nevery = \"200ms\"\nlimit = 2\n\
         [sources.wdt.shops]\nyz01 = \"youzan\"\n[sources.wdt.status_map]\n\
         consigned = \"shipped\"\nconsigned_part = \"none\"\n",
        wdt.url
    );
    let engine = TestEngine::start_with(&config, dir.path(), secrets_with_channel("wdt")).await;
    let order = "youzan:E20231115093012034500012";
    let (status, _) = engine
        .post_events(&canonical("yz-paid", order, "youzan", "paid", now_ms()))
        .await;
    assert_eq!(status, 200);
    let shipped = engine
        .eventually(&format!("/v1/orders/{order}"), |o| o["state"] == "shipped")
        .await;
    assert_eq!(shipped["fields"]["waybill_no"], "SF1400123456789");
    assert_eq!(shipped["systems"]["wdt"]["raw_status"], "consigned");
    // Every row is acknowledged once it is journaled — the first ack call failed, so the rows
    // came again and were taken as duplicates — and the unusable row as failed, with why.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if wdt.acks.lock().unwrap().len() >= 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "acks: {:?}",
            wdt.acks.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let acks = wdt.acks.lock().unwrap().clone();
    let status_of = |rec: &str| {
        acks.iter()
            .filter(|a| a["rec_id"] == rec)
            .map(|a| a["status"].as_i64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(status_of("2778958909363191820"), [0]);
    assert_eq!(status_of("2778958909363191821"), [0]);
    assert_eq!(status_of("2778958909363191822"), [1]);
    let failed = acks.iter().find(|a| a["status"] == 1).unwrap();
    assert!(
        failed["message"].as_str().unwrap().contains("no-such-shop"),
        "{failed}"
    );
    assert!(wdt.queries.load(std::sync::atomic::Ordering::SeqCst) >= 3);
    // Read twice, journaled once.
    let settled = engine.get(&format!("/v1/orders/{order}")).await.1;
    let from_wdt = settled["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["source"] == "wdt")
        .count();
    assert_eq!(from_wdt, 1);
    let partial = engine
        .eventually("/v1/orders/youzan:E20231115093012034500099", |o| {
            !o["timeline"].as_array().unwrap().is_empty()
        })
        .await;
    assert_eq!(partial["timeline"][0]["raw_status"], "consigned_part");
    assert_eq!(partial["timeline"][0]["mapped"], "none");
    let source = engine.source("wdt").await;
    assert_eq!(source["kind"], "connection");
    assert!(
        source["rejected"]["total"].as_u64().unwrap() >= 1,
        "{source}"
    );
    // There is no WDT push route any more.
    let (status, _) = engine.post_source("wdt", &[], "tid=1").await;
    assert_eq!(status, 404);
    engine.stop().await;
}
