//! The ops board over HTTP: the page is served from the binary behind the operators' tokens
//! (`?token=` for the browser), its snapshot shows stuck orders, holds and approvals, and its
//! event stream pushes a change within seconds. (What the page renders is tested in a browser
//! by the board issue's Chromium tests.)

use super::support::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const OPERATORS: &str = "\
[[operators]]\nname = \"wall\"\nrole = \"viewer\"\ntoken_env = \"T_WALL\"\n\
[[operators]]\nname = \"li.na\"\nrole = \"operator\"\ntoken_env = \"T_LINA\"\n";

async fn start(dir: &std::path::Path) -> TestEngine {
    let secrets = with_secrets(
        secrets(),
        &[("T_WALL", "wall-token"), ("T_LINA", "lina-token")],
    );
    TestEngine::start_with(
        &format!(
            "rules = []\n[[sla]]\nname = \"allocate_within_1s\"\nfrom = \"paid\"\nwithin = \"1s\"\n{OPERATORS}"
        ),
        dir,
        secrets,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_comes_from_the_binary_behind_the_operators_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start(dir.path()).await;
    let (status, _) = engine.get("/board").await;
    assert_eq!(status, 401, "no token");
    let response = engine
        .client
        .get(format!("{}/board?view=floor&token=wrong", engine.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = engine
        .client
        .get(format!("{}/board?view=floor&token=wall-token", engine.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let page = response.text().await.unwrap();
    assert!(page.contains("EventSource(\"/v1/board/events\""));
    assert!(page.contains("已发货未揽收"), "Chinese labels");
    assert!(
        !page.contains("http://") && !page.contains("https://") && !page.contains("//cdn"),
        "nothing loads from elsewhere"
    );
    // The wall-screen link as a QR code.
    let response = engine
        .client
        .get(format!(
            "{}/v1/board/qr?token=wall-token&text=http%3A%2F%2F10.0.0.5%3A8080%2Fboard%3Fview%3Dfloor",
            engine.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/svg+xml");
    assert!(response.text().await.unwrap().contains("<svg"));
    let (status, _) = engine.get("/v1/board/qr?token=wall-token").await;
    assert_eq!(status, 400, "no text");
    // The token only works in the query on the board's routes.
    let (status, _) = engine.get("/v1/orders?token=wall-token").await;
    assert_eq!(status, 401);
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_default_config_the_board_answers_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let engine = TestEngine::start("", dir.path()).await;
    let response = engine
        .client
        .get(format!("{}/board", engine.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "no operators: loopback callers");
    let (status, snapshot) = engine.get("/v1/board/snapshot").await;
    assert_eq!(status, 200, "{snapshot}");
    let slas: Vec<&str> = snapshot["stuck"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["sla"].as_str())
        .collect();
    assert_eq!(slas.len(), 3, "the default SLA rules: {slas:?}");
    assert!(snapshot["sinks"].is_array(), "{snapshot}");
    engine.stop().await;
}

/// Reads the event stream until a snapshot satisfies `check` (or `within` passes).
async fn until_snapshot(
    response: &mut reqwest::Response,
    within: Duration,
    check: impl Fn(&Value) -> bool,
) -> Option<Value> {
    let deadline = Instant::now() + within;
    let mut buffer = String::new();
    while Instant::now() < deadline {
        let chunk = tokio::time::timeout(deadline - Instant::now(), response.chunk()).await;
        let Ok(Ok(Some(chunk))) = chunk else {
            return None;
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let message: String = buffer.drain(..end + 2).collect();
            if let Some(data) = message.lines().find_map(|l| l.strip_prefix("data: "))
                && message.contains("event: snapshot")
            {
                let snapshot: Value = serde_json::from_str(data).unwrap();
                if check(&snapshot) {
                    return Some(snapshot);
                }
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_board_shows_stuck_orders_and_holds_and_pushes_changes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start(dir.path()).await;
    let mut stream = engine
        .client
        .get(format!("{}/v1/board/events?token=wall-token", engine.base))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(
        stream.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let first = until_snapshot(&mut stream, Duration::from_secs(5), |_| true)
        .await
        .expect("a first snapshot");
    assert_eq!(first["stuck"][0]["sla"], "allocate_within_1s");
    assert_eq!(first["shipped_without_pickup"], 0);

    // An order paid and not allocated within 1 s is stuck; the stream says so by itself.
    let at = now_ms();
    assert_eq!(
        engine
            .post_events(&canonical("b1", "shop:b1", "shop", "paid", at))
            .await
            .0,
        200
    );
    let posted = Instant::now();
    let stuck = until_snapshot(&mut stream, Duration::from_secs(6), |s| {
        s["stuck"][0]["orders"]
            .as_array()
            .is_some_and(|o| o.iter().any(|o| o["key"] == "shop:b1"))
    })
    .await
    .expect("the stuck order is pushed");
    let order = &stuck["stuck"][0]["orders"][0];
    assert!(order["overdue_ms"].as_i64().unwrap() >= 0, "{order}");
    assert!(
        posted.elapsed() < Duration::from_secs(4),
        "within 2 s of being overdue"
    );
    // An operator holds another order: pushed with who and why.
    assert_eq!(
        engine
            .post_events(&canonical("b2", "shop:b2", "shop", "paid", now_ms()))
            .await
            .0,
        200
    );
    let (status, body) = engine
        .post_as(
            "lina-token",
            "/v1/orders/shop:b2/hold",
            r#"{"reason":"call the buyer"}"#,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let held = until_snapshot(&mut stream, Duration::from_secs(4), |s| {
        s["holds"].as_array().is_some_and(|h| !h.is_empty())
    })
    .await
    .expect("the hold is pushed");
    assert_eq!(held["holds"][0]["key"], "shop:b2");
    assert_eq!(held["holds"][0]["reason"], "call the buyer");
    assert_eq!(held["holds"][0]["by"], "li.na");
    // New orders per channel and hour.
    until_snapshot(&mut stream, Duration::from_secs(3), |s| {
        s["new_orders"].as_array().is_some_and(|rows| {
            rows.iter()
                .any(|r| r["channel"] == "shop" && r["count"] == 2)
        })
    })
    .await
    .expect("new orders per channel");
    // The same data as a plain snapshot; a viewer may read it.
    let (status, snapshot) = engine.get("/v1/board/snapshot?token=wall-token").await;
    assert_eq!(status, 200, "{snapshot}");
    assert!(snapshot["at"].as_i64().unwrap() > 0);
    assert!(
        snapshot["sinks"].is_array() && snapshot["new_orders"].is_array(),
        "{snapshot}"
    );
    let channels: Vec<&str> = snapshot["new_orders"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["channel"].as_str())
        .collect();
    assert!(channels.contains(&"shop"), "{snapshot}");
    drop(stream);
    engine.stop().await;
}

/// Debian's chromium and Playwright for Python (`.ci/requirements-board.txt`), or why not.
fn browser() -> Result<String, String> {
    let python = std::env::var("ORDERHUB_PYTHON").unwrap_or_else(|_| "python3".into());
    if !std::path::Path::new("/usr/bin/chromium").is_file() {
        return Err("/usr/bin/chromium is missing (apt-get install chromium)".into());
    }
    let probe = std::process::Command::new(&python)
        .args(["-c", "import playwright.sync_api"])
        .output()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    if !probe.status.success() {
        return Err(format!(
            "{python} lacks Playwright (pip install --require-hashes -r .ci/requirements-board.txt)"
        ));
    }
    Ok(python)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_board_renders_in_a_real_browser() {
    let python = match browser() {
        Ok(python) => python,
        Err(why) => {
            assert!(
                std::env::var_os("ORDERHUB_REQUIRE_BROWSER").is_none(),
                "the board's browser test cannot run: {why}"
            );
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    // Chromium is heavy on two cores: not beside the cluster tests' leases and heartbeats.
    let _turn = super::cluster::IN_PROCESS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = with_secrets(
        secrets(),
        &[("T_WALL", "wall-token"), ("T_LINA", "lina-token")],
    );
    let engine = TestEngine::start_with(
        "rules = []\n[[sla]]\nname = \"allocate_within_1s\"\nfrom = \"paid\"\nwithin = \"1s\"\n\
         [[operators]]\nname = \"wall\"\nrole = \"viewer\"\ntoken_env = \"T_WALL\"\n\
         [[operators]]\nname = \"li.na\"\nrole = \"approver\"\ntoken_env = \"T_LINA\"\n\
         [[approvals]]\nname = \"intercept\"\nwhen = 'event.status == \"intercept_requested\"'\n\
         required = 1\nrole = \"approver\"\nwithin = \"20m\"\n",
        dir.path(),
        secrets,
    )
    .await;
    let at = now_ms();
    for (id, order, status) in [
        ("s1", "shop:s1", "paid"),
        ("a1", "shop:a1", "paid"),
        ("a2", "shop:a1", "shipped"),
        ("a3", "shop:a1", "intercept_requested"),
    ] {
        let mut body: serde_json::Value =
            serde_json::from_str(&canonical(id, order, "shop", status, at)).unwrap();
        if status == "shipped" {
            // Customer service finds it by its waybill.
            body["fields"] = serde_json::json!({"waybill_no": "SF1402399417601"});
        }
        assert_eq!(engine.post_events(&body.to_string()).await.0, 200);
    }
    // Screenshots are kept as the run's artifacts.
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("board-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/board/check.py");
    let base = engine.base.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&python)
            .arg(&script)
            .args([base.as_str(), "lina-token", "wall-token"])
            .arg(&shots)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "the board in chromium:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    engine.stop().await;
}
