//! Order details (enrichment): the half every channel's order-detail client shares.
//!
//! A channel push says *that* an order changed, not what it holds. The order fold queues a
//! detail fetch (a sync to the `{channel}_api` sink, see `orderhub_actors::order::DetailsSpec`)
//! when an enriched channel reports an order whose contents are missing or may have changed; the
//! dispatcher of that sink runs it at the channel's API quota, with retries, backoff, breaker
//! and dead letters like any sync. [`DetailsConnector`] calls the channel's [`DetailsClient`]
//! (one file per channel beside its adapter, e.g. `douyin/details.rs`) and journals the answer
//! as an event of source `{channel}_api` carrying normalised `fields`:
//!
//! - `items[] {sku, name, qty, price}` — `sku` the seller's own code, else the platform's sku id;
//! - `amount` (what the buyer pays, yuan), `paid` (when paid), `freight`, `currency`;
//! - `receiver {name, phone, province, city, district, address}` — masked or encrypted parts as
//!   the platform delivered them;
//! - `buyer` — the platform's buyer id or nick as delivered.
//!
//! Credentials come from environment variables the config names; they never reach a log or an
//! error text. Tokens ([`TokenCache`]) are obtained on first use, refreshed before they expire
//! and once more on an "expired token" answer; refreshes are serialised per channel (Kuaishou
//! kills the previous refresh token when it issues a new one).

use crate::AppState;
use crate::config::{HumanDuration, Rate};
use orderhub_actors::dispatch::{Delivery, DeliveryFuture, SinkConnector, SyncIntent};
use orderhub_actors::order::{EventAction, Millis, OrderEvent};
use orderhub_actors::telemetry as t;
use serde_json::{Map, Value};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

mod http;
mod normalise;
mod tokens;

pub(crate) use http::{call_json, form_params, now_ms, pairs, post_form, with_query};
pub(crate) use normalise::{
    Contents, count, item, lines, mask_phone, receiver, seller_sku, text, yuan, yuan_from_fen,
};
pub(crate) use tokens::{Token, TokenCache, with_token};

/// Default timeout of one order-detail call.
pub(crate) const DEFAULT_DETAILS_TIMEOUT: Duration = Duration::from_secs(10);
/// Default calls in flight per channel.
pub(crate) const DEFAULT_DETAILS_IN_FLIGHT: usize = 8;
/// Attempts before a fetch is dead-lettered (about 6 hours with the backoff below).
pub(crate) const DETAILS_MAX_ATTEMPTS: u32 = 20;
/// A token is renewed this long before the platform says it expires.
pub(crate) const TOKEN_MARGIN: Duration = Duration::from_secs(300);
/// How long a channel whose credentials were refused waits before trying them again.
pub(crate) const CREDENTIALS_RETRY: Duration = Duration::from_secs(300);

