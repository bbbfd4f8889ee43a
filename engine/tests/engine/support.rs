//! Shared test support: an in-process engine on port 0, and request signing.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use orderhub_engine::config::Config;
use orderhub_engine::secrets::SecretLookup;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub(crate) const DOUYIN_KEY: &str = "7001";
pub(crate) const DOUYIN_SECRET: &str = "douyin-test-secret";
pub(crate) const EVENTS_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
pub(crate) const YOUZAN_CLIENT_ID: &str = "yz-client";
pub(crate) const YOUZAN_CLIENT_SECRET: &str = "yz-secret";
/// The key the Kuaishou fixtures were encrypted with: base64("kuaishou-msg-key").
pub(crate) const KUAISHOU_MESSAGE_KEY: &str = "a3VhaXNob3UtbXNnLWtleQ==";
pub(crate) const WECHAT_TOKEN: &str = "orderhub-wechat-token";
/// The EncodingAESKey the WeChat safe-mode fixture was encrypted with: WeChat's own sample key,
/// non-canonical base64.
pub(crate) const WECHAT_AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

/// The secret path segment of SF's route push.
pub(crate) const SF_PUSH_TOKEN: &str = "sf-push-token-test";

/// The environment the engine sees in tests.
pub(crate) fn secrets() -> SecretLookup {
    Arc::new(|name: &str| match name {
        "ORDERHUB_DOUYIN_APP_KEY" => Some(DOUYIN_KEY.into()),
        "ORDERHUB_DOUYIN_APP_SECRET" => Some(DOUYIN_SECRET.into()),
        "ORDERHUB_EVENTS_SECRET" => Some(EVENTS_SECRET.into()),
        "ORDERHUB_YOUZAN_CLIENT_ID" => Some(YOUZAN_CLIENT_ID.into()),
        "ORDERHUB_YOUZAN_CLIENT_SECRET" => Some(YOUZAN_CLIENT_SECRET.into()),
        "ORDERHUB_KUAISHOU_APP_KEY" => Some("ks_app_key_test".into()),
        "ORDERHUB_KUAISHOU_MESSAGE_KEY" => Some(KUAISHOU_MESSAGE_KEY.into()),
        "ORDERHUB_WECHAT_TOKEN" => Some(WECHAT_TOKEN.into()),
        "ORDERHUB_WECHAT_AES_KEY" => Some(WECHAT_AES_KEY.into()),
        "ORDERHUB_SF_PUSH_TOKEN" => Some(SF_PUSH_TOKEN.into()),
        "ORDERHUB_SF_PARTNER_ID" => Some("OH_PARTNER".into()),
        "ORDERHUB_SF_CHECKWORD" => Some("sf-checkword-test".into()),
        "ORDERHUB_DEALER_PORTAL_SECRET" => Some(EVENTS_SECRET.into()),
        "ORDERHUB_JD_APP_KEY" => Some("jd-key".into()),
        "ORDERHUB_JD_APP_SECRET" => Some("jd-secret".into()),
        _ => None,
    })
}

/// [`secrets`] plus the credentials of one source the engine connects to or polls (`pdd`,
/// `tmc`, `wdt`). Only that channel's test uses it, with a config that points it at a local
/// stand-in: the others keep no credentials, so they never start (with them and the default
/// URLs an engine would try to reach the real platforms).
pub(crate) fn secrets_with_channel(channel: &'static str) -> SecretLookup {
    let base = secrets();
    Arc::new(move |name: &str| {
        let value = match (channel, name) {
            ("pdd", "ORDERHUB_PDD_CLIENT_ID") => "pdd-client",
            ("pdd", "ORDERHUB_PDD_CLIENT_SECRET") => "pdd-secret",
            ("tmc", "ORDERHUB_TAOBAO_APP_KEY") => "12345678",
            ("tmc", "ORDERHUB_TAOBAO_APP_SECRET") => "tb-secret",
            ("wdt", "ORDERHUB_WDT_SID") => "wdtsid",
            ("wdt", "ORDERHUB_WDT_APPKEY") => "wdtkey",
            ("wdt", "ORDERHUB_WDT_APPSECRET") => "wdt-appsecret",
            _ => return base(name),
        };
        Some(value.into())
    })
}

/// `base` plus the variables `extra` (name, value).
pub(crate) fn with_secrets(
    base: SecretLookup,
    extra: &[(&'static str, &'static str)],
) -> SecretLookup {
    let extra: Vec<(&'static str, &'static str)> = extra.to_vec();
    Arc::new(move |name: &str| {
        extra
            .iter()
            .find(|(variable, _)| *variable == name)
            .map(|(_, value)| (*value).to_owned())
            .or_else(|| base(name))
    })
}

