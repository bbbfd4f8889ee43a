//! The daily reconciliation, over the API and from the command line.

use super::support::*;
use std::time::Duration;

/// Today in +08:00, `YYYY-MM-DD`.
fn today_in_shanghai() -> String {
    let now = time::OffsetDateTime::from_unix_timestamp(now_s())
        .unwrap()
        .to_offset(time::UtcOffset::from_hms(8, 0, 0).unwrap());
    now.date().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_days_reconciliation_per_channel_with_the_orders_needing_a_look() {
    // The ERP is down: its syncs stay pending.
    let erp = FakeSink::start(|_, _| Fault::Status(503)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "sla = []\n{}[[rules]]\nname = \"erp_on_paid\"\nwhen = 'order.state == \"paid\" && event.source == \"shop\"'\nsync = \"erp\"\n\
         [reports]\ntimezone = \"+08:00\"\n",
        sinks_toml(&erp.base, "50/s", "1s")
    );
    let config_file = dir.path().join("orderhub.toml");
    std::fs::write(&config_file, &config).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let engine = TestEngine::start(&config, &data).await;
    let at = now_ms();
    let event = |id: &str, order: &str, source: &str, status: &str, amount: Option<f64>| {
        let mut body = serde_json::json!({"event_id": id, "order": order, "source": source,
            "status": status, "occurred_at": at});
        if let Some(amount) = amount {
            body["fields"] = serde_json::json!({ "amount": amount });
        }
        body.to_string()
    };
    for body in [
        event("r1", "shop:1", "shop", "paid", Some(100.0)),
        event("r2", "shop:1", "wms", "shipped", None),
        event("r3", "shop:2", "shop", "paid", Some(50.5)),
        event("r4", "shop:2", "wms", "shipped", None),
        event("r5", "shop:2", "shop", "cancelled", None),
        event("r6", "dealer:9", "dealer", "paid", None),
    ] {
        assert_eq!(engine.post_events(&body).await.0, 200, "{body}");
    }
    // Let the summaries be written.
    engine
        .eventually("/v1/orders?disagreement=true", |b| {
            b["orders"].as_array().is_some_and(|o| o.len() == 1)
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let date = today_in_shanghai();
    let (status, report) = engine
        .get(&format!("/v1/reports/reconciliation?date={date}"))
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["date"], date.as_str());
    assert_eq!(report["timezone"], "+08:00");
    assert_eq!(report["orders"], 3);
    let shop = report["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == "shop")
        .unwrap();
    assert_eq!(shop["orders"], 2);
    assert_eq!(shop["by_state"]["shipped"], 2, "{shop}");
    assert_eq!(shop["systems"]["wms"]["shipped"], 2);
    assert_eq!(shop["systems"]["shop"]["cancelled"], 1);
    assert_eq!(shop["amount"], 150.5);
    let dealer = report["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == "dealer")
        .unwrap();
    assert_eq!(dealer["without_amount"], 1);
    let exceptions = report["exceptions"].as_array().unwrap();
    let two = exceptions.iter().find(|e| e["order"] == "shop:2").unwrap();
    assert_eq!(
        two["disagreements"],
        serde_json::json!(["cancelled_but_shipped"])
    );
    assert_eq!(two["undelivered"][0]["sink"], "erp");
    assert_eq!(two["undelivered"][0]["status"], "pending");
    assert!(
        exceptions.iter().any(|e| e["order"] == "shop:1"),
        "its ERP sync was not delivered either"
    );
    assert!(!exceptions.iter().any(|e| e["order"] == "dealer:9"));
    // As CSV; bad queries.
    let response = engine
        .client
        .get(format!(
            "{}/v1/reports/reconciliation?date={date}&format=csv",
            engine.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let csv = response.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert_eq!(
        lines[0],
        "date,channel,order,state,amount,systems,disagreements,undelivered_syncs"
    );
    assert!(
        lines.contains(&format!("{date},shop,shop:2,shipped,50.50,shop=cancelled;wms=shipped,cancelled_but_shipped,erp:pending").as_str()),
        "{csv}"
    );
    for query in [
        "date=2026-02-30",
        "date=yesterday",
        "",
        "date=2026-11-29&format=xls",
    ] {
        let (status, body) = engine
            .get(&format!("/v1/reports/reconciliation?{query}"))
            .await;
        assert_eq!(status, 400, "{query}: {body}");
    }
    engine.stop().await;

    // The same from the command line.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_orderhub"))
        .args(["reconcile", "--date", &date, "--format", "csv", "--config"])
        .arg(&config_file)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8(output.stdout).unwrap(), csv);
}
