//! The channels' order APIs over HTTP: JSON answers classified for the retry policy, form
//! posts, query strings and business parameters as texts.

use super::{FetchError, param_text};
use orderhub_actors::order::Millis;
use serde_json::{Map, Value};
use std::time::Duration;

/// Now, as Unix milliseconds.
pub(crate) fn now_ms() -> Millis {
    crate::sinks::unix_ms()
}

/// Sends `request` and reads the answer's JSON; transport failures, 429 and 5xx are classified
/// for the retry policy. The platform's own success check is the caller's.
pub(crate) async fn call_json(request: reqwest::RequestBuilder) -> Result<Value, FetchError> {
    let response = request.send().await.map_err(|err| {
        FetchError::Transient(if err.is_timeout() {
            "timed out".to_owned()
        } else if err.is_connect() {
            "connection failed".to_owned()
        } else {
            "transport error".to_owned()
        })
    })?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let text = response
        .text()
        .await
        .map_err(|_| FetchError::Transient("the answer broke off".into()))?;
    match status {
        429 => {
            return Err(FetchError::Throttled {
                retry_after,
                detail: format!("HTTP 429: {}", crate::sinks::excerpt(&text)),
            });
        }
        408 | 500..=599 => {
            return Err(FetchError::Transient(format!(
                "HTTP {status}: {}",
                crate::sinks::excerpt(&text)
            )));
        }
        401 => {
            return Err(FetchError::TokenExpired(format!("HTTP {status}")));
        }
        _ => {}
    }
    // Platforms answer errors with 200 and a code in the body; a 4xx body is read the same way.
    serde_json::from_str(&text).map_err(|_| {
        if (200..300).contains(&status) {
            FetchError::Malformed(format!("not JSON: {}", crate::sinks::excerpt(&text)))
        } else {
            FetchError::Refused(format!("HTTP {status}: {}", crate::sinks::excerpt(&text)))
        }
    })
}

/// `base?name=value&…`, form-encoded.
pub(crate) fn with_query<'a>(
    base: &str,
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        query.append_pair(name, value);
    }
    format!("{base}?{}", query.finish())
}

/// POSTs `pairs` form-encoded (the TOP-style gateways: Pinduoduo, Taobao, JD; token calls)
/// and reads the answer's JSON.
pub(crate) async fn post_form(
    http: &reqwest::Client,
    url: &str,
    pairs: &[(&str, &str)],
) -> Result<Value, FetchError> {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    call_json(
        http.post(url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded;charset=utf-8",
            )
            .body(body),
    )
    .await
}

/// Business parameters as the name/value texts a form-encoded gateway signs and sends.
pub(crate) fn form_params(params: &Map<String, Value>) -> Vec<(String, String)> {
    params
        .iter()
        .map(|(name, value)| (name.clone(), param_text(value)))
        .collect()
}

/// Borrowed pairs of `texts`.
pub(crate) fn pairs(texts: &[(String, String)]) -> Vec<(&str, &str)> {
    texts
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect()
}
