//! Exceptions reach people: holds by operators and rules (who, why, since when; syncs wait for
//! the release) and rules judged on SLA breaches.

use super::support::*;
use serde_json::Value;

#[tokio::test]
async fn an_operator_holds_and_releases_an_order_and_the_timeline_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = with_secrets(
        secrets(),
        &[
            ("T_VIEWER", "viewer-token"),
            ("T_OPERATOR", "operator-token"),
        ],
    );
    let engine = TestEngine::start_with(
        "sla = []\n[[operators]]\nname = \"wang.wei\"\nrole = \"viewer\"\ntoken_env = \"T_VIEWER\"\n\
         [[operators]]\nname = \"li.na\"\nrole = \"operator\"\ntoken_env = \"T_OPERATOR\"\n\
         [[rules]]\nname = \"vip\"\nwhen = 'order.state == \"paid\" && order.fields.vip == true'\nhold = \"vip address check\"\n",
        dir.path(),
        secrets,
    )
    .await;
    for (id, order, status) in [
        ("h1-paid", "shop:h1", "paid"),
        ("h2-shipped", "shop:h2", "shipped"),
    ] {
        assert_eq!(
            engine
                .post_events(&canonical(id, order, "shop", status, now_ms()))
                .await
                .0,
            200
        );
    }
    let hold = "/v1/orders/shop:h1/hold";
    // A viewer may not; a hold needs a reason; the body is checked.
    assert_eq!(
        engine
            .post_as("viewer-token", hold, r#"{"reason":"x"}"#)
            .await
            .0,
        403
    );
    let (status, body) = engine.post_as("operator-token", hold, "{}").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("reason")
    );
    let (status, body) = engine
        .post_as("operator-token", hold, r#"{"why":"x"}"#)
        .await;
    assert_eq!(status, 400, "{body}");
    // Held: who, why, since when; the timeline names the operator.
    let (status, body) = engine
        .post_as(
            "operator-token",
            hold,
            r#"{"reason":"buyer asked to change the address"}"#,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["by"], "li.na");
    let mut order = Value::Null;
    for _ in 0..100 {
        order = engine.get_as("viewer-token", "/v1/orders/shop:h1").await.1;
        if order["state"] == "on_hold" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(order["state"], "on_hold", "{order}");
    assert_eq!(order["hold"]["by"], "li.na");
    assert_eq!(order["hold"]["reason"], "buyer asked to change the address");
    assert_eq!(order["hold"]["resume_to"], "paid");
    assert!(order["hold"]["since"].as_i64().unwrap() > 0);
    let entry = &order["timeline"][1];
    assert_eq!(
        (entry["source"].as_str(), entry["by"].as_str()),
        (Some("operator"), Some("li.na"))
    );
    // Holding twice, releasing what is not held, holding a shipped order, an unknown order.
    let (status, body) = engine
        .post_as("operator-token", hold, r#"{"reason":"again"}"#)
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("li.na"),
        "{body}"
    );
    let (status, body) = engine
        .post_as(
            "operator-token",
            "/v1/orders/shop:h2/hold",
            r#"{"reason":"late"}"#,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shipped"),
        "{body}"
    );
    let (status, _) = engine
        .post_as(
            "operator-token",
            "/v1/orders/shop:none/hold",
            r#"{"reason":"x"}"#,
        )
        .await;
    assert_eq!(status, 404);
    // Released: back where it was, by whom in the timeline.
    let release = "/v1/orders/shop:h1/release";
    let (status, body) = engine.post_as("operator-token", release, "").await;
    assert_eq!(status, 202, "{body}");
    for _ in 0..100 {
        order = engine.get_as("viewer-token", "/v1/orders/shop:h1").await.1;
        if order["state"] == "paid" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(order["state"], "paid", "{order}");
    assert!(order.get("hold").is_none());
    assert_eq!(order["timeline"][2]["by"], "li.na");
    assert_eq!(engine.post_as("operator-token", release, "").await.0, 409);
    // A rule's hold carries its reason and names the rule.
    let vip = canonical("h3-paid", "shop:h3", "shop", "paid", now_ms()).replacen(
        '}',
        r#","fields":{"vip":true}}"#,
        1,
    );
    assert_eq!(engine.post_events(&vip).await.0, 200);
    for _ in 0..100 {
        order = engine.get_as("viewer-token", "/v1/orders/shop:h3").await.1;
        if order["state"] == "on_hold" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(order["hold"]["reason"], "vip address check", "{order}");
    assert_eq!(order["hold"]["by"], "rule vip");
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_orders_syncs_wait_for_the_release_even_across_a_restart() {
    // The ERP is down for the first second: the paid order's sync is still pending when an
    // operator holds the order, and must not go out when the ERP comes back.
    let erp = FakeSink::start(|_, elapsed| {
        if elapsed < std::time::Duration::from_secs(1) {
            Fault::Status(503)
        } else {
            Fault::None
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "sla = []\n{}[[rules]]\nname = \"erp_on_paid\"\nwhen = 'order.state == \"paid\"'\nsync = \"erp\"\n",
        sinks_toml(&erp.base, "50/s", "2s")
    );
    let engine = TestEngine::start(&config, dir.path()).await;
    assert_eq!(
        engine
            .post_events(&canonical("w-paid", "shop:w1", "shop", "paid", now_ms()))
            .await
            .0,
        200
    );
    let (status, body) = engine
        .post_as(
            "ignored",
            "/v1/orders/shop:w1/hold",
            r#"{"reason":"fraud check"}"#,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert!(
        erp.delivered("/erp").is_empty(),
        "nothing goes out while the order is held"
    );
    // Still held after a restart (the order's actor is not running: the index says so).
    engine.stop().await;
    let engine = TestEngine::start(&config, dir.path()).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(
        erp.delivered("/erp").is_empty(),
        "still held after a restart"
    );
    let (status, body) = engine
        .post_as("ignored", "/v1/orders/shop:w1/release", "")
        .await;
    assert_eq!(status, 202, "{body}");
    for _ in 0..200 {
        if !erp.delivered("/erp").is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        erp.delivered("/erp").len(),
        1,
        "the held sync goes out on release, and the release back to paid decides no other"
    );
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sla_breach_tells_someone_through_a_rule_on_sla_breached() {
    let notify = FakeSink::start(|_, _| Fault::None).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[[sla]]\nname = \"allocate_within_1s\"\nfrom = \"paid\"\nwithin = \"1s\"\n\
         {}[[rules]]\nname = \"tell_breach\"\non = \"sla_breached\"\nwhen = 'event.sla.rule == \"allocate_within_1s\"'\n\
         notify = \"notify\"\nmessage = \"{{{{ order.key }}}} breached {{{{ event.sla.rule }}}}\"\n",
        sinks_toml(&notify.base, "50/s", "2s")
    );
    let engine = TestEngine::start(&config, dir.path()).await;
    assert_eq!(
        engine
            .post_events(&canonical("b-paid", "shop:b1", "shop", "paid", now_ms()))
            .await
            .0,
        200
    );
    let mut ids = Vec::new();
    for _ in 0..200 {
        ids = notify
            .requests("/notify")
            .into_iter()
            .map(|r| r.id)
            .collect();
        if !ids.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(
        ids[0].starts_with("shop:b1:") && ids[0].ends_with(":notify:sla_breached"),
        "{ids:?}"
    );
    let order = engine.get("/v1/orders/shop:b1").await.1;
    let breach = order["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["outcome"]["result"] == "sla_breached")
        .expect("the breach is in the timeline");
    assert!(
        breach["rules"].to_string().contains("tell_breach"),
        "{breach}"
    );
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_that_names_sinks_keeps_back_only_those_even_across_a_restart() {
    // Both sinks are down for the first second, so the paid order's syncs are pending when the
    // operator holds it for the WMS only.
    let sinks = FakeSink::start(|_, elapsed| {
        if elapsed < std::time::Duration::from_secs(1) {
            Fault::Status(503)
        } else {
            Fault::None
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "sla = []\n{}[[rules]]\nname = \"erp_on_paid\"\nwhen = 'order.state == \"paid\"'\nsync = \"erp\"\n\
         [[rules]]\nname = \"wms_on_paid\"\nwhen = 'order.state == \"paid\"'\nsync = \"wms\"\n",
        sinks_toml(&sinks.base, "50/s", "2s")
    );
    let engine = TestEngine::start(&config, dir.path()).await;
    assert_eq!(
        engine
            .post_events(&canonical("n-paid", "shop:n1", "shop", "paid", now_ms()))
            .await
            .0,
        200
    );
    let hold = "/v1/orders/shop:n1/hold";
    let (status, body) = engine
        .post_as(
            "ignored",
            hold,
            r#"{"reason":"address check","syncs":["courier"]}"#,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("courier")
    );
    let (status, body) = engine
        .post_as(
            "ignored",
            hold,
            r#"{"reason":"address check","syncs":["wms"]}"#,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["syncs"], serde_json::json!(["wms"]));
    for _ in 0..200 {
        if !sinks.delivered("/erp").is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(sinks.delivered("/erp").len(), 1, "the ERP is not held back");
    assert!(sinks.delivered("/wms").is_empty(), "the WMS is");
    let order = engine.get_as("ignored", "/v1/orders/shop:n1").await.1;
    assert_eq!(
        order["hold"]["syncs"],
        serde_json::json!(["wms"]),
        "{order}"
    );
    // After a restart the index's held order is still held for the WMS alone.
    engine.stop().await;
    let engine = TestEngine::start(&config, dir.path()).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(
        sinks.delivered("/wms").is_empty(),
        "still held after a restart"
    );
    let (status, body) = engine
        .post_as("ignored", "/v1/orders/shop:n1/release", "")
        .await;
    assert_eq!(status, 202, "{body}");
    for _ in 0..200 {
        if !sinks.delivered("/wms").is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(
        sinks.delivered("/wms").len(),
        1,
        "released: the WMS sync goes"
    );
    assert_eq!(sinks.delivered("/erp").len(), 1);
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systems_that_disagree_are_listed_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let engine = TestEngine::start(
        "sla = []\nrules = []\n[source_roles]\nportal = \"channel\"\n",
        dir.path(),
    )
    .await;
    let at = now_ms();
    for (id, source, status) in [
        ("d1", "portal", "paid"),
        ("d2", "wms", "shipped"),
        ("d3", "portal", "cancelled"),
    ] {
        let body = canonical(id, "portal:d1", source, status, at);
        assert_eq!(engine.post_events(&body).await.0, 200);
    }
    assert_eq!(
        engine
            .post_events(&canonical("d4", "portal:d2", "portal", "paid", at))
            .await
            .0,
        200
    );
    let listed = engine
        .eventually("/v1/orders?disagreement=true", |body| {
            body["orders"].as_array().is_some_and(|o| o.len() == 1)
        })
        .await;
    let order = &listed["orders"][0];
    assert_eq!(order["key"], "portal:d1");
    assert_eq!(
        order["disagreements"],
        serde_json::json!(["cancelled_but_shipped"])
    );
    let (_, full) = engine.get("/v1/orders/portal:d1").await;
    let flagged = &full["disagreements"][0];
    assert_eq!(flagged["systems"]["portal"], "cancelled");
    assert_eq!(flagged["systems"]["wms"], "shipped");
    let metrics = engine.metrics().await;
    assert!(
        sample(
            &metrics,
            "orderhub_disagreements_total",
            &[("kind", "cancelled_but_shipped")]
        )
        .is_some_and(|n| n >= 1.0)
    );
    engine.stop().await;
}
