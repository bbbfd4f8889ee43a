//! The lean transport of the hot sinks: hyper's pooled HTTP/1.1 client over rustls, with the
//! same TLS verification (the platform's roots) and TCP settings as the reqwest client the
//! other callers use, without reqwest's per-request layers. Those parse the URL again in the
//! redirect policy, the cookie layer and the response (three times per sync), copy the header
//! map and box the future twice; perf put them at 7% of the engine's CPU on the lifecycle
//! benchmark, where every event answers with half a sync.
//!
//! It does not speak to proxies. A sink whose URL the environment sends through one
//! (`ALL_PROXY`, `HTTPS_PROXY`, `HTTP_PROXY`, less `NO_PROXY`, the variables reqwest reads)
//! keeps the reqwest client (the webhook connector decides, when it is built).

use super::{Answer, Delivery};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use std::time::Duration;

/// A pooled HTTP/1.1 client for one sink.
pub(crate) struct DirectClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl DirectClient {
    /// A client keeping up to `max_idle` connections open between requests; every request,
    /// its answer's body included, must finish within `timeout`.
    pub(crate) fn new(max_idle: usize, timeout: Duration) -> Result<Self, String> {
        use rustls_platform_verifier::ConfigVerifierExt;
        crate::http_client::install_tls_provider();
        let tls = rustls::ClientConfig::with_platform_verifier()
            .map_err(|e| format!("TLS set-up: {e}"))?;
        // TCP as reqwest sets it: no Nagle delay, keep-alive probes after 15 s idle, a peer
        // that stops acknowledging is given up after 30 s.
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(15)));
        http.set_keepalive_interval(Some(Duration::from_secs(15)));
        http.set_keepalive_retries(Some(3));
        http.set_tcp_user_timeout(Some(Duration::from_secs(30)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(max_idle)
            .build(connector);
        Ok(DirectClient { client, timeout })
    }

    /// Sends `request` and reads the whole answer; a transport failure (the timeout included)
    /// is classified for the retry policy like reqwest's.
    pub(crate) async fn send(
        &self,
        request: hyper::Request<Full<Bytes>>,
    ) -> Result<Answer, Delivery> {
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                failure(
                    if e.is_connect() {
                        "connection failed"
                    } else {
                        "transport error"
                    },
                    &e,
                )
            })?;
            let status = response.status().as_u16();
            let retry_after = super::retry_after(response.headers());
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| failure("transport error", &e))?
                .to_bytes();
            Ok(Answer {
                status,
                retry_after,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(Delivery::Failed {
                retry_after: None,
                detail: format!("timed out: no complete answer within {:?}", self.timeout),
            }),
        }
    }
}

/// A transport failure, with the error's whole chain of causes (hyper's own message alone
/// says only "client error (Connect)").
fn failure(what: &str, error: &(dyn std::error::Error + 'static)) -> Delivery {
    let mut detail = format!("{what}: {error}");
    let mut cause = error.source();
    while let Some(inner) = cause {
        detail.push_str(": ");
        detail.push_str(&inner.to_string());
        cause = inner.source();
    }
    Delivery::Failed {
        retry_after: None,
        detail,
    }
}
