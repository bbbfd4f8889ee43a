//! Sink connectors: one file per protocol, each implementing the actors' `SinkConnector` port.
//! - `webhook` — JSON POST signed with Standard Webhooks.

mod webhook;

use crate::config::{SinkConfig, SinkKind};
use crate::ingest::SecretLookup;
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
    let client = reqwest::Client::builder()
        .timeout(config.timeout.0)
        .pool_max_idle_per_host(config.max_in_flight)
        .build()
        .map_err(|e| fail(format!("http client: {e}")))?;
    let secret = match &config.secret_env {
        Some(variable) => Some(crate::ingest::secret(secrets, variable).map_err(fail)?),
        None => None,
    };
    match config.kind {
        SinkKind::Webhook => Ok(Arc::new(
            webhook::WebhookConnector::new(client, config.url.clone(), secret).map_err(fail)?,
        )),
    }
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

/// Classifies an HTTP answer the way every HTTP sink does: 2xx delivered, 429 throttled,
/// 408/5xx transient, any other 4xx refused for good (410 means the endpoint is gone).
fn classify(status: u16, headers: &HeaderMap, body: &str) -> Delivery {
    let excerpt: String = body.chars().take(ERROR_EXCERPT).collect();
    let detail = format!("HTTP {status}: {excerpt}");
    match status {
        200..=299 => Delivery::Delivered,
        429 => Delivery::Throttled {
            retry_after: retry_after(headers),
            detail,
        },
        408 | 500..=599 => Delivery::Failed {
            retry_after: retry_after(headers),
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
        assert_eq!(classify(204, &headers, ""), Delivery::Delivered);
        headers.insert("retry-after", "7".parse().unwrap());
        assert_eq!(
            classify(429, &headers, "slow down"),
            Delivery::Throttled {
                retry_after: Some(Duration::from_secs(7)),
                detail: "HTTP 429: slow down".into()
            }
        );
        assert!(matches!(
            classify(503, &headers, ""),
            Delivery::Failed {
                retry_after: Some(_),
                ..
            }
        ));
        assert!(matches!(
            classify(408, &HeaderMap::new(), ""),
            Delivery::Failed {
                retry_after: None,
                ..
            }
        ));
        assert!(matches!(
            classify(410, &headers, "gone"),
            Delivery::Rejected { .. }
        ));
        let long = "x".repeat(5000);
        let Delivery::Rejected { detail } = classify(400, &headers, &long) else {
            panic!("400 is refused")
        };
        assert!(detail.len() < 600, "the response is kept as an excerpt");
    }
}
