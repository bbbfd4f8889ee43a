//! Sharded, supervised order actors: the [`OrderRouter`] handle, the per-shard supervisors and
//! their SLA timer structures.
//!
//! An event reaches its order actor as: journal commit → [`OrderRouter::route`] → the shard
//! supervisor of `hash(order key) % shards` → the order actor (spawned from the journal if the
//! order was passivated).

mod order_actor;
mod order_metrics;
mod pending;
mod supervisor;
mod timers;

use crate::order::{Millis, Order, OrderPolicy, OrderState, SharedEvent};
use crate::store::OrderStore;
use order_metrics::OrderMetrics;
use pending::PendingGuard;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use supervisor::{ShardMsg, ShardSupervisor};
use timers::TimerHandle;
use tokio::task::JoinHandle;

/// Default number of shards.
pub const DEFAULT_SHARDS: usize = 16;
/// Default time after which an order actor with no message is passivated.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default cap on active order actors per shard; the least recently used is passivated first.
pub const DEFAULT_MAX_ACTIVE_PER_SHARD: usize = 10_000;

/// An SLA breach detected more than this long after its deadline is flagged late: the engine
/// was down at the deadline, or the report that armed the timer arrived after it had passed.
pub const LATE_AFTER_MS: Millis = 1_000;

/// How the order actors are sharded and passivated.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    /// Number of shard supervisors.
    pub shards: usize,
    /// Passivate an order actor after this long without a message.
    pub idle_timeout: Duration,
    /// Cap on active actors per shard.
    pub max_active_per_shard: usize,
}

impl Default for ShardConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl ShardConfig {
    /// The defaults.
    pub fn new() -> Self {
        ShardConfig {
            shards: DEFAULT_SHARDS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_active_per_shard: DEFAULT_MAX_ACTIVE_PER_SHARD,
        }
    }

    fn sweep_interval(&self) -> Duration {
        (self.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(10))
    }
}

/// Wall-clock time as the actors see it (injectable so tests can run on paused time).
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> Millis;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as Millis)
    }
}

/// A wall clock that follows tokio's (possibly paused) time, for tests.
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    base_ms: Millis,
    base: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `base_ms` now.
    pub fn starting_at(base_ms: Millis) -> Self {
        TokioClock {
            base_ms,
            base: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> Millis {
        self.base_ms + self.base.elapsed().as_millis() as Millis
    }
}

pub(crate) type ShardClock = Arc<dyn Clock>;

/// What every actor of a shard shares.
pub(crate) struct ShardContext {
    pub(crate) config: ShardConfig,
    pub(crate) policy: Arc<OrderPolicy>,
    pub(crate) store: Arc<dyn OrderStore>,
    pub(crate) clock: ShardClock,
    pub(crate) timers: TimerHandle,
    pub(crate) metrics: Arc<OrderMetrics>,
    /// Orders on hold, for the dispatchers.
    pub(crate) held: crate::dispatch::HeldOrders,
}

/// Why the router could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The shard configuration is unusable.
    #[error("invalid shard config: {0}")]
    Config(&'static str),
    /// A shard supervisor could not be started.
    #[error("shard {shard} failed to start: {reason}")]
    Spawn {
        /// Which shard.
        shard: usize,
        /// Why.
        reason: String,
    },
    /// The shard supervisor is gone (engine shutting down).
    #[error("shard {0} is not running")]
    ShardDown(usize),
}

impl RouterError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            RouterError::Config(_) => "config",
            RouterError::Spawn { .. } => "spawn",
            RouterError::ShardDown(_) => "shard_down",
        }
    }
}

/// The handle to the sharded order actors. Cheap to clone.
#[derive(Clone)]
pub struct OrderRouter {
    inner: Arc<RouterInner>,
}

