//! Taobao/Tmall TMC (淘宝消息服务): a WebSocket the engine keeps open to
//! `ws://mc.api.taobao.com/`, speaking TOP's binary "link" framing
//! (shared/reference/protocols.md §1).
//!
//! Frame: protocol version (byte, 2), message type (byte), headers, end-of-headers (int16 0).
//! Little-endian. Headers: int16 type then value — 2 status code (int32), 3 status phrase,
//! 4 flag (int32), 5 token (counted strings: int32 length + UTF-8), 1 custom = counted name +
//! a typed value (0 void, 1 string, 2 byte, 3 int16, 4 int32, 5 int64, 6 date as int64 ms,
//! 7 counted bytes). The header layout is checked against tmcpy's test vector; the value type
//! codes and the message kinds below are **[?]** (TOP SDK knowledge, not a read source).
//!
//! Session: connect (type 0) with `app_key, group_name, timestamp, sign, sdk` where sign =
//! md5hex(secret + the sorted `app_key`, `group_name`, `timestamp` names and values + secret),
//! uppercase; the server answers type 1 with the session token. Messages arrive as type 2
//! with `id, topic, content` (content JSON: `tid, status, …`); each is confirmed (type 2,
//! `__kind` 2, `id`) once journaled. Every `pull_every` the client asks for waiting messages
//! (type 2, `__kind` 1), after a WebSocket ping as the heartbeat. Mapping: `topic_map` first (TradeBuyerPay → paid, …), then
//! `status_map` on `content.status` (for TradeChanged). Order key `taobao:{tid}`.

use super::connection::{Connection, ConnectionMetrics};
use super::registry::{self, Configured, Issue, SourcePlugin};
use super::{IngestError, SecretLookup, StatusTable};
use crate::AppState;
use crate::config::HumanDuration;
use futures_util::{SinkExt, StreamExt};
use orderhub_actors::order::{EventAction, Millis, OrderEvent};
use serde_json::{Map, Value as Json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message as WsMessage;

pub(crate) const SOURCE: &str = "taobao";
/// The source of its order-detail answers and the sink of its fetches.
pub(crate) const API_SOURCE: &str = "taobao_api";

mod details;

/// `[sources.tmc]`: Taobao/Tmall TMC, a WebSocket the engine keeps open.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TmcConfig {
    /// Environment variable holding the app key.
    pub(crate) app_key_env: String,
    /// Environment variable holding the app secret.
    pub(crate) app_secret_env: String,
    /// The service's URL.
    pub(crate) url: String,
    /// The TMC user group.
    pub(crate) group: String,
    /// How often the client asks for waiting messages.
    pub(crate) pull_every: HumanDuration,
    /// Reconnect when no frame (pongs included) arrived for this long.
    #[serde(default = "default_tmc_idle")]
    pub(crate) idle_timeout: HumanDuration,
    /// Topic (`prefix*` allowed) → canonical status; checked first.
    pub(crate) topic_map: BTreeMap<String, String>,
    /// `content.status` → canonical status (for topics not in `topic_map`).
    pub(crate) status_map: BTreeMap<String, String>,
    /// `[sources.tmc.details]`: fetch each order's contents with `taobao.trade.fullinfo.get`.
    #[serde(default)]
    pub(crate) details: Option<super::details::DetailsConfig>,
}

fn default_tmc_idle() -> HumanDuration {
    HumanDuration(Duration::from_secs(180))
}

/// Taobao/Tmall TMC, `[sources.tmc]`: a WebSocket the engine keeps open.
pub(crate) struct Plugin;

