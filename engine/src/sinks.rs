//! Sink connectors: one file per protocol, each implementing the actors' `SinkConnector` port.
//! - `webhook` — JSON POST signed with Standard Webhooks;
//! - `kingdee` — Kingdee K3 Cloud WebAPI (session login, Save/Submit);
//! - `wdt` — WangDianTong `trade_push.php`;
//! - `sf` — SF Express `EXP_RECE_CREATE_ORDER`;
//! - `wecom`, `dingtalk` — group robot notifications.

mod dingtalk;
mod direct;
mod kingdee;
mod sf;
mod wdt;
mod webhook;
mod wecom;

use crate::config::{SinkConfig, SinkKind};
use crate::secrets::SecretLookup;
use axum::http::HeaderMap;
use orderhub_actors::dispatch::{Delivery, SinkConnector};
use std::sync::Arc;
use std::time::Duration;

/// Longest response excerpt kept with a failed attempt.
const ERROR_EXCERPT: usize = 512;

/// A sink that cannot be built.
#[derive(Debug, thiserror::Error)]
#[error("sink {sink}: {problem}")]
pub struct SinkError {
    /// The sink.
    pub sink: String,
    /// What is wrong.
    pub problem: String,
}

/// Builds the connector of `config`, reading its secret through `secrets`.
pub fn connector(
    config: &SinkConfig,
    secrets: &SecretLookup,
) -> Result<Arc<dyn SinkConnector>, SinkError> {
    let fail = |problem: String| SinkError {
        sink: config.name.clone(),
        problem,
    };
    let client = crate::http_client::builder()
        .timeout(config.timeout.0)
        .pool_max_idle_per_host(config.max_in_flight)
        // Kingdee keeps its session in a cookie.
        .cookie_store(config.kind == SinkKind::Kingdee)
        .build()
        .map_err(|e| fail(format!("http client: {e}")))?;
    let settings = Settings { config, secrets };
    let secret = match &config.secret_env {
        Some(variable) => Some(crate::secrets::secret(secrets, variable).map_err(fail)?),
        None => None,
    };
    let connector: Arc<dyn SinkConnector> = match config.kind {
        SinkKind::Webhook => {
            Arc::new(webhook::WebhookConnector::new(client, config, secret).map_err(fail)?)
        }
        SinkKind::Wecom => Arc::new(wecom::WecomConnector::new(
            client,
            &config.url,
            secret.ok_or_else(|| fail("secret_env (the robot key) is required".into()))?,
        )),
        SinkKind::Dingtalk => Arc::new(dingtalk::DingtalkConnector::new(
            client,
            &config.url,
            secret,
        )),
        SinkKind::Wdt => Arc::new(wdt::WdtConnector::new(client, &settings)?),
        SinkKind::Sf => Arc::new(sf::SfConnector::new(client, &settings)?),
        SinkKind::Kingdee => Arc::new(kingdee::KingdeeConnector::new(client, &settings)?),
    };
    Ok(connector)
}

/// A sink's kind-specific credentials and options, with errors that name the key.
pub(crate) struct Settings<'a> {
    config: &'a SinkConfig,
    secrets: &'a SecretLookup,
}

impl Settings<'_> {
    fn error(&self, problem: String) -> SinkError {
        SinkError {
            sink: self.config.name.clone(),
            problem,
        }
    }

    /// The credential `name`, read from the environment variable the config names for it.
    pub(crate) fn credential(&self, name: &str) -> Result<String, SinkError> {
        let variable = self.config.credentials.get(name).ok_or_else(|| {
            self.error(format!(
                "credentials.{name} (an environment variable name) is required"
            ))
        })?;
        crate::secrets::secret(self.secrets, variable).map_err(|e| self.error(e))
    }

    pub(crate) fn option(&self, name: &str) -> Option<&str> {
        self.config.options.get(name).map(String::as_str)
    }

    pub(crate) fn required(&self, name: &str) -> Result<&str, SinkError> {
        self.option(name)
            .ok_or_else(|| self.error(format!("options.{name} is required")))
    }

    pub(crate) fn url(&self) -> &str {
        &self.config.url
    }
}

/// The channel's order number: `douyin:4987325601` → `4987325601`.
pub(crate) fn order_number(order_key: &str) -> &str {
    order_key.split_once(':').map_or(order_key, |(_, id)| id)
}

