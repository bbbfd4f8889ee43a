//! The generic `webhook` sink: a JSON POST signed with Standard Webhooks. `webhook-id` (and
//! `idempotency-key`) carry the sync's stable idempotency key, so a receiver that dedupes on it
//! sees each sync once however often it is retried.

use crate::signing::WebhookKey;
use orderhub_actors::dispatch::{Delivery, DeliveryFuture, SinkConnector, SyncIntent};

pub(crate) struct WebhookConnector {
    client: reqwest::Client,
    /// Parsed once: reqwest would parse a string (host name normalisation included) per send.
    url: reqwest::Url,
    key: Option<WebhookKey>,
}

impl WebhookConnector {
    pub(crate) fn new(
        client: reqwest::Client,
        url: String,
        secret: Option<String>,
    ) -> Result<Self, String> {
        let key = secret.as_deref().map(WebhookKey::parse).transpose()?;
        let url = reqwest::Url::parse(&url).map_err(|e| format!("url {url:?}: {e}"))?;
        Ok(WebhookConnector { client, url, key })
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
    fn deliver(&self, sync: std::sync::Arc<SyncIntent>, attempt: u32) -> DeliveryFuture {
        let body = body(&sync, attempt);
        let timestamp = (super::unix_ms() / 1000).to_string();
        let mut request = self
            .client
            .post(self.url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", &sync.id)
            .header("idempotency-key", &sync.id)
            .header("webhook-timestamp", &timestamp);
        if let Some(key) = &self.key {
            request = request.header("webhook-signature", key.sign(&sync.id, &timestamp, &body));
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
