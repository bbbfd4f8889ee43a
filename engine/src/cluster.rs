//! Cluster mode: the JetStream side of the log/store port (docs/design/log-store-port.md).
//!
//! Every node verifies and decodes pushes as a single node does, then publishes each event to
//! the `ORDERHUB_EVENTS` stream (subject `orderhub.events.{partition}`, file storage,
//! `replicas`) with `Nats-Msg-Id` = the event's idempotency identity, and answers 2xx only
//! after the PubAck. Partitions are owned through leases in the `orderhub_leases` KV bucket
//! (the lease's revision is its fencing token), handed out by rendezvous hashing over the
//! members that heartbeat into `orderhub_members`. The owner of a partition consumes it in
//! order into its local journal — the SQLite side of the port, now a state store of the
//! partitions it owns, with each partition's stream position committed in the same
//! transaction as the events — and from there the order actors, SLA timers and rules run
//! exactly as on a single node.

mod membership;
mod placement;
pub mod rpc;
pub mod scans;
pub mod settled;
pub mod snapshot;

pub use placement::partition_of;

use crate::config::ClusterConfig;
use crate::journal::{AppendOutcome, Journal, JournalError};
use async_nats::jetstream::{self, context::PublishErrorKind, kv, stream};
use dashmap::DashMap;
use orderhub_actors::order::OrderEvent;
use orderhub_actors::store::{OrderStore, OrderUpdate, StoreError, StoredOrder};
use orderhub_actors::telemetry as t;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The stream of accepted events.
pub const EVENTS_STREAM: &str = "ORDERHUB_EVENTS";
/// Live members: one key per node, kept alive by heartbeats, gone `lease_ttl` after the last.
pub const MEMBERS_BUCKET: &str = "orderhub_members";
/// Partition leases: key `p{n}`, value the owner's name, revision = fencing token.
pub const LEASES_BUCKET: &str = "orderhub_leases";
/// The stream's subjects: events by partition, and courier scans waiting for their order by
/// waybill (see `scans`).
const STREAM_SUBJECTS: [&str; 2] = ["orderhub.events.>", "orderhub.scans.>"];
/// The stream metadata key that records the partition count it was created with.
const PARTITIONS_KEY: &str = "orderhub_partitions";
/// Publishes awaiting their PubAck, across the node (bounded: beyond it ingest answers 429).
const MAX_ACKS_IN_FLIGHT: usize = 8192;
/// How long a starting node keeps trying to reach NATS and JetStream.
const JOIN_PATIENCE: Duration = Duration::from_secs(60);
/// How long ingest waits for a PubAck before answering 503.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the node could not join the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// NATS could not be reached.
    #[error("cannot connect to NATS at {servers}: {reason}")]
    Connect {
        /// The configured servers.
        servers: String,
        /// Why.
        reason: String,
    },
    /// The stream exists with another partition count.
    #[error(
        "cluster.partitions = {configured}, but stream {EVENTS_STREAM} was created with {existing} partitions; the count is fixed when the stream is first created (set cluster.partitions = {existing})"
    )]
    Partitions {
        /// What the configuration says.
        configured: u32,
        /// What the stream was created with.
        existing: u32,
    },
    /// JetStream refused to create or open orderhub's stream or buckets.
    #[error("JetStream {what}: {reason}")]
    JetStream {
        /// Which stream or bucket.
        what: String,
        /// The server's answer.
        reason: String,
    },
}

/// Registers the cluster series, so they are exported (as 0 on a single node) from start-up.
pub(crate) fn register_metrics() {
    metrics::gauge!(t::CLUSTER_PARTITIONS).set(0.0);
    metrics::gauge!(t::CLUSTER_PARTITIONS_OWNED).set(0.0);
    metrics::gauge!(t::CLUSTER_MEMBERS).set(0.0);
    metrics::gauge!(t::CLUSTER_CONSUMER_LAG).set(0.0);
    for moved in ["acquired", "released", "lost", "expired", "resumed"] {
        metrics::counter!(t::CLUSTER_LEASE_MOVES, "move" => moved).increment(0);
    }
    for outcome in ["written", "restored", "failed"] {
        metrics::counter!(t::CLUSTER_SNAPSHOTS, "outcome" => outcome).increment(0);
    }
    let _ = metrics::histogram!(t::CLUSTER_PUBLISH_LATENCY);
}

