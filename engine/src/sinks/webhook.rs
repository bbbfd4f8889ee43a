//! The generic `webhook` sink: a JSON POST signed with Standard Webhooks. `webhook-id` (and
//! `idempotency-key`) carry the sync's stable idempotency key, so a receiver that dedupes on it
//! sees each sync once however often it is retried.

use super::{classify, transport_failure};
use crate::signing::WebhookKey;
use orderhub_actors::dispatch::{DeliveryFuture, SinkConnector, SyncIntent};

pub(crate) struct WebhookConnector {
    client: reqwest::Client,
    url: String,
    key: Option<WebhookKey>,
}

impl WebhookConnector {
    pub(crate) fn new(
        client: reqwest::Client,
        url: String,
        secret: Option<String>,
    ) -> Result<Self, String> {
        let key = secret.as_deref().map(WebhookKey::parse).transpose()?;
        Ok(WebhookConnector { client, url, key })
    }
}

/// The JSON body of a sync.
pub(crate) fn body(sync: &SyncIntent, attempt: u32) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": sync.id,
        "order": sync.order,
        "sink": sync.sink,
        "rule": sync.rule,
        "seq": sync.seq,
        "attempt": attempt,
        "payload": sync.payload,
    }))
    .unwrap_or_default()
}

impl SinkConnector for WebhookConnector {
    fn deliver(&self, sync: SyncIntent, attempt: u32) -> DeliveryFuture {
        let body = body(&sync, attempt);
        let timestamp = (super::unix_ms() / 1000).to_string();
        let mut request = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("webhook-id", &sync.id)
            .header("idempotency-key", &sync.id)
            .header("webhook-timestamp", &timestamp);
        if let Some(key) = &self.key {
            request = request.header("webhook-signature", key.sign(&sync.id, &timestamp, &body));
        }
        let request = request.body(body);
        Box::pin(async move {
            match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let headers = response.headers().clone();
                    let text = response.text().await.unwrap_or_default();
                    classify(status, &headers, &text)
                }
                Err(err) => transport_failure(&err),
            }
        })
    }
}
