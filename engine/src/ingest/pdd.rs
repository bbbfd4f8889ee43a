//! Pinduoduo (拼多多) message service: a WebSocket the engine keeps open
//! (shared/reference/protocols.md §1).
//!
//! - Connect to `{url}/{clientId}/{tsMillis}/{sign}`, sign =
//!   urlencode(base64(md5hex(clientId + tsMillis + clientSecret))) (base64 over the hex text).
//! - Frames are JSON: `{id, commandType:"Common", sendTime, message:{type, mallID, content}}`
//!   where `content` is a JSON string; also `HeartBeat` and `Ack`.
//! - Every message is acknowledged with `{id, commandType:"Ack", time, sendTime, type,
//!   mallID}` — after it is journaled. The engine sends a `HeartBeat` frame every `heartbeat`.
//!
//! Mapping by message `type` (`type_map`, `prefix*` allowed): TradeConfirmed → paid,
//! TradeSellerShip → shipped, TradeSuccess → completed; risk, address and refund messages are
//! kept in the timeline. The order is `pdd:{content.tid}` ([?] the content's order field is
//! configurable as `order_field`), the event id the frame's `id`.

use super::connection::{Connection, ConnectionMetrics};
use super::registry::{self, Configured, Issue, SourcePlugin};
use super::{IngestError, SecretLookup, StatusTable};
use crate::AppState;
use crate::config::HumanDuration;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures_util::{SinkExt, StreamExt};
use orderhub_actors::order::{Millis, OrderEvent};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message as WsMessage;

pub(crate) const SOURCE: &str = "pdd";
/// The source of its order-detail answers and the sink of its fetches.
pub(crate) const API_SOURCE: &str = "pdd_api";

mod details;

/// `[sources.pdd]`: the Pinduoduo message service, a WebSocket the engine keeps open.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PddConfig {
    /// Environment variable holding the client id.
    pub(crate) client_id_env: String,
    /// Environment variable holding the client secret.
    pub(crate) client_secret_env: String,
    /// The service's URL; `/{clientId}/{ts}/{sign}` is appended.
    pub(crate) url: String,
    /// How often the engine sends a heartbeat frame.
    pub(crate) heartbeat: HumanDuration,
    /// Reconnect when no frame arrived for this long (a half-open connection looks alive).
    #[serde(default = "default_pdd_idle")]
    pub(crate) idle_timeout: HumanDuration,
    /// The content field holding the order number.
    pub(crate) order_field: String,
    /// Message type (`prefix*` allowed) → canonical status.
    pub(crate) type_map: BTreeMap<String, String>,
    /// `[sources.pdd.details]`: fetch each order's contents with `pdd.order.information.get`.
    #[serde(default)]
    pub(crate) details: Option<super::details::DetailsConfig>,
}

fn default_pdd_idle() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

/// The Pinduoduo message service, `[sources.pdd]`: a WebSocket the engine keeps open.
pub(crate) struct Plugin;

impl SourcePlugin for Plugin {
    fn key(&self) -> &'static str {
        SOURCE
    }

    fn configure(&self, table: toml::Value) -> Result<Vec<Configured>, Issue> {
        let config: PddConfig = registry::parse("sources.pdd", table)?;
        registry::statuses("sources.pdd.type_map", &config.type_map)?;
        if config.idle_timeout.0 <= config.heartbeat.0 {
            return Err((
                "sources.pdd.idle_timeout".into(),
                "must be longer than heartbeat (the server answers between heartbeats)".into(),
            ));
        }
        let mut configured = Vec::new();
        if let Some(table) = &config.details {
            let (id_env, secret_env) = (
                config.client_id_env.clone(),
                config.client_secret_env.clone(),
            );
            configured.push(super::details::configure(
                format!("sources.{SOURCE}.details"),
                SOURCE,
                API_SOURCE,
                table,
                &details::TAKES,
                details::DEFAULT_RATE,
                &details::REFETCH_ON,
                move |table, secrets, data_dir| {
                    let id = super::secret(secrets, &id_env)?;
                    let secret = super::secret(secrets, &secret_env)?;
                    let client = details::PddDetails::new(table, id, secret, secrets, data_dir)?;
                    Ok(std::sync::Arc::new(client)
                        as std::sync::Arc<dyn super::details::DetailsClient>)
                },
            )?);
        }
        configured.insert(0, Configured::connection(SOURCE, config, build));
        Ok(configured)
    }
}

pub(crate) struct PddChannel {
    client_id: String,
    client_secret: String,
    url: String,
    heartbeat: Duration,
    idle_timeout: Duration,
    order_field: String,
    type_map: StatusTable,
}

pub(crate) fn build(config: &PddConfig, secrets: &SecretLookup) -> Result<PddChannel, String> {
    let client_id = super::secret(secrets, &config.client_id_env)?;
    let client_secret = super::secret(secrets, &config.client_secret_env)?;
    Ok(PddChannel {
        client_id,
        client_secret,
        url: config.url.trim_end_matches('/').to_owned(),
        heartbeat: config.heartbeat.0,
        idle_timeout: config.idle_timeout.0,
        order_field: config.order_field.clone(),
        type_map: StatusTable::new(&config.type_map),
    })
}