/// `[sources.CHANNEL.details]`: fetch the channel's order details. Each channel takes the
/// credential keys its token flow needs beyond the source's own app credentials; a key it does
/// not use is refused by name.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DetailsConfig {
    /// The API gateway (default: the platform's production gateway).
    #[serde(default)]
    pub(crate) gateway: Option<String>,
    /// The channel API quota this app key may use (default: the channel's documented limit
    /// or a conservative guess, see docs/sources.md).
    #[serde(default)]
    pub(crate) rate: Option<Rate>,
    /// Calls allowed back to back before pacing applies (default: one second's worth).
    #[serde(default)]
    pub(crate) burst: Option<u32>,
    /// Calls in flight at most.
    #[serde(default = "default_in_flight")]
    pub(crate) max_in_flight: usize,
    /// How long one call may take.
    #[serde(default = "default_timeout")]
    pub(crate) timeout: HumanDuration,
    /// Raw statuses of the source after which the details are fetched again (address or amount
    /// changed); default per channel.
    #[serde(default)]
    pub(crate) refetch_on: Option<Vec<String>>,
    /// Environment variable holding the shop id (Douyin `authorization_self`, Youzan `kdt_id`).
    #[serde(default)]
    pub(crate) shop_id_env: Option<String>,
    /// Environment variable holding a ready access token (instead of the token flow).
    #[serde(default)]
    pub(crate) access_token_env: Option<String>,
    /// Environment variable holding the refresh token (Kuaishou, Pinduoduo).
    #[serde(default)]
    pub(crate) refresh_token_env: Option<String>,
    /// Environment variable holding the signing secret, where it is not the app secret
    /// (Kuaishou `signSecret`).
    #[serde(default)]
    pub(crate) sign_secret_env: Option<String>,
    /// Environment variable holding the app secret, where the source has none (Kuaishou: the
    /// push uses a message key).
    #[serde(default)]
    pub(crate) app_secret_env: Option<String>,
    /// Environment variable holding the app id, where the source has none (WeChat).
    #[serde(default)]
    pub(crate) app_id_env: Option<String>,
    /// Signature method, where the platform offers several (Douyin: `hmac-sha256` or `md5`).
    #[serde(default)]
    pub(crate) sign_method: Option<String>,
    /// Where tokens are renewed, when not at the gateway (JD: `https://open-oauth.jd.com`).
    #[serde(default)]
    pub(crate) token_gateway: Option<String>,
    /// Also decrypt the receiver with the platform's decryption call (Douyin only:
    /// `order.batchDecrypt`; off by default — the platform audits and limits it, and plain
    /// personal data then lives in the journal).
    #[serde(default)]
    pub(crate) decrypt: bool,
}

fn default_in_flight() -> usize {
    DEFAULT_DETAILS_IN_FLIGHT
}

fn default_timeout() -> HumanDuration {
    HumanDuration(DEFAULT_DETAILS_TIMEOUT)
}

/// The channel-specific keys of [`DetailsConfig`], by config name.
const CREDENTIAL_KEYS: [&str; 8] = [
    "shop_id_env",
    "access_token_env",
    "refresh_token_env",
    "sign_secret_env",
    "app_secret_env",
    "app_id_env",
    "sign_method",
    "token_gateway",
];

impl DetailsConfig {
    fn credential_key(&self, key: &str) -> Option<&String> {
        match key {
            "shop_id_env" => self.shop_id_env.as_ref(),
            "access_token_env" => self.access_token_env.as_ref(),
            "refresh_token_env" => self.refresh_token_env.as_ref(),
            "sign_secret_env" => self.sign_secret_env.as_ref(),
            "app_secret_env" => self.app_secret_env.as_ref(),
            "app_id_env" => self.app_id_env.as_ref(),
            "sign_method" => self.sign_method.as_ref(),
            "token_gateway" => self.token_gateway.as_ref(),
            _ => None,
        }
    }

    /// Checks the table at `path` for a channel whose token flow uses the credential keys
    /// `takes`; the complaint names the key.
    pub(crate) fn validate(&self, path: &str, takes: &[&str]) -> Result<(), (String, String)> {
        for key in CREDENTIAL_KEYS {
            if self.credential_key(key).is_some() && !takes.contains(&key) {
                let takes = if takes.is_empty() {
                    "none".to_owned()
                } else {
                    takes.join(", ")
                };
                return Err((
                    format!("{path}.{key}"),
                    format!("not used by this channel's order API (it takes {takes})"),
                ));
            }
        }
        for (key, url) in [
            ("gateway", &self.gateway),
            ("token_gateway", &self.token_gateway),
        ] {
            if let Some(url) = url
                && !(url.starts_with("https://") || url.starts_with("http://"))
            {
                return Err((
                    format!("{path}.{key}"),
                    format!("{url:?} is no http(s) URL"),
                ));
            }
        }
        if self.decrypt && !takes.contains(&"decrypt") {
            return Err((
                format!("{path}.decrypt"),
                "orderhub decrypts only Douyin's receiver (order.batchDecrypt); this channel's data stays as delivered".into(),
            ));
        }
        if self.max_in_flight == 0 {
            return Err((format!("{path}.max_in_flight"), "must be at least 1".into()));
        }
        if self.timeout.0.is_zero() {
            return Err((format!("{path}.timeout"), "must be more than 0".into()));
        }
        Ok(())
    }