/// The subject of `partition`'s events.
pub(crate) fn subject_of(partition: u32) -> String {
    format!("orderhub.events.{partition}")
}

/// A node of the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: ClusterConfig,
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) stream: stream::Stream,
    pub(crate) members: kv::Store,
    pub(crate) leases: kv::Store,
    pub(crate) waybills: kv::Store,
    /// The waybills bucket's stream, for reads from its leader.
    pub(crate) waybills_stream: stream::Stream,
    pub(crate) syncs: kv::Store,
    /// Partition snapshots (see `snapshot`).
    pub(crate) snapshots: async_nats::jetstream::object_store::ObjectStore,
    /// Partitions this node holds: lease revision (fencing token) and until when it is safe to
    /// act on it without a renewal.
    pub(crate) owned: DashMap<u32, membership::Held>,
    /// Events each owned partition still has to apply (from the last message's `pending`).
    pub(crate) lag: DashMap<u32, u64>,
    /// Owned partitions whose applier has journaled everything the stream held for them at
    /// least once since it took them (restored and replayed), with the journal's last
    /// sequence then: once the order index covers that sequence, a list can speak for them.
    pub(crate) caught_up: DashMap<u32, u64>,
    pub(crate) joined: AtomicBool,
    /// Set when another live process heartbeats under this node's name and this one, the
    /// younger, stood down: why (readiness fails with it).
    pub(crate) duplicate: std::sync::OnceLock<String>,
    pub(crate) journal: Journal,
    /// Called with the partitions a tick took (the engine re-arms their SLA timers).
    pub(crate) on_taken: std::sync::OnceLock<Box<dyn Fn(Vec<u32>) + Send + Sync>>,
    /// Live members as last seen (sinks' quotas are split among them; lists gather from them).
    pub(crate) members_seen: tokio::sync::watch::Sender<Vec<String>>,
}

impl Cluster {
    /// Connects to NATS, creates (or checks) orderhub's stream and buckets and starts the
    /// membership loop, which takes this node's partitions and applies them into `journal`.
    pub async fn join(config: &ClusterConfig, journal: Journal) -> Result<Cluster, ClusterError> {
        let servers = config.nats.join(", ");
        let connect = |reason: String| ClusterError::Connect {
            servers: servers.clone(),
            reason,
        };
        let addrs = config
            .nats
            .iter()
            .map(|url| url.parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| connect(e.to_string()))?;
        let client = async_nats::ConnectOptions::new()
            .name(format!("orderhub {}", config.node))
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            .connect(addrs)
            .await
            .map_err(|e| connect(e.to_string()))?;
        // Ingest waits up to PUBLISH_TIMEOUT for a PubAck; lease and membership calls must fail
        // well inside a lease's lifetime, so they go through a context of their own.
        let js = jetstream::ContextBuilder::new()
            .timeout(PUBLISH_TIMEOUT)
            .max_ack_inflight(MAX_ACKS_IN_FLIGHT)
            // Past the bound a publish fails at once (429), rather than waiting for permits
            // that requests part-way through their own publishes may never give back.
            .backpressure_on_inflight(false)
            .build(client.clone());
        let control = jetstream::ContextBuilder::new()
            .timeout((config.lease_ttl.0 / 3).clamp(Duration::from_millis(300), PUBLISH_TIMEOUT))
            .build(client.clone());
        let rpc_client = client;
        let stream = ensure_stream(&js, config).await?;
        let bucket = |name: &str, history: i64| kv::Config {
            bucket: name.to_owned(),
            history,
            max_age: config.lease_ttl.0,
            storage: jetstream::stream::StorageType::File,
            num_replicas: config.replicas,
            ..Default::default()
        };
        let members = open_bucket(&control, bucket(MEMBERS_BUCKET, 1)).await?;
        let leases = open_bucket(&control, bucket(LEASES_BUCKET, 1)).await?;
        // Records kept until retention removes them (not heartbeats: no max_age).
        let durable = |name: &str| kv::Config {
            max_age: Duration::ZERO,
            ..bucket(name, 1)
        };
        let waybills = open_bucket(&js, durable(scans::WAYBILLS_BUCKET)).await?;
        let waybills_stream = js
            .get_stream(format!("KV_{}", scans::WAYBILLS_BUCKET))
            .await
            .map_err(|e| ClusterError::JetStream {
                what: format!("KV bucket {}", scans::WAYBILLS_BUCKET),
                reason: e.to_string(),
            })?;
        let syncs = open_bucket(&js, durable(settled::SYNCS_BUCKET)).await?;
        let snapshots = snapshot::open_bucket(&js, config.replicas).await?;
        // Until the first heartbeat round, count this node among the members already there.
        let mut known = match members.keys().await {
            Ok(keys) => {
                use futures_util::StreamExt as _;
                keys.filter_map(|k| async { k.ok() })
                    .collect::<Vec<String>>()
                    .await
            }
            Err(_) => Vec::new(),
        };
        if !known.contains(&config.node) {
            known.push(config.node.clone());
        }
        let cluster = Cluster {
            inner: Arc::new(Inner {
                config: config.clone(),
                client: rpc_client,
                js,
                stream,
                members,
                leases,
                waybills,
                waybills_stream,
                syncs,
                snapshots,
                owned: DashMap::new(),
                lag: DashMap::new(),
                caught_up: DashMap::new(),
                joined: AtomicBool::new(false),
                duplicate: std::sync::OnceLock::new(),
                journal,
                members_seen: tokio::sync::watch::Sender::new(known),
                on_taken: std::sync::OnceLock::new(),
            }),
        };
        metrics::gauge!(t::CLUSTER_PARTITIONS).set(f64::from(config.partitions));
        Ok(cluster)
    }

