//! Issue 6's promise: the dashboards and alerts in `dashboards/` work against the real thing.
//! Lint checks on the files; `promtool` checks and unit-tests the rules; and a real Prometheus
//! scrapes the real binary under a short load while every dashboard query and every alert's
//! expression is asked for data.
//!
//! `promtool` and `prometheus` come from Debian's `prometheus` package, which `.ci/run`
//! installs. Where they are missing these two tests say so and pass, unless
//! `ORDERHUB_REQUIRE_PROMETHEUS` is set (as `.ci/run` does), when they fail.

use super::support::*;
use orderhub_actors::telemetry::{CATALOGUE, MetricKind};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The window substituted for Grafana's `$__rate_interval` (Prometheus scrapes every second).
const TEST_RATE_INTERVAL: &str = "30s";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn dashboards() -> Vec<(String, Value)> {
    let mut boards = Vec::new();
    for entry in std::fs::read_dir(repo().join("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let board: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
            boards.push((
                path.file_name().unwrap().to_string_lossy().into_owned(),
                board,
            ));
        }
    }
    boards.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(boards.len(), 4, "four dashboards");
    boards
}

/// `(dashboard, panel title, expr)` for every query of every panel.
fn panel_queries() -> Vec<(String, String, String)> {
    let mut queries = Vec::new();
    for (file, board) in dashboards() {
        for panel in board["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                queries.push((
                    file.clone(),
                    panel["title"].as_str().unwrap_or_default().to_owned(),
                    target["expr"].as_str().unwrap_or_default().to_owned(),
                ));
            }
        }
    }
    queries
}

fn alerts_text() -> String {
    std::fs::read_to_string(repo().join("dashboards/alerts.yaml")).unwrap()
}

/// Alert names in `alerts.yaml`, in order.
fn alert_names() -> Vec<String> {
    alerts_text()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_owned())
        .collect()
}

/// Names of catalogued series, histograms expanded to their exported series.
fn exported_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for def in CATALOGUE {
        if def.kind == MetricKind::Histogram {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{}{suffix}", def.name));
            }
        } else {
            names.insert(def.name.to_owned());
        }
    }
    names
}

/// Every `orderhub_…` identifier in `text`.
fn metric_names_in(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(found) = text[i..].find("orderhub_") {
        let start = i + found;
        let boundary = start == 0 || {
            let b = bytes[start - 1];
            !(b.is_ascii_alphanumeric() || b == b'_' || b == b':' || b == b'/' || b == b'#')
        };
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            names.push(text[start..end].to_owned());
        }
        i = end;
    }
    names
}