    /// The secret in the environment variable `name` names, if the table names one.
    pub(crate) fn secret(
        &self,
        secrets: &crate::secrets::SecretLookup,
        name: &Option<String>,
    ) -> Result<Option<String>, String> {
        name.as_ref()
            .map(|variable| crate::secrets::secret(secrets, variable))
            .transpose()
    }

    /// The HTTP client of the channel's calls (with the table's timeout).
    pub(crate) fn http_client(&self) -> Result<reqwest::Client, String> {
        crate::http_client::builder()
            .timeout(self.timeout.0)
            .build()
            .map_err(|e| format!("http client: {e}"))
    }

    /// The gateway without a trailing slash, or `default`.
    pub(crate) fn gateway_or(&self, default: &str) -> String {
        self.gateway
            .as_deref()
            .unwrap_or(default)
            .trim_end_matches('/')
            .to_owned()
    }
}

/// Builds a channel's client from the secrets and the data directory (where rotating tokens
/// are kept); `Err` names what is missing.
pub(crate) type BuildClient = Box<
    dyn Fn(
            &crate::secrets::SecretLookup,
            &std::path::Path,
        ) -> Result<Arc<dyn DetailsClient>, String>
        + Send
        + Sync,
>;

/// A channel's configured enrichment, before its client is built.
pub(crate) struct DetailsPlan {
    /// The channel's source (`douyin`).
    pub(crate) channel: &'static str,
    /// `{channel}_api`: the fetching sink and the answers' source.
    pub(crate) api: &'static str,
    /// The table.
    pub(crate) config: DetailsConfig,
    /// The channel's default quota.
    pub(crate) default_rate: Rate,
    /// The channel's default refetch statuses.
    pub(crate) default_refetch_on: &'static [&'static str],
    /// Builds the client.
    pub(crate) build: BuildClient,
}

impl DetailsPlan {
    /// The fold's view: which reports fetch, into which sink, answered by which source.
    pub(crate) fn spec(&self) -> orderhub_actors::order::DetailsSpec {
        orderhub_actors::order::DetailsSpec {
            source: self.channel.to_owned(),
            sink: self.api.to_owned(),
            answers: self.api.to_owned(),
            refetch_on: self.config.refetch_on.clone().unwrap_or_else(|| {
                self.default_refetch_on
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect()
            }),
        }
    }

    /// The dispatch settings of its sink: the quota (shared by every fetch of the channel),
    /// calls in flight, and a patient retry schedule (1 s doubling to 30 min, 20 attempts).
    pub(crate) fn sink_spec(&self) -> orderhub_actors::dispatch::SinkSpec {
        let rate = self.config.rate.unwrap_or(self.default_rate);
        orderhub_actors::dispatch::SinkSpec {
            name: self.api.to_owned(),
            rate_count: rate.count,
            rate_per: rate.per,
            burst: self.config.burst.unwrap_or(rate.count).max(1),
            max_in_flight: self.config.max_in_flight,
            timeout: self.config.timeout.0 * 3,
            retry: orderhub_actors::dispatch::RetryPolicy {
                initial_backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(30 * 60),
                max_attempts: DETAILS_MAX_ATTEMPTS,
            },
            breaker_threshold: orderhub_actors::dispatch::policy::DEFAULT_BREAKER_THRESHOLD,
            breaker_cooldown: Duration::from_secs(30),
            window: orderhub_actors::dispatch::DEFAULT_WINDOW,
            // Fetches trail ingest at the channel's quota; a backlog of them never makes
            // ingest answer 429.
            holds_back_ingest: false,
        }
    }
}

/// The details table `table` at `key` (`sources.douyin.details`) of `channel` as a configured
/// source: checked (`takes`: the credential keys the channel's token flow uses), its client
/// made by `build` at start-up.
#[allow(clippy::too_many_arguments)]
pub(crate) fn configure<F>(
    key: String,
    channel: &'static str,
    api: &'static str,
    table: &DetailsConfig,
    takes: &[&str],
    default_rate: Rate,
    default_refetch_on: &'static [&'static str],
    build: F,
) -> Result<super::registry::Configured, super::registry::Issue>
where
    F: Fn(
            &DetailsConfig,
            &crate::secrets::SecretLookup,
            &std::path::Path,
        ) -> Result<Arc<dyn DetailsClient>, String>
        + Send
        + Sync
        + 'static,
{
    table.validate(&key, takes)?;
    let config = table.clone();
    Ok(super::registry::Configured::Details(Box::new(
        DetailsPlan {
            channel,
            api,
            config: table.clone(),
            default_rate,
            default_refetch_on,
            build: Box::new(move |secrets, data_dir| build(&config, secrets, data_dir)),
        },
    )))
}