/// An engine running in this process on a free loopback port.
pub(crate) struct TestEngine {
    pub(crate) base: String,
    pub(crate) client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), orderhub_engine::EngineError>>>,
}

impl TestEngine {
    /// Starts with `toml` layered over the embedded default and the journal in `dir`.
    pub(crate) async fn start(toml: &str, dir: &Path) -> TestEngine {
        Self::start_with(toml, dir, secrets()).await
    }

    pub(crate) async fn start_with(toml: &str, dir: &Path, secrets: SecretLookup) -> TestEngine {
        // ORDERHUB_TEST_LOG=FILTER (e.g. `warn`) shows what the in-process engines log, to
        // diagnose a test that failed (.ci/run sets it to the shutdown and cluster warnings).
        if let Ok(filter) = std::env::var("ORDERHUB_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .try_init();
        }
        let mut config = Config::layered(Some(("test.toml".into(), toml.into()))).unwrap();
        config.server.data_dir = dir.to_path_buf();
        let listener = orderhub_engine::listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(orderhub_engine::run(config, listener, secrets, async {
            let _ = rx.await;
        }));
        TestEngine {
            base,
            client: orderhub_engine::http_client::builder().build().unwrap(),
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Sends SIGTERM's equivalent and waits for a clean exit: within `server.shutdown_grace`
    /// (30 s by default; the tests that shorten it check that themselves), plus 5 s.
    pub(crate) async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        let result = tokio::time::timeout(Duration::from_secs(35), self.task.take().unwrap())
            .await
            .expect("engine stops within its grace period")
            .unwrap();
        result.expect("engine exits cleanly");
    }

    pub(crate) async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// POST `body` to `path` as the operator whose token is `token`.
    pub(crate) async fn post_as(&self, token: &str, path: &str, body: &str) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        read(response).await
    }

    /// GET `path` as the operator whose token is `token`.
    pub(crate) async fn get_as(&self, token: &str, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        read(response).await
    }

    pub(crate) async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// POSTs a Douyin push signed with `secret`.
    pub(crate) async fn post_douyin_signed(&self, body: &str, secret: &str) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}/v1/ingest/douyin", self.base))
            .header("app-id", DOUYIN_KEY)
            .header("event-sign", douyin_sign(body, secret))
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        read(response).await
    }

    pub(crate) async fn post_douyin(&self, body: &str) -> (u16, Value) {
        self.post_douyin_signed(body, DOUYIN_SECRET).await
    }

    /// POSTs `body` to `/v1/ingest/{source}` with `headers`; the answer's status and text.
    pub(crate) async fn post_source(
        &self,
        source: &str,
        headers: &[(&str, String)],
        body: impl Into<reqwest::Body>,
    ) -> (u16, String) {
        self.post_source_query(source, "", headers, body).await
    }

    /// As [`Self::post_source`], with a raw query string.
    pub(crate) async fn post_source_query(
        &self,
        source: &str,
        query: &str,
        headers: &[(&str, String)],
        body: impl Into<reqwest::Body>,
    ) -> (u16, String) {
        let separator = if query.is_empty() { "" } else { "?" };
        let mut request = self
            .client
            .post(format!(
                "{}/v1/ingest/{source}{separator}{query}",
                self.base
            ))
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    /// `source`'s entry of `GET /v1/sources`.
    pub(crate) async fn source(&self, source: &str) -> Value {
        let (status, sources) = self.get("/v1/sources").await;
        assert_eq!(status, 200, "{sources}");
        sources["sources"]
            .as_array()
            .and_then(|all| all.iter().find(|s| s["name"] == source))
            .unwrap_or_else(|| panic!("no source {source} in {sources}"))
            .clone()
    }

    /// POSTs canonical events signed with Standard Webhooks.
    pub(crate) async fn post_events(&self, body: &str) -> (u16, Value) {
        let response = sign_events(
            self.client.post(format!("{}/v1/events", self.base)),
            body,
            &format!("wh-{}", fresh_id()),
            now_s(),
        )
        .send()
        .await
        .unwrap();
        read(response).await
    }

    /// Polls `path` until `check` accepts the JSON answer.
    pub(crate) async fn eventually(&self, path: &str, check: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        for _ in 0..200 {
            let (status, body) = self.get(path).await;
            if status == 200 && check(&body) {
                return body;
            }
            last = body;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{path} never satisfied the check; last answer: {last}");
    }
}

pub(crate) async fn read(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub(crate) fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub(crate) fn fresh_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// md5hex(app_key + body + secret).
pub(crate) fn douyin_sign(body: &str, secret: &str) -> String {
    let mut hasher = Md5::new();
    hasher.update(DOUYIN_KEY.as_bytes());
    hasher.update(body.as_bytes());
    hasher.update(secret.as_bytes());
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A Douyin push of one message.
pub(crate) fn douyin_push(tag: &str, msg_id: &str, p_id: &str, time_s: i64) -> String {
    let data =
        serde_json::json!({ "p_id": p_id, "shop_id": 77, "update_time": time_s }).to_string();
    serde_json::json!([{ "tag": tag, "msg_id": msg_id, "data": data }]).to_string()
}

/// A plain-mode query signed with the test token at `timestamp`.
pub(crate) fn wechat_query(timestamp: i64, nonce: &str) -> String {
    use sha1::{Digest, Sha1};
    let mut parts = [
        WECHAT_TOKEN.to_owned(),
        timestamp.to_string(),
        nonce.to_owned(),
    ];
    parts.sort();
    let signature = format!("{:x}", Sha1::digest(parts.concat().as_bytes()));
    format!("signature={signature}&timestamp={timestamp}&nonce={nonce}")
}

/// Adds Standard Webhooks headers for `body`.
pub(crate) fn sign_events(
    request: reqwest::RequestBuilder,
    body: &str,
    id: &str,
    timestamp: i64,
) -> reqwest::RequestBuilder {
    let key = base64::engine::general_purpose::STANDARD
        .decode(EVENTS_SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    request
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", format!("v1,{signature}"))
        .header("content-type", "application/json")
        .body(body.to_owned())
}

/// A canonical event body.
pub(crate) fn canonical(id: &str, order: &str, source: &str, status: &str, at_ms: i64) -> String {
    serde_json::json!({
        "event_id": id, "order": order, "source": source, "status": status, "occurred_at": at_ms
    })
    .to_string()
}

/// The value of the sample of `name` whose labels include all of `labels`.
pub(crate) fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            return None;
        }
        if !labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        {
            return None;
        }
        rest.rsplit(' ').next()?.parse().ok()
    })
}

