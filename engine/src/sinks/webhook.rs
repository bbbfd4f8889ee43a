//! The generic `webhook` sink: a JSON POST signed with Standard Webhooks. `webhook-id` (and
//! `idempotency-key`) carry the sync's stable idempotency key, so a receiver that dedupes on it
//! sees each sync once however often it is retried.

use super::direct::DirectClient;
use crate::config::SinkConfig;
use crate::signing::WebhookKey;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::proxy::matcher::Matcher;
use orderhub_actors::dispatch::{Delivery, DeliveryFuture, SinkConnector, SyncIntent};
use std::sync::Arc;
use std::time::Duration;

pub(crate) struct WebhookConnector {
    transport: Transport,
    key: Option<WebhookKey>,
}

/// How the requests go out.
enum Transport {
    /// hyper's pooled client (`direct`): every sink no proxy stands in front of.
    Direct {
        client: Arc<DirectClient>,
        /// Parsed once.
        uri: hyper::Uri,
    },
    /// reqwest, which speaks to the proxy the environment names for this URL.
    Proxied {
        client: reqwest::Client,
        /// Parsed once: reqwest would parse a string (host name normalisation included) per
        /// send.
        url: reqwest::Url,
    },
}

impl WebhookConnector {
    pub(crate) fn new(
        client: reqwest::Client,
        config: &SinkConfig,
        secret: Option<String>,
    ) -> Result<Self, String> {
        Self::with_proxies(
            client,
            &config.url,
            (config.max_in_flight, config.timeout.0),
            secret,
            &Matcher::from_env(),
        )
    }

    /// As [`new`](Self::new), with `proxies` the proxy settings (`new`: the environment's) and
    /// `pool` the most idle connections kept and the timeout of a request.
    fn with_proxies(
        client: reqwest::Client,
        url: &str,
        (max_idle, timeout): (usize, Duration),
        secret: Option<String>,
        proxies: &Matcher,
    ) -> Result<Self, String> {
        let key = secret.as_deref().map(WebhookKey::parse).transpose()?;
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("url {url:?}: {e}"))?;
        let uri: hyper::Uri = parsed
            .as_str()
            .parse()
            .map_err(|e| format!("url {url:?}: {e}"))?;
        let transport = if proxies.intercept(&uri).is_some() {
            Transport::Proxied {
                client,
                url: parsed,
            }
        } else {
            Transport::Direct {
                client: Arc::new(DirectClient::new(max_idle, timeout)?),
                uri,
            }
        };
        Ok(WebhookConnector { transport, key })
    }
}

/// The JSON body of a sync, serialized from borrowed parts (`json!` would first copy the
/// payload into a new value); the order's contents go in as the text they are kept as.
pub(crate) fn body(sync: &SyncIntent, attempt: u32) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        id: &'a str,
        order: &'a str,
        sink: &'a str,
        rule: &'a str,
        seq: u64,
        attempt: u32,
        payload: orderhub_actors::order::sync::WholePayload<'a>,
    }
    serde_json::to_vec(&Body {
        id: &sync.id,
        order: &sync.order,
        sink: &sync.sink,
        rule: &sync.rule,
        seq: sync.seq,
        attempt,
        payload: sync.payload_json(),
    })
    .unwrap_or_default()
}