/// The enrichment the engine runs: every configured channel whose client could be built.
#[derive(Default)]
pub(crate) struct Enrichment {
    pub(crate) channels: Vec<(DetailsPlan, ChannelApi)>,
}

impl Enrichment {
    /// Builds the clients of `plans`; a channel whose credentials are missing is left out with
    /// a warning and `orderhub_details_available{channel} 0`.
    pub(crate) fn build(
        plans: Vec<DetailsPlan>,
        secrets: &crate::secrets::SecretLookup,
        data_dir: &std::path::Path,
    ) -> Self {
        let mut channels = Vec::new();
        for plan in plans {
            match (plan.build)(secrets, data_dir) {
                Ok(client) => {
                    metrics::gauge!(t::DETAILS_AVAILABLE, "channel" => plan.channel).set(1.0);
                    let rate = plan.config.rate.unwrap_or(plan.default_rate);
                    let api =
                        ChannelApi::new(client, rate, plan.config.burst.unwrap_or(rate.count));
                    channels.push((plan, api));
                }
                Err(reason) => unavailable_at_start(plan.channel, &reason),
            }
        }
        Enrichment { channels }
    }

    /// Adds each channel's enrichment to `policy`.
    pub(crate) fn policy(
        &self,
        mut policy: orderhub_actors::order::OrderPolicy,
    ) -> orderhub_actors::order::OrderPolicy {
        for (plan, _) in &self.channels {
            policy = policy.with_details(plan.spec());
        }
        policy
    }

    /// Each channel's API, for its pollers.
    pub(crate) fn apis(&self) -> std::collections::BTreeMap<&'static str, ChannelApi> {
        self.channels
            .iter()
            .map(|(plan, api)| (plan.channel, api.clone()))
            .collect()
    }

    /// The `{channel}_api` sources.
    pub(crate) fn sources(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.channels.iter().map(|(plan, _)| plan.api)
    }

    /// Each channel's sink: its dispatch settings and its connector.
    pub(crate) fn sinks(
        &self,
        app: &LateApp,
    ) -> Vec<(orderhub_actors::dispatch::SinkSpec, Arc<dyn SinkConnector>)> {
        self.channels
            .iter()
            .map(|(plan, api)| {
                let connector: Arc<dyn SinkConnector> = Arc::new(DetailsConnector::new(
                    plan.channel,
                    plan.api,
                    api.clone(),
                    app.clone(),
                ));
                (plan.sink_spec(), connector)
            })
            .collect()
    }
}

/// What one order-detail call brought.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Fetched {
    /// The platform's order status as its API reports it.
    pub(crate) raw_status: String,
    /// When the platform last changed the order, if it says.
    pub(crate) updated_at: Option<Millis>,
    /// Normalised fields (see the module's doc).
    pub(crate) fields: Map<String, Value>,
}

/// Why an order-detail call did not bring the details.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub(crate) enum FetchError {
    /// The platform's call limit: retried after the wait.
    #[error("throttled: {detail}")]
    Throttled {
        /// The platform's wait, if it gave one.
        retry_after: Option<Duration>,
        /// What it said.
        detail: String,
    },
    /// A transient failure (transport, 5xx, a platform error worth retrying): retried.
    #[error("{0}")]
    Transient(String),
    /// The token was refused as expired or invalid: renewed once and retried.
    #[error("token expired: {0}")]
    TokenExpired(String),
    /// The credentials themselves were refused (wrong secret, no authorisation): the channel's
    /// enrichment waits and says so.
    #[error("credentials refused: {0}")]
    Credentials(String),
    /// The platform refused this order for good (unknown order, no permission for it).
    #[error("refused: {0}")]
    Refused(String),
    /// The answer was not what the platform documents.
    #[error("malformed answer: {0}")]
    Malformed(String),
}