/// How long past a deadline a breach must be detected to count as late, plus a margin.
pub(crate) const LATE_MARGIN_MS: i64 = orderhub_actors::shard::LATE_AFTER_MS + 500;

/// One request a [`FakeSink`] received.
#[derive(Clone, Debug)]
pub(crate) struct Received {
    pub(crate) path: String,
    pub(crate) id: String,
    pub(crate) order: String,
    pub(crate) operation: String,
    pub(crate) at: std::time::Instant,
    pub(crate) answered: u16,
    /// The request's JSON body.
    pub(crate) body: Value,
}

/// What a [`FakeSink`] does with request number `n` (from 0) at time `t` since it started.
pub(crate) type Behaviour = dyn Fn(usize, Duration) -> Fault + Send + Sync;

/// An injected fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    None,
    Status(u16),
    TooManyRequests { retry_after_s: u64 },
    Stall(Duration),
}

/// A downstream system on loopback that records every request and injects faults.
pub(crate) struct FakeSink {
    pub(crate) base: String,
    pub(crate) received: Arc<std::sync::Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl FakeSink {
    pub(crate) async fn start(
        behaviour: impl Fn(usize, Duration) -> Fault + Send + Sync + 'static,
    ) -> FakeSink {
        use axum::extract::State;
        use axum::http::{HeaderMap, StatusCode};
        type Shared = (
            Arc<std::sync::Mutex<Vec<Received>>>,
            Arc<Behaviour>,
            std::time::Instant,
        );
        async fn handle(
            State((received, behaviour, started)): State<Shared>,
            uri: axum::http::Uri,
            headers: HeaderMap,
            body: String,
        ) -> axum::response::Response {
            use axum::response::IntoResponse;
            let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let n = received.lock().unwrap().len();
            let fault = behaviour(n, started.elapsed());
            let answered = match fault {
                Fault::None | Fault::Stall(_) => 200,
                Fault::Status(code) => code,
                Fault::TooManyRequests { .. } => 429,
            };
            received.lock().unwrap().push(Received {
                path: uri.path().to_owned(),
                id: headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned(),
                order: json["order"].as_str().unwrap_or_default().to_owned(),
                operation: json["payload"]["operation"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                at: std::time::Instant::now(),
                answered,
                body: json,
            });
            match fault {
                Fault::None => StatusCode::OK.into_response(),
                Fault::Stall(d) => {
                    tokio::time::sleep(d).await;
                    StatusCode::OK.into_response()
                }
                Fault::Status(code) => StatusCode::from_u16(code).unwrap().into_response(),
                Fault::TooManyRequests { retry_after_s } => (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", retry_after_s.to_string())],
                )
                    .into_response(),
            }
        }
        let received: Arc<std::sync::Mutex<Vec<Received>>> = Arc::default();
        let shared: Shared = (
            received.clone(),
            Arc::new(behaviour),
            std::time::Instant::now(),
        );
        let app = axum::Router::new().fallback(handle).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeSink {
            base,
            received,
            task,
        }
    }

    /// Distinct idempotency keys answered with 2xx, per path.
    pub(crate) fn delivered(&self, path: &str) -> std::collections::BTreeSet<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path && (200..300).contains(&r.answered))
            .map(|r| r.id.clone())
            .collect()
    }

