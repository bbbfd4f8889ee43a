//! Journal retention: finished orders past `journal.retain` are archived, then removed — by the
//! engine in the background and by `orderhub compact`, which is SIGKILLed mid-way here to show
//! that a crash loses nothing and archives nothing twice.

use super::support::*;
use orderhub_actors::order::{EventAction, OrderEvent, OrderState};
use orderhub_engine::config::Config;
use orderhub_engine::journal::Journal;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const DAY_MS: i64 = 86_400_000;

/// Journals `count` orders `{prefix}{i}` through the real journal, received `days_ago`: paid
/// then completed (with items and an address) when `finished`, else only paid. No actor runs, so
/// the next open of the journal folds them into the index, as after a crash.
async fn fill(dir: &Path, prefix: &str, count: usize, finished: bool, days_ago: i64) {
    let config = Config::embedded().unwrap();
    let (journal, _) = Journal::open(dir, &config.journal, &config.policy()).unwrap();
    journal.start(|_, _| {}, |_| {}).unwrap();
    let at = now_ms() - days_ago * DAY_MS;
    let fields: serde_json::Map<String, serde_json::Value> =
        serde_json::from_value(serde_json::json!({
            "items": [{"sku": "SKU-1001-BLK-M", "qty": 1, "price": "899.00"}],
            "receiver": {"name": "Li Na", "city": "Hangzhou", "address": "No. 18 Wensan Road"},
            "waybill_no": "SF0000000000",
        }))
        .unwrap();
    let event = |order: &str,
                 id: String,
                 state,
                 fields: serde_json::Map<String, serde_json::Value>| OrderEvent {
        order: order.into(),
        source: "wms".into(),
        source_event_id: id,
        supersedes: None,
        log_seq: None,
        raw_status: "fill".into(),
        action: EventAction::Move { state },
        occurred_at: at,
        received_at: at,
        fields: fields.into(),
    };
    for chunk in (0..count).collect::<Vec<_>>().chunks(500) {
        let mut events = Vec::new();
        for i in chunk {
            let order = format!("{prefix}{i}");
            let mut fields = fields.clone();
            fields.insert("waybill_no".into(), format!("SF{prefix}{i}").into());
            events.push(event(
                &order,
                format!("{order}-paid"),
                OrderState::Paid,
                serde_json::Map::<String, serde_json::Value>::new(),
            ));
            if finished {
                events.push(event(
                    &order,
                    format!("{order}-done"),
                    OrderState::Completed,
                    fields,
                ));
            }
        }
        journal.append(events).await.unwrap();
    }
    journal.close().await;
}

/// Every line of every archive file in `dir`: order key → times archived.
fn archived_orders(dir: &Path) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return seen;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let file = std::fs::File::open(&path).unwrap();
        let lines = std::io::BufReader::new(flate2::read::MultiGzDecoder::new(file)).lines();
        for line in lines {
            let line: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
            *seen
                .entry(line["order"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    seen
}

fn compact_command(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_orderhub"));
    command
        .args(["compact", "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_killed_mid_way_loses_nothing_and_archives_every_order_once() {
    const FINISHED: usize = 3_000;
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), "shop:done-", FINISHED, true, 40).await;
    fill(dir.path(), "shop:open-", 20, false, 400).await;

    // SIGKILL `orderhub compact` at growing delays until one run finishes on its own.
    let mut killed_mid_way = 0;
    let mut delay = Duration::from_millis(150);
    let finished_run = loop {
        let mut child = compact_command(dir.path()).spawn().unwrap();
        tokio::time::sleep(delay).await;
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            child.wait().unwrap();
            let archived = archived_orders_tolerant(&dir.path().join("archive"));
            if archived > 0 {
                killed_mid_way += 1;
            }
            delay += Duration::from_millis(250);
            assert!(killed_mid_way < 40, "compaction never finished");
            continue;
        }
        break child.wait_with_output().unwrap();
    };
    let stdout = String::from_utf8_lossy(&finished_run.stdout);
    eprintln!("{killed_mid_way} kills after archiving had begun; the last run printed:\n{stdout}");
    assert!(
        finished_run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&finished_run.stderr)
    );
    assert!(
        killed_mid_way >= 1,
        "no kill landed after the first batch was archived: the test proved nothing"
    );
    assert!(stdout.contains("bytes reclaimed"), "{stdout}");

    // Every finished order archived exactly once; the open ones never.
    let archived = archived_orders(&dir.path().join("archive"));
    assert_eq!(archived.len(), FINISHED, "{stdout}");
    let twice: Vec<_> = archived.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "archived more than once: {twice:?}");
    assert!(archived.keys().all(|k| k.starts_with("shop:done-")));

    // The journal keeps the open orders and nothing of the finished ones.
    let config = Config::embedded().unwrap();
    let (journal, _) = Journal::open(dir.path(), &config.journal, &config.policy()).unwrap();
    for i in [0, FINISHED / 2, FINISHED - 1] {
        assert!(
            journal
                .events_of(&format!("shop:done-{i}"))
                .unwrap()
                .is_empty()
        );
        assert!(
            journal
                .archived(&format!("shop:done-{i}"))
                .unwrap()
                .is_some()
        );
    }
    for i in 0..20 {
        assert_eq!(
            journal.events_of(&format!("shop:open-{i}")).unwrap().len(),
            1
        );
    }
    drop(journal);

    // A second run finds nothing, and export reads the archive as well as the journal.
    let again = compact_command(dir.path()).output().unwrap();
    let again = String::from_utf8_lossy(&again.stdout);
    assert!(again.contains("nothing to archive"), "{again}");
    let out = dir.path().join("export.jsonl.gz");
    let export = Command::new(env!("CARGO_BIN_EXE_orderhub"))
        .args([
            "export",
            "--from",
            "2000-01-01",
            "--to",
            "2100-01-01",
            "--data-dir",
        ])
        .arg(dir.path())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&export.stdout);
    assert!(
        printed.starts_with(&format!("{} events written", FINISHED * 2 + 20)),
        "{printed}{}",
        String::from_utf8_lossy(&export.stderr)
    );
}