    /// [`Cluster::join`], retried while NATS or JetStream is not there yet (they may be starting
    /// beside this node) for up to a minute; a wrong configuration fails at once.
    pub async fn join_patiently(
        config: &ClusterConfig,
        journal: &Journal,
    ) -> Result<Cluster, ClusterError> {
        let started = Instant::now();
        let mut logged = None::<Instant>;
        loop {
            match Cluster::join(config, journal.clone()).await {
                Ok(cluster) => return Ok(cluster),
                Err(err @ ClusterError::Partitions { .. }) => return Err(err),
                Err(err) if started.elapsed() < JOIN_PATIENCE => {
                    if logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(5)) {
                        tracing::warn!(error = %err, "cannot join the cluster yet; retrying (not ready until joined)");
                        logged = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Starts the membership loop (heartbeats, leases, partition appliers) until
    /// `Membership::leave`.
    pub fn start(&self) -> membership::Membership {
        membership::Membership::start(self.inner.clone())
    }

    /// Has `hook` called with the partitions this node takes, as it takes them (set once,
    /// before [`Cluster::start`]).
    pub fn on_partitions_taken(&self, hook: impl Fn(Vec<u32>) + Send + Sync + 'static) {
        let _ = self.inner.on_taken.set(Box::new(hook));
    }

    /// The partition of `order`.
    pub fn partition_of(&self, order: &str) -> u32 {
        partition_of(order, self.inner.config.partitions)
    }

    /// The live members, updated as they join and leave.
    pub fn members(&self) -> tokio::sync::watch::Receiver<Vec<String>> {
        self.inner.members_seen.subscribe()
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.config.node
    }

    /// Whether the node has joined: registered as a member and taken its first partitions.
    pub fn joined(&self) -> bool {
        self.inner.joined.load(Ordering::Acquire)
    }

    /// Why this process stood down, when another live process runs under the same node name.
    pub fn duplicate(&self) -> Option<&str> {
        self.inner.duplicate.get().map(String::as_str)
    }

    /// How many partitions the cluster has.
    pub fn partition_count(&self) -> u32 {
        self.inner.config.partitions
    }

    /// Whether `order` belongs to one of `partitions` (sorted, as
    /// [`Cluster::current_partitions`] gives them).
    pub fn in_partitions(&self, partitions: &[u32], order: &str) -> bool {
        partitions.binary_search(&self.partition_of(order)).is_ok()
    }

    /// The partitions this node can answer a list for, in order: it holds a valid lease on
    /// each, has journaled what the stream held for it since taking it, and its order index
    /// covers that (a partition just taken is still being restored or replayed, and its
    /// orders would be missing or stale).
    pub fn current_partitions(&self) -> Vec<u32> {
        let indexed_below = self.inner.journal.indexed_below();
        (0..self.inner.config.partitions)
            .filter(|partition| {
                self.inner.holds(*partition)
                    && self
                        .inner
                        .caught_up
                        .get(partition)
                        .is_some_and(|through| *through < indexed_below)
            })
            .collect()
    }

    /// Whether this node holds a valid lease on `order`'s partition.
    pub fn owns_order(&self, order: &str) -> bool {
        let partition = partition_of(order, self.inner.config.partitions);
        self.inner.holds(partition)
    }

    /// Publishes `events` to the stream, pipelined, and answers once every one has its PubAck
    /// (a quorum of the stream's replicas holds it): `Appended(stream sequence)` or
    /// `Duplicate` (JetStream saw the same `Nats-Msg-Id` within its window). Whether a courier
    /// scan waits for its waybill is decided by the partition's owner, so it is not `Parked`
    /// here.
    pub async fn append(
        &self,
        mut events: Vec<OrderEvent>,
    ) -> Result<Vec<AppendOutcome>, JournalError> {
        let started = Instant::now();
        let partitions = self.inner.config.partitions;
        // A courier scan naming no order goes to the order that reported its waybill, or
        // waits for it on the waybill's own subject.
        let mut parked = vec![false; events.len()];
        for (event, parked) in events.iter_mut().zip(parked.iter_mut()) {
            if event.order.is_empty()
                && let Some(waybill) = scans::waybill_of(event).map(Cow::into_owned)
            {
                match self.order_of_waybill(&waybill).await {
                    Some(order) => event.order = order,
                    None => *parked = true,
                }
            }
        }
        let mut acks = Vec::with_capacity(events.len());
        for (event, parked) in events.iter().zip(&parked) {
            let subject = match (parked, scans::waybill_of(event)) {
                (true, Some(waybill)) => scans::parked_subject(&waybill),
                _ => subject_of(partition_of(&event.order, partitions)),
            };
            let id = format!("{}:{}", event.source, event.source_event_id);
            acks.push(self.publish(subject, event, id).await?);
        }
        let mut outcomes = Vec::with_capacity(acks.len());
        for ((ack, parked), event) in acks.into_iter().zip(&parked).zip(&events) {
            let ack = match ack.await {
                Ok(ack) => ack,
                // A duplicate delivery racing its original (both in flight, e.g. a platform's
                // retry arriving on another node): JetStream answers "in process" until the
                // original is stored, then "duplicate".
                Err(err) if in_process(&err) => {
                    let subject = match (parked, scans::waybill_of(event)) {
                        (true, Some(waybill)) => scans::parked_subject(&waybill),
                        _ => subject_of(partition_of(&event.order, partitions)),
                    };
                    let id = format!("{}:{}", event.source, event.source_event_id);
                    self.publish_settled(subject, event, id).await?
                }
                Err(err) => return Err(publish_error(err)),
            };
            outcomes.push(if ack.duplicate {
                AppendOutcome::Duplicate
            } else if *parked {
                AppendOutcome::Parked
            } else {
                AppendOutcome::Appended(ack.sequence)
            });
        }
        // The order may have reported the waybill while the scan was being parked: if the
        // bucket knows it now, the scan goes to the order too (its owner may already have
        // looked for waiting scans).
        for (event, _) in events.iter().zip(&parked).filter(|(_, parked)| **parked) {
            let Some(waybill) = scans::waybill_of(event) else {
                continue;
            };
            if let Some(order) = self.order_of_waybill(&waybill).await {
                let mut resolved = event.clone();
                resolved.order = order;
                let subject = subject_of(partition_of(&resolved.order, partitions));
                let id = format!("resolved:{}:{}", event.source, event.source_event_id);
                self.publish(subject, &resolved, id)
                    .await?
                    .await
                    .map_err(publish_error)?;
            }
        }
        metrics::histogram!(t::CLUSTER_PUBLISH_LATENCY).record(started.elapsed().as_secs_f64());
        Ok(outcomes)
    }

    /// Publishes `event` again while JetStream says a message with its id is still in
    /// process (a bounded wait: a few PubAck timeouts at most); its PubAck.
    async fn publish_settled(
        &self,
        subject: String,
        event: &OrderEvent,
        id: String,
    ) -> Result<jetstream::publish::PublishAck, JournalError> {
        let mut wait = Duration::from_millis(5);
        for _ in 0..IN_PROCESS_RETRIES {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(200));
            match self
                .publish(subject.clone(), event, id.clone())
                .await?
                .await
            {
                Ok(ack) => return Ok(ack),
                Err(err) if in_process(&err) => continue,
                Err(err) => return Err(publish_error(err)),
            }
        }
        Err(JournalError::CommitFailed(format!(
            "JetStream kept answering that message {id} is in process"
        )))
    }

    /// Sends one event; the returned future resolves with its PubAck.
    async fn publish(
        &self,
        subject: String,
        event: &OrderEvent,
        id: String,
    ) -> Result<jetstream::context::PublishAckFuture, JournalError> {
        let payload = serde_json::to_vec(event).map_err(|e| JournalError::Corrupt {
            seq: 0,
            reason: e.to_string(),
        })?;
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .message_id(id);
        self.inner
            .js
            .send_publish(subject, publish)
            .await
            .map_err(publish_error)
    }

    /// `connector`, remembering in the cluster which syncs it settled and skipping those
    /// another node settled (see `settled`).
    pub fn remembering(
        &self,
        connector: Arc<dyn orderhub_actors::dispatch::SinkConnector>,
    ) -> Arc<dyn orderhub_actors::dispatch::SinkConnector> {
        let cluster = self.clone();
        Arc::new(settled::Remembering {
            inner: connector,
            settled: self.inner.syncs.clone(),
            owns: Arc::new(move |order| cluster.owns_order(order)),
        })
    }

    /// The order store the actors use in cluster mode: the local journal, except that an
    /// event orderhub raises itself (an SLA breach) goes to the stream, so the partition's
    /// next owner sees it too — and only while this node holds the order's partition.
    pub fn order_store(&self) -> Arc<dyn OrderStore> {
        Arc::new(ClusterStore {
            cluster: self.clone(),
        })
    }
}

impl Inner {
    /// Whether the lease on `partition` is held and still safe to act on.
    pub(crate) fn holds(&self, partition: u32) -> bool {
        self.owned
            .get(&partition)
            .is_some_and(|held| held.valid_until > Instant::now())
    }
}

/// Attempts at a message JetStream says is in process (with the waits doubling from 5 ms to
/// 200 ms: about 4 s in all).
const IN_PROCESS_RETRIES: usize = 25;

/// Whether JetStream refused a publish because a message with the same `Nats-Msg-Id` is still
/// being stored (error code 10158): published again once it is, it is acknowledged as a
/// duplicate.
fn in_process(error: &jetstream::context::PublishError) -> bool {
    use std::error::Error as _;
    error
        .source()
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .is_some_and(|error| {
            error.error_code() == jetstream::ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT
        })
}

fn publish_error(error: jetstream::context::PublishError) -> JournalError {
    match error.kind() {
        PublishErrorKind::MaxAckPending => JournalError::Full,
        PublishErrorKind::TimedOut => JournalError::CommitFailed(format!(
            "no PubAck from JetStream within {}s",
            PUBLISH_TIMEOUT.as_secs()
        )),
        _ => JournalError::CommitFailed(format!("JetStream publish: {error}")),
    }
}

async fn ensure_stream(
    js: &jetstream::Context,
    config: &ClusterConfig,
) -> Result<stream::Stream, ClusterError> {
    let refused = |reason: String| ClusterError::JetStream {
        what: format!("stream {EVENTS_STREAM}"),
        reason,
    };
    if let Ok(mut existing) = js.get_stream(EVENTS_STREAM).await {
        let info = existing.info().await.map_err(|e| refused(e.to_string()))?;
        let recorded = info.config.metadata.get(PARTITIONS_KEY).cloned();
        let existing_partitions = recorded
            .as_deref()
            .and_then(|value| value.parse::<u32>().ok())
            .ok_or_else(|| {
                refused(format!(
                    "exists without orderhub's partition count in its metadata ({PARTITIONS_KEY} = {recorded:?}); it was not created by orderhub"
                ))
            })?;
        if existing_partitions != config.partitions {
            return Err(ClusterError::Partitions {
                configured: config.partitions,
                existing: existing_partitions,
            });
        }
        let missing: Vec<&str> = STREAM_SUBJECTS
            .into_iter()
            .filter(|s| !info.config.subjects.iter().any(|have| have == s))
            .collect();
        if !missing.is_empty() {
            // A stream created by an earlier version: add the subjects it lacks.
            let mut updated = info.config.clone();
            updated
                .subjects
                .extend(missing.iter().map(|s| (*s).to_owned()));
            js.update_stream(updated)
                .await
                .map_err(|e| refused(format!("adding subjects {missing:?}: {e}")))?;
        }
        return Ok(existing);
    }
    let stream_config = stream::Config {
        name: EVENTS_STREAM.to_owned(),
        description: Some("orderhub: every accepted event, partitioned by order key".to_owned()),
        subjects: STREAM_SUBJECTS.iter().map(|s| (*s).to_owned()).collect(),
        storage: stream::StorageType::File,
        num_replicas: config.replicas,
        retention: stream::RetentionPolicy::Limits,
        // Redelivered pushes within this window are refused by JetStream already; orderhub's own
        // (source, event id) check in the owner's store catches the rest.
        duplicate_window: Duration::from_secs(120),
        metadata: HashMap::from([(PARTITIONS_KEY.to_owned(), config.partitions.to_string())]),
        ..Default::default()
    };
    match js.create_stream(stream_config).await {
        Ok(stream) => Ok(stream),
        // Another node created it first: check what it created.
        Err(_) if js.get_stream(EVENTS_STREAM).await.is_ok() => {
            Box::pin(ensure_stream(js, config)).await
        }
        Err(e) => Err(refused(e.to_string())),
    }
}

async fn open_bucket(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, ClusterError> {
    let name = config.bucket.clone();
    if let Ok(store) = js.get_key_value(&name).await {
        return Ok(store);
    }
    match js.create_key_value(config).await {
        Ok(store) => Ok(store),
        Err(e) => js
            .get_key_value(&name)
            .await
            .map_err(|_| ClusterError::JetStream {
                what: format!("KV bucket {name}"),
                reason: e.to_string(),
            }),
    }
}

/// The actors' store in cluster mode (see [`Cluster::order_store`]).
struct ClusterStore {
    cluster: Cluster,
}

impl OrderStore for ClusterStore {
    fn load(&self, order: &str) -> Result<StoredOrder, StoreError> {
        self.cluster.inner.journal.load(order)
    }

    fn load_later(&self, order: &str, reply: orderhub_actors::store::LoadReply) {
        self.cluster.inner.journal.load_later(order, reply)
    }

    fn append_internal(&self, event: OrderEvent) -> Result<(), StoreError> {
        if !self.cluster.owns_order(&event.order) {
            // Not ours (any more): the partition's owner re-arms the timer from its own replay
            // and raises the breach itself, with the same deterministic id.
            return Ok(());
        }
        let cluster = self.cluster.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            loop {
                match cluster.append(vec![event.clone()]).await {
                    Ok(_) => return,
                    Err(err) if cluster.owns_order(&event.order) => {
                        tracing::warn!(order = %event.order, error = %err, "could not publish an SLA breach; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                    Err(_) => return,
                }
            }
        });
        Ok(())
    }

    fn record(&self, update: OrderUpdate) {
        self.cluster.inner.journal.record(update);
    }

    fn unfolded(&self, order: &str) {
        self.cluster.inner.journal.unfolded(order);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::context::{PublishError, PublishErrorKind};

    fn answered(json: &str) -> PublishError {
        let error: jetstream::Error = serde_json::from_str(json).unwrap();
        PublishError::with_source(PublishErrorKind::Other, error)
    }

    #[test]
    fn a_message_id_still_in_process_is_told_from_other_publish_errors() {
        assert!(in_process(&answered(
            r#"{"code":409,"err_code":10158,"description":"duplicate message id is in process"}"#
        )));
        assert!(!in_process(&answered(
            r#"{"code":503,"err_code":10008,"description":"JetStream system temporarily unavailable"}"#
        )));
        assert!(!in_process(&PublishError::new(PublishErrorKind::TimedOut)));
    }
}
