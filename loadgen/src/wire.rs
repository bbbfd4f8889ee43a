//! Requests in each source's native format with valid signatures. Written from the protocol
//! facts, independently of the engine's code (loadgen talks to the engine over HTTP only).

use crate::lifecycle::{Channel, System};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};

/// The credentials requests are signed with, from the same environment variables the engine
/// reads.
#[derive(Clone)]
pub struct Credentials {
    /// `ORDERHUB_DOUYIN_APP_KEY`.
    pub douyin_key: String,
    /// `ORDERHUB_DOUYIN_APP_SECRET`.
    pub douyin_secret: String,
    /// Decoded `ORDERHUB_EVENTS_SECRET` (`whsec_…`).
    pub events_key: Vec<u8>,
    /// `ORDERHUB_YOUZAN_CLIENT_ID` and `_CLIENT_SECRET`, when set (needed for `--channels youzan`).
    pub youzan: Option<(String, String)>,
}

impl Credentials {
    /// Reads the credentials; the error names the missing or invalid variable.
    pub fn from_env() -> Result<Credentials, String> {
        let var = |name: &str| {
            std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))
        };
        let events = var("ORDERHUB_EVENTS_SECRET")?;
        let events_key = base64::engine::general_purpose::STANDARD
            .decode(events.trim_start_matches("whsec_"))
            .map_err(|e| format!("ORDERHUB_EVENTS_SECRET is not a whsec_ base64 secret: {e}"))?;
        let youzan = match (
            var("ORDERHUB_YOUZAN_CLIENT_ID"),
            var("ORDERHUB_YOUZAN_CLIENT_SECRET"),
        ) {
            (Ok(id), Ok(secret)) => Some((id, secret)),
            _ => None,
        };
        Ok(Credentials {
            douyin_key: var("ORDERHUB_DOUYIN_APP_KEY")?,
            douyin_secret: var("ORDERHUB_DOUYIN_APP_SECRET")?,
            events_key,
            youzan,
        })
    }
}

/// Douyin push tags of the states a channel reports.
fn douyin_tag(state: &str) -> Option<&'static str> {
    Some(match state {
        "pending_payment" => "100",
        "paid" => "101",
        "completed" => "103",
        "cancelled" => "106",
        _ => return None,
    })
}

/// Youzan trade status and message type of the states a channel reports.
fn youzan_status(state: &str) -> Option<(&'static str, &'static str)> {
    Some(match state {
        "pending_payment" => ("WAIT_BUYER_PAY", "trade_TradeCreate"),
        "paid" => ("WAIT_SELLER_SEND_GOODS", "trade_TradeBuyerPay"),
        "completed" => ("TRADE_SUCCESS", "trade_TradeSuccess"),
        "cancelled" => ("TRADE_CLOSED", "trade_TradeClose"),
        _ => return None,
    })
}