/// The connect URL's signature.
pub(crate) fn connect_sign(client_id: &str, ts_ms: i64, secret: &str) -> String {
    let hex = crate::signing::md5_hex(&[
        client_id.as_bytes(),
        ts_ms.to_string().as_bytes(),
        secret.as_bytes(),
    ]);
    let b64 = STANDARD.encode(hex.as_bytes());
    percent_encoding::utf8_percent_encode(&b64, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Frame {
    id: Option<super::Scalar>,
    command_type: String,
    send_time: Option<i64>,
    message: Option<Body>,
}

#[derive(Deserialize)]
struct Body {
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "mallID")]
    mall_id: Option<super::Scalar>,
    content: Option<String>,
}

/// What a frame asks of the client.
#[derive(Debug, PartialEq)]
pub(crate) enum Decoded {
    /// A message: journal the event, then send the ack.
    Message { event: Box<OrderEvent>, ack: String },
    /// Anything else (heartbeats, acks of ours): nothing to do.
    Ignore,
}

/// An id as a JSON integer when it is one (ids arrive as numbers, or digits in a string).
fn integer(id: &str) -> Value {
    id.parse::<u64>()
        .map(Value::from)
        .unwrap_or_else(|_| Value::String(id.to_owned()))
}

impl PddChannel {
    /// The URL to connect to at `now_ms`.
    pub(crate) fn connect_url(&self, now_ms: i64) -> String {
        format!(
            "{}/{}/{now_ms}/{}",
            self.url,
            self.client_id,
            connect_sign(&self.client_id, now_ms, &self.client_secret)
        )
    }

    /// Decodes one text frame.
    pub(crate) fn decode(&self, text: &str, received_at: Millis) -> Result<Decoded, IngestError> {
        let frame: Frame = super::decode_json(text.as_bytes())
            .map_err(|e| IngestError::Malformed(format!("not a message service frame: {e}")))?;
        if frame.command_type != "Common" {
            return Ok(Decoded::Ignore);
        }
        let id = frame
            .id
            .map(super::Scalar::into_string)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| IngestError::Malformed("frame has no id".into()))?;
        let body = frame
            .message
            .ok_or_else(|| IngestError::Malformed(format!("frame {id} has no message")))?;
        let content: Map<String, Value> = match body.content.as_deref() {
            Some(text) if !text.is_empty() => super::decode_json(text.as_bytes()).map_err(|e| {
                IngestError::Malformed(format!("frame {id}: content is not a JSON object: {e}"))
            })?,
            _ => Map::new(),
        };
        let order_id = match content.get(&self.order_field) {
            Some(Value::String(tid)) if !tid.is_empty() => tid.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                return Err(IngestError::Malformed(format!(
                    "frame {id}: content has no {}",
                    self.order_field
                )));
            }
        };
        let action = self.type_map.map(&body.kind);
        let mall_id = body.mall_id.map(super::Scalar::into_string);
        let send_time = frame.send_time.unwrap_or(received_at);
        // The SDKs ack with `id` and `mallID` as JSON integers (exact above 2^53: u64).
        let ack = serde_json::json!({
            "id": integer(&id),
            "commandType": "Ack",
            "time": received_at,
            "sendTime": send_time,
            "type": body.kind,
            "mallID": mall_id.as_deref().map(integer),
        })
        .to_string();
        let mut fields = Map::new();
        if let Some(mall) = &mall_id {
            fields.insert("pdd_mall_id".into(), Value::String(mall.clone()));
        }
        fields.insert("pdd_content".into(), Value::Object(content));
        Ok(Decoded::Message {
            event: Box::new(OrderEvent {
                order: format!("{SOURCE}:{order_id}"),
                source: SOURCE.to_owned(),
                source_event_id: id,
                supersedes: None,
                log_seq: None,
                raw_status: body.kind,
                action,
                occurred_at: send_time,
                received_at,
                fields: fields.into(),
            }),
            ack,
        })
    }
}

impl Connection for PddChannel {
    fn source(&self) -> &'static str {
        SOURCE
    }

    async fn session(
        &self,
        app: &Arc<AppState>,
        metrics: &ConnectionMetrics,
    ) -> Result<(), String> {
        let socket = super::connection::open(&self.connect_url(app.now_ms())).await?;
        metrics.connected.set(1.0);
        tracing::info!(source = SOURCE, "channel connected");
        let (mut sink, mut stream) = socket.split();
        let mut beat = tokio::time::interval(self.heartbeat);
        beat.tick().await;
        let mut idle = super::connection::IdleWatch::new(self.idle_timeout);
        loop {
            tokio::select! {
                () = idle.expired() => return Err(idle.reason()),
                _ = beat.tick() => {
                    let frame = serde_json::json!({ "commandType": "HeartBeat", "time": app.now_ms() });
                    sink.send(WsMessage::Text(frame.to_string().into())).await.map_err(|e| e.to_string())?;
                }
                frame = stream.next() => match idle.seen(frame) {
                    None | Some(Ok(WsMessage::Close(_))) => return Ok(()),
                    Some(Err(e)) => return Err(e.to_string()),
                    Some(Ok(WsMessage::Text(text))) => {
                        if let Some(ack) = self.take(app, &text).await {
                            sink.send(WsMessage::Text(ack.into())).await.map_err(|e| e.to_string())?;
                        }
                    }
                    Some(Ok(_)) => {}
                }
            }
        }
    }
}

