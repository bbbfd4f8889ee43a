//! DingTalk custom robot: POST `…/robot/send?access_token=T&timestamp=TS&sign=S` where
//! `sign = base64(HmacSHA256(secret, "{TS}\n{secret}"))`, TS in milliseconds; body
//! `{"msgtype":"text","text":{"content":…}}`; answered `{"errcode":0}`
//! (shared/reference/protocols.md §3). Without a secret (keyword-protected robots) no sign is
//! added. Robots allow about 20 messages a minute [?]: configure `rate = "20/min"`.

use super::wecom::{message, robot_answer};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use orderhub_actors::dispatch::{DeliveryFuture, SinkConnector, SyncIntent};

/// errcode of "send too fast" [?: general knowledge of the DingTalk API, not verified].
const TOO_FAST: i64 = 130101;

pub(crate) struct DingtalkConnector {
    client: reqwest::Client,
    url: String,
    secret: Option<String>,
}

impl DingtalkConnector {
    pub(crate) fn new(client: reqwest::Client, url: &str, secret: Option<String>) -> Self {
        DingtalkConnector {
            client,
            url: url.to_owned(),
            secret,
        }
    }

    /// The URL for a message sent at `timestamp_ms`.
    fn signed_url(&self, timestamp_ms: i64) -> String {
        let Some(secret) = &self.secret else {
            return self.url.clone();
        };
        let params = [
            ("timestamp", timestamp_ms.to_string()),
            ("sign", sign(secret, timestamp_ms)),
        ];
        reqwest::Url::parse_with_params(&self.url, &params)
            .map_or_else(|_| self.url.clone(), |u| u.to_string())
    }
}

/// base64(HmacSHA256(secret, "{timestamp_ms}\n{secret}")).
pub(crate) fn sign(secret: &str, timestamp_ms: i64) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{timestamp_ms}\n{secret}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

impl SinkConnector for DingtalkConnector {
    fn deliver(&self, sync: std::sync::Arc<SyncIntent>, _attempt: u32) -> DeliveryFuture {
        let now = super::unix_ms();
        let request = self.client.post(self.signed_url(now)).json(&message(&sync));
        super::deliver_parsed(request, |body: &str| robot_answer(body, TOO_FAST))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_matches_a_worked_value_and_is_url_encoded() {
        // Worked out with Python's hmac/base64 from the formula in protocols.md.
        assert_eq!(
            sign("SECtest", 1_700_000_000_000),
            "aZLLrriXgn05YbwaGR7knYsLeJADjr9NwLaNNKpxh4g="
        );
        let connector = DingtalkConnector::new(
            crate::http_client::builder().build().unwrap(),
            "https://oapi.dingtalk.com/robot/send?access_token=T0",
            Some("SECtest".into()),
        );
        assert_eq!(
            connector.signed_url(1_700_000_000_000),
            "https://oapi.dingtalk.com/robot/send?access_token=T0&timestamp=1700000000000&sign=aZLLrriXgn05YbwaGR7knYsLeJADjr9NwLaNNKpxh4g%3D"
        );
        let unsigned = DingtalkConnector::new(
            crate::http_client::builder().build().unwrap(),
            "https://oapi.dingtalk.com/robot/send?access_token=T0",
            None,
        );
        assert_eq!(
            unsigned.signed_url(1),
            "https://oapi.dingtalk.com/robot/send?access_token=T0"
        );
    }
}
