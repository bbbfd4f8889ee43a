//! Approval flows over the API: a two-approver intercept decided in time (syncs go out), one
//! rejected (the order returns), decisions by the wrong role, twice or after the decision, and
//! a deadline that passes while the engine is down.

use super::support::*;
use serde_json::Value;
use std::time::Duration;

const OPERATORS: &str = "\
[[operators]]\nname = \"li.na\"\nrole = \"approver\"\ntoken_env = \"T_LINA\"\n\
[[operators]]\nname = \"wang.wei\"\nrole = \"approver\"\ntoken_env = \"T_WANG\"\n\
[[operators]]\nname = \"zhao.min\"\nrole = \"operator\"\ntoken_env = \"T_ZHAO\"\n\
[[operators]]\nname = \"wall\"\nrole = \"viewer\"\ntoken_env = \"T_WALL\"\n";

fn tokens() -> orderhub_engine::secrets::SecretLookup {
    with_secrets(
        secrets(),
        &[
            ("T_LINA", "lina-token"),
            ("T_WANG", "wang-token"),
            ("T_ZHAO", "zhao-token"),
            ("T_WALL", "wall-token"),
        ],
    )
}

fn config(sinks: &str, within: &str, on_timeout: &str) -> String {
    format!(
        "sla = []\nrules = []\n{OPERATORS}{sinks}\
         [[approvals]]\nname = \"intercept\"\nwhen = 'event.status == \"intercept_requested\"'\n\
         required = 2\nrole = \"approver\"\nwithin = \"{within}\"\non_timeout = \"{on_timeout}\"\n\
         escalate_to = \"notify\"\non_approve = {{ sync = [\"wms\", \"erp\"] }}\n\
         on_reject = {{ notify = \"notify\", message = \"{{{{ order.key }}}}: intercept refused\" }}\n"
    )
}

