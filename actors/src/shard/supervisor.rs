//! The shard supervisor: owns the order actors of one shard. It spawns an actor on an order's
//! first event or timer, passivates idle ones (idle timeout, and a cap on active actors with
//! least-recently-used eviction) and restarts a crashed one from the journal.

use super::ShardContext;
use super::order_actor::{OrderActor, OrderArgs, OrderMsg, Replay, StartFailed};
use super::pending::PendingGuard;
use crate::order::{Millis, Order, SharedEvent};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// A crashed actor is restarted at most this many times per [`RESTART_WINDOW`]; past that the
/// order is left passivated (its events stay in the journal) and the failure is counted.
pub(crate) const MAX_RESTARTS: u32 = 3;
/// See [`MAX_RESTARTS`].
pub(crate) const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// Messages a shard supervisor handles.
pub(crate) enum ShardMsg {
    /// A journaled event for an order of this shard; `first` when the journal held no earlier
    /// event of the order (see [`OrderRouter::route_first`](super::OrderRouter::route_first)).
    Deliver {
        event: SharedEvent,
        pending: PendingGuard,
        first: bool,
    },
    /// An SLA deadline is due (from the shard's timer structure).
    SlaDue {
        order: Arc<str>,
        rule: Arc<str>,
        deadline: Millis,
    },
    /// The canonical order if its actor is active, else `None`.
    Query {
        order: Arc<str>,
        reply: RpcReplyPort<Option<Order>>,
    },
    /// Passivate actors idle longer than the idle timeout.
    Sweep,
    /// An order actor has loaded its order: if the shard is over its cap (only actors that
    /// have loaded are evicted), it can be brought back under now.
    Loaded,
    /// Passivate every actor and reply once all have stopped.
    Drain(RpcReplyPort<()>),
    /// Stop an order's actor, if active, without a summary (the order was archived).
    Forget(Arc<str>),
    /// Make an order's actor panic (tests).
    #[cfg(test)]
    InjectPanic(Arc<str>),
}

pub(crate) struct ShardSupervisor;

struct Child {
    actor: ActorRef<OrderMsg>,
    tick: u64,
    last_active: Instant,
    /// Set by the actor once it has loaded its order (see `OrderArgs::loaded`).
    loaded: Arc<AtomicBool>,
}

impl Child {
    fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }
}

pub(crate) struct ShardState {
    ctx: Arc<ShardContext>,
    children: HashMap<Arc<str>, Child>,
    /// Every live actor (including passivating ones) by id, for supervision events.
    by_id: HashMap<ActorId, Arc<str>>,
    /// Active children by last use, oldest first.
    lru: BTreeMap<u64, Arc<str>>,
    tick: u64,
    restarts: HashMap<Arc<str>, (u32, Instant)>,
    drain: Option<RpcReplyPort<()>>,
}

impl Actor for ShardSupervisor {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = Arc<ShardContext>;