impl FetchError {
    /// The metric label.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            FetchError::Throttled { .. } => "throttled",
            FetchError::Transient(_) => "failed",
            // Counted when the token is marked expired; a second refusal after the renewal
            // is a failure.
            FetchError::TokenExpired(_) => "failed",
            FetchError::Credentials(_) => "credentials",
            FetchError::Refused(_) => "refused",
            FetchError::Malformed(_) => "malformed",
        }
    }
}

/// A future of a detail client.
pub(crate) type FetchFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, FetchError>> + Send + 'a>>;

/// One channel's order API, signed and authorised as the platform requires.
pub(crate) trait DetailsClient: Send + Sync + 'static {
    /// Fetches the details of the channel's order `order_id` (no channel prefix). The client
    /// renews its token once on [`FetchError::TokenExpired`] before giving that error back.
    fn fetch<'a>(&'a self, order_id: &'a str) -> FetchFuture<'a, Fetched>;

    /// Calls the channel's API `method` with the business parameters `params`, signed and with
    /// the token like a fetch; the platform's answer after its envelope was checked. Pollers use
    /// it for the channel's "orders changed in a window" API.
    fn call<'a>(&'a self, method: &'a str, params: Map<String, Value>) -> FetchFuture<'a, Value>;
}

/// A channel's API as orderhub uses it: its signed client behind one quota per app key, which
/// detail fetches and the channel's pollers share.
#[derive(Clone)]
pub(crate) struct ChannelApi {
    client: Arc<dyn DetailsClient>,
    quota: Arc<governor::DefaultDirectRateLimiter>,
}

impl ChannelApi {
    /// `client` limited to `rate` with bursts of `burst`.
    pub(crate) fn new(client: Arc<dyn DetailsClient>, rate: Rate, burst: u32) -> Self {
        let period = rate.per / rate.count.max(1);
        let burst = std::num::NonZeroU32::new(burst.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        let quota = governor::Quota::with_period(period.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| governor::Quota::per_second(std::num::NonZeroU32::MIN))
            .allow_burst(burst);
        ChannelApi {
            client,
            quota: Arc::new(governor::RateLimiter::direct(quota)),
        }
    }

    /// [`DetailsClient::fetch`] once the quota allows.
    pub(crate) async fn fetch(&self, order_id: &str) -> Result<Fetched, FetchError> {
        self.quota.until_ready().await;
        self.client.fetch(order_id).await
    }

    /// [`DetailsClient::call`] once the quota allows.
    pub(crate) async fn call(
        &self,
        method: &str,
        params: Map<String, Value>,
    ) -> Result<Value, FetchError> {
        self.quota.until_ready().await;
        self.client.call(method, params).await
    }
}

/// A business parameter as the text form-encoded platforms sign and send (strings as they are,
/// anything else as JSON).
pub(crate) fn param_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// The engine, once it runs: detail answers are journaled through it. The dispatchers start
/// before the HTTP state exists, so it is bound late; a fetch before that waits and retries.
#[derive(Clone, Default)]
pub(crate) struct LateApp(Arc<OnceLock<Weak<AppState>>>);

impl LateApp {
    /// Binds the engine.
    pub(crate) fn bind(&self, app: &Arc<AppState>) {
        let _ = self.0.set(Arc::downgrade(app));
    }