#[test]
fn every_dashboard_panel_has_a_unit_a_description_and_the_datasource_variable() {
    let known = exported_names();
    let mut problems = Vec::new();
    for (file, board) in dashboards() {
        let variables = board["templating"]["list"].as_array().unwrap();
        if !variables
            .iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource")
        {
            problems.push(format!("{file}: no datasource template variable"));
        }
        let panels = board["panels"].as_array().unwrap();
        assert!(!panels.is_empty(), "{file} has no panels");
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or("?");
            let at = format!("{file} / {title}");
            if panel["description"].as_str().is_none_or(|d| d.len() < 20) {
                problems.push(format!("{at}: no description"));
            }
            if panel["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .is_none_or(str::is_empty)
            {
                problems.push(format!("{at}: no unit"));
            }
            if panel["datasource"]["uid"] != "${datasource}" {
                problems.push(format!("{at}: panel datasource is not ${{datasource}}"));
            }
            let targets = panel["targets"].as_array().cloned().unwrap_or_default();
            if targets.is_empty() {
                problems.push(format!("{at}: no queries"));
            }
            for target in targets {
                let expr = target["expr"].as_str().unwrap_or_default();
                if target["datasource"]["uid"] != "${datasource}" {
                    problems.push(format!("{at}: query datasource is not ${{datasource}}"));
                }
                // Every range selector is Grafana's rate interval.
                for (i, _) in expr.match_indices('[') {
                    if !expr[i + 1..].starts_with("$__rate_interval]") {
                        problems.push(format!("{at}: a range is not $__rate_interval: {expr}"));
                    }
                }
                if expr.replace("$__rate_interval", "").contains('$') {
                    problems.push(format!("{at}: unknown variable in {expr}"));
                }
                for name in metric_names_in(expr) {
                    if !known.contains(&name) {
                        problems.push(format!("{at}: {name} is not in the catalogue"));
                    }
                }
            }
        }
    }
    for name in metric_names_in(&alerts_text()) {
        if !known.contains(&name) {
            problems.push(format!("alerts.yaml: {name} is not in the catalogue"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_alert_has_a_runbook_section_and_a_unit_test_where_it_fires() {
    let names = alert_names();
    assert!(names.len() >= 10, "{names:?}");
    let runbook = std::fs::read_to_string(repo().join("dashboards/RUNBOOK.md")).unwrap();
    let tests = std::fs::read_to_string(repo().join("dashboards/alerts.test.yaml")).unwrap();
    let alerts = alerts_text();
    let mut problems = Vec::new();
    for name in &names {
        if !runbook.lines().any(|l| l.trim() == format!("## {name}")) {
            problems.push(format!("{name}: no `## {name}` section in RUNBOOK.md"));
        }
        let url = format!("runbook_url: dashboards/RUNBOOK.md#{}", name.to_lowercase());
        if !alerts.contains(&url) {
            problems.push(format!("{name}: no `{url}`"));
        }
        // Cases are split at each `alertname:`; one of this alert's must expect it to fire.
        let fires = tests
            .split("alertname: ")
            .skip(1)
            .any(|case| case.starts_with(&format!("{name}\n")) && case.contains("exp_labels"));
        let quiet = tests
            .split("alertname: ")
            .skip(1)
            .any(|case| case.starts_with(&format!("{name}\n")) && case.contains("exp_alerts: []"));
        if !fires || !quiet {
            problems.push(format!(
                "{name}: alerts.test.yaml needs a case where it fires and one where it does not"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `k8s/base/prometheus-rule.yaml` is `alerts.yaml` wrapped in a PrometheusRule.
fn prometheus_rule_manifest() -> String {
    let mut out = String::from(
        "# Generated from dashboards/alerts.yaml; do not edit by hand.\n\
         # `ORDERHUB_BLESS=1 cargo test -p orderhub-engine --test engine prometheus_rule` rewrites it.\n\
         apiVersion: monitoring.coreos.com/v1\n\
         kind: PrometheusRule\n\
         metadata:\n  name: orderhub\n  labels:\n    app.kubernetes.io/name: orderhub\n    \
         app.kubernetes.io/component: alerting\n\
         spec:\n",
    );
    for line in alerts_text().lines().skip_while(|l| l.starts_with('#')) {
        if line.is_empty() {
            out.push('\n');
        } else {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn the_prometheus_rule_manifest_carries_the_same_rules() {
    let path = repo().join("k8s/base/prometheus-rule.yaml");
    let expected = prometheus_rule_manifest();
    if std::env::var_os("ORDERHUB_BLESS").is_some() {
        std::fs::write(&path, &expected).unwrap();
    }
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        actual == expected,
        "k8s/base/prometheus-rule.yaml disagrees with dashboards/alerts.yaml; run \
         `ORDERHUB_BLESS=1 cargo test -p orderhub-engine --test engine prometheus_rule`"
    );
}

/// A tool from the `prometheus` package, or `None` (with a note) when it may be skipped.
fn prometheus_tool(name: &str) -> Option<PathBuf> {
    external_tool(
        name,
        None,
        "ORDERHUB_REQUIRE_PROMETHEUS",
        "apt-get install -y prometheus",
    )
}

#[test]
fn promtool_checks_the_rules_and_passes_their_unit_tests() {
    let Some(promtool) = prometheus_tool("promtool") else {
        return;
    };
    for args in [
        ["check", "rules", "alerts.yaml"],
        ["test", "rules", "alerts.test.yaml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(repo().join("dashboards"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Splits an alert expression into the operands its thresholds compare: `(a > 1 and b > 2)
/// or c > 3` gives `a`, `b`, `c`. Each must return data whether or not the alert fires.
fn compared_operands(expr: &str) -> Vec<String> {
    let expr = strip_outer_parens(expr.trim());
    for op in [" or ", " and ", " unless "] {
        let parts = split_top_level(expr, op);
        if parts.len() > 1 {
            return parts.iter().flat_map(|p| compared_operands(p)).collect();
        }
    }
    for op in [">=", "<=", "==", "!=", ">", "<"] {
        let parts = split_top_level(expr, op);
        if parts.len() == 2 {
            return vec![parts[0].trim().to_owned()];
        }
    }
    vec![expr.to_owned()]
}

fn strip_outer_parens(expr: &str) -> &str {
    let mut expr = expr;
    while expr.starts_with('(') && expr.ends_with(')') {
        let inner = &expr[1..expr.len() - 1];
        if split_depth_never_negative(inner) {
            expr = inner.trim();
        } else {
            break;
        }
    }
    expr
}

fn split_depth_never_negative(text: &str) -> bool {
    let mut depth = 0i32;
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            return false;
        }
    }
    depth == 0
}

/// Splits `text` at `sep` where it stands outside brackets, braces and quotes.
fn split_top_level<'a>(text: &'a str, sep: &str) -> Vec<&'a str> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => quoted = !quoted,
            b'(' | b'[' | b'{' if !quoted => depth += 1,
            b')' | b']' | b'}' if !quoted => depth -= 1,
            _ => {}
        }
        if depth == 0 && !quoted && text[i..].starts_with(sep) {
            // `>=` must not split as `>`, `=~` must not split as `=`.
            let next = text[i + sep.len()..].chars().next();
            if sep.len() == 1 && matches!(next, Some('=' | '~')) {
                i += 1;
                continue;
            }
            parts.push(&text[start..i]);
            i += sep.len();
            start = i;
            continue;
        }
        i += 1;
    }
    parts.push(&text[start..]);
    parts
}

#[test]
fn alert_expressions_split_into_their_compared_operands() {
    assert_eq!(
        compared_operands(
            "(a:r1h > 0.0144 and a:r5m > 0.0144) or (a:r6h > 0.006 and a:r30m > 0.006)"
        ),
        ["a:r1h", "a:r5m", "a:r6h", "a:r30m"]
    );
    assert_eq!(
        compared_operands(r#"sum by (x) (rate(m{o=~"a|b"}[5m])) / sum(rate(m[5m])) > 0.05"#),
        [r#"sum by (x) (rate(m{o=~"a|b"}[5m])) / sum(rate(m[5m]))"#]
    );
    assert_eq!(
        compared_operands("max(min_over_time(b[5m])) >= 1"),
        ["max(min_over_time(b[5m]))"]
    );
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The test configuration: three sinks, short SLAs that breach during the run, the default
/// rules plus a hold rule.
fn live_config(sinks: &str) -> String {
    format!(
        r#"
[actors]
shards = 4
idle_timeout = "2s"
max_active_per_shard = 10000

[[sla]]
name = "allocate_within_1s"
from = "paid"
within = "1s"

[[sla]]
name = "pickup_within_1s"
from = "shipped"
within = "1s"

{}
# Order details (against a closed port: every fetch fails and is retried), so their series
# are exported.
[sources.douyin.details]
gateway = "http://127.0.0.1:9"
shop_id_env = "ORDERHUB_DOUYIN_APP_KEY"

[pollers.fallback]
source = "shop"
channel = "shop"
url = "http://127.0.0.1:9/orders"
every = "1s"
overlap = "1m"
lookback = "1h"
sign = "none"
window_start_param = "from"
window_end_param = "to"
time_format = "unix_ms"
page_param = "page"
page_size_param = "size"
page_size = 100
items_path = "/orders"
order_path = "/id"
status_path = "/status"
[pollers.fallback.status_map]
PAID = "paid"

[[rules]]
name = "hold_high_value"
when = 'order.state == "paid" && order.fields.amount > 1000.0'
hold = true

# An approval flow (nobody requests an intercept here), so its series are exported.
[[operators]]
name = "li.na"
role = "approver"
token_env = "ORDERHUB_TEST_TOKEN_UNSET"

[[approvals]]
name = "intercept"
when = 'event.status == "intercept_requested"'
required = 1
role = "approver"
within = "20m"

# Stock reservation (no SKU is tracked here), so its series are exported.
[stock]
reserve_ttl = "15m"

[[rules]]
name = "erp_sales_order_on_paid"
when = 'order.state == "paid"'
sync = "erp"

[[rules]]
name = "wms_outbound_on_paid"
when = 'order.state == "paid"'
sync = "wms"

[[rules]]
name = "notify_in_transit"
when = 'order.state == "in_transit"'
notify = "notify"
message = "order {{{{ order.key }}}} collected"
"#,
        sinks_toml(sinks, "50/s", "1s")
    )
}

async fn drive_load(client: &reqwest::Client, base: &str) {
    let post = |body: String, id: String| {
        sign_events(
            client.post(format!("{base}/v1/events")),
            &body,
            &id,
            now_s(),
        )
        .send()
    };
    let at = now_ms();
    for i in 0..120 {
        let order = format!("shop:{i}");
        let amount = if i % 10 == 0 { 5000.0 } else { 100.0 };
        let mut statuses = vec!["paid"];
        if i % 2 == 0 {
            statuses.extend(["allocated", "picked", "packed", "shipped"]);
        }
        if i % 4 == 0 {
            statuses.extend(["in_transit"]);
        }
        for (n, status) in statuses.into_iter().enumerate() {
            let id = format!("e{i}-{n}");
            let body = serde_json::json!({
                "event_id": id, "order": order, "source": "shop", "status": status,
                "occurred_at": at + n as i64, "fields": { "amount": amount }
            })
            .to_string();
            let status = post(body.clone(), id.clone()).await.unwrap().status();
            assert!(status.is_success(), "{status}");
            if n == 0 && i % 5 == 0 {
                // A redelivery, acknowledged and changing nothing.
                post(body, id).await.unwrap();
            }
        }
        // A late report, kept in the timeline: stale.
        if i % 4 == 0 {
            let id = format!("late{i}");
            let body = serde_json::json!({
                "event_id": id, "order": order, "source": "wms", "status": "allocated",
                "occurred_at": at
            })
            .to_string();
            post(body, id).await.unwrap();
        }
    }
    // Bad input of two kinds.
    for i in 0..5 {
        let response = client
            .post(format!("{base}/v1/events"))
            .header("webhook-id", format!("bad{i}"))
            .header("webhook-timestamp", now_s().to_string())
            .header("webhook-signature", "v1,AAAA")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        let body = "{not json".to_owned();
        let response = post(body, format!("mal{i}")).await.unwrap();
        assert_eq!(response.status(), 400);
    }
}

async fn query(client: &reqwest::Client, prometheus: &str, expr: &str) -> Result<usize, String> {
    let url =
        reqwest::Url::parse_with_params(&format!("{prometheus}/api/v1/query"), &[("query", expr)])
            .map_err(|e| e.to_string())?;
    let response = client.get(url).send().await.map_err(|e| e.to_string())?;
    let body: Value = response.json().await.map_err(|e| e.to_string())?;
    if body["status"] != "success" {
        return Err(format!("{}: {}", body["errorType"], body["error"]));
    }
    Ok(body["data"]["result"].as_array().map_or(0, Vec::len))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_gets_data_for_every_panel_and_alert() {
    let Some(prometheus_bin) = prometheus_tool("prometheus") else {
        return;
    };
    // Sinks that sometimes fail or throttle, so retries and throttles are real.
    let sink = FakeSink::start(|n, _| match n % 10 {
        3 => Fault::Status(503),
        7 => Fault::TooManyRequests { retry_after_s: 1 },
        _ => Fault::None,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("orderhub.toml");
    std::fs::write(&config, live_config(&sink.base)).unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let _engine = Killed(spawn_orderhub_with(
        &data,
        port,
        &["--config".as_ref(), config.as_os_str()],
    ));
    let base = format!("http://127.0.0.1:{port}");
    let client = orderhub_engine::http_client::builder().build().unwrap();
    wait_ready(&client, &base).await;

    // Every catalogued metric is exported before any traffic.
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let missing: Vec<&str> = CATALOGUE
        .iter()
        .map(|d| d.name)
        .filter(|name| {
            !metrics
                .lines()
                .any(|l| !l.starts_with('#') && l.starts_with(name))
        })
        .collect();
    assert!(missing.is_empty(), "not exported at start-up: {missing:?}");

    // A real Prometheus scraping the engine every second, with the rules loaded.
    let prometheus_port = free_port();
    let prometheus_config = dir.path().join("prometheus.yml");
    std::fs::write(
        &prometheus_config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: orderhub\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n",
            repo().join("dashboards/alerts.yaml").display()
        ),
    )
    .unwrap();
    let _prometheus = Killed(
        Command::new(prometheus_bin)
            .arg(format!("--config.file={}", prometheus_config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("prometheus starts"),
    );
    let prometheus = format!("http://127.0.0.1:{prometheus_port}");
    let started = Instant::now();
    loop {
        let ready = client.get(format!("{prometheus}/-/ready")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "prometheus never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Traffic spread over a few scrapes, then time for rates, SLA breaches and the index.
    drive_load(&client, &base).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    // Every tenth order (amount 5,000) is held by hold_high_value: its syncs wait for a release.
    while sink.delivered("/erp").len() < 108 {
        assert!(Instant::now() < deadline, "syncs did not arrive");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drive_load_again(&client, &base).await;
    tokio::time::sleep(Duration::from_secs(16)).await;

    // Every panel query parses and returns data.
    let mut problems = Vec::new();
    for (file, title, expr) in panel_queries() {
        let expr = expr.replace("$__rate_interval", TEST_RATE_INTERVAL);
        match query(&client, &prometheus, &expr).await {
            Ok(0) => problems.push(format!("{file} / {title}: no data for {expr}")),
            Ok(_) => {}
            Err(err) => problems.push(format!("{file} / {title}: {err} in {expr}")),
        }
    }
    // Every rule loaded, evaluated without error; every compared operand returns data.
    let rules = get_json(&client, &format!("{prometheus}/api/v1/rules")).await;
    let mut seen_alerts = BTreeSet::new();
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["name"].as_str().unwrap_or("?").to_owned();
            if rule["health"] != "ok" {
                problems.push(format!(
                    "rule {name}: health {} {}",
                    rule["health"], rule["lastError"]
                ));
            }
            let expr = rule["query"].as_str().unwrap_or_default();
            let operands = if rule["type"] == "alerting" {
                seen_alerts.insert(name.clone());
                compared_operands(expr)
            } else {
                vec![name.clone()]
            };
            for operand in operands {
                match query(&client, &prometheus, &operand).await {
                    Ok(0) => problems.push(format!("rule {name}: no data for {operand}")),
                    Ok(_) => {}
                    Err(err) => problems.push(format!("rule {name}: {err} in {operand}")),
                }
            }
        }
    }
    let expected_alerts: BTreeSet<String> = alert_names().into_iter().collect();
    assert_eq!(
        seen_alerts, expected_alerts,
        "Prometheus loaded every alert"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A second, smaller wave a few seconds later, so rates over the window see a change.
async fn drive_load_again(client: &reqwest::Client, base: &str) {
    let at = now_ms();
    for i in 0..40 {
        let id = format!("again{i}");
        let body = serde_json::json!({
            "event_id": id, "order": format!("wave2:{i}"), "source": "shop", "status": "paid",
            "occurred_at": at, "fields": { "amount": 10.0 }
        })
        .to_string();
        let response = sign_events(
            client.post(format!("{base}/v1/events")),
            &body,
            &id,
            now_s(),
        )
        .send()
        .await
        .unwrap();
        assert!(response.status().is_success());
    }
}