impl SourcePlugin for Plugin {
    fn key(&self) -> &'static str {
        "tmc"
    }

    fn configure(&self, table: toml::Value) -> Result<Vec<Configured>, Issue> {
        let config: TmcConfig = registry::parse("sources.tmc", table)?;
        registry::statuses("sources.tmc.topic_map", &config.topic_map)?;
        registry::statuses("sources.tmc.status_map", &config.status_map)?;
        if config.idle_timeout.0 <= config.pull_every.0 {
            return Err((
                "sources.tmc.idle_timeout".into(),
                "must be longer than pull_every (each pull's ping is answered)".into(),
            ));
        }
        let mut configured = Vec::new();
        if let Some(table) = &config.details {
            let (key_env, secret_env) = (config.app_key_env.clone(), config.app_secret_env.clone());
            configured.push(super::details::configure(
                "sources.tmc.details".to_owned(),
                SOURCE,
                API_SOURCE,
                table,
                &details::TAKES,
                details::DEFAULT_RATE,
                &details::REFETCH_ON,
                move |table, secrets, data_dir| {
                    let key = super::secret(secrets, &key_env)?;
                    let secret = super::secret(secrets, &secret_env)?;
                    let client =
                        details::TaobaoDetails::new(table, key, secret, secrets, data_dir)?;
                    Ok(std::sync::Arc::new(client)
                        as std::sync::Arc<dyn super::details::DetailsClient>)
                },
            )?);
        }
        configured.insert(0, Configured::connection(SOURCE, config, build));
        Ok(configured)
    }
}

/// The longest the connect handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest counted string or byte array accepted in a frame.
const MAX_COUNTED: usize = 4 << 20;

/// Message types.
pub(crate) const CONNECT: u8 = 0;
pub(crate) const CONNECT_ACK: u8 = 1;
pub(crate) const SEND: u8 = 2;
/// `__kind` of a pull request and of a confirmation.
pub(crate) const KIND_PULL: i32 = 1;
pub(crate) const KIND_CONFIRM: i32 = 2;

/// A typed value of a custom header.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum TmcValue {
    Void,
    Str(String),
    Byte(u8),
    I16(i16),
    I32(i32),
    I64(i64),
    Date(i64),
    Bytes(Vec<u8>),
}

impl TmcValue {
    fn as_text(&self) -> Option<String> {
        match self {
            TmcValue::Str(s) => Some(s.clone()),
            TmcValue::Byte(v) => Some(v.to_string()),
            TmcValue::I16(v) => Some(v.to_string()),
            TmcValue::I32(v) => Some(v.to_string()),
            TmcValue::I64(v) | TmcValue::Date(v) => Some(v.to_string()),
            TmcValue::Void | TmcValue::Bytes(_) => None,
        }
    }
}

/// One frame.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct TmcMessage {
    pub(crate) protocol_version: u8,
    pub(crate) message_type: u8,
    pub(crate) status_code: Option<i32>,
    pub(crate) status_phrase: Option<String>,
    pub(crate) flag: Option<i32>,
    pub(crate) token: Option<String>,
    pub(crate) content: Vec<(String, TmcValue)>,
}

impl TmcMessage {
    pub(crate) fn get(&self, name: &str) -> Option<&TmcValue> {
        self.content.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

fn put_counted(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as i32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Encodes a frame.
pub(crate) fn encode(message: &TmcMessage) -> Vec<u8> {
    let mut out = vec![message.protocol_version, message.message_type];
    if let Some(code) = message.status_code {
        out.extend_from_slice(&2i16.to_le_bytes());
        out.extend_from_slice(&code.to_le_bytes());
    }
    if let Some(phrase) = &message.status_phrase {
        out.extend_from_slice(&3i16.to_le_bytes());
        put_counted(&mut out, phrase.as_bytes());
    }
    if let Some(flag) = message.flag {
        out.extend_from_slice(&4i16.to_le_bytes());
        out.extend_from_slice(&flag.to_le_bytes());
    }
    if let Some(token) = &message.token {
        out.extend_from_slice(&5i16.to_le_bytes());
        put_counted(&mut out, token.as_bytes());
    }
    for (name, value) in &message.content {
        out.extend_from_slice(&1i16.to_le_bytes());
        put_counted(&mut out, name.as_bytes());
        match value {
            TmcValue::Void => out.push(0),
            TmcValue::Str(s) => {
                out.push(1);
                put_counted(&mut out, s.as_bytes());
            }
            TmcValue::Byte(v) => out.extend_from_slice(&[2, *v]),
            TmcValue::I16(v) => {
                out.push(3);
                out.extend_from_slice(&v.to_le_bytes());
            }
            TmcValue::I32(v) => {
                out.push(4);
                out.extend_from_slice(&v.to_le_bytes());
            }
            TmcValue::I64(v) => {
                out.push(5);
                out.extend_from_slice(&v.to_le_bytes());
            }
            TmcValue::Date(v) => {
                out.push(6);
                out.extend_from_slice(&v.to_le_bytes());
            }
            TmcValue::Bytes(b) => {
                out.push(7);
                put_counted(&mut out, b);
            }
        }
    }
    out.extend_from_slice(&0i16.to_le_bytes());
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len());
        let end =
            end.ok_or_else(|| format!("frame ends at byte {} inside a field", self.bytes.len()))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("length checked"))
    }
    fn counted(&mut self) -> Result<&'a [u8], String> {
        let len = i32::from_le_bytes(self.array()?);
        let len = usize::try_from(len)
            .ok()
            .filter(|len| *len <= MAX_COUNTED)
            .ok_or_else(|| format!("bad length {len}"))?;
        self.take(len)
    }
    fn string(&mut self) -> Result<String, String> {
        String::from_utf8(self.counted()?.to_vec()).map_err(|_| "string is not UTF-8".to_owned())
    }
}