impl SinkConnector for WebhookConnector {
    fn deliver(&self, sync: Arc<SyncIntent>, attempt: u32) -> DeliveryFuture {
        let body = body(&sync, attempt);
        let timestamp = (super::unix_ms() / 1000).to_string();
        let signature = self
            .key
            .as_ref()
            .map(|key| key.sign(&sync.id, &timestamp, &body));
        let headers = [
            ("content-type", "application/json"),
            ("webhook-id", sync.id.as_str()),
            ("idempotency-key", sync.id.as_str()),
            ("webhook-timestamp", timestamp.as_str()),
        ];
        match &self.transport {
            Transport::Direct { client, uri } => {
                let mut request = hyper::Request::post(uri.clone());
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                if let Some(signature) = signature {
                    request = request.header("webhook-signature", signature);
                }
                let request = request.body(Full::new(Bytes::from(body)));
                let client = client.clone();
                Box::pin(async move {
                    let request = match request {
                        Ok(request) => request,
                        // Only a header value could be refused: the sync id is ours and
                        // printable, so this is not expected; it would fail every attempt.
                        Err(e) => {
                            return Delivery::Rejected {
                                detail: format!("request not built: {e}"),
                            };
                        }
                    };
                    match client
                        .send(request)
                        .await
                        .and_then(super::Answer::classified)
                    {
                        Ok(_) => Delivery::Delivered,
                        Err(delivery) => delivery,
                    }
                })
            }
            Transport::Proxied { client, url } => {
                let mut request = client.post(url.clone());
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                if let Some(signature) = signature {
                    request = request.header("webhook-signature", signature);
                }
                let request = request.body(body);
                Box::pin(async move {
                    match super::send(request).await {
                        Ok(_) => Delivery::Delivered,
                        Err(delivery) => delivery,
                    }
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, StatusCode};
    use std::sync::Mutex;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    /// What the fake receiver saw of one request.
    #[derive(Clone, Debug)]
    struct Seen {
        uri: String,
        headers: HeaderMap,
        body: Vec<u8>,
    }

    type Seens = Arc<Mutex<Vec<Seen>>>;

    /// A loopback receiver answering the n-th request with `answers[n]` (status, stall in
    /// ms); 200 once they run out.
    async fn receiver(answers: Vec<(u16, u64)>) -> (String, Seens) {
        let seen: Seens = Arc::default();
        let recorded = seen.clone();
        let answers = Arc::new(answers);
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: axum::body::Bytes| {
                let recorded = recorded.clone();
                let answers = answers.clone();
                async move {
                    let n = {
                        let mut seen = recorded.lock().unwrap();
                        seen.push(Seen {
                            uri: uri.to_string(),
                            headers,
                            body: body.to_vec(),
                        });
                        seen.len() - 1
                    };
                    let (status, stall) = answers.get(n).copied().unwrap_or((200, 0));
                    tokio::time::sleep(Duration::from_millis(stall)).await;
                    (
                        StatusCode::from_u16(status).unwrap(),
                        [("retry-after", "7")],
                        "answer body",
                    )
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (base, seen)
    }

    fn sync() -> Arc<SyncIntent> {
        Arc::new(SyncIntent {
            id: "shop:1:7:erp".into(),
            sink: "erp".into(),
            order: "shop:1".into(),
            seq: 7,
            rule: "erp_on_paid".into(),
            payload: serde_json::json!({"operation": "create", "state": "paid"}),
            fields: None,
            contents: None,
        })
    }

    fn client() -> reqwest::Client {
        crate::http_client::builder().build().unwrap()
    }

    #[tokio::test]
    async fn a_direct_sync_is_signed_and_its_answers_are_classified() {
        let (base, seen) =
            receiver(vec![(200, 0), (429, 0), (503, 0), (410, 0), (200, 1500)]).await;
        let connector = WebhookConnector::with_proxies(
            client(),
            &format!("{base}/erp/hook"),
            (4, Duration::from_millis(500)),
            Some(SECRET.into()),
            &Matcher::builder().build(),
        )
        .unwrap();
        assert!(matches!(connector.transport, Transport::Direct { .. }));

        assert_eq!(connector.deliver(sync(), 1).await, Delivery::Delivered);
        let first = seen.lock().unwrap()[0].clone();
        assert_eq!(first.uri, "/erp/hook");
        let header = |name: &str| first.headers.get(name).map(|v| v.to_str().unwrap());
        assert_eq!(header("content-type"), Some("application/json"));
        assert_eq!(header("webhook-id"), Some("shop:1:7:erp"));
        assert_eq!(header("idempotency-key"), Some("shop:1:7:erp"));
        let now = super::super::unix_ms() / 1000;
        WebhookKey::parse(SECRET)
            .unwrap()
            .verify(
                header("webhook-id"),
                header("webhook-timestamp"),
                header("webhook-signature"),
                &first.body,
                now,
                60,
            )
            .expect("the receiver can verify the signature");
        let body: serde_json::Value = serde_json::from_slice(&first.body).unwrap();
        assert_eq!(body["order"], "shop:1");
        assert_eq!(body["attempt"], 1);
        assert_eq!(body["payload"]["operation"], "create");

        assert_eq!(
            connector.deliver(sync(), 2).await,
            Delivery::Throttled {
                retry_after: Some(Duration::from_secs(7)),
                detail: "HTTP 429: answer body".into()
            }
        );
        assert!(matches!(
            connector.deliver(sync(), 3).await,
            Delivery::Failed { retry_after: Some(_), ref detail } if detail.starts_with("HTTP 503")
        ));
        assert_eq!(
            connector.deliver(sync(), 4).await,
            Delivery::Rejected {
                detail: "HTTP 410: answer body".into()
            }
        );
        // An answer slower than the sink's timeout.
        let Delivery::Failed { detail, .. } = connector.deliver(sync(), 5).await else {
            panic!("a stalled answer is a failed attempt")
        };
        assert!(detail.starts_with("timed out"), "{detail}");
        assert_eq!(seen.lock().unwrap().len(), 5);
    }

    #[tokio::test]
    async fn a_sink_nobody_listens_on_is_a_connection_failure_naming_the_cause() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let connector = WebhookConnector::with_proxies(
            client(),
            &format!("http://127.0.0.1:{port}/hook"),
            (4, Duration::from_secs(5)),
            None,
            &Matcher::builder().build(),
        )
        .unwrap();
        let Delivery::Failed { detail, .. } = connector.deliver(sync(), 1).await else {
            panic!("a refused connection is a failed attempt")
        };
        assert!(detail.starts_with("connection failed"), "{detail}");
        assert!(detail.contains("refused"), "{detail}");
    }

    #[tokio::test]
    async fn a_sink_behind_a_proxy_is_reached_through_it() {
        // The "proxy" is the fake receiver: a proxied plain-HTTP request names the whole URL.
        let (proxy, seen) = receiver(vec![]).await;
        let proxies = Matcher::builder()
            .http(proxy.clone())
            .no("localhost")
            .build();
        let through = crate::http_client::builder()
            .proxy(reqwest::Proxy::http(&proxy).unwrap())
            .build()
            .unwrap();
        let connector = WebhookConnector::with_proxies(
            through,
            "http://erp.invalid/hook",
            (4, Duration::from_secs(5)),
            Some(SECRET.into()),
            &proxies,
        )
        .unwrap();
        assert!(matches!(connector.transport, Transport::Proxied { .. }));
        assert_eq!(connector.deliver(sync(), 1).await, Delivery::Delivered);
        let first = seen.lock().unwrap()[0].clone();
        assert_eq!(first.uri, "http://erp.invalid/hook");
        assert!(first.headers.contains_key("webhook-signature"));

        // NO_PROXY's hosts, and schemes the settings name no proxy for, go direct.
        for url in ["http://localhost:1/hook", "https://erp.invalid/hook"] {
            let connector = WebhookConnector::with_proxies(
                client(),
                url,
                (4, Duration::from_secs(5)),
                None,
                &proxies,
            )
            .unwrap();
            assert!(
                matches!(connector.transport, Transport::Direct { .. }),
                "{url}"
            );
        }
    }
}