    pub(crate) fn requests(&self, path: &str) -> Vec<Received> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}

impl Drop for FakeSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `[[sinks]]` of a test: webhook sinks `erp`, `wms` and `notify` on `base`.
pub(crate) fn sinks_toml(base: &str, rate: &str, timeout: &str) -> String {
    ["erp", "wms", "notify"]
        .iter()
        .map(|name| {
            format!(
                "[[sinks]]\nname = \"{name}\"\nkind = \"webhook\"\nurl = \"{base}/{name}\"\nrate = \"{rate}\"\nmax_in_flight = 4\ntimeout = \"{timeout}\"\nretry_initial = \"100ms\"\nretry_max = \"1s\"\nmax_attempts = 200\nbreaker_threshold = 5\nbreaker_cooldown = \"500ms\"\n\n"
            )
        })
        .collect()
}

/// A free loopback port (bound, then released for the child to take).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real binary serving on `port` with `dir` as its data directory.
pub(crate) fn spawn_orderhub(dir: &std::path::Path, port: u16) -> std::process::Child {
    spawn_orderhub_with(dir, port, &[])
}

/// The real binary serving on `port` with `dir` as its data directory and extra arguments.
pub(crate) fn spawn_orderhub_with(
    dir: &std::path::Path,
    port: u16,
    extra: &[&std::ffi::OsStr],
) -> std::process::Child {
    spawn_orderhub_logged(dir, port, extra, None)
}

/// As [`spawn_orderhub_with`]; with `log`, the engine's log (at `info` unless
/// ORDERHUB_CHILD_LOG says otherwise) goes to that file, for a test to show when it fails.
pub(crate) fn spawn_orderhub_logged(
    dir: &std::path::Path,
    port: u16,
    extra: &[&std::ffi::OsStr],
    log: Option<&std::path::Path>,
) -> std::process::Child {
    let level = std::env::var("ORDERHUB_CHILD_LOG")
        .unwrap_or_else(|_| if log.is_some() { "info" } else { "warn" }.into());
    let stdout = match log {
        Some(path) => std::process::Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("the child's log file opens"),
        ),
        None if std::env::var_os("ORDERHUB_CHILD_LOG").is_some() => std::process::Stdio::inherit(),
        None => std::process::Stdio::null(),
    };
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_orderhub"));
    if log.is_some() {
        // Plain text in a log file (tracing's formatter honours NO_COLOR).
        command.env("NO_COLOR", "1");
    }
    command
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir)
        .args(extra)
        .env("ORDERHUB_DOUYIN_APP_KEY", DOUYIN_KEY)
        .env("ORDERHUB_DOUYIN_APP_SECRET", DOUYIN_SECRET)
        .env("ORDERHUB_EVENTS_SECRET", EVENTS_SECRET)
        // ORDERHUB_CHILD_LOG=info shows what a spawned engine does while debugging a test.
        .env("RUST_LOG", level)
        .stdout(stdout)
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("orderhub binary starts")
}

/// Waits until the engine at `base` answers `/readyz`.
pub(crate) async fn wait_ready(client: &reqwest::Client, base: &str) {
    for _ in 0..300 {
        if let Ok(response) = client.get(format!("{base}/readyz")).send().await
            && response.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("engine at {base} never became ready");
}

/// GET `url` and parse the answer as JSON.
pub(crate) async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// A test's external tool: `override_env`'s path if set, else `name` on `PATH`. Missing, it is
/// `None` with a SKIPPED note — or a failure naming `install` when `require_env` is set (as
/// `.ci/run` sets it).
pub(crate) fn external_tool(
    name: &str,
    override_env: Option<&str>,
    require_env: &str,
    install: &str,
) -> Option<std::path::PathBuf> {
    let found = override_env
        .and_then(std::env::var_os)
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|p| p.is_file())
            })
        });
    if found.is_none() {
        assert!(
            std::env::var_os(require_env).is_none(),
            "{name} not found on PATH: install it with `{install}` (.ci/run does)"
        );
        eprintln!("SKIPPED: {name} not found ({install} to run this test)");
    }
    found
}
