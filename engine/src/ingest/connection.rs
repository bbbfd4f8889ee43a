//! Connection-based channels (Pinduoduo's message service, Taobao's TMC): the engine is the
//! client. Each runs one long-lived task that connects, serves the connection until it drops,
//! and reconnects with exponential backoff and jitter. Messages are acknowledged to the
//! platform only after they are durably journaled, so a message in flight when the connection
//! or the engine dies is delivered again (and deduplicated by its id): at least once, never
//! lost. A message of a type or status orderhub does not map is journaled as unmapped and
//! acknowledged like any other; a malformed one is not acknowledged (counted, logged, and the
//! platform redelivers it). A connection on which no frame arrives for the channel's
//! `idle_timeout` is taken for dead (a half-open TCP connection looks alive) and replaced.

use crate::AppState;
use metrics::{Counter, Gauge};
use orderhub_actors::telemetry as t;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// First wait before reconnecting.
pub(crate) const RECONNECT_INITIAL: Duration = Duration::from_secs(1);
/// Longest wait before reconnecting.
pub(crate) const RECONNECT_MAX: Duration = Duration::from_secs(60);
/// A session that lasted this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// The longest a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A WebSocket to a channel.
pub(crate) type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the WebSocket at `url` within the connect time limit.
pub(crate) async fn open(url: &str) -> Result<Socket, String> {
    let (socket, _) = tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(url))
        .await
        .map_err(|_| format!("no connection within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("connect: {e}"))?;
    Ok(socket)
}

/// The deadline after which a silent connection is taken for dead; every frame pushes it out.
pub(crate) struct IdleWatch {
    limit: Duration,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl IdleWatch {
    pub(crate) fn new(limit: Duration) -> Self {
        IdleWatch {
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }

    /// Completes when no frame was seen for the limit.
    pub(crate) async fn expired(&mut self) {
        self.deadline.as_mut().await
    }

    /// Notes that `frame` arrived (whatever it is) and hands it back.
    pub(crate) fn seen<T>(&mut self, frame: T) -> T {
        self.deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + self.limit);
        frame
    }

    /// Why the session ends.
    pub(crate) fn reason(&self) -> String {
        format!("no frame for {:?}; reconnecting", self.limit)
    }
}

/// This host's address on the connection (the `intranet_ip` the TMC SDKs send).
pub(crate) fn local_ip(socket: &Socket) -> String {
    use tokio_tungstenite::MaybeTlsStream;
    let tcp = match socket.get_ref() {
        MaybeTlsStream::Plain(tcp) => Some(tcp),
        MaybeTlsStream::Rustls(tls) => Some(tls.get_ref().0),
        _ => None,
    };
    tcp.and_then(|tcp| tcp.local_addr().ok())
        .map_or_else(|| "127.0.0.1".to_owned(), |addr| addr.ip().to_string())
}

/// One channel's connection metrics.
pub(crate) struct ConnectionMetrics {
    pub(crate) connected: Gauge,
    pub(crate) reconnects: Counter,
}

impl ConnectionMetrics {
    /// Registers the series of `source` (exported from start-up).
    pub(crate) fn new(source: &'static str) -> Self {
        ConnectionMetrics {
            connected: metrics::gauge!(t::CHANNEL_CONNECTED, "source" => source),
            reconnects: metrics::counter!(t::CHANNEL_RECONNECTS, "source" => source),
        }
    }
}

/// A channel the engine connects to.
pub(crate) trait Connection: Send + Sync + 'static {
    /// The source name (metric label, event source).
    fn source(&self) -> &'static str;
    /// One connection's life: connect, serve until it drops. `Err` says why it ended badly.
    fn session(
        &self,
        app: &Arc<AppState>,
        metrics: &ConnectionMetrics,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// The wait before reconnect attempt `failures` (1-based): doubling from the initial wait up
/// to the maximum, with "equal jitter" (`unit` in [0, 1)).
pub(crate) fn backoff(failures: u32, unit: f64) -> Duration {
    let base = RECONNECT_INITIAL
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(RECONNECT_MAX);
    base.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

/// Keeps `channel` connected until the task is dropped.
pub(crate) async fn keep_connected<C: Connection>(channel: C, app: Arc<AppState>) {
    let source = channel.source();
    let metrics = ConnectionMetrics::new(source);
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        let result = channel.session(&app, &metrics).await;
        metrics.connected.set(0.0);
        if started.elapsed() >= STABLE_AFTER {
            failures = 0;
        }
        failures += 1;
        let wait = backoff(failures, fastrand::f64());
        match result {
            Ok(()) => tracing::warn!(source, ?wait, "channel connection closed; reconnecting"),
            Err(error) => {
                tracing::warn!(source, %error, ?wait, "channel connection failed; reconnecting")
            }
        }
        metrics.reconnects.increment(1);
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        assert_eq!(backoff(1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(1, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(4, 1.0), Duration::from_secs(8));
        assert_eq!(backoff(30, 1.0), RECONNECT_MAX);
        assert_eq!(backoff(30, 0.0), RECONNECT_MAX / 2);
    }
}
