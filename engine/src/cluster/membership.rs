//! Membership and partition leases, and the appliers of the partitions this node owns.
//!
//! Every tick (a third of `lease_ttl`, or at once when a member or a lease changes) a node
//! heartbeats its member key, reads the live members, renews the leases it holds, gives up at
//! most a few partitions whose rendezvous owner is now another live member (moves are
//! rate-limited), and takes the partitions that are its own and free. A member or a lease is
//! live while its key was written less than `lease_ttl` ago by the JetStream server's clock
//! (the write's own timestamp, compared with this node's latest heartbeat): a dead node's
//! partitions are taken over (by compare-and-set on the stale revision) that long after its
//! last write, whenever the server gets round to expiring the keys. A lease this node could
//! not renew is dropped locally a sixth of the TTL before anyone may take it: its applier stops
//! at once.
//!
//! Node names must be unique. A heartbeat after the first is a compare-and-set on this
//! process's previous one, so another live process writing the same member key is seen on the
//! next tick; of the two, the one started later stands down (gives its leases back, stops
//! heartbeating, and fails `/readyz` with `duplicate_node`). A restarted node's first heartbeat
//! overwrites its dead predecessor's; it takes partitions only once its heartbeats have gone
//! uncontested for half a TTL (a live namesake heartbeats every third of one).

use super::{Inner, LEASES_BUCKET, placement, subject_of};
use crate::journal::JournalError;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::kv;
use futures_util::{FutureExt, StreamExt};
use orderhub_actors::order::OrderEvent;
use orderhub_actors::telemetry as t;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// A lease this node holds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Held {
    /// The lease key's revision: the fencing token.
    pub(crate) revision: u64,
    /// Until when the lease may be acted on without another renewal (well before it can
    /// expire on the server).
    pub(crate) valid_until: Instant,
}

impl Inner {
    /// The leases this node holds, as of now.
    fn held(&self) -> Vec<(u32, Held)> {
        self.owned
            .iter()
            .map(|entry| (*entry.key(), *entry.value()))
            .collect()
    }
}

/// Voluntary moves (giving a partition to its new rendezvous owner) per tick.
const MOVES_PER_TICK: usize = 4;
/// Messages applied per local journal append at most.
const APPLY_CHUNK: usize = 512;

pub(crate) fn lease_key(partition: u32) -> String {
    format!("p{partition}")
}

/// The journal meta entry holding how far `partition` is applied (a stream sequence).
pub(crate) fn position_key(partition: u32) -> String {
    format!("cluster.applied.{partition}")
}

/// The running membership loop.
pub struct Membership {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Membership {
    pub(super) fn start(inner: Arc<Inner>) -> Membership {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(inner, stopped));
        Membership { stop, task }
    }