/// Decodes a frame.
pub(crate) fn decode(bytes: &[u8]) -> Result<TmcMessage, String> {
    let mut r = Reader { bytes, at: 0 };
    let [protocol_version, message_type] = r.array()?;
    let mut message = TmcMessage {
        protocol_version,
        message_type,
        ..TmcMessage::default()
    };
    loop {
        match i16::from_le_bytes(r.array()?) {
            0 => break,
            1 => {
                let name = r.string()?;
                let value = match r.array::<1>()?[0] {
                    0 => TmcValue::Void,
                    1 => TmcValue::Str(r.string()?),
                    2 => TmcValue::Byte(r.array::<1>()?[0]),
                    3 => TmcValue::I16(i16::from_le_bytes(r.array()?)),
                    4 => TmcValue::I32(i32::from_le_bytes(r.array()?)),
                    5 => TmcValue::I64(i64::from_le_bytes(r.array()?)),
                    6 => TmcValue::Date(i64::from_le_bytes(r.array()?)),
                    7 => TmcValue::Bytes(r.counted()?.to_vec()),
                    other => return Err(format!("unknown value format {other}")),
                };
                message.content.push((name, value));
            }
            2 => message.status_code = Some(i32::from_le_bytes(r.array()?)),
            3 => message.status_phrase = Some(r.string()?),
            4 => message.flag = Some(i32::from_le_bytes(r.array()?)),
            5 => message.token = Some(r.string()?),
            other => return Err(format!("unknown header type {other}")),
        }
    }
    Ok(message)
}

/// The `sdk` value of the connect frame: the Java TOP SDK's form.
const SDK_IDENTITY: &str = "top-sdk-java-20200706";

pub(crate) struct TmcChannel {
    app_key: String,
    app_secret: String,
    url: String,
    group: String,
    pull_every: Duration,
    idle_timeout: Duration,
    topic_map: StatusTable,
    status_map: StatusTable,
}

pub(crate) fn build(config: &TmcConfig, secrets: &SecretLookup) -> Result<TmcChannel, String> {
    Ok(TmcChannel {
        app_key: super::secret(secrets, &config.app_key_env)?,
        app_secret: super::secret(secrets, &config.app_secret_env)?,
        url: config.url.clone(),
        group: config.group.clone(),
        pull_every: config.pull_every.0,
        idle_timeout: config.idle_timeout.0,
        topic_map: StatusTable::new(&config.topic_map),
        status_map: StatusTable::new(&config.status_map),
    })
}