/// URL-encoding with `+` for space, as Youzan encodes `msg`.
fn urlencode_plus(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'*' => {
                out.push(byte as char)
            }
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// A request ready to send: path, headers and body.
#[derive(Clone, Debug)]
pub struct WireRequest {
    /// Path on the engine.
    pub path: &'static str,
    /// Headers.
    pub headers: Vec<(&'static str, String)>,
    /// Body.
    pub body: String,
}

/// The order's key in the engine for `channel` and order number `n`.
pub fn order_key(channel: Channel, run: u64, n: u64) -> String {
    match channel {
        Channel::Douyin => format!("douyin:{}", run * 100_000_000 + n),
        Channel::Shop => format!("shop:{run}-{n}"),
        Channel::Youzan => format!("youzan:E{run}{n:012}"),
    }
}

/// The request reporting `state` for the order, as `system` sends it. `event_id` is stable
/// for a redelivery.
pub fn request(
    credentials: &Credentials,
    channel: Channel,
    order: &str,
    system: System,
    state: &str,
    event_id: &str,
    occurred_at_ms: i64,
) -> WireRequest {
    if let (Channel::Youzan, System::Channel, Some((status, kind)), Some((id, secret))) = (
        channel,
        system,
        youzan_status(state),
        credentials.youzan.as_ref(),
    ) {
        let tid = order.trim_start_matches("youzan:");
        let msg =
            serde_json::json!({ "tid": tid, "status": status, "update_time": occurred_at_ms })
                .to_string();
        let body = serde_json::json!({
            "client_id": id, "id": tid, "kdt_id": 1, "msg": urlencode_plus(&msg),
            "msg_id": event_id, "sendCount": 0, "status": status, "test": false,
            "type": kind, "version": occurred_at_ms,
        })
        .to_string();
        let sign = md5_hex(&[id.as_bytes(), body.as_bytes(), secret.as_bytes()]);
        return WireRequest {
            path: "/v1/ingest/youzan",
            headers: vec![
                ("content-type", "application/json".into()),
                ("event-sign", sign),
            ],
            body,
        };
    }
    match (channel, system, douyin_tag(state)) {
        (Channel::Douyin, System::Channel, Some(tag)) => {
            let p_id = order.trim_start_matches("douyin:");
            let data = serde_json::json!({ "p_id": p_id, "shop_id": 1, "update_time": occurred_at_ms / 1000 }).to_string();
            let body =
                serde_json::json!([{ "tag": tag, "msg_id": event_id, "data": data }]).to_string();
            let sign = md5_hex(&[
                credentials.douyin_key.as_bytes(),
                body.as_bytes(),
                credentials.douyin_secret.as_bytes(),
            ]);
            WireRequest {
                path: "/v1/ingest/douyin",
                headers: vec![
                    ("app-id", credentials.douyin_key.clone()),
                    ("event-sign", sign),
                ],
                body,
            }
        }
        _ => {
            let source = match system {
                System::Channel => "shop",
                System::Wms => "wms",
                System::Courier => "courier",
            };
            let body = serde_json::json!({
                "event_id": event_id, "order": order, "source": source,
                "status": state, "occurred_at": occurred_at_ms,
            })
            .to_string();
            let timestamp = (occurred_at_ms / 1000).to_string();
            let signature = webhook_signature(&credentials.events_key, event_id, &timestamp, &body);
            WireRequest {
                path: "/v1/events",
                headers: vec![
                    ("content-type", "application/json".into()),
                    ("webhook-id", event_id.to_owned()),
                    ("webhook-timestamp", timestamp),
                    ("webhook-signature", signature),
                ],
                body,
            }
        }
    }
}

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part);
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The Standard Webhooks `v1,` signature of `body` under `id` and `timestamp`.
pub(crate) fn webhook_signature(key: &[u8], id: &str, timestamp: &str, body: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_reference_values() {
        // The Standard Webhooks test vector.
        let key = base64::engine::general_purpose::STANDARD
            .decode("C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
            .unwrap();
        assert_eq!(
            webhook_signature(
                &key,
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                "1649367553",
                r#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
        assert_eq!(md5_hex(&[b"a", b"bc"]), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn channels_speak_their_own_format() {
        let credentials = Credentials {
            douyin_key: "7001".into(),
            douyin_secret: "s".into(),
            events_key: vec![1, 2, 3],
            youzan: Some(("yz".into(), "ys".into())),
        };
        let paid = request(
            &credentials,
            Channel::Douyin,
            "douyin:42",
            System::Channel,
            "paid",
            "m1",
            1_700_000_000_000,
        );
        assert_eq!(paid.path, "/v1/ingest/douyin");
        let body: serde_json::Value = serde_json::from_str(&paid.body).unwrap();
        assert_eq!(body[0]["tag"], "101");
        let picked = request(
            &credentials,
            Channel::Douyin,
            "douyin:42",
            System::Wms,
            "picked",
            "m2",
            1_700_000_000_000,
        );
        assert_eq!(picked.path, "/v1/events");
        assert!(picked.body.contains(r#""source":"wms""#));
        let youzan = request(
            &credentials,
            Channel::Youzan,
            "youzan:E1000000000042",
            System::Channel,
            "paid",
            "m3",
            1_700_000_000_000,
        );
        assert_eq!(youzan.path, "/v1/ingest/youzan");
        let body: serde_json::Value = serde_json::from_str(&youzan.body).unwrap();
        assert_eq!(
            (body["id"].as_str(), body["status"].as_str()),
            (Some("E1000000000042"), Some("WAIT_SELLER_SEND_GOODS"))
        );
        assert_eq!(
            youzan.headers[1].1,
            md5_hex(&[b"yz", youzan.body.as_bytes(), b"ys"])
        );
    }
}