    /// Stops applying, releases every lease and the member key, so the partitions move at
    /// once instead of after `lease_ttl`.
    pub async fn leave(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

struct Applier {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

struct Node {
    inner: Arc<Inner>,
    appliers: HashMap<u32, Applier>,
    /// The members bucket's server time of this node's latest heartbeat: "now" for judging
    /// the other members' heartbeats on the same clock.
    server_now: Option<time::OffsetDateTime>,
    /// The same for the leases bucket (its stream's leader may be another server, with its
    /// own clock), from a clock key of this node there.
    leases_now: Option<time::OffsetDateTime>,
    /// This process among any others started with the same node name.
    me: Heartbeat,
    /// The revision of this process's latest heartbeat, and when the first went out.
    heartbeat: Option<u64>,
    first_heartbeat: Option<Instant>,
    /// Whether a heartbeat after the first went through uncontested (partitions are taken only
    /// then, so a second process with this name never takes over the first's leases).
    confirmed: bool,
}

/// What a member key holds.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Heartbeat {
    node: String,
    pid: u32,
    /// Unique per process start.
    instance: String,
    /// When the process started, ms since the epoch.
    started_ms: i64,
}

impl Heartbeat {
    fn of_this_process(node: &str) -> Heartbeat {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Heartbeat {
            node: node.to_owned(),
            pid: std::process::id(),
            instance: format!("{}-{}", std::process::id(), now.as_nanos()),
            started_ms: now.as_millis() as i64,
        }
    }

    /// Whether this process is the one to stand down when `other` runs under the same name:
    /// the later started (by instance on a tie).
    fn yields_to(&self, other: &Heartbeat) -> bool {
        (self.started_ms, &self.instance) > (other.started_ms, &other.instance)
    }
}

async fn run(inner: Arc<Inner>, mut stopped: watch::Receiver<bool>) {
    let changed = Arc::new(Notify::new());
    let watchers = [
        tokio::spawn(watch_bucket(inner.members.clone(), changed.clone())),
        tokio::spawn(watch_bucket(inner.leases.clone(), changed.clone())),
    ];
    let tick = inner.config.lease_ttl.0 / 3;
    let snapshots = tokio::spawn(super::snapshot::keep_writing(
        inner.clone(),
        stopped.clone(),
    ));
    let me = Heartbeat::of_this_process(&inner.config.node);
    let mut node = Node {
        inner,
        appliers: HashMap::new(),
        server_now: None,
        leases_now: None,
        me,
        heartbeat: None,
        first_heartbeat: None,
        confirmed: false,
    };
    loop {
        // A stop does not wait for a tick stuck on an unreachable NATS: the tick is dropped
        // (a lease it was taking expires on its own) and the node leaves.
        tokio::select! {
            _ = stopped.changed() => break,
            () = node.tick() => {}
        }
        if node.inner.duplicate.get().is_some() {
            // Stood down: the member key and any lease left are the other process's.
            for watcher in &watchers {
                watcher.abort();
            }
            snapshots.abort();
            let _ = stopped.changed().await;
            return;
        }
        tokio::select! {
            _ = stopped.changed() => break,
            () = tokio::time::sleep(tick) => {}
            () = changed.notified() => {
                // Let a burst of changes (a node's leases released together) settle.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    for watcher in watchers {
        watcher.abort();
    }
    // A snapshot being uploaded is left unfinished (the bucket keeps the previous one).
    snapshots.abort();
    node.leave().await;
}

/// Wakes the loop when `bucket` changes shape — a key deleted (a lease released, a member
/// leaving) or a key seen for the first time (a member joining) — but not on the heartbeats
/// and renewals that rewrite known keys every tick (waking every node on every other node's
/// heartbeat would keep them all ticking back to back).
async fn watch_bucket(bucket: kv::Store, changed: Arc<Notify>) {
    let mut seen = std::collections::HashSet::new();
    loop {
        match bucket.watch_all().await {
            Ok(mut watch) => {
                while let Some(entry) = watch.next().await {
                    let Ok(entry) = entry else { break };
                    let new_key = match entry.operation {
                        kv::Operation::Put => seen.insert(entry.key.clone()),
                        kv::Operation::Delete | kv::Operation::Purge => {
                            seen.remove(&entry.key);
                            true
                        }
                    };
                    if new_key {
                        changed.notify_one();
                    }
                }
            }
            Err(err) => tracing::debug!(error = %err, "cannot watch a cluster bucket; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl Node {
    fn name(&self) -> &str {
        &self.inner.config.node
    }

    fn ttl(&self) -> Duration {
        self.inner.config.lease_ttl.0
    }

    /// How long after a successful write a lease may be acted on: a sixth of the TTL short of
    /// its expiry on the server.
    fn validity(&self) -> Duration {
        self.ttl() - self.ttl() / 6
    }

    /// Writes this process's heartbeat: a compare-and-set on its previous one, so that
    /// another process writing the same member key is noticed. Whether to go on (false: this
    /// process stood down).
    async fn heartbeat(&mut self) -> bool {
        let value: bytes::Bytes = serde_json::to_vec(&self.me).unwrap_or_default().into();
        let written = match self.heartbeat {
            None => self
                .inner
                .members
                .put(self.name(), value)
                .await
                .map_err(|e| e.to_string()),
            Some(revision) => match self
                .inner
                .members
                .update(self.name(), value.clone(), revision)
                .await
            {
                Ok(revision) => {
                    // Uncontested for half a TTL: any other live process with this name (which
                    // heartbeats every third of it) would have written meanwhile.
                    self.confirmed |= self
                        .first_heartbeat
                        .is_some_and(|first| first.elapsed() >= self.ttl() / 2);
                    Ok(revision)
                }
                Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    let other = match self.inner.members.entry(self.name()).await {
                        Ok(Some(entry)) => serde_json::from_slice::<Heartbeat>(&entry.value).ok(),
                        _ => None,
                    };
                    match other {
                        Some(other) if other.instance != self.me.instance => {
                            if self.me.yields_to(&other) {
                                self.stand_down(&other).await;
                                return false;
                            }
                            tracing::error!(
                                node = %self.name(),
                                other_pid = other.pid,
                                other_started_ms = other.started_ms,
                                "another live process heartbeats as this node (node names must be unique): it started later and stands down"
                            );
                        }
                        // Deleted meanwhile (an operator, or a NATS restore): write it again.
                        _ => {}
                    }
                    self.inner
                        .members
                        .put(self.name(), value)
                        .await
                        .map_err(|e| e.to_string())
                }
                Err(err) => Err(err.to_string()),
            },
        };
        match written {
            Ok(revision) => {
                self.heartbeat = Some(revision);
                self.first_heartbeat.get_or_insert_with(Instant::now);
                if let Ok(Some(entry)) = self.inner.members.entry(self.name()).await {
                    self.server_now = Some(entry.created);
                }
            }
            Err(err) => tracing::warn!(error = %err, "cluster heartbeat failed"),
        }
        true
    }

    /// Another live process runs under this node's name and started first: gives back what
    /// this one holds and stops taking part, leaving the name to it.
    async fn stand_down(&mut self, other: &Heartbeat) {
        let why = format!(
            "another live process (pid {}, started {} ms after the epoch) runs as cluster node {:?}; node names must be unique ([cluster] node): this one, started later, stood down",
            other.pid,
            other.started_ms,
            self.name()
        );
        tracing::error!(node = %self.name(), "{why}");
        let held: Vec<u32> = self.inner.held().into_iter().map(|(p, _)| p).collect();
        for partition in held {
            self.release(partition).await;
        }
        self.inner.joined.store(false, Ordering::Release);
        metrics::gauge!(t::CLUSTER_PARTITIONS_OWNED).set(0.0);
        let _ = self.inner.duplicate.set(why);
    }

    async fn tick(&mut self) {
        if !self.heartbeat().await {
            return;
        }
        let clock_key = format!("clock-{}", self.name());
        if self
            .inner
            .leases
            .put(&clock_key, bytes::Bytes::new())
            .await
            .is_ok()
            && let Ok(Some(entry)) = self.inner.leases.entry(clock_key.as_str()).await
        {
            self.leases_now = Some(entry.created);
        }
        self.renew().await;
        self.reap_expired().await;
        self.revive_appliers();
        let Some(members) = self.live_members().await else {
            return;
        };
        metrics::gauge!(t::CLUSTER_MEMBERS).set(members.len() as f64);
        self.inner.members_seen.send_if_modified(|seen| {
            let changed = *seen != members;
            if changed {
                seen.clone_from(&members);
            }
            changed
        });
        if !self.confirmed {
            // Partitions wait for heartbeats uncontested for half a TTL (see the module's notes).
            return;
        }
        self.rebalance(&members).await;
        let owned = self.inner.owned.len();
        metrics::gauge!(t::CLUSTER_PARTITIONS_OWNED).set(owned as f64);
        let lag: u64 = self.inner.lag.iter().map(|entry| *entry.value()).sum();
        metrics::gauge!(t::CLUSTER_CONSUMER_LAG).set(lag as f64);
        if members.iter().any(|m| m == self.name()) && !self.inner.joined.load(Ordering::Acquire) {
            self.inner.joined.store(true, Ordering::Release);
            tracing::info!(
                node = %self.name(),
                members = members.len(),
                partitions_owned = owned,
                "joined the cluster"
            );
        }
    }

    /// Whether a key written at `created` is older than the TTL by `now` of the same server
    /// clock.
    fn stale(&self, now: Option<time::OffsetDateTime>, created: time::OffsetDateTime) -> bool {
        now.is_some_and(|now| (now - created).whole_milliseconds() > self.ttl().as_millis() as i128)
    }

    async fn live_members(&self) -> Option<Vec<String>> {
        let keys = match self.inner.members.keys().await {
            Ok(keys) => keys,
            Err(err) => {
                tracing::warn!(error = %err, "cannot list cluster members");
                return None;
            }
        };
        let keys: Vec<String> = keys.filter_map(|k| async { k.ok() }).collect().await;
        let mut members = Vec::with_capacity(keys.len());
        for key in keys {
            match self.inner.members.entry(key.as_str()).await {
                Ok(Some(entry))
                    if entry.operation == kv::Operation::Put
                        && !self.stale(self.server_now, entry.created) =>
                {
                    members.push(key);
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read a cluster member");
                    return None;
                }
            }
        }
        members.sort();
        Some(members)
    }

    /// Renews every held lease at once (one round trip's wait, however many partitions).
    async fn renew(&mut self) {
        let held = self.inner.held();
        let value: bytes::Bytes = self.name().as_bytes().to_vec().into();
        // Validity counts from before the writes: the server stamps them later than this.
        let sent = Instant::now();
        let renewals = held.iter().map(|(partition, lease)| {
            self.inner
                .leases
                .update(lease_key(*partition), value.clone(), lease.revision)
        });
        let results = futures_util::future::join_all(renewals).await;
        for ((partition, _), result) in held.into_iter().zip(results) {
            match result {
                Ok(revision) => {
                    self.inner.owned.insert(
                        partition,
                        Held {
                            revision,
                            valid_until: sent + self.validity(),
                        },
                    );
                }
                Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    tracing::warn!(
                        partition,
                        "lost the lease of a partition: another node holds it"
                    );
                    self.drop_partition(partition, "lost").await;
                }
                Err(err) => {
                    // NATS is slow or away: keep acting only until the lease's validity ends.
                    tracing::warn!(partition, error = %err, "could not renew a partition lease");
                }
            }
        }
    }

    /// Drops every lease whose validity ran out without a renewal, its applier stopped before
    /// the partition can be taken again (two appliers of one partition never overlap).
    async fn reap_expired(&mut self) {
        let now = Instant::now();
        let expired: Vec<u32> = self
            .inner
            .owned
            .iter()
            .filter(|entry| entry.value().valid_until <= now)
            .map(|entry| *entry.key())
            .collect();
        for partition in expired {
            tracing::warn!(
                partition,
                "a partition lease could not be renewed in time: stopped applying it"
            );
            self.inner.owned.remove(&partition);
            self.await_applier(partition).await;
            metrics::counter!(t::CLUSTER_LEASE_MOVES, "move" => "expired").increment(1);
        }
    }

    /// Restarts the applier of a partition still held whose applier panicked (an applier
    /// otherwise ends only when told to, or when the journal closed at shutdown), so a held
    /// partition is never left unapplied.
    fn revive_appliers(&mut self) {
        let ended: Vec<u32> = self
            .appliers
            .iter()
            .filter(|(_, applier)| applier.task.is_finished())
            .map(|(partition, _)| *partition)
            .collect();
        for partition in ended {
            let Some(applier) = self.appliers.remove(&partition) else {
                continue;
            };
            let panicked = applier
                .task
                .now_or_never()
                .is_some_and(|ended| ended.is_err_and(|err| err.is_panic()));
            if panicked && self.inner.holds(partition) {
                tracing::error!(partition, "a partition's applier panicked: started again");
                metrics::counter!(t::CLUSTER_LEASE_MOVES, "move" => "resumed").increment(1);
                self.start_applier(partition);
            }
        }
    }

    async fn rebalance(&mut self, members: &[String]) {
        if !members.iter().any(|m| m == self.name()) {
            // Not (yet) visible as a member: take nothing.
            return;
        }
        let mut released = 0;
        let mut taken = Vec::new();
        for partition in 0..self.inner.config.partitions {
            let desired = placement::owner_of(partition, members);
            let mine = desired == Some(self.name());
            let held = self.inner.owned.contains_key(&partition);
            if held && !mine && released < MOVES_PER_TICK {
                released += 1;
                self.release(partition).await;
            } else if !held && mine && self.acquire(partition).await {
                taken.push(partition);
            }
        }
        if !taken.is_empty()
            && let Some(on_taken) = self.inner.on_taken.get()
        {
            on_taken(taken);
        }
    }

    /// Takes `partition`'s lease if it is free (or stale, or this node's own from a previous
    /// process); whether it did.
    async fn acquire(&mut self, partition: u32) -> bool {
        let key = lease_key(partition);
        let value: Vec<u8> = self.name().as_bytes().to_vec();
        let sent = Instant::now();
        let taken = match self.inner.leases.create(&key, value.clone().into()).await {
            Ok(revision) => Some(revision),
            Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {
                // Held: take it over only from a holder that stopped renewing it (its last
                // write is older than the TTL), or from this node's own previous process.
                match self.inner.leases.entry(key.as_str()).await {
                    Ok(Some(entry))
                        if self.stale(self.leases_now, entry.created)
                            || entry.value == value.as_slice() =>
                    {
                        self.inner
                            .leases
                            .update(&key, value.into(), entry.revision)
                            .await
                            .ok()
                    }
                    _ => None,
                }
            }
            Err(err) => {
                tracing::warn!(partition, error = %err, "could not take a partition lease");
                None
            }
        };
        let Some(revision) = taken else {
            return false;
        };
        self.inner.owned.insert(
            partition,
            Held {
                revision,
                valid_until: sent + self.validity(),
            },
        );
        metrics::counter!(t::CLUSTER_LEASE_MOVES, "move" => "acquired").increment(1);
        tracing::info!(partition, fencing_token = revision, "took a partition");
        self.start_applier(partition);
        true
    }

    /// Stops applying `partition` first, then deletes its lease for the next owner.
    async fn release(&mut self, partition: u32) {
        let Some((_, held)) = self.inner.owned.remove(&partition) else {
            return;
        };
        self.await_applier(partition).await;
        if let Err(err) = self
            .inner
            .leases
            .delete_expect_revision(lease_key(partition), Some(held.revision))
            .await
        {
            tracing::debug!(partition, error = %err, "could not release a lease (it expires)");
        }
        metrics::counter!(t::CLUSTER_LEASE_MOVES, "move" => "released").increment(1);
        tracing::info!(partition, "gave a partition to its rendezvous owner");
    }

    async fn drop_partition(&mut self, partition: u32, why: &'static str) {
        self.inner.owned.remove(&partition);
        self.stop_applier(partition);
        metrics::counter!(t::CLUSTER_LEASE_MOVES, "move" => why).increment(1);
    }

    fn start_applier(&mut self, partition: u32) {
        // A previous applier's mark does not speak for this one.
        self.inner.caught_up.remove(&partition);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(apply(self.inner.clone(), partition, stopped));
        self.appliers.insert(partition, Applier { stop, task });
    }

    fn stop_applier(&mut self, partition: u32) {
        self.inner.lag.remove(&partition);
        self.inner.caught_up.remove(&partition);
        if let Some(applier) = self.appliers.remove(&partition) {
            let _ = applier.stop.send(true);
        }
    }

    async fn await_applier(&mut self, partition: u32) {
        self.inner.lag.remove(&partition);
        self.inner.caught_up.remove(&partition);
        if let Some(applier) = self.appliers.remove(&partition) {
            let _ = applier.stop.send(true);
            let _ = applier.task.await;
        }
        self.inner.caught_up.remove(&partition);
    }

    async fn leave(mut self) {
        let partitions: Vec<u32> = self.appliers.keys().copied().collect();
        for partition in &partitions {
            if let Some(applier) = self.appliers.get(partition) {
                let _ = applier.stop.send(true);
            }
        }
        for partition in partitions {
            self.await_applier(partition).await;
        }
        let held = self.inner.held();
        self.inner.owned.clear();
        // All at once: with NATS away each would wait out its timeout (the leases then expire
        // after lease_ttl instead).
        let releases = held.iter().map(|(partition, lease)| {
            self.inner
                .leases
                .delete_expect_revision(lease_key(*partition), Some(lease.revision))
        });
        let released = futures_util::future::join_all(releases)
            .await
            .iter()
            .filter(|result| result.is_ok())
            .count();
        metrics::counter!(t::CLUSTER_LEASE_MOVES, "move" => "released").increment(released as u64);
        let _ = self.inner.members.delete(self.name()).await;
        self.inner.joined.store(false, Ordering::Release);
        metrics::gauge!(t::CLUSTER_PARTITIONS_OWNED).set(0.0);
        tracing::info!(node = %self.name(), bucket = LEASES_BUCKET, "left the cluster: leases released");
    }
}

/// Consumes `partition` in order into the local journal, from just after the position the
/// journal committed with the events, until told to stop or the lease is no longer held.
async fn apply(inner: Arc<Inner>, partition: u32, mut stopped: watch::Receiver<bool>) {
    let position = position_key(partition);
    let mut backoff = Duration::from_millis(100);
    let mut restore_tried = false;
    'consumer: loop {
        if !until_held(&inner, partition, &mut stopped).await {
            return;
        }
        let journal = inner.journal.clone();
        let name = position.clone();
        let read =
            tokio::task::spawn_blocking(move || journal.meta(&name).map_err(|e| e.to_string()))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
        let mut applied = match read {
            Ok(value) => value.unwrap_or(0).max(0) as u64,
            Err(err) => {
                tracing::error!(partition, error = %err, "cannot read a partition's position");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        // A partition this node never held is rebuilt from its snapshot, if there is one; so
        // is one whose events after this node's position have aged out of the stream since it
        // last held it.
        if !restore_tried {
            restore_tried = true;
            // Where the stream now starts (`None`: it would not say; assume history is gone).
            let mut first = None;
            for _ in 0..3 {
                match inner.stream.clone().info().await {
                    Ok(info) => {
                        first = Some(info.state.first_sequence);
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(partition, error = %err, "cannot read where the stream starts");
                        tokio::time::sleep(backoff).await;
                    }
                }
            }
            // The stream can no longer replay this partition from its position: only the
            // snapshot can fill the gap, so it is waited for rather than given up on.
            let gap = first.is_none_or(|first| first > applied + 1);
            if gap && applied > 0 {
                tracing::warn!(
                    partition,
                    applied,
                    first,
                    "the stream no longer holds every event after this partition's position (aged out while this node did not hold it): restoring the partition's snapshot"
                );
            }
            if applied == 0 || gap {
                match restore(&inner, partition, &position, applied, gap, &mut stopped).await {
                    Restored::At(at) => applied = at,
                    Restored::Nothing => {}
                    Restored::Stop => return,
                }
            }
            if let Some(first) = first
                && first > applied + 1
            {
                tracing::warn!(
                    partition,
                    applied,
                    first,
                    "stream sequences {} to {} are gone (stream max_age) and no snapshot covers them: any of this partition's events among them is unknown to this node (keep the stream's max_age well above cluster.snapshot_every)",
                    applied + 1,
                    first - 1
                );
            }
        }
        let consumer = inner
            .stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: subject_of(partition),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: applied + 1,
                },
                ..Default::default()
            })
            .await;
        let messages = match consumer {
            Ok(consumer) => {
                // Nothing past the position (after a restore, if any): caught up already.
                if consumer.cached_info().num_pending == 0 {
                    caught_up(&inner, partition, &stopped);
                }
                consumer.messages().await
            }
            Err(err) => {
                tracing::warn!(partition, error = %err, "cannot consume a partition; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let mut chunks = match messages {
            Ok(messages) => messages.ready_chunks(APPLY_CHUNK),
            Err(err) => {
                tracing::warn!(partition, error = %err, "cannot consume a partition; retrying");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        // An ordered consumer that recreates itself before delivering anything starts over
        // from the stream's beginning: what is already applied is skipped here.
        loop {
            let chunk = tokio::select! {
                _ = stopped.changed() => return,
                chunk = chunks.next() => chunk,
            };
            let Some(chunk) = chunk else {
                continue 'consumer;
            };
            let mut events: Vec<OrderEvent> = Vec::with_capacity(chunk.len());
            let mut last = None;
            // Whether the chunk's last message was the last the stream held for the partition.
            let mut drained = false;
            for message in chunk {
                let message = match message {
                    Ok(message) => message,
                    Err(err) => {
                        tracing::warn!(partition, error = %err, "partition consumer failed; resuming from the journal's position");
                        continue 'consumer;
                    }
                };
                let Ok(info) = message.info() else { continue };
                let (seq, pending) = (info.stream_sequence, info.pending);
                inner.lag.insert(partition, pending);
                drained = pending == 0;
                if seq <= applied {
                    continue;
                }
                last = Some(seq);
                match serde_json::from_slice::<OrderEvent>(&message.payload) {
                    Ok(mut event) => {
                        event.log_seq = Some(seq);
                        events.push(event);
                    }
                    Err(err) => {
                        metrics::counter!(t::JOURNAL_ERRORS, "kind" => "cluster_decode")
                            .increment(1);
                        tracing::error!(partition, seq, error = %err, "an event in the stream is unreadable; skipped");
                    }
                }
            }
            let Some(last) = last else {
                if drained {
                    caught_up(&inner, partition, &stopped);
                }
                continue;
            };
            // Fencing: nothing is applied while the lease is too old to trust.
            if !until_held(&inner, partition, &mut stopped).await {
                return;
            }
            // The events first, then what they report elsewhere (waybills, waiting scans), and
            // only then the position: a crash in between replays the chunk (deduplicated) and
            // redoes the side effects instead of skipping them.
            let commit_events = || inner.journal.append(events.clone());
            if !until_done(
                &inner,
                partition,
                &mut stopped,
                "apply events",
                commit_events,
            )
            .await
            {
                return;
            }
            let index = || inner.index_waybills(&events);
            if !until_done(&inner, partition, &mut stopped, "index waybills", index).await {
                return;
            }
            let commit_position = || inner.journal.append_at(Vec::new(), &position, last as i64);
            if !until_done(
                &inner,
                partition,
                &mut stopped,
                "commit position",
                commit_position,
            )
            .await
            {
                return;
            }
            applied = last;
            if drained {
                caught_up(&inner, partition, &stopped);
            }
        }
    }
}

/// Marks `partition` caught up as of the journal's last sequence (see `Cluster::
/// current_partitions`), unless its applier was told to stop (a later applier's start clears
/// the mark; a stopping one must not set it again).
fn caught_up(inner: &Inner, partition: u32, stopped: &watch::Receiver<bool>) {
    if !*stopped.borrow() {
        inner.caught_up.insert(partition, inner.journal.last_seq());
    }
}

/// What restoring a partition from its snapshot came to.
enum Restored {
    /// Applied up to this stream sequence.
    At(u64),
    /// No snapshot (or none readable): replay the partition from the stream.
    Nothing,
    /// The applier must stop.
    Stop,
}

/// Rebuilds `partition` in the local journal from its snapshot, if the snapshot is past
/// `applied`: appends the snapshot's events (a chunk at a time, each while the lease is held;
/// those already journaled are duplicates) and then commits its position. A snapshot that
/// cannot be read is tried a few times, then given up on (the stream replays the partition) —
/// unless `needed` (the stream no longer holds the partition's history): then it is tried
/// until it is read or the applier stops, rather than rebuilding an incomplete partition whose
/// own snapshot would later replace the complete one.
async fn restore(
    inner: &Inner,
    partition: u32,
    position: &str,
    applied: u64,
    needed: bool,
    stopped: &mut watch::Receiver<bool>,
) -> Restored {
    let started = Instant::now();
    let mut attempt = 0;
    let mut wait = super::snapshot::RETRY_AFTER;
    let snapshot = loop {
        attempt += 1;
        let fetched = tokio::select! {
            _ = stopped.changed() => return Restored::Stop,
            fetched = super::snapshot::fetch(&inner.snapshots, partition, inner.config.partitions) => fetched,
        };
        match fetched {
            Ok(Some(snapshot)) if snapshot.position > applied => break snapshot,
            Ok(_) => return Restored::Nothing,
            Err(err) if attempt < super::snapshot::ATTEMPTS || needed => {
                if attempt == super::snapshot::ATTEMPTS {
                    metrics::counter!(t::CLUSTER_SNAPSHOTS, "outcome" => "failed").increment(1);
                }
                tracing::warn!(partition, attempt, needed, error = %err, "cannot read the partition's snapshot; trying again");
                tokio::select! {
                    _ = stopped.changed() => return Restored::Stop,
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(err) => {
                metrics::counter!(t::CLUSTER_SNAPSHOTS, "outcome" => "failed").increment(1);
                tracing::error!(partition, error = %err, "cannot read the partition's snapshot; replaying the partition from the stream instead");
                return Restored::Nothing;
            }
        }
    };
    let events = snapshot.events.len();
    for chunk in snapshot.events.chunks(APPLY_CHUNK) {
        if !until_held(inner, partition, stopped).await {
            return Restored::Stop;
        }
        let append = || inner.journal.append(chunk.to_vec());
        if !until_done(inner, partition, stopped, "restore snapshot", append).await {
            return Restored::Stop;
        }
    }
    // The waybills the events report are in the shared waybills bucket already (their first
    // owner indexed them).
    let at = snapshot.position as i64;
    let commit = || inner.journal.append_at(Vec::new(), position, at);
    if !until_done(inner, partition, stopped, "commit position", commit).await {
        return Restored::Stop;
    }
    metrics::counter!(t::CLUSTER_SNAPSHOTS, "outcome" => "restored").increment(1);
    tracing::info!(
        partition,
        position = snapshot.position,
        events,
        from = %snapshot.node,
        took_ms = started.elapsed().as_millis() as u64,
        "partition restored from its snapshot; consuming the stream after it"
    );
    Restored::At(snapshot.position)
}

/// Waits while `partition`'s lease is unconfirmed (its validity lapsed, the renewal not yet
/// back): true once it is held and valid again, false when the applier is told to stop — the
/// membership loop stops it when the lease is lost, expires or is given away, so an applier
/// never ends on its own while its partition is still held.
async fn until_held(inner: &Inner, partition: u32, stopped: &mut watch::Receiver<bool>) -> bool {
    loop {
        if *stopped.borrow() {
            return false;
        }
        if inner.holds(partition) {
            return true;
        }
        tokio::select! {
            changed = stopped.changed() => {
                if changed.is_err() {
                    // The membership loop is gone (the engine is stopping): so is the lease.
                    return false;
                }
            }
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

/// How a failed applier step goes on.
enum Step {
    /// The journal closed: the engine is stopping.
    Stop,
    /// Anything else: try again.
    Retry(String),
}

impl From<JournalError> for Step {
    fn from(err: JournalError) -> Self {
        match err {
            JournalError::Closed => Step::Stop,
            other => Step::Retry(other.to_string()),
        }
    }
}

impl From<String> for Step {
    fn from(err: String) -> Self {
        Step::Retry(err)
    }
}

/// Retries `step` until it succeeds (true), or until the applier must stop: told to, or the
/// journal closed (false). A retry waits for the lease to be valid.
async fn until_done<T, E: Into<Step>, F: Future<Output = Result<T, E>>>(
    inner: &Inner,
    partition: u32,
    stopped: &mut watch::Receiver<bool>,
    what: &'static str,
    step: impl Fn() -> F,
) -> bool {
    loop {
        match step().await.map_err(Into::into) {
            Ok(_) => return true,
            Err(Step::Stop) => return false,
            Err(Step::Retry(err)) => {
                tracing::warn!(partition, step = what, error = %err, "cannot apply a partition yet; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                if !until_held(inner, partition, stopped).await {
                    return false;
                }
            }
        }
    }
}
