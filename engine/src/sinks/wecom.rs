//! WeCom (企业微信) group robot: POST `…/cgi-bin/webhook/send?key=KEY` with
//! `{"msgtype":"text","text":{"content":…}}`; answered `{"errcode":0}`. The key is the only
//! secret; robots have no idempotency key, so a retried notification may be posted twice.
//! Robots allow 20 messages a minute: configure `rate = "20/min"`.

use super::robot_text;
use orderhub_actors::dispatch::{Delivery, DeliveryFuture, SinkConnector, SyncIntent};
use std::time::Duration;

/// errcode of "api freq out of limit" [?: general knowledge of the WeCom API, not verified].
const FREQUENCY_LIMIT: i64 = 45009;

pub(crate) struct WecomConnector {
    client: reqwest::Client,
    url: String,
}

impl WecomConnector {
    pub(crate) fn new(client: reqwest::Client, url: &str, key: String) -> Self {
        let url = match reqwest::Url::parse_with_params(url, &[("key", key)]) {
            Ok(url) => url.to_string(),
            Err(_) => url.to_owned(), // validated as http(s) at start-up
        };
        WecomConnector { client, url }
    }
}

/// The robot's message for `sync`.
pub(crate) fn message(sync: &SyncIntent) -> serde_json::Value {
    serde_json::json!({ "msgtype": "text", "text": { "content": robot_text(sync) } })
}

/// Reads a robot's `{"errcode":…,"errmsg":…}` answer (WeCom and DingTalk share the shape).
pub(crate) fn robot_answer(body: &str, throttled_code: i64) -> Delivery {
    let answer: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    match answer["errcode"].as_i64() {
        Some(0) => Delivery::Delivered,
        Some(code) if code == throttled_code => Delivery::Throttled {
            retry_after: Some(Duration::from_secs(60)),
            detail: format!("errcode {code}: {}", answer["errmsg"]),
        },
        Some(code) => Delivery::Rejected {
            detail: format!("errcode {code}: {}", answer["errmsg"]),
        },
        None => Delivery::Failed {
            retry_after: None,
            detail: format!("unexpected answer: {}", super::excerpt(body)),
        },
    }
}

impl SinkConnector for WecomConnector {
    fn deliver(&self, sync: std::sync::Arc<SyncIntent>, _attempt: u32) -> DeliveryFuture {
        let request = self.client.post(&self.url).json(&message(&sync));
        super::deliver_parsed(request, |body: &str| robot_answer(body, FREQUENCY_LIMIT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_goes_in_the_query_and_the_text_in_a_text_message() {
        let connector = WecomConnector::new(
            crate::http_client::builder().build().unwrap(),
            "https://qyapi.weixin.qq.com/cgi-bin/webhook/send",
            "693a91f6-7xxx".into(),
        );
        assert_eq!(
            connector.url,
            "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=693a91f6-7xxx"
        );
        let sync = SyncIntent {
            id: "o:1:3:wecom".into(),
            sink: "wecom".into(),
            order: "o:1".into(),
            seq: 3,
            rule: "r".into(),
            payload: serde_json::json!({ "text": "订单 o:1 已揽收" }),
            fields: None,
            contents: None,
        };
        assert_eq!(
            message(&sync),
            serde_json::json!({"msgtype": "text", "text": {"content": "订单 o:1 已揽收"}})
        );
    }

    #[test]
    fn answers_are_read() {
        assert_eq!(
            robot_answer(r#"{"errcode":0,"errmsg":"ok"}"#, FREQUENCY_LIMIT),
            Delivery::Delivered
        );
        assert!(matches!(
            robot_answer(
                r#"{"errcode":45009,"errmsg":"api freq out of limit"}"#,
                FREQUENCY_LIMIT
            ),
            Delivery::Throttled { .. }
        ));
        assert!(matches!(
            robot_answer(r#"{"errcode":93000,"errmsg":"invalid webhook url"}"#, FREQUENCY_LIMIT),
            Delivery::Rejected { detail } if detail.contains("93000")
        ));
        assert!(matches!(
            robot_answer("<html>", FREQUENCY_LIMIT),
            Delivery::Failed { .. }
        ));
    }
}
