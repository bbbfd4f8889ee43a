//! Issue 5: every channel and fulfilment system speaks to the engine in its own protocol over
//! real HTTP — signature on the raw body, the source's own ack, its status table, its order key.

use super::support::*;
use std::sync::Arc;

pub(crate) fn fixture(path: &str) -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(path),
    )
    .unwrap()
}

fn md5_hex(text: &str) -> String {
    use md5::{Digest, Md5};
    format!("{:x}", Md5::digest(text.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn youzan_pushes_are_verified_acknowledged_and_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let engine = TestEngine::start("sla = []", dir.path()).await;
    let paid = fixture("youzan/trade_buyer_pay.json");
    let sign = |body: &str| {
        vec![(
            "event-sign",
            md5_hex(&format!("{YOUZAN_CLIENT_ID}{body}{YOUZAN_CLIENT_SECRET}")),
        )]
    };
    // Delivered twice (Youzan re-pushes): acknowledged both times, stored once.
    for _ in 0..2 {
        let (status, body) = engine
            .post_source("youzan", &sign(&paid), paid.clone())
            .await;
        assert_eq!(
            (status, body.as_str()),
            (200, r#"{"code":0,"msg":"success"}"#)
        );
    }
    let order = engine
        .eventually("/v1/orders/youzan:E20231115093012034500012", |o| {
            o["state"] == "paid"
        })
        .await;
    assert_eq!(order["timeline"].as_array().unwrap().len(), 1);
    assert_eq!(
        order["systems"]["youzan"]["raw_status"],
        "WAIT_SELLER_SEND_GOODS"
    );
    // A refund message is recorded without moving the order.
    let refund = fixture("youzan/trade_refund.json");
    let (status, _) = engine.post_source("youzan", &sign(&refund), refund).await;
    assert_eq!(status, 200);
    let order = engine
        .eventually("/v1/orders/youzan:E20231115093012034500012", |o| {
            o["timeline"].as_array().unwrap().len() == 2
        })
        .await;
    assert_eq!(order["state"], "paid");
    // The platform's test message: acknowledged, nothing stored.
    let test = fixture("youzan/test_message.json");
    let (status, body) = engine.post_source("youzan", &sign(&test), test).await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"code":0,"msg":"success"}"#)
    );
    // A wrong signature is refused, naming the problem.
    let (status, body) = engine
        .post_source("youzan", &[("event-sign", "0".repeat(32))], paid.clone())
        .await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Event-Sign"), "{body}");
    // A correctly signed message with a status orderhub does not know yet is never refused
    // (Youzan stops re-pushing after four tries): journaled, acknowledged, counted, listed.
    let odd = paid
        .replace("WAIT_SELLER_SEND_GOODS", "WAIT_GROUP")
        .replace("7d6c0f1e", "8d6c0f1e");
    let (status, body) = engine.post_source("youzan", &sign(&odd), odd).await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"code":0,"msg":"success"}"#)
    );
    let order = engine
        .eventually("/v1/orders/youzan:E20231115093012034500012", |o| {
            o["timeline"].as_array().unwrap().len() == 3
        })
        .await;
    assert_eq!(order["state"], "paid", "an unmapped status changes nothing");
    assert_eq!(order["timeline"][2]["raw_status"], "WAIT_GROUP");
    assert_eq!(order["timeline"][2]["mapped"], "none");
    assert_eq!(order["timeline"][2]["unmapped"], true);
    let youzan = engine.source("youzan").await;
    assert_eq!(youzan["status"], "ready");
    assert_eq!(youzan["unmapped"][0]["raw_status"], "WAIT_GROUP");
    assert_eq!(youzan["unmapped"][0]["count"], 1);
    assert_eq!(
        youzan["unmapped"][0]["last_order"],
        "youzan:E20231115093012034500012"
    );
    let metrics = engine.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "orderhub_ingest_unmapped_total",
            &[("source", "youzan")]
        ),
        Some(1.0)
    );
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_without_credentials_answers_503_naming_its_variable() {
    let dir = tempfile::tempdir().unwrap();
    let engine = TestEngine::start_with("", dir.path(), Arc::new(|_: &str| None)).await;
    for (source, variable) in [
        ("youzan", "ORDERHUB_YOUZAN_CLIENT_ID"),
        ("kuaishou", "ORDERHUB_KUAISHOU_APP_KEY"),
        ("wechat", "ORDERHUB_WECHAT_TOKEN"),
        ("sf", "ORDERHUB_SF_PUSH_TOKEN"),
    ] {
        let (status, body) = engine.post_source(source, &[], "{}").await;
        assert_eq!(status, 503, "{source}: {body}");
        assert!(body.contains(variable), "{source}: {body}");
    }
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kuaishou_encrypted_pushes_are_decrypted_acknowledged_and_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let engine = TestEngine::start("sla = []", dir.path()).await;
    for name in ["pay_success", "delivering", "add_refund", "test_heartbeat"] {
        let body = fixture(&format!("kuaishou/{name}.body"));
        let (status, answer) = engine.post_source("kuaishou", &[], body).await;
        assert_eq!(
            (status, answer.as_str()),
            (200, r#"{"result":1}"#),
            "{name}"
        );
    }
    let order = engine
        .eventually("/v1/orders/kuaishou:2418800012345678", |o| {
            o["timeline"].as_array().is_some_and(|t| t.len() == 3)
        })
        .await;
    assert_eq!(
        order["state"], "shipped",
        "the refund is recorded, not applied"
    );
    // Ciphertext made with another key is refused as unauthenticated.
    let (status, answer) = engine
        .post_source("kuaishou", &[], "q83vEjRWeJCrze8SNFZ4kA==")
        .await;
    assert_eq!(status, 401, "{answer}");
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_checks_its_url_and_takes_plain_and_safe_mode_pushes() {
    let dir = tempfile::tempdir().unwrap();
    // The fixtures are signed at fixed times: a wide window here; the ±5 minutes of the
    // default are tested below with a fresh query.
    let engine = TestEngine::start(
        "sla = []\n[sources.wechat]\ntoken_env = \"ORDERHUB_WECHAT_TOKEN\"\n\
         aes_key_env = \"ORDERHUB_WECHAT_AES_KEY\"\ntolerance = \"876000h\"\n\
         [sources.wechat.event_map]\nchannels_ec_order_pay = \"paid\"\n\
         channels_ec_order_deliver = \"shipped\"\n",
        dir.path(),
    )
    .await;
    // The URL check echoes echostr as plain text.
    let check = fixture("wechat/url_check.query");
    let response = engine
        .client
        .get(format!("{}/v1/ingest/wechat?{check}", engine.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "7150386942031482112");
    let forged = check.replace("nonce=nonce42", "nonce=nonce43");
    let response = engine
        .client
        .get(format!("{}/v1/ingest/wechat?{forged}", engine.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // Plain mode, then safe mode for the same order.
    let (status, answer) = engine
        .post_source_query(
            "wechat",
            &fixture("wechat/order_pay.query"),
            &[],
            fixture("wechat/order_pay.json"),
        )
        .await;
    assert_eq!((status, answer.as_str()), (200, "success"));
    let (status, answer) = engine
        .post_source_query(
            "wechat",
            &fixture("wechat/order_deliver.safe.query"),
            &[],
            fixture("wechat/order_deliver.safe.json"),
        )
        .await;
    assert_eq!((status, answer.as_str()), (200, "success"));
    let order = engine
        .eventually("/v1/orders/wechat:3705115058471208928", |o| {
            o["state"] == "shipped"
        })
        .await;
    assert_eq!(order["fields"]["wechat_app_id"], "wx5f0c1b2a3d4e5f60");
    // Without a signature nothing is stored.
    let (status, answer) = engine
        .post_source("wechat", &[], fixture("wechat/order_pay.json"))
        .await;
    assert_eq!(status, 401, "{answer}");
    // A signed query seen once (say in a proxy log) cannot carry another body.
    let (status, answer) = engine
        .post_source_query(
            "wechat",
            &fixture("wechat/order_pay.query"),
            &[],
            fixture("wechat/order_deliver_partial.json"),
        )
        .await;
    assert_eq!(status, 401, "{answer}");
    assert!(answer.contains("replayed"), "{answer}");
    engine.stop().await;

    // With the default window, a query signed an hour ago is refused; one signed now passes.
    let dir = tempfile::tempdir().unwrap();
    let engine = TestEngine::start("sla = []", dir.path()).await;
    let body = fixture("wechat/order_deliver_partial.json");
    for (at, expected) in [(now_s() - 3600, 401), (now_s(), 200)] {
        let query = wechat_query(at, "n-1");
        let (status, answer) = engine
            .post_source_query("wechat", &query, &[], body.clone())
            .await;
        assert_eq!(status, expected, "{answer}");
    }
    // Partial delivery: recorded, not shipped.
    let order = engine
        .eventually("/v1/orders/wechat:3705115058471208928", |o| {
            !o["timeline"].as_array().unwrap().is_empty()
        })
        .await;
    assert_eq!(order["timeline"][0]["mapped"], "none");
    assert_ne!(order["state"], "shipped");
    engine.stop().await;
}

/// The courier's route pushes find the order through the waybill the warehouse reported.
pub(crate) const WAREHOUSE_AND_COURIER: &str = r#"
sla = []

[sources.events]
secret_env = "ORDERHUB_EVENTS_SECRET"
tolerance = "5m"

[sources.sf]
allow_from = ["127.0.0.0/8"]
[sources.sf.opcode_map]
"50" = "in_transit"
"80" = "delivered"
"*" = "none"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_courier_scan_before_the_shipping_report_waits_for_it_and_is_never_refused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = TestEngine::start(WAREHOUSE_AND_COURIER, dir.path()).await;
    let order = "youzan:E20231115093012034500012";
    let (status, _) = engine
        .post_events(&canonical("yz-paid", order, "youzan", "paid", now_ms()))
        .await;
    assert_eq!(status, 200);
    let json = [("content-type", "application/json;charset=UTF-8".to_owned())];
    let form = [(
        "content-type",
        "application/x-www-form-urlencoded".to_owned(),
    )];
    let sf = format!("sf/{SF_PUSH_TOKEN}");
    // Without the secret path segment there is no such route; with a wrong one, 401.
    let (status, body) = engine
        .post_source("sf", &json, fixture("sf/route_push.json"))
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = engine
        .post_source("sf/guess", &json, fixture("sf/route_push.json"))
        .await;
    assert_eq!(status, 401, "{body}");
    // The courier's scans arrive before the warehouse's report: kept, acknowledged.
    let (status, body) = engine
        .post_source(&sf, &json, fixture("sf/route_push.json"))
        .await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"return_code":"0000","return_msg":"success"}"#)
    );
    let courier = engine.source("sf").await;
    assert_eq!(courier["parked_scans"]["count"], 3, "{courier}");
    // The warehouse ships it with that waybill: the waiting scans apply to the order.
    let mut shipped = canonical("wms-shipped", order, "wms", "shipped", now_ms());
    shipped = shipped.replacen('}', r#","fields":{"waybill_no":"SF1400123456789"}}"#, 1);
    let (status, body) = engine.post_events(&shipped).await;
    assert_eq!(status, 200, "{body}");
    let found = engine
        .eventually(&format!("/v1/orders/{order}"), |o| {
            o["state"] == "delivered"
        })
        .await;
    let timeline = found["timeline"].as_array().unwrap();
    assert_eq!(
        timeline.len(),
        5,
        "paid, shipped and three scans: {timeline:?}"
    );
    assert_eq!(found["fields"]["waybill_no"], "SF1400123456789");
    assert_eq!(found["systems"]["sf"]["raw_status"], "80");
    // The same routes re-sent in form mode (XML): acknowledged in XML, nothing new.
    let (status, body) = engine
        .post_source(&sf, &form, fixture("sf/route_push.form"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("<Head>OK</Head>"), "{body}");
    let settled = engine.get(&format!("/v1/orders/{order}")).await.1;
    assert_eq!(settled["timeline"].as_array().unwrap().len(), 5);
    let courier = engine.source("sf").await;
    assert!(courier.get("parked_scans").is_none(), "{courier}");
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generic_source_is_configured_not_coded() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("sla = []\n{}", fixture("generic/dealer_portal.toml"));
    let engine = TestEngine::start(&config, dir.path()).await;
    let body = fixture("generic/dealer_portal.json");
    let post = |body: String, id: &'static str| {
        sign_events(
            engine
                .client
                .post(format!("{}/v1/ingest/dealer_portal", engine.base)),
            &body,
            id,
            now_s(),
        )
        .send()
    };
    let response = post(body.clone(), "wh-1").await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), r#"{"status":"accepted"}"#);
    let order = engine
        .eventually("/v1/orders/dealer:PO-2023-0042", |o| {
            o["state"] == "shipped"
        })
        .await;
    assert_eq!(order["fields"]["waybill_no"], "SF1400999");
    assert_eq!(
        order["systems"]["dealer_portal"]["raw_status"],
        "DISPATCHED"
    );
    // Unsigned: refused, named. With a status the table does not know: recorded, never refused.
    let (status, answer) = engine.post_source("dealer_portal", &[], body.clone()).await;
    assert_eq!(status, 401, "{answer}");
    let odd = body
        .replace("DISPATCHED", "LOST_IN_SPACE")
        .replace("evt-9002", "evt-9003");
    let response = post(odd, "wh-2").await.unwrap();
    assert_eq!(response.status(), 200);
    let order = engine
        .eventually("/v1/orders/dealer:PO-2023-0042", |o| {
            o["timeline"].as_array().unwrap().len() == 3
        })
        .await;
    assert_eq!(order["timeline"][2]["raw_status"], "LOST_IN_SPACE");
    assert_eq!(order["timeline"][2]["unmapped"], true);
    engine.stop().await;
}

#[test]
fn check_config_names_a_bad_generic_source_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        fixture("generic/dealer_portal.toml").replace("\"/order/po\"", "\"order.po\""),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orderhub"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sources.generic.dealer_portal.order_path"),
        "{stderr}"
    );
}