/// The order's approval of flow `intercept`, once it is listed.
async fn approval_of(engine: &TestEngine, order: &str) -> Value {
    for _ in 0..200 {
        let (status, body) = engine
            .get_as("wall-token", &format!("/v1/approvals?order={order}"))
            .await;
        assert_eq!(status, 200, "{body}");
        if let Some(approval) = body["approvals"].as_array().and_then(|a| a.first()) {
            return approval.clone();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no approval listed for {order}");
}

async fn request_intercept(engine: &TestEngine, order: &str, tag: &str) {
    let at = now_ms();
    for (i, status) in ["paid", "shipped", "intercept_requested"]
        .iter()
        .enumerate()
    {
        let body = canonical(&format!("{tag}-{i}"), order, "shop", status, at + i as i64);
        assert_eq!(engine.post_events(&body).await.0, 200, "{status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_approvers_approve_an_intercept_within_its_deadline_and_its_syncs_go_out() {
    let sink = FakeSink::start(|_, _| Fault::None).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = TestEngine::start_with(
        &config(&sinks_toml(&sink.base, "100/s", "2s"), "20m", "escalate"),
        dir.path(),
        tokens(),
    )
    .await;
    request_intercept(&engine, "shop:a1", "a1").await;
    let approval = approval_of(&engine, "shop:a1").await;
    let id = approval["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("shop:a1:intercept:"), "{id}");
    assert_eq!(approval["state"], "open");
    assert_eq!(approval["name"], "intercept");
    assert_eq!(approval["order"], "shop:a1");
    let deadline = approval["deadline"].as_i64().unwrap();
    let opened = approval["opened_at"].as_i64().unwrap();
    assert_eq!(deadline - opened, 20 * 60 * 1000);
    assert_eq!(approval["decisions"], serde_json::json!([]));
    let (status, open) = engine
        .get_as("wall-token", "/v1/approvals?state=open")
        .await;
    assert_eq!(status, 200);
    assert_eq!(open["approvals"].as_array().unwrap().len(), 1, "{open}");

    let approve = format!("/v1/approvals/{id}/approve");
    // A viewer and an operator are below the flow's role.
    let (status, body) = engine.post_as("wall-token", &approve, "").await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = engine.post_as("zhao-token", &approve, "").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("approver"),
        "{body}"
    );
    // No token at all.
    let (status, _) = read(
        engine
            .client
            .post(format!("{}{approve}", engine.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = engine
        .post_as("lina-token", &approve, r#"{"why": 1}"#)
        .await;
    assert_eq!(status, 400, "{body}");

    // One approval: still open.
    let (status, body) = engine
        .post_as(
            "lina-token",
            &approve,
            r#"{"comment":"buyer called, parcel must come back"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["approval"]["state"], "open", "{body}");
    assert_eq!(body["order_state"], "intercept_requested");
    // The same approver again counts once: 409, also when two arrive at once.
    let twice = futures_join(
        engine.post_as("lina-token", &approve, ""),
        engine.post_as("lina-token", &approve, ""),
    )
    .await;
    assert_eq!((twice.0.0, twice.1.0), (409, 409), "{twice:?}");
    assert!(
        twice.0.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("li.na decided"),
        "{twice:?}"
    );

    // The second approver: approved, intercepted.
    let (status, body) = engine
        .post_as("wang-token", &approve, r#"{"comment":"ok"}"#)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["approval"]["state"], "approved", "{body}");
    assert_eq!(body["order_state"], "intercepted");
    let decisions = body["approval"]["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 2);
    assert_eq!(decisions[0]["operator"], "li.na");
    assert_eq!(decisions[0]["decision"], "approve");
    assert_eq!(
        decisions[0]["comment"],
        "buyer called, parcel must come back"
    );
    assert!(decisions[1]["at"].as_i64().unwrap() >= decisions[0]["at"].as_i64().unwrap());
    // After the decision: 409, whoever decides.
    let (status, body) = engine
        .post_as("wang-token", &format!("/v1/approvals/{id}/reject"), "")
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = engine
        .post_as(
            "lina-token",
            "/v1/approvals/shop:zz:intercept:1/approve",
            "",
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = engine
        .post_as("lina-token", "/v1/approvals/nonsense/approve", "")
        .await;
    assert_eq!(status, 404);

    // The syncs go out to both sinks, keyed by the decision.
    for path in ["/wms", "/erp"] {
        let mut delivered = Default::default();
        for _ in 0..200 {
            delivered = sink.delivered(path);
            if !delivered.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(delivered.len(), 1, "{path}: {delivered:?}");
        assert!(
            delivered.iter().all(|key| key.ends_with(":approved")),
            "{delivered:?}"
        );
    }
    // The order names every decision in its timeline.
    let (_, order) = engine.get_as("wall-token", "/v1/orders/shop:a1").await;
    assert_eq!(order["state"], "intercepted");
    let by: Vec<&str> = order["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["by"].as_str())
        .collect();
    // Refused decisions (twice, after the decision) are answered before anything is journaled.
    assert_eq!(by, ["li.na", "wang.wei"], "{order}");
    let (status, listed) = engine
        .get_as("wall-token", "/v1/approvals?state=approved")
        .await;
    assert_eq!(status, 200);
    assert_eq!(listed["approvals"][0]["id"], id.as_str());
    let (status, body) = engine
        .get_as("wall-token", "/v1/approvals?state=maybe")
        .await;
    assert_eq!(status, 400, "{body}");
    // The recorder is shared by the tests of this process: counts are at least this test's.
    let metrics = engine.metrics().await;
    for (outcome, least) in [("opened", 1.0), ("approved", 1.0), ("expired", 0.0)] {
        let count = sample(
            &metrics,
            "orderhub_approvals_total",
            &[("name", "intercept"), ("outcome", outcome)],
        );
        assert!(count.is_some_and(|c| c >= least), "{outcome}: {count:?}");
    }
    engine.stop().await;
}

async fn futures_join<A: std::future::Future, B: std::future::Future>(
    a: A,
    b: B,
) -> (A::Output, B::Output) {
    tokio::join!(a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_intercept_returns_the_order_to_where_it_was() {
    let sink = FakeSink::start(|_, _| Fault::None).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = TestEngine::start_with(
        &config(&sinks_toml(&sink.base, "100/s", "2s"), "20m", "escalate"),
        dir.path(),
        tokens(),
    )
    .await;
    request_intercept(&engine, "shop:r1", "r1").await;
    let id = approval_of(&engine, "shop:r1").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = engine
        .post_as(
            "wang-token",
            &format!("/v1/approvals/{id}/reject"),
            r#"{"comment":"already at the buyer's door"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["approval"]["state"], "rejected");
    assert_eq!(body["order_state"], "shipped");
    let (_, order) = engine.get_as("wall-token", "/v1/orders/shop:r1").await;
    let last = order["timeline"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["mapped"], "intercept_rejected", "{order}");
    assert_eq!(last["by"], "wang.wei");
    let mut texts = Vec::new();
    for _ in 0..200 {
        texts = sink.requests("/notify");
        if !texts.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(texts.len(), 1);
    assert_eq!(
        texts[0].body["payload"]["text"],
        "shop:r1: intercept refused"
    );
    assert!(sink.delivered("/wms").is_empty());
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_passes_while_the_engine_is_down_escalates_on_restart() {
    let sink = FakeSink::start(|_, _| Fault::None).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config(&sinks_toml(&sink.base, "100/s", "2s"), "2s", "escalate");
    let engine = TestEngine::start_with(&toml, dir.path(), tokens()).await;
    request_intercept(&engine, "shop:d1", "d1").await;
    let id = approval_of(&engine, "shop:d1").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = engine
        .post_as("lina-token", &format!("/v1/approvals/{id}/approve"), "")
        .await;
    assert_eq!(status, 200);
    engine.stop().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let engine = TestEngine::start_with(&toml, dir.path(), tokens()).await;
    let mut approval = Value::Null;
    for _ in 0..200 {
        approval = approval_of(&engine, "shop:d1").await;
        if approval["state"] == "expired" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(approval["state"], "expired", "{approval}");
    let mut escalations = Vec::new();
    for _ in 0..200 {
        escalations = sink.requests("/notify");
        if !escalations.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(escalations.len(), 1);
    let text = escalations[0].body["payload"]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(text.contains("past its deadline with 1 of 2"), "{text}");
    // Escalated, still decidable: the second approver approves late.
    let (status, body) = engine
        .post_as("wang-token", &format!("/v1/approvals/{id}/approve"), "")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["approval"]["state"], "approved");
    assert_eq!(body["order_state"], "intercepted");
    engine.stop().await;
}
