//! Dispatch: what the rules decide must be told to other systems, and the dispatcher actors
//! that deliver it — one per sink, at the sink's rate, with bounded in-flight work, per-order
//! FIFO, retries, a circuit breaker and dead letters. Syncs are durable (the outbox) before a
//! dispatcher sees them; the dispatchers read them through the [`SyncStore`] port and reach
//! sinks through the [`SinkConnector`] port.

pub mod connector;
mod dispatcher;
pub mod held;
pub mod policy;

pub use connector::{Delivery, DeliveryFuture, SettledFuture, SinkConnector};
pub use dispatcher::{DEFAULT_WINDOW, SinkSpec, SinkStatus};
pub use held::HeldOrders;
pub use policy::{Breaker, RetryPolicy};
// Rules and syncs are decided inside the order fold, so they live with the order; dispatch
// delivers what they decide.
pub use crate::order::rules::{HoldSpec, RuleEffects, RuleError, RuleSet, RuleSpec, Sinks};
pub use crate::order::sync::{PendingSync, SyncIntent, SyncStatus, SyncUpdate};

use crate::shard::Clock;
use crate::store::SyncStore;
use dispatcher::{DispatchMsg, Dispatcher, DispatcherArgs};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Why dispatch could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// A dispatcher could not start.
    #[error("dispatcher for sink {sink} failed to start: {reason}")]
    Spawn {
        /// The sink.
        sink: String,
        /// Why.
        reason: String,
    },
    /// No sink of that name is configured.
    #[error("unknown sink {0:?}")]
    UnknownSink(String),
    /// The dispatcher has stopped.
    #[error("dispatcher for sink {0} is not running")]
    Stopped(String),
}

impl DispatchError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            DispatchError::Spawn { .. } => "spawn",
            DispatchError::UnknownSink(_) => "unknown_sink",
            DispatchError::Stopped(_) => "stopped",
        }
    }
}

/// The handle to every sink's dispatcher. Cheap to clone.
#[derive(Clone, Default)]
pub struct Dispatch {
    sinks: Arc<HashMap<String, ActorRef<DispatchMsg>>>,
    backlog: Arc<AtomicI64>,
}

impl Dispatch {
    /// Starts one dispatcher per sink; each loads its pending syncs from `store`.
    pub async fn start(
        sinks: Vec<(SinkSpec, Arc<dyn SinkConnector>)>,
        store: Arc<dyn SyncStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Dispatch, DispatchError> {
        Self::start_with_holds(sinks, store, clock, HeldOrders::default()).await
    }

    /// As [`Dispatch::start`]; the syncs of orders in `held` wait until they leave it.
    pub async fn start_with_holds(
        sinks: Vec<(SinkSpec, Arc<dyn SinkConnector>)>,
        store: Arc<dyn SyncStore>,
        clock: Arc<dyn Clock>,
        held: HeldOrders,
    ) -> Result<Dispatch, DispatchError> {
        let backlog = Arc::new(AtomicI64::new(0));
        let mut actors = HashMap::new();
        for (spec, connector) in sinks {
            let name = spec.name.clone();
            // A sink that does not hold back ingest keeps its backlog to itself.
            let backlog_total = if spec.holds_back_ingest {
                backlog.clone()
            } else {
                Arc::new(AtomicI64::new(0))
            };
            let args = DispatcherArgs {
                spec,
                connector,
                store: store.clone(),
                clock: clock.clone(),
                backlog_total,
                held: held.clone(),
            };
            let (actor, _) =
                Actor::spawn(None, Dispatcher, args)
                    .await
                    .map_err(|e| DispatchError::Spawn {
                        sink: name.clone(),
                        reason: e.to_string(),
                    })?;
            actors.insert(name, actor);
        }
        Ok(Dispatch {
            sinks: Arc::new(actors),
            backlog,
        })
    }

    /// Names of the configured sinks.
    pub fn sinks(&self) -> impl Iterator<Item = &str> {
        self.sinks.keys().map(String::as_str)
    }

    /// Hands newly committed syncs to their dispatchers. Never blocks (callable from the
    /// journal writer); a sync of an unknown sink stays pending in the outbox.
    pub fn notify(&self, syncs: Vec<PendingSync>) {
        let mut by_sink: HashMap<&str, Vec<PendingSync>> = HashMap::new();
        for sync in syncs {
            match self.sinks.get_key_value(sync.intent.sink.as_str()) {
                Some((name, _)) => by_sink.entry(name.as_str()).or_default().push(sync),
                None => {
                    tracing::warn!(sink = %sync.intent.sink, id = %sync.intent.id, "sync for a sink that is not configured stays pending")
                }
            }
        }
        for (sink, syncs) in by_sink {
            if let Some(actor) = self.sinks.get(sink) {
                let _ = actor.cast(DispatchMsg::New(syncs));
            }
        }
    }

    /// Cluster mode: `nodes` live nodes each dispatch their own partitions' syncs, so each
    /// takes `1/nodes` of every sink's quota and together they never exceed it.
    pub fn share_quota(&self, nodes: u32) {
        for actor in self.sinks.values() {
            let _ = actor.cast(DispatchMsg::Share(nodes.max(1)));
        }
    }

    /// Sends a dead-lettered sync again (the outbox already marks it pending).
    pub fn replay(&self, sync: PendingSync) -> Result<(), DispatchError> {
        let actor = self
            .sinks
            .get(&sync.intent.sink)
            .ok_or_else(|| DispatchError::UnknownSink(sync.intent.sink.clone()))?;
        let sink = sync.intent.sink.clone();
        actor
            .cast(DispatchMsg::Replay(sync))
            .map_err(|_| DispatchError::Stopped(sink))
    }

    /// Pending syncs of the sinks that hold back ingest (`SinkSpec::holds_back_ingest`).
    pub fn backlog(&self) -> i64 {
        self.backlog.load(Ordering::Relaxed)
    }

    /// A sink's state.
    pub async fn status(&self, sink: &str) -> Result<SinkStatus, DispatchError> {
        let actor = self
            .sinks
            .get(sink)
            .ok_or_else(|| DispatchError::UnknownSink(sink.to_owned()))?;
        match actor
            .call(DispatchMsg::Status, Some(Duration::from_secs(5)))
            .await
        {
            Ok(CallResult::Success(status)) => Ok(status),
            _ => Err(DispatchError::Stopped(sink.to_owned())),
        }
    }

    /// Stops every dispatcher. Syncs in flight stay pending in the outbox and are sent again
    /// (same idempotency key) at the next start.
    pub async fn stop(&self) {
        for actor in self.sinks.values() {
            actor.stop(Some("shutdown".into()));
        }
    }
}

#[cfg(test)]
mod tests;