/// Orders in the archive files as they are after a kill: complete lines of complete members
/// only (the last member may be cut short).
fn archived_orders_tolerant(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut count = 0;
    for entry in entries {
        let file = std::fs::File::open(entry.unwrap().path()).unwrap();
        let lines = std::io::BufReader::new(flate2::read::MultiGzDecoder::new(file)).lines();
        count += lines.map_while(Result::ok).count();
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_archives_in_the_background_and_answers_410_for_archived_orders() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), "shop:old-", 200, true, 40).await;
    fill(dir.path(), "shop:open-", 5, false, 90).await;
    fill(dir.path(), "shop:new-", 5, true, 1).await;
    let engine = TestEngine::start("[journal]\ncompact_every = \"1s\"\n", dir.path()).await;
    let mut answer = (0, serde_json::Value::Null);
    for _ in 0..200 {
        answer = engine.get("/v1/orders/shop:old-199").await;
        if answer.0 == 410 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = answer;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["error"]["code"], "archived", "{body}");
    let file = body["archive"].as_str().unwrap();
    assert!(file.ends_with(".jsonl.gz"), "{body}");
    assert!(Path::new(file).exists(), "{file}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains(file),
        "{body}"
    );
    // Everything finished and old went; the open and the recent stay.
    let mut metrics = String::new();
    for _ in 0..200 {
        metrics = engine.metrics().await;
        if sample(&metrics, "orderhub_journal_archived_orders_total", &[]) == Some(200.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        sample(&metrics, "orderhub_journal_archived_orders_total", &[]),
        Some(200.0)
    );
    let (status, _) = engine.get("/v1/orders/shop:open-0").await;
    assert_eq!(status, 200);
    let (status, _) = engine.get("/v1/orders/shop:new-0").await;
    assert_eq!(status, 200);
    let (status, _) = engine.get("/v1/orders/shop:never").await;
    assert_eq!(status, 404);
    let (_, list) = engine.get("/v1/orders?state=completed&limit=1000").await;
    assert_eq!(list["orders"].as_array().unwrap().len(), 5, "{list}");
    // The disk gauges are exported (the upkeep samples them at start-up and every 15 s; the
    // values are the last sampled by any engine of this test process, so only their presence
    // is checked here — the journal's oldest event is checked in the unit tests).
    assert!(sample(&metrics, "orderhub_journal_disk_bytes", &[]).unwrap() > 0.0);
    assert!(sample(&metrics, "orderhub_data_dir_free_bytes", &[]).unwrap() > 0.0);
    assert!(sample(&metrics, "orderhub_journal_oldest_event_age_seconds", &[]).is_some());

    // The engine holds the data directory: an offline compaction is refused, clearly.
    let refused = compact_command(dir.path()).output().unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("in use by another orderhub process") && stderr.contains("orderhub serve"),
        "{stderr}"
    );

    // A late report for an archived order (a refund weeks later) is accepted, never refused:
    // the order starts a new life in the journal and reads again.
    let (status, body) = engine
        .post_events(&canonical(
            "late-refund",
            "shop:old-3",
            "erp",
            "refunded",
            now_ms(),
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    let order = engine
        .eventually("/v1/orders/shop:old-3", |o| o["state"] == "refunded")
        .await;
    assert_eq!(order["timeline"].as_array().unwrap().len(), 1, "{order}");
    engine.stop().await;
}