struct RouterInner {
    shards: Vec<ActorRef<ShardMsg>>,
    timers: Vec<TimerHandle>,
    held: crate::dispatch::HeldOrders,
    metrics: Arc<OrderMetrics>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

/// The shard an order key belongs to: FNV-1a, stable across builds and machines so that several
/// engine instances agree on it.
pub fn shard_of(order: &str, shards: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in order.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % shards as u64) as usize
}

impl OrderRouter {
    /// Starts the shard supervisors and their timer structures.
    pub async fn start(
        config: ShardConfig,
        policy: OrderPolicy,
        store: Arc<dyn OrderStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<OrderRouter, RouterError> {
        if config.shards == 0 {
            return Err(RouterError::Config("shards must be at least 1"));
        }
        if config.max_active_per_shard == 0 {
            return Err(RouterError::Config(
                "max_active_per_shard must be at least 1",
            ));
        }
        let metrics = Arc::new(OrderMetrics::new(
            policy.sla_rules().iter().map(|r| r.name.clone()),
            policy.rules().hold_rules().map(str::to_owned),
            policy.metric_source_labels().map(str::to_owned),
            policy.rules().approvals().map(|a| a.name.clone()),
            policy.stock().is_some(),
        ));
        let policy = Arc::new(policy);
        let held = crate::dispatch::HeldOrders::default();
        let mut shards = Vec::with_capacity(config.shards);
        let mut timer_handles = Vec::with_capacity(config.shards);
        let mut tasks = Vec::new();
        for shard in 0..config.shards {
            let (timers, commands) = timers::channel();
            let ctx = Arc::new(ShardContext {
                config: config.clone(),
                policy: policy.clone(),
                store: store.clone(),
                clock: clock.clone(),
                timers: timers.clone(),
                metrics: metrics.clone(),
                held: held.clone(),
            });
            let (supervisor, _) = Actor::spawn(None, ShardSupervisor, ctx)
                .await
                .map_err(|e| RouterError::Spawn {
                    shard,
                    reason: e.to_string(),
                })?;
            tasks.push(tokio::spawn(timers::run(
                commands,
                supervisor.clone(),
                clock.clone(),
                metrics.armed.clone(),
            )));
            shards.push(supervisor);
            timer_handles.push(timers);
        }
        tasks.push(tokio::spawn(refresh_gauges(metrics.clone())));
        Ok(OrderRouter {
            inner: Arc::new(RouterInner {
                shards,
                timers: timer_handles,
                held,
                metrics,
                tasks: std::sync::Mutex::new(tasks),
            }),
        })
    }

    /// The orders on hold, as the order actors mark them; hand it to the dispatchers
    /// ([`crate::dispatch::Dispatch::start_with_holds`]) so held orders' syncs wait.
    pub fn held_orders(&self) -> crate::dispatch::HeldOrders {
        self.inner.held.clone()
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.inner.shards.len()
    }

    /// Hands a journaled event to its order's actor. Never blocks: callable from the journal
    /// writer thread, which routes events in journal order.
    pub fn route(&self, event: SharedEvent) -> Result<(), RouterError> {
        self.deliver(event, false)
    }

    /// [`route`](Self::route) for an event the journal appended while it held no earlier event
    /// of its order (a new order). An actor it starts has nothing to read from the journal and
    /// starts at once, without a load. The caller must know it: an order with earlier events
    /// routed this way would start without them, and its summary would then replace the whole
    /// one with a partial one.
    pub fn route_first(&self, event: SharedEvent) -> Result<(), RouterError> {
        self.deliver(event, true)
    }

    fn deliver(&self, event: SharedEvent, first: bool) -> Result<(), RouterError> {
        let shard = shard_of(&event.event.order, self.inner.shards.len());
        let pending = PendingGuard::new(&self.inner.metrics.pending);
        self.inner.shards[shard]
            .cast(ShardMsg::Deliver {
                event,
                pending,
                first,
            })
            .map_err(|_| RouterError::ShardDown(shard))
    }

    /// Arms an SLA timer of a (possibly passivated) order: used at start-up with the deadlines
    /// recorded in the order index.
    pub fn arm(&self, order: &str, rule: &str, deadline: Millis) {
        let shard = shard_of(order, self.inner.shards.len());
        self.inner.timers[shard].arm(&Arc::from(order), rule, deadline);
    }

    /// The canonical order from its actor, or `None` when no actor is active for it (the
    /// caller then reads the journal).
    pub async fn active_order(
        &self,
        order: &str,
        timeout: Duration,
    ) -> Result<Option<Order>, RouterError> {
        let shard = shard_of(order, self.inner.shards.len());
        let key: Arc<str> = order.into();
        match self.inner.shards[shard]
            .call(|reply| ShardMsg::Query { order: key, reply }, Some(timeout))
            .await
        {
            Ok(CallResult::Success(found)) => Ok(found),
            Ok(CallResult::Timeout | CallResult::SenderError) => Ok(None),
            Err(_) => Err(RouterError::ShardDown(shard)),
        }
    }

    /// Journaled events routed but not yet applied by their order actors.
    pub fn pending_events(&self) -> i64 {
        self.inner.metrics.pending.load(Ordering::Relaxed)
    }

    /// Order actors in memory.
    pub fn active_actors(&self) -> i64 {
        self.inner.metrics.active.load(Ordering::Relaxed)
    }

    /// Armed SLA timers across all shards.
    pub fn armed_timers(&self) -> i64 {
        self.inner.metrics.armed.load(Ordering::Relaxed)
    }

    /// Sets the orders-by-state gauges to absolute counts (at start-up, from the index).
    pub fn set_orders_by_state(&self, counts: &[(OrderState, u64)]) {
        self.inner.metrics.set_orders_by_state(counts);
    }

    /// Drops archived orders: an active actor of one stops without writing a summary (there are
    /// no events left to summarise), and each leaves the orders-by-state gauge.
    pub fn forget(&self, orders: &[(String, OrderState)]) {
        for (order, state) in orders {
            let shard = shard_of(order, self.inner.shards.len());
            let _ = self.inner.shards[shard].cast(ShardMsg::Forget(order.as_str().into()));
            self.inner.metrics.left(*state);
        }
    }

    /// Passivates every order actor (each writes its summary) and stops the shards. Gives up
    /// waiting for a shard after `timeout`.
    pub async fn stop(&self, timeout: Duration) {
        // Every shard drains at once, all within the one timeout.
        let deadline = tokio::time::Instant::now() + timeout;
        let mut drains = tokio::task::JoinSet::new();
        for (shard, supervisor) in self.inner.shards.iter().enumerate() {
            let supervisor = supervisor.clone();
            drains.spawn(async move {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let drained = supervisor.call(ShardMsg::Drain, Some(left)).await;
                if !matches!(drained, Ok(CallResult::Success(()))) {
                    tracing::warn!(
                        shard,
                        "shard did not drain in time; its orders replay from the journal at next start"
                    );
                }
                supervisor.stop(Some("shutdown".into()));
            });
        }
        while drains.join_next().await.is_some() {}
        let tasks =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            task.abort();
        }
    }

    #[cfg(test)]
    fn inject_panic(&self, order: &str) {
        let shard = shard_of(order, self.inner.shards.len());
        let _ = self.inner.shards[shard].cast(ShardMsg::InjectPanic(order.into()));
    }
}

async fn refresh_gauges(metrics: Arc<OrderMetrics>) {
    use crate::telemetry as t;
    let active = metrics::gauge!(t::ACTORS_ACTIVE);
    let pending = metrics::gauge!(t::ACTORS_PENDING_EVENTS);
    let armed = metrics::gauge!(t::SLA_ARMED_TIMERS);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        active.set(metrics.active.load(Ordering::Relaxed) as f64);
        pending.set(metrics.pending.load(Ordering::Relaxed) as f64);
        armed.set(metrics.armed.load(Ordering::Relaxed) as f64);
    }
}

#[cfg(test)]
mod tests;