    fn get(&self) -> Option<Arc<AppState>> {
        self.0.get().and_then(Weak::upgrade)
    }
}

/// The dispatcher's connector for the `{channel}_api` sink: runs the fetch and journals the
/// answer as a `{channel}_api` event (its id is the sync's idempotency key, so a fetch repeated
/// after a crash journals nothing new).
pub(crate) struct DetailsConnector {
    channel: &'static str,
    answers: &'static str,
    client: ChannelApi,
    app: LateApp,
    metrics: DetailsMetrics,
}

impl DetailsConnector {
    pub(crate) fn new(
        channel: &'static str,
        answers: &'static str,
        client: ChannelApi,
        app: LateApp,
    ) -> Self {
        DetailsConnector {
            channel,
            answers,
            client,
            app,
            metrics: DetailsMetrics::new(channel),
        }
    }
}

impl SinkConnector for DetailsConnector {
    fn deliver(&self, sync: std::sync::Arc<SyncIntent>, _attempt: u32) -> DeliveryFuture {
        let client = self.client.clone();
        let app = self.app.clone();
        let metrics = self.metrics.clone();
        let (channel, answers) = (self.channel, self.answers);
        Box::pin(async move {
            let Some(order_id) = sync.payload["order_id"].as_str() else {
                return Delivery::Rejected {
                    detail: "the fetch names no order_id".into(),
                };
            };
            let fetched = match client.fetch(order_id).await {
                Ok(fetched) => fetched,
                Err(err) => {
                    metrics.fetch(err.kind());
                    return delivery_of(channel, &err, &metrics);
                }
            };
            metrics.fetch("fetched");
            metrics.available(true);
            let Some(app) = app.get() else {
                return Delivery::Failed {
                    retry_after: None,
                    detail: "the engine is starting or stopping".into(),
                };
            };
            let now = app.now_ms();
            let event = OrderEvent {
                order: sync.order.clone(),
                source: answers.to_owned(),
                source_event_id: sync.id.clone(),
                supersedes: None,
                log_seq: None,
                raw_status: fetched.raw_status,
                action: EventAction::Inform,
                occurred_at: fetched.updated_at.unwrap_or(now).min(now),
                received_at: now,
                fields: fetched.fields.into(),
            };
            match super::journal_answers(&app, answers, vec![event]).await {
                Ok(_) => Delivery::Delivered,
                Err(err) => Delivery::Failed {
                    retry_after: None,
                    detail: format!("journaling the answer: {err}"),
                },
            }
        })
    }
}

/// How a failed fetch is retried.
fn delivery_of(channel: &str, err: &FetchError, metrics: &DetailsMetrics) -> Delivery {
    match err {
        FetchError::Throttled {
            retry_after,
            detail,
        } => Delivery::Throttled {
            retry_after: *retry_after,
            detail: detail.clone(),
        },
        FetchError::Credentials(detail) => {
            if metrics.available(false) {
                tracing::warn!(channel, problem = %detail, "order details: the channel refused orderhub's credentials; enrichment waits and retries every 5 minutes (ingest goes on)");
            }
            Delivery::Failed {
                retry_after: Some(CREDENTIALS_RETRY),
                detail: err.to_string(),
            }
        }
        FetchError::Refused(_) => Delivery::Rejected {
            detail: err.to_string(),
        },
        FetchError::Transient(_) | FetchError::TokenExpired(_) | FetchError::Malformed(_) => {
            Delivery::Failed {
                retry_after: None,
                detail: err.to_string(),
            }
        }
    }
}

/// The outcomes of `orderhub_details_fetches_total`.
const FETCH_OUTCOMES: [&str; 7] = [
    "fetched",
    "throttled",
    "failed",
    "token_expired",
    "credentials",
    "refused",
    "malformed",
];

/// A channel's order-detail metrics.
#[derive(Clone)]
pub(crate) struct DetailsMetrics {
    channel: &'static str,
    available: Arc<std::sync::atomic::AtomicBool>,
}

impl DetailsMetrics {
    pub(crate) fn new(channel: &'static str) -> Self {
        metrics::gauge!(t::DETAILS_AVAILABLE, "channel" => channel).set(1.0);
        // Every series exists from start-up, at 0.
        for outcome in FETCH_OUTCOMES {
            metrics::counter!(t::DETAILS_FETCHES, "channel" => channel, "outcome" => outcome)
                .increment(0);
        }
        for outcome in ["renewed", "refused", "failed"] {
            metrics::counter!(t::DETAILS_TOKEN_RENEWALS, "channel" => channel, "outcome" => outcome)
                .increment(0);
        }
        DetailsMetrics {
            channel,
            available: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }
    }

    fn fetch(&self, outcome: &'static str) {
        metrics::counter!(t::DETAILS_FETCHES, "channel" => self.channel, "outcome" => outcome)
            .increment(1);
    }