    async fn pre_start(
        &self,
        myself: ActorRef<ShardMsg>,
        ctx: Arc<ShardContext>,
    ) -> Result<ShardState, ActorProcessingErr> {
        let sweep = ctx.config.sweep_interval();
        myself.send_interval(sweep, || ShardMsg::Sweep);
        Ok(ShardState {
            ctx,
            children: HashMap::new(),
            by_id: HashMap::new(),
            lru: BTreeMap::new(),
            tick: 0,
            restarts: HashMap::new(),
            drain: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ShardMsg>,
        message: ShardMsg,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ShardMsg::Deliver {
                event,
                pending,
                first,
            } => {
                let order: Arc<str> = event.event.order.as_str().into();
                let replay = if first {
                    Replay::Nothing
                } else {
                    Replay::Below(event.seq)
                };
                state
                    .send_replaying(&myself, &order, OrderMsg::Apply(event, pending), replay)
                    .await;
            }
            ShardMsg::SlaDue {
                order,
                rule,
                deadline,
            } => {
                state
                    .send(&myself, &order, OrderMsg::SlaDue { rule, deadline })
                    .await;
            }
            ShardMsg::Query { order, reply } => match state.children.get(&order) {
                Some(child) => {
                    // If the actor died under us the reply port is dropped with the message and
                    // the asker falls back to the journal.
                    let _ = child.actor.cast(OrderMsg::Snapshot(reply));
                }
                None => {
                    let _ = reply.send(None);
                }
            },
            ShardMsg::Sweep => state.sweep_idle(),
            ShardMsg::Loaded => state.keep_cap(),
            ShardMsg::Forget(order) => {
                if let Some(child) = state.children.remove(&order) {
                    state.lru.remove(&child.tick);
                    if child.actor.cast(OrderMsg::Forget).is_err() {
                        state.forget(child.actor.get_id());
                    }
                }
            }
            ShardMsg::Drain(reply) => {
                let keys: Vec<Arc<str>> = state.children.keys().cloned().collect();
                for key in keys {
                    state.passivate(&key);
                    state.ctx.metrics.passivated_shutdown.increment(1);
                }
                if state.by_id.is_empty() {
                    let _ = reply.send(());
                } else {
                    state.drain = Some(reply);
                }
            }
            #[cfg(test)]
            ShardMsg::InjectPanic(order) => {
                if let Some(child) = state.children.get(&order) {
                    let _ = child.actor.cast(OrderMsg::InjectPanic);
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<ShardMsg>,
        event: SupervisionEvent,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.forget(cell.get_id());
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                let known = state.forget(cell.get_id());
                if let Some(failed) = err.downcast_ref::<StartFailed>() {
                    // Restarting would read the same journal again: given up until the order's
                    // next event (or recovery), which starts a fresh actor. Told to the store
                    // even when the actor had left the books (passivated as it failed).
                    state.ctx.metrics.failures_start.increment(1);
                    tracing::error!(order = %failed.order, error = %failed.error, "order actor failed to start; its events stay journaled");
                    state.ctx.store.unfolded(&failed.order);
                } else if let Some(order) = known {
                    tracing::error!(order = %order, error = %err, "order actor crashed");
                    if state.may_restart(&order) && state.drain.is_none() {
                        state.ctx.metrics.restarts.increment(1);
                        state.child(&myself, &order, Replay::All).await;
                        state.keep_cap();
                    } else {
                        state.ctx.metrics.failures_crash_loop.increment(1);
                        tracing::error!(order = %order, "order actor keeps crashing; left passivated until its next event");
                        state.ctx.store.unfolded(&order);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl ShardState {
    /// Sends `message` to the order's actor, starting it if needed (replaying the whole journal).
    async fn send(&mut self, myself: &ActorRef<ShardMsg>, order: &Arc<str>, message: OrderMsg) {
        self.send_replaying(myself, order, message, Replay::All)
            .await
    }

    /// [`send`](Self::send), an actor it starts replaying `replay`. A send that races with the
    /// actor's death is retried once on a fresh actor, started the same way. The shard is
    /// brought back under its cap only once the message is queued: an actor that loads nothing
    /// is loaded (evictable) at once, and evicted before its message it would stop without it.
    async fn send_replaying(
        &mut self,
        myself: &ActorRef<ShardMsg>,
        order: &Arc<str>,
        message: OrderMsg,
        replay: Replay,
    ) {
        let Some(actor) = self.child(myself, order, replay).await else {
            return;
        };
        if let Err(ractor::MessagingErr::SendErr(message)) = actor.cast(message) {
            if let Some(child) = self.children.remove(order) {
                self.lru.remove(&child.tick);
            }
            if let Some(actor) = self.child(myself, order, replay).await {
                let _ = actor.cast(message);
            }
        }
        self.keep_cap();
    }

    /// The active actor of `order`, spawned if there is none (it loads the journal itself before
    /// its first message, while the shard goes on, unless `replay` is [`Replay::Nothing`]). The
    /// caller brings the shard back under its cap ([`keep_cap`](Self::keep_cap)).
    async fn child(
        &mut self,
        myself: &ActorRef<ShardMsg>,
        order: &Arc<str>,
        replay: Replay,
    ) -> Option<ActorRef<OrderMsg>> {
        self.tick += 1;
        let tick = self.tick;
        if let Some(child) = self.children.get_mut(order) {
            self.lru.remove(&child.tick);
            child.tick = tick;
            child.last_active = Instant::now();
            self.lru.insert(tick, order.clone());
            return Some(child.actor.clone());
        }
        let loaded = Arc::new(AtomicBool::new(false));
        let args = OrderArgs {
            key: order.clone(),
            ctx: self.ctx.clone(),
            replay,
            loaded: loaded.clone(),
            shard: myself.clone(),
        };
        let actor = match Actor::spawn_linked(None, OrderActor, args, myself.get_cell()).await {
            Ok((actor, _join)) => actor,
            Err(err) => {
                self.ctx.metrics.failures_start.increment(1);
                tracing::error!(order = %order, error = %err, "order actor failed to start; its events stay journaled");
                self.ctx.store.unfolded(order);
                return None;
            }
        };
        self.ctx.metrics.spawned.increment(1);
        self.ctx.metrics.active.fetch_add(1, Ordering::Relaxed);
        self.by_id.insert(actor.get_id(), order.clone());
        self.children.insert(
            order.clone(),
            Child {
                actor: actor.clone(),
                tick,
                last_active: Instant::now(),
                loaded,
            },
        );
        self.lru.insert(tick, order.clone());
        Some(actor)
    }

    /// Passivates the least recently used actors that have loaded until the shard is back at
    /// its cap. One still loading stays (see `OrderArgs::loaded`): the cap is exceeded by at
    /// most the loads in flight, until they answer ([`ShardMsg::Loaded`]).
    fn keep_cap(&mut self) {
        while self.children.len() > self.ctx.config.max_active_per_shard {
            let oldest = self
                .lru
                .values()
                .find(|o| self.children.get(*o).is_some_and(Child::loaded))
                .cloned();
            let Some(oldest) = oldest else {
                break;
            };
            self.passivate(&oldest);
            self.ctx.metrics.passivated_capacity.increment(1);
        }
    }

    /// Asks the actor to write its summary and stop. It leaves the active set at once, so a
    /// new event for the order starts a fresh actor that replays the journal.
    fn passivate(&mut self, order: &Arc<str>) {
        if let Some(child) = self.children.remove(order) {
            self.lru.remove(&child.tick);
            if child.actor.cast(OrderMsg::Passivate).is_err() {
                self.forget(child.actor.get_id());
            }
        }
    }

    fn sweep_idle(&mut self) {
        let idle = self.ctx.config.idle_timeout;
        let now = Instant::now();
        let mut expired = Vec::new();
        for order in self.lru.values() {
            match self.children.get(order) {
                // Idle that long and still loading (a very slow disk): left until it has.
                Some(child) if !child.loaded() => continue,
                Some(child) if now.duration_since(child.last_active) >= idle => {
                    expired.push(order.clone())
                }
                _ => break,
            }
        }
        for order in expired {
            self.passivate(&order);
            self.ctx.metrics.passivated_idle.increment(1);
        }
    }

    /// Drops a stopped actor from the books; returns its order if it was known.
    fn forget(&mut self, id: ActorId) -> Option<Arc<str>> {
        let order = self.by_id.remove(&id)?;
        self.ctx.metrics.active.fetch_sub(1, Ordering::Relaxed);
        if self
            .children
            .get(&order)
            .is_some_and(|c| c.actor.get_id() == id)
            && let Some(child) = self.children.remove(&order)
        {
            self.lru.remove(&child.tick);
        }
        if self.by_id.is_empty()
            && let Some(reply) = self.drain.take()
        {
            let _ = reply.send(());
        }
        Some(order)
    }

    fn may_restart(&mut self, order: &Arc<str>) -> bool {
        let now = Instant::now();
        if self.restarts.len() > 10_000 {
            self.restarts
                .retain(|_, (_, since)| now.duration_since(*since) <= RESTART_WINDOW);
        }
        let entry = self.restarts.entry(order.clone()).or_insert((0, now));
        if now.duration_since(entry.1) > RESTART_WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
        entry.0 <= MAX_RESTARTS
    }
}