impl PddChannel {
    /// Journals one frame's message; the ack to send once it is durable.
    async fn take(&self, app: &Arc<AppState>, text: &str) -> Option<String> {
        let started = Instant::now();
        let result = match self.decode(text, app.now_ms()) {
            Ok(Decoded::Ignore) => return None,
            Ok(Decoded::Message { event, ack }) => super::journal_events(app, SOURCE, vec![*event])
                .await
                .map(|outcome| (outcome, ack)),
            Err(err) => Err(err),
        };
        match result {
            Ok((outcome, ack)) => {
                app.ingest_metrics.request(SOURCE, outcome, started);
                Some(ack)
            }
            Err(err) => {
                app.ingest_metrics.request(SOURCE, err.kind(), started);
                tracing::warn!(source = SOURCE, error = %err, "message not taken; not acknowledged, the platform will redeliver it");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderhub_actors::order::{EventAction, OrderState};

    fn channel() -> PddChannel {
        let config: PddConfig = super::super::registry::default_config("pdd");
        PddChannel {
            client_id: "pdd-client".into(),
            client_secret: "pdd-secret".into(),
            url: "wss://message-api.pinduoduo.com/message".into(),
            heartbeat: config.heartbeat.0,
            idle_timeout: config.idle_timeout.0,
            order_field: config.order_field.clone(),
            type_map: StatusTable::new(&config.type_map),
        }
    }

    #[test]
    fn the_connect_url_carries_the_signed_timestamp() {
        // Worked value from Python:
        // quote(b64encode(md5("pdd-client1700000000000pdd-secret").hexdigest()), safe="").
        assert_eq!(
            channel().connect_url(1_700_000_000_000),
            "wss://message-api.pinduoduo.com/message/pdd-client/1700000000000/\
             MTU4YmY2MjM2OTE3MGFhYzAzM2NjYWVlNzEyYjc1Mzc%3D"
        );
    }

    /// Frames and acks after whalesky-labs/pdd-sdk-php `src/Message/*` (ids as integers).
    #[test]
    fn messages_map_by_type_and_ack_with_their_ids() {
        let frame = r#"{"id":8734120011,"commandType":"Common","sendTime":1700000001000,
            "message":{"type":"pdd_trade_TradeConfirmed","mallID":1200001,
            "content":"{\"tid\":\"231115-093012345678\",\"mall_id\":1200001}"}}"#;
        let Decoded::Message { event, ack } = channel().decode(frame, 5).unwrap() else {
            panic!("a message");
        };
        assert_eq!(event.order, "pdd:231115-093012345678");
        assert_eq!(event.source_event_id, "8734120011");
        assert_eq!(
            event.action,
            EventAction::Move {
                state: OrderState::Paid
            }
        );
        let ack: Value = serde_json::from_str(&ack).unwrap();
        assert_eq!(ack["id"], 8734120011u64, "an integer, as the SDKs send it");
        let big = frame.replace("8734120011", "9007199254740993");
        let Decoded::Message { ack: big, .. } = channel().decode(&big, 5).unwrap() else {
            panic!("a message");
        };
        let big: Value = serde_json::from_str(&big).unwrap();
        assert_eq!(
            big["id"].as_u64(),
            Some(9_007_199_254_740_993),
            "exact above 2^53"
        );
        assert_eq!(ack["commandType"], "Ack");
        assert_eq!(ack["sendTime"], 1700000001000i64);
        assert_eq!(ack["mallID"], 1200001);
        let beat = r#"{"commandType":"HeartBeat","time":1}"#;
        assert_eq!(channel().decode(beat, 5).unwrap(), Decoded::Ignore);
        let odd = frame.replace("TradeConfirmed", "TradeTeleported");
        let Decoded::Message { event, .. } = channel().decode(&odd, 5).unwrap() else {
            panic!("a message");
        };
        assert_eq!(
            event.action,
            EventAction::Unmapped,
            "recorded, never refused"
        );
        let refund = frame.replace("pdd_trade_TradeConfirmed", "pdd_refund_RefundCreated");
        let Decoded::Message { event, .. } = channel().decode(&refund, 5).unwrap() else {
            panic!("a message");
        };
        assert_eq!(event.action, EventAction::Inform);
        assert!(matches!(
            channel().decode("{", 5),
            Err(IngestError::Malformed(_))
        ));
    }
}