impl TmcChannel {
    /// The connect frame at `now_ms`, from this host's address `intranet_ip`.
    pub(crate) fn connect_frame(&self, now_ms: Millis, intranet_ip: &str) -> TmcMessage {
        let timestamp = now_ms.to_string();
        let signed = BTreeMap::from([
            ("app_key", self.app_key.clone()),
            ("group_name", self.group.clone()),
            ("timestamp", timestamp.clone()),
        ]);
        let sign = crate::signing::top_sign(
            signed.iter().map(|(k, v)| (*k, v.as_str())),
            &self.app_secret,
        );
        TmcMessage {
            protocol_version: 2,
            message_type: CONNECT,
            flag: Some(1),
            content: vec![
                ("timestamp".into(), TmcValue::Str(timestamp)),
                ("app_key".into(), TmcValue::Str(self.app_key.clone())),
                // As the public SDKs identify themselves (the Java SDK's `Constants.SDK_VERSION`;
                // tmcpy and the Node SDK send the same kind of value); unsigned, like there.
                ("sdk".into(), TmcValue::Str(SDK_IDENTITY.into())),
                ("intranet_ip".into(), TmcValue::Str(intranet_ip.into())),
                ("sign".into(), TmcValue::Str(sign)),
                ("group_name".into(), TmcValue::Str(self.group.clone())),
            ],
            ..TmcMessage::default()
        }
    }

    fn control(&self, token: &str, kind: i32, id: Option<i64>) -> TmcMessage {
        let mut content = vec![("__kind".into(), TmcValue::I32(kind))];
        if let Some(id) = id {
            content.push(("id".into(), TmcValue::I64(id)));
        }
        TmcMessage {
            protocol_version: 2,
            message_type: SEND,
            token: Some(token.to_owned()),
            content,
            ..TmcMessage::default()
        }
    }

    /// The event of a data message and its id (to confirm), or why it is refused.
    pub(crate) fn map(
        &self,
        message: &TmcMessage,
        received_at: Millis,
    ) -> Result<(OrderEvent, i64), IngestError> {
        let id = match message.get("id") {
            Some(TmcValue::I64(id)) => *id,
            Some(other) => other
                .as_text()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| IngestError::Malformed("message id is not a number".into()))?,
            None => return Err(IngestError::Malformed("message has no id".into())),
        };
        let topic = message
            .get("topic")
            .and_then(TmcValue::as_text)
            .ok_or_else(|| IngestError::Malformed(format!("message {id} has no topic")))?;
        let content: Map<String, Json> = match message.get("content").and_then(TmcValue::as_text) {
            Some(text) => super::decode_json(text.as_bytes()).map_err(|e| {
                IngestError::Malformed(format!("message {id}: content is not a JSON object: {e}"))
            })?,
            None => Map::new(),
        };
        let tid = match content.get("tid") {
            Some(Json::Number(n)) => n.to_string(),
            Some(Json::String(s)) if !s.is_empty() => s.clone(),
            _ => {
                return Err(IngestError::Malformed(format!(
                    "message {id}: content has no tid"
                )));
            }
        };
        let status = content
            .get("status")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_owned();
        let action = self
            .topic_map
            .get(&topic)
            .or_else(|| self.status_map.get(&status))
            .cloned()
            .unwrap_or(EventAction::Unmapped);
        let occurred_at = match message.get("pubtime") {
            Some(TmcValue::Date(ms)) | Some(TmcValue::I64(ms)) => *ms,
            _ => received_at,
        };
        let mut fields = Map::new();
        fields.insert("taobao_topic".into(), Json::String(topic.clone()));
        fields.insert("taobao_content".into(), Json::Object(content));
        Ok((
            OrderEvent {
                order: format!("{SOURCE}:{tid}"),
                source: SOURCE.to_owned(),
                source_event_id: id.to_string(),
                supersedes: None,
                log_seq: None,
                raw_status: if status.is_empty() { topic } else { status },
                action,
                occurred_at,
                received_at,
                fields: fields.into(),
            },
            id,
        ))
    }

    /// Journals one data message; the confirmation to send once it is durable.
    async fn take(
        &self,
        app: &Arc<AppState>,
        token: &str,
        message: &TmcMessage,
    ) -> Option<TmcMessage> {
        let started = Instant::now();
        let result = match self.map(message, app.now_ms()) {
            Ok((event, id)) => super::journal_events(app, SOURCE, vec![event])
                .await
                .map(|outcome| (outcome, id)),
            Err(err) => Err(err),
        };
        match result {
            Ok((outcome, id)) => {
                app.ingest_metrics.request(SOURCE, outcome, started);
                Some(self.control(token, KIND_CONFIRM, Some(id)))
            }
            Err(err) => {
                app.ingest_metrics.request(SOURCE, err.kind(), started);
                tracing::warn!(source = SOURCE, error = %err, "message not taken; not confirmed, TMC will redeliver it");
                None
            }
        }
    }
}

