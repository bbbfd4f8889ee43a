//! Node-to-node calls over NATS request/reply (subject `orderhub.rpc.{node}`), never through the
//! public HTTP API and its operators' tokens: a read of an order another node owns is answered
//! by that owner; lists and dead letters are gathered from every live node.

use super::{Cluster, placement};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// What one node asks another.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Call {
    /// `GET /v1/orders/{key}` of an order the callee owns.
    Order {
        /// The order key.
        key: String,
    },
    /// `GET /v1/orders?{query}` over the callee's own partitions.
    List {
        /// The raw query string.
        query: String,
    },
    /// `GET /v1/dispatch/dead-letters?{query}` of the callee's outbox.
    DeadLetters {
        /// The raw query string.
        query: String,
    },
    /// `GET /v1/sources` as the callee sees it: its own ingest (rejected messages) and its
    /// journal (unmapped statuses, parked courier scans).
    Sources,
    /// `POST /v1/dispatch/dead-letters/{row}/retry` of a dead letter in the callee's outbox.
    Retry {
        /// The callee's row.
        row: i64,
        /// Who asked (for the callee's log and answer).
        operator: String,
    },
}

/// The callee's HTTP answer: status and JSON body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: serde_json::Value,
}

/// Answers a call locally (the engine's API handlers).
pub type Handler = Arc<dyn Fn(Call) -> Pin<Box<dyn Future<Output = Answer> + Send>> + Send + Sync>;

/// Why a call could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// Nobody holds the partition right now (it is moving).
    #[error("partition {0} has no owner right now (it is moving); retry shortly")]
    NoOwner(u32),
    /// The callee did not answer.
    #[error("node {node} did not answer: {reason}")]
    Unreachable {
        /// The callee.
        node: String,
        /// Why.
        reason: String,
    },
}

fn subject(node: &str) -> String {
    format!("orderhub.rpc.{node}")
}

impl Cluster {
    /// The node holding the lease of `order`'s partition (`None` while it moves), and whether
    /// that is this node.
    pub async fn owner_of(&self, order: &str) -> Result<String, RpcError> {
        let partition = placement::partition_of(order, self.inner.config.partitions);
        if self.inner.holds(partition) {
            return Ok(self.inner.config.node.clone());
        }
        match self
            .inner
            .leases
            .get(super::membership::lease_key(partition))
            .await
        {
            Ok(Some(owner)) if !owner.is_empty() => {
                Ok(String::from_utf8_lossy(&owner).into_owned())
            }
            _ => Err(RpcError::NoOwner(partition)),
        }
    }

    /// Live members as last seen (this node included once it heartbeats).
    pub fn live_members(&self) -> Vec<String> {
        self.inner.members_seen.borrow().clone()
    }

    /// Asks `node` to answer `call`, waiting at most `timeout`.
    pub async fn call(
        &self,
        node: &str,
        call: &Call,
        timeout: Duration,
    ) -> Result<Answer, RpcError> {
        let unreachable = |reason: String| RpcError::Unreachable {
            node: node.to_owned(),
            reason,
        };
        let payload = serde_json::to_vec(call).map_err(|e| unreachable(e.to_string()))?;
        let request = self.inner.client.request(subject(node), payload.into());
        let reply = tokio::time::timeout(timeout, request)
            .await
            .map_err(|_| unreachable(format!("no answer within {timeout:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        serde_json::from_slice(&reply.payload)
            .map_err(|e| unreachable(format!("unreadable answer: {e}")))
    }

    /// Serves calls to this node until the connection closes.
    pub async fn serve(self, handler: Handler) {
        let mut calls = match self
            .inner
            .client
            .subscribe(subject(&self.inner.config.node))
            .await
        {
            Ok(calls) => calls,
            Err(err) => {
                tracing::error!(error = %err, "cannot serve node-to-node calls");
                return;
            }
        };
        use futures_util::StreamExt as _;
        while let Some(message) = calls.next().await {
            let Some(reply) = message.reply.clone() else {
                continue;
            };
            let client = self.inner.client.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                let answer = match serde_json::from_slice::<Call>(&message.payload) {
                    Ok(call) => handler(call).await,
                    Err(err) => Answer {
                        status: 400,
                        body: serde_json::json!({"error": "bad_call", "message": err.to_string()}),
                    },
                };
                let payload = serde_json::to_vec(&answer).unwrap_or_default();
                if let Err(err) = client.publish(reply, payload.into()).await {
                    tracing::warn!(error = %err, "could not answer a node-to-node call");
                }
            });
        }
    }
}