/// Sends `request`; a transport failure or a non-2xx answer is classified for the retry
/// policy, a 2xx answer's body is returned for the protocol's own success check.
pub(crate) async fn send(request: reqwest::RequestBuilder) -> Result<String, Delivery> {
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            // Read before the body consumes the response (no copy of the whole header map).
            let retry_after = retry_after(response.headers());
            let body = response.text().await.unwrap_or_default();
            Answer {
                status,
                retry_after,
                body,
            }
            .classified()
        }
        Err(err) => Err(transport_failure(&err)),
    }
}

/// A sink's answer, read whole.
pub(crate) struct Answer {
    status: u16,
    /// `Retry-After`, when given in seconds.
    retry_after: Option<Duration>,
    body: String,
}

impl Answer {
    /// The body of a 2xx answer; any other as the retry policy sees it.
    fn classified(self) -> Result<String, Delivery> {
        match classify(self.status, self.retry_after, &self.body) {
            Delivery::Delivered => Ok(self.body),
            other => Err(other),
        }
    }
}

/// Sends `request` and reads a 2xx answer with the protocol's own `parse`.
pub(crate) fn deliver_parsed(
    request: reqwest::RequestBuilder,
    parse: impl FnOnce(&str) -> Delivery + Send + 'static,
) -> orderhub_actors::dispatch::DeliveryFuture {
    Box::pin(async move {
        match send(request).await {
            Ok(body) => parse(&body),
            Err(delivery) => delivery,
        }
    })
}

/// Now, as a Unix time in milliseconds.
pub(crate) fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The text a robot posts: the notification's `text`, else the payload as JSON.
pub(crate) fn robot_text(sync: &orderhub_actors::dispatch::SyncIntent) -> String {
    sync.payload["text"].as_str().map_or_else(
        || serde_json::to_string(&sync.payload_json()).unwrap_or_default(),
        str::to_owned,
    )
}

/// `Retry-After` in seconds, if present and numeric.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// An excerpt of `text` for error details.
pub(crate) fn excerpt(text: &str) -> String {
    text.chars().take(ERROR_EXCERPT).collect()
}

/// Classifies an HTTP answer the way every HTTP sink does: 2xx delivered, 429 throttled,
/// 408/5xx transient, any other 4xx refused for good (410 means the endpoint is gone).
/// `retry_after` is the answer's `Retry-After` in seconds, if any.
fn classify(status: u16, retry_after: Option<Duration>, body: &str) -> Delivery {
    if (200..=299).contains(&status) {
        return Delivery::Delivered;
    }
    let detail = format!("HTTP {status}: {}", excerpt(body));
    match status {
        429 => Delivery::Throttled {
            retry_after,
            detail,
        },
        408 | 500..=599 => Delivery::Failed {
            retry_after,
            detail,
        },
        _ => Delivery::Rejected { detail },
    }
}

/// A transport failure (connection refused, timeout, reset) is transient.
fn transport_failure(err: &reqwest::Error) -> Delivery {
    let what = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connection failed"
    } else {
        "transport error"
    };
    Delivery::Failed {
        retry_after: None,
        detail: format!("{what}: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_for_the_retry_policy() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            classify(204, retry_after(&headers), ""),
            Delivery::Delivered
        );
        headers.insert("retry-after", "7".parse().unwrap());
        assert_eq!(
            classify(429, retry_after(&headers), "slow down"),
            Delivery::Throttled {
                retry_after: Some(Duration::from_secs(7)),
                detail: "HTTP 429: slow down".into()
            }
        );
        assert!(matches!(
            classify(503, retry_after(&headers), ""),
            Delivery::Failed {
                retry_after: Some(_),
                ..
            }
        ));
        assert!(matches!(
            classify(408, retry_after(&HeaderMap::new()), ""),
            Delivery::Failed {
                retry_after: None,
                ..
            }
        ));
        assert!(matches!(
            classify(410, retry_after(&headers), "gone"),
            Delivery::Rejected { .. }
        ));
        // A 2xx is delivered whatever else it says.
        assert_eq!(
            classify(200, retry_after(&headers), ""),
            Delivery::Delivered
        );
        // Retry-After is read in whole seconds, spaces around them allowed; an HTTP-date or
        // anything else is no hint (the policy's own backoff applies).
        headers.insert("retry-after", " 12 ".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(12)));
        headers.insert(
            "retry-after",
            "Wed, 21 Oct 2026 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
        let long = "x".repeat(5000);
        let Delivery::Rejected { detail } = classify(400, retry_after(&headers), &long) else {
            panic!("400 is refused")
        };
        assert!(detail.len() < 600, "the response is kept as an excerpt");
    }
}