impl Connection for TmcChannel {
    fn source(&self) -> &'static str {
        SOURCE
    }

    async fn session(
        &self,
        app: &Arc<AppState>,
        metrics: &ConnectionMetrics,
    ) -> Result<(), String> {
        let socket = super::connection::open(&self.url).await?;
        let intranet_ip = super::connection::local_ip(&socket);
        let (mut sink, mut stream) = socket.split();
        let hello = encode(&self.connect_frame(app.now_ms(), &intranet_ip));
        sink.send(WsMessage::Binary(hello.into()))
            .await
            .map_err(|e| e.to_string())?;
        // The server answers the connect with the session token.
        let token = tokio::time::timeout(CONNECT_TIMEOUT, async {
            while let Some(frame) = stream.next().await {
                if let WsMessage::Binary(bytes) = frame.map_err(|e| e.to_string())? {
                    let reply = decode(&bytes)?;
                    if reply.message_type == CONNECT_ACK {
                        return match (reply.status_code, reply.token) {
                            (Some(code), _) if code != 0 && code != 200 => Err(format!(
                                "connect refused: {code} {}",
                                reply.status_phrase.unwrap_or_default()
                            )),
                            (_, Some(token)) => Ok(token),
                            (_, None) => Err("connect answer without a token".into()),
                        };
                    }
                }
            }
            Err("closed during the handshake".to_owned())
        })
        .await
        .map_err(|_| "no handshake answer".to_owned())??;
        metrics.connected.set(1.0);
        tracing::info!(source = SOURCE, "channel connected");
        let mut pull = tokio::time::interval(self.pull_every);
        let mut idle = super::connection::IdleWatch::new(self.idle_timeout);
        loop {
            tokio::select! {
                () = idle.expired() => return Err(idle.reason()),
                _ = pull.tick() => {
                    // A WebSocket ping as the heartbeat, and a request for waiting messages.
                    sink.send(WsMessage::Ping(Vec::new().into())).await.map_err(|e| e.to_string())?;
                    let frame = encode(&self.control(&token, KIND_PULL, None));
                    sink.send(WsMessage::Binary(frame.into())).await.map_err(|e| e.to_string())?;
                }
                frame = stream.next() => match idle.seen(frame) {
                    None | Some(Ok(WsMessage::Close(_))) => return Ok(()),
                    Some(Err(e)) => return Err(e.to_string()),
                    Some(Ok(WsMessage::Binary(bytes))) => {
                        let message = match decode(&bytes) {
                            Ok(message) => message,
                            Err(error) => {
                                app.ingest_metrics.request(SOURCE, "malformed", Instant::now());
                                tracing::warn!(source = SOURCE, %error, "undecodable frame");
                                continue;
                            }
                        };
                        if message.message_type == SEND && message.get("topic").is_some()
                            && let Some(confirm) = self.take(app, &token, &message).await
                        {
                            sink.send(WsMessage::Binary(encode(&confirm).into()))
                                .await
                                .map_err(|e| e.to_string())?;
                        }
                    }
                    Some(Ok(_)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderhub_actors::order::{EventAction, OrderState};

    /// tmcpy's test vector: a connect answer with flag 1 and a token.
    const VECTOR: &[u8] = b"\x02\x01\x04\x00\x01\x00\x00\x00\x05\x00$\x00\x00\x0032e88d28-20b1-40dd-8e2d-abec197277fe\x00\x00";

    #[test]
    fn frames_match_tmcpys_test_vector_and_round_trip() {
        let message = decode(VECTOR).unwrap();
        assert_eq!((message.protocol_version, message.message_type), (2, 1));
        assert_eq!(message.flag, Some(1));
        assert_eq!(
            message.token.as_deref(),
            Some("32e88d28-20b1-40dd-8e2d-abec197277fe")
        );
        assert_eq!(encode(&message), VECTOR);
        let full = TmcMessage {
            protocol_version: 2,
            message_type: SEND,
            status_code: Some(200),
            status_phrase: Some("ok".into()),
            flag: None,
            token: Some("t".into()),
            content: vec![
                ("v".into(), TmcValue::Void),
                ("s".into(), TmcValue::Str("淘宝".into())),
                ("b".into(), TmcValue::Byte(7)),
                ("h".into(), TmcValue::I16(-2)),
                ("i".into(), TmcValue::I32(70000)),
                ("l".into(), TmcValue::I64(1 << 40)),
                ("d".into(), TmcValue::Date(1_700_000_000_000)),
                ("y".into(), TmcValue::Bytes(vec![0, 1, 2])),
            ],
        };
        assert_eq!(decode(&encode(&full)).unwrap(), full);
        for bad in [
            &b""[..],
            b"\x02",
            b"\x02\x01\x05\x00\xff\xff\xff\xff",
            b"\x02\x01\x09\x00",
        ] {
            assert!(decode(bad).is_err());
        }
    }

    fn channel() -> TmcChannel {
        let config: TmcConfig = super::super::registry::default_config("tmc");
        TmcChannel {
            app_key: "12345678".into(),
            app_secret: "tb-secret".into(),
            url: config.url.clone(),
            group: config.group.clone(),
            pull_every: config.pull_every.0,
            idle_timeout: config.idle_timeout.0,
            topic_map: StatusTable::new(&config.topic_map),
            status_map: StatusTable::new(&config.status_map),
        }
    }

    #[test]
    fn the_connect_frame_is_signed_top_style() {
        // Worked value from Python: md5("tb-secret" + "app_key12345678group_namedefault"
        // + "timestamp1700000000000" + "tb-secret").upper().
        let frame = channel().connect_frame(1_700_000_000_000, "10.1.2.3");
        assert_eq!(
            frame.get("sign"),
            Some(&TmcValue::Str("91443E7C4AA31DEACC2F89F9B710A56E".into()))
        );
        // Identified as the SDKs identify themselves; `sdk` and `intranet_ip` are not signed.
        assert_eq!(
            frame.get("sdk"),
            Some(&TmcValue::Str("top-sdk-java-20200706".into()))
        );
        assert_eq!(
            frame.get("intranet_ip"),
            Some(&TmcValue::Str("10.1.2.3".into()))
        );
    }

    #[test]
    fn data_messages_map_by_topic_then_status() {
        let data = |topic: &str, status: &str| TmcMessage {
            protocol_version: 2,
            message_type: SEND,
            content: vec![
                ("id".into(), TmcValue::I64(90001)),
                ("topic".into(), TmcValue::Str(topic.into())),
                (
                    "content".into(),
                    TmcValue::Str(format!(
                        r#"{{"tid":3820011234567,"status":"{status}","seller_nick":"小店","payment":"59.00"}}"#
                    )),
                ),
                ("pubtime".into(), TmcValue::Date(1_700_000_000_000)),
            ],
            ..TmcMessage::default()
        };
        let (event, id) = channel()
            .map(
                &data("taobao_trade_TradeBuyerPay", "WAIT_SELLER_SEND_GOODS"),
                5,
            )
            .unwrap();
        assert_eq!((event.order.as_str(), id), ("taobao:3820011234567", 90001));
        assert_eq!(
            event.action,
            EventAction::Move {
                state: OrderState::Paid
            }
        );
        assert_eq!(event.occurred_at, 1_700_000_000_000);
        let (changed, _) = channel()
            .map(
                &data("taobao_trade_TradeChanged", "WAIT_BUYER_CONFIRM_GOODS"),
                5,
            )
            .unwrap();
        assert_eq!(
            changed.action,
            EventAction::Move {
                state: OrderState::Shipped
            }
        );
        let (event, _) = channel()
            .map(&data("taobao_trade_TradeChanged", "SOMETHING_NEW"), 5)
            .unwrap();
        assert_eq!(
            event.action,
            EventAction::Unmapped,
            "recorded, never refused"
        );
    }
}