    /// Sets availability; true when it changed.
    fn available(&self, up: bool) -> bool {
        let was = self
            .available
            .swap(up, std::sync::atomic::Ordering::Relaxed);
        metrics::gauge!(t::DETAILS_AVAILABLE, "channel" => self.channel).set(if up {
            1.0
        } else {
            0.0
        });
        was != up
    }
}

/// Marks `channel`'s enrichment as off for `reason` at start-up (a missing credential).
pub(crate) fn unavailable_at_start(channel: &'static str, reason: &str) {
    metrics::gauge!(t::DETAILS_AVAILABLE, "channel" => channel).set(0.0);
    tracing::warn!(channel, problem = %reason, "order details off for this channel: orders from it carry only what its pushes say (ingest is unaffected)");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_yuan_rounded_to_the_fen() {
        assert_eq!(
            yuan_from_fen(&serde_json::json!(12345)),
            Some(serde_json::json!(123.45))
        );
        assert_eq!(
            yuan_from_fen(&serde_json::json!("990")),
            Some(serde_json::json!(9.9))
        );
        assert_eq!(
            yuan(&serde_json::json!("12.30")),
            Some(serde_json::json!(12.3))
        );
        assert_eq!(
            yuan(&serde_json::json!("0.1")),
            Some(serde_json::json!(0.1))
        );
        assert_eq!(yuan(&serde_json::json!("abc")), None);
        assert_eq!(yuan_from_fen(&serde_json::json!(null)), None);
    }

    #[test]
    fn phones_are_masked_unless_already_masked_or_encrypted() {
        assert_eq!(mask_phone("13812345678"), "138****5678");
        assert_eq!(mask_phone("138****5678"), "138****5678");
        assert_eq!(mask_phone("$jd8a9f$"), "$jd8a9f$");
        assert_eq!(mask_phone("#3Fz9##"), "#3Fz9##");
        assert_eq!(mask_phone("12"), "****");
    }

    #[tokio::test]
    async fn a_token_is_renewed_before_it_expires_and_once_when_refused() {
        let cache = TokenCache::new("test", None, None);
        let renewals = std::sync::atomic::AtomicU32::new(0);
        let renew = |_: Option<Token>| {
            let n = renewals.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            async move {
                Ok(Token {
                    access: format!("t{n}"),
                    expires_at: 10_000_000,
                    refresh: None,
                    refresh_expires_at: None,
                })
            }
        };
        assert_eq!(cache.get(0, renew).await.unwrap(), "t1");
        assert_eq!(cache.get(0, renew).await.unwrap(), "t1", "cached");
        // Within the margin before expiry it is renewed.
        let near = 10_000_000 - TOKEN_MARGIN.as_millis() as i64;
        assert_eq!(cache.get(near, renew).await.unwrap(), "t2");
        cache.expire("t1").await;
        assert_eq!(
            cache.get(0, renew).await.unwrap(),
            "t2",
            "t1 was already replaced"
        );
        cache.expire("t2").await;
        assert_eq!(cache.get(0, renew).await.unwrap(), "t3");
    }

    #[tokio::test]
    async fn a_kept_token_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let keep = dir.path().join("tokens").join("kuaishou.json");
        let configured = Token {
            access: "configured".into(),
            expires_at: 0,
            refresh: Some("r0".into()),
            refresh_expires_at: None,
        };
        let cache = TokenCache::new("test", Some(configured.clone()), Some(keep.clone()));
        let got = cache
            .get(1, |current: Option<Token>| async move {
                assert_eq!(current.unwrap().refresh.as_deref(), Some("r0"));
                Ok(Token {
                    access: "a1".into(),
                    expires_at: i64::MAX,
                    refresh: Some("r1".into()),
                    refresh_expires_at: Some(i64::MAX),
                })
            })
            .await
            .unwrap();
        assert_eq!(got, "a1");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&keep).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let restarted = TokenCache::new("test", Some(configured), Some(keep));
        let got = restarted
            .get(1, |_| async {
                Err(FetchError::Transient("not called".into()))
            })
            .await
            .unwrap();
        assert_eq!(got, "a1", "the rotated token, not the configured one");
    }
}
