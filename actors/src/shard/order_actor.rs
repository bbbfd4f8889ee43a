//! The order actor: one per active order, child of its shard supervisor. It holds the order's
//! canonical state, applies journaled events to it, keeps its SLA timers armed in the shard's
//! timer structure and writes its summary behind every change.

use super::ShardContext;
use super::pending::PendingGuard;
use super::supervisor::ShardMsg;
use crate::order::{EventAction, Millis, Order, OrderEvent, SharedEvent};
use crate::store::{OrderIndexEntry, OrderUpdate, StoreError, StoredOrder};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// Messages an order actor handles.
pub(crate) enum OrderMsg {
    /// Apply a journaled event (already durable).
    Apply(SharedEvent, PendingGuard),
    /// An SLA deadline of this order is due.
    SlaDue { rule: Arc<str>, deadline: Millis },
    /// Reply with a copy of the canonical order.
    Snapshot(RpcReplyPort<Option<Order>>),
    /// Write the summary and stop; later events start a fresh actor from the journal.
    Passivate,
    /// Stop without writing a summary: the order was archived and removed from the journal.
    Forget,
    /// Panic, to exercise supervision in tests.
    #[cfg(test)]
    InjectPanic,
}

pub(crate) struct OrderActor;

/// What an order actor replays from the journal before its first message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Replay {
    /// Every journaled event of the order (a timer wake-up, a crash restart).
    All,
    /// The events before this sequence: the event that starts the actor (and any after it)
    /// arrive as messages and are applied live, with metrics. Events before it were applied
    /// live by an earlier incarnation, as routing follows journal order.
    Below(u64),
    /// Nothing, and nothing is read: the journal held no earlier event of the order when it
    /// appended the event that starts the actor (a new order, most of the starts in a flash
    /// sale). The read would have found nothing below that event: events of the order after it
    /// arrive as messages.
    Nothing,
}

pub(crate) struct OrderArgs {
    pub(crate) key: Arc<str>,
    pub(crate) ctx: Arc<ShardContext>,
    /// What the actor replays silently before its first message.
    pub(crate) replay: Replay,
    /// Set when the actor has loaded its order. Until then the shard neither evicts nor sweeps
    /// it: a second incarnation started meanwhile could load, apply and mark the order before
    /// this one did, which would then overwrite the newer marks with older ones.
    pub(crate) loaded: Arc<AtomicBool>,
    /// The shard, told when the order has loaded.
    pub(crate) shard: ActorRef<ShardMsg>,
}

pub(crate) struct OrderActorState {
    key: Arc<str>,
    order: Order,
    ctx: Arc<ShardContext>,
    /// How the order is marked held for the dispatchers (`None`: not held; else the sinks the
    /// hold keeps back, `None` inside: all). The shared map is touched only when this changes,
    /// not on every event.
    marked_held: Option<Option<Vec<String>>>,
    /// What `post_start` replays (see [`OrderArgs::replay`]).
    replay: Replay,
    /// Set once the order is loaded (see [`OrderArgs::loaded`]).
    loaded: Arc<AtomicBool>,
    /// The shard (see [`OrderArgs::shard`]).
    shard: ActorRef<ShardMsg>,
}

/// Why an order actor could not start: its journal could not be read or replayed (a panic
/// while folding it), or a stock request it owes could not be journaled. The shard gives the
/// order up at once rather than restarting it; its events stay journaled and recovery folds
/// them.
#[derive(Debug, thiserror::Error)]
#[error("order actor of {order} could not start: {error}")]
pub(crate) struct StartFailed {
    /// The order (the shard may have dropped the actor from its books before it hears).
    pub(crate) order: Arc<str>,
    /// What went wrong.
    pub(crate) error: StoreError,
}

impl Actor for OrderActor {
    type Msg = OrderMsg;
    type State = OrderActorState;
    type Arguments = OrderArgs;

    /// Nothing is read here: the shard waits for `pre_start` before it goes on, so the load
    /// happens in `post_start`, which the actor runs before its first message while the shard
    /// starts and feeds other orders.
    async fn pre_start(
        &self,
        _myself: ActorRef<OrderMsg>,
        args: OrderArgs,
    ) -> Result<OrderActorState, ActorProcessingErr> {
        Ok(OrderActorState {
            order: Order::new(args.key.as_ref()),
            key: args.key,
            ctx: args.ctx,
            marked_held: None,
            replay: args.replay,
            loaded: args.loaded,
            shard: args.shard,
        })
    }

    async fn post_start(
        &self,
        _myself: ActorRef<OrderMsg>,
        state: &mut OrderActorState,
    ) -> Result<(), ActorProcessingErr> {
        let key = state.key.clone();
        let failed = |error| StartFailed {
            order: key.clone(),
            error,
        };
        let stored = if state.replay == Replay::Nothing {
            StoredOrder::default()
        } else {
            let (reply, answer) = tokio::sync::oneshot::channel();
            state.ctx.store.load_later(&state.key, reply);
            answer
                .await
                .unwrap_or_else(|_| {
                    Err(StoreError::Unavailable(
                        "the journal's loader stopped".into(),
                    ))
                })
                .map_err(failed)?
        };
        // A panic while folding is a start that failed (given up at once, as a load that fails),
        // not a crash to restart into the same panic.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| state.load(stored)))
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".into());
                Err(StoreError::Unavailable(format!(
                    "replaying the order panicked: {what}"
                )))
            })
            .map_err(failed)?;
        state
            .loaded
            .store(true, std::sync::atomic::Ordering::Release);
        // (A shard that is gone is stopping: nothing to keep under its cap.)
        let _ = state.shard.cast(ShardMsg::Loaded);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<OrderMsg>,
        message: OrderMsg,
        state: &mut OrderActorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            OrderMsg::Apply(event, _pending) => state.apply(&event),
            OrderMsg::SlaDue { rule, deadline } => state.sla_due(&rule, deadline)?,
            OrderMsg::Snapshot(reply) => {
                // The asker may have given up waiting; nothing to do then.
                let _ = reply.send(Some(state.order.clone()));
            }
            OrderMsg::Passivate => {
                state.record(Vec::new());
                myself.stop(Some("passivated".into()));
            }
            OrderMsg::Forget => myself.stop(Some("archived".into())),
            #[cfg(test)]
            OrderMsg::InjectPanic => panic!("injected panic in order {}", state.key),
        }
        Ok(())
    }
}

impl OrderActorState {
    /// Folds the order's journal into the fresh state, arms its timers and records the syncs
    /// an earlier incarnation may not have written.
    fn load(&mut self, mut stored: StoredOrder) -> Result<(), StoreError> {
        if let Replay::Below(below) = self.replay {
            stored.events.retain(|e| e.seq < below);
        }
        let ctx = &self.ctx;
        // Events past the stored summary may have been folded by an incarnation that crashed
        // before writing their syncs: decide them again (the outbox ignores ones it has).
        let (order, syncs) = Order::replay_collecting(
            self.key.as_ref(),
            &stored.events,
            &ctx.policy,
            stored.indexed_seq,
        );
        for (rule, deadline) in order.armed_timers() {
            ctx.timers.arm(&self.key, rule, deadline);
        }
        // A stock request that has no answer yet (the engine stopped in between) is asked
        // again now rather than at its timer; the journal keeps one of the two.
        if let Some(status) = &order.stock
            && status.state == crate::order::StockState::Requested
            && let Some(request) = status.deadline.and_then(|d| order.stock_due(d))
        {
            ctx.store.append_internal(request)?;
        }
        let marked_held = order.hold.as_ref().map(|h| h.syncs.clone());
        mark_held(&ctx.held, &self.key, &marked_held);
        self.order = order;
        self.marked_held = marked_held;
        if !syncs.is_empty() {
            self.record(syncs);
        }
        Ok(())
    }

    fn apply(&mut self, event: &SharedEvent) {
        let ctx = &self.ctx;
        let Some((outcome, timers)) = self.order.apply(event, &ctx.policy) else {
            return; // folded in already (loaded from the journal after it was routed)
        };
        ctx.metrics.record(&outcome);
        if matches!(outcome, crate::order::Outcome::Applied { .. }) {
            let report = &event.event;
            let late_ms = report.received_at.saturating_sub(report.occurred_at).max(0);
            ctx.metrics.delay(
                ctx.policy.metric_source(&report.source),
                late_ms as f64 / 1000.0,
            );
        }
        if let EventAction::SlaBreach { rule, late, .. } = &event.event.action
            && matches!(outcome, crate::order::Outcome::SlaBreached { .. })
        {
            ctx.metrics.breach(rule, *late);
            crate::digest::note(
                crate::digest::Warning::SlaBreached { late: *late },
                rule,
                &self.key,
            );
        }
        for rule in &timers.holds {
            ctx.metrics.hold(rule);
            crate::digest::note(crate::digest::Warning::Held, rule, &self.key);
        }
        for (flow, what) in &timers.approvals {
            ctx.metrics.approval(flow, what);
        }
        for rule in &timers.disarmed {
            ctx.timers.disarm(&self.key, rule);
        }
        for (rule, deadline) in &timers.armed {
            ctx.timers.arm(&self.key, rule, *deadline);
        }
        for kind in &timers.disagreements {
            ctx.metrics.disagreement(kind);
            crate::digest::note(crate::digest::Warning::Disagreement, kind, &self.key);
        }
        for (op, result) in &timers.stock {
            ctx.metrics.stock(op, result);
        }
        for request in timers.internal {
            // The journal answers it; if it cannot take it now, the stock timer asks again.
            if let Err(err) = ctx.store.append_internal(request) {
                tracing::warn!(order = %self.key, error = %err, "cannot journal a stock request; retried by its timer");
            }
        }
        let held = self.order.hold.as_ref().map(|h| h.syncs.clone());
        if held != self.marked_held {
            mark_held(&ctx.held, &self.key, &held);
            self.marked_held = held;
        }
        self.record(timers.syncs);
    }

    fn sla_due(&mut self, rule: &str, deadline: Millis) -> Result<(), ActorProcessingErr> {
        let still_armed = self
            .order
            .armed_timers()
            .any(|(r, d)| r == rule && d == deadline);
        if !still_armed {
            return Ok(());
        }
        if rule == crate::order::STOCK_TIMER {
            if let Some(request) = self.order.stock_due(deadline) {
                self.ctx.store.append_internal(request)?;
            }
            return Ok(());
        }
        let now = self.ctx.clock.now_ms();
        let late = now.saturating_sub(deadline) > super::LATE_AFTER_MS;
        let event = match self.order.approval_due(rule, deadline) {
            Some(approval) => OrderEvent::internal(
                &self.key,
                format!("approval:{}:{deadline}", approval.id),
                EventAction::ApprovalDue {
                    approval: approval.id.clone(),
                    deadline,
                    late,
                },
                now,
            ),
            None => OrderEvent::internal(
                &self.key,
                format!("sla:{rule}:{deadline}"),
                EventAction::SlaBreach {
                    rule: rule.to_owned(),
                    deadline,
                    late,
                },
                now,
            ),
        };
        self.ctx.store.append_internal(event)?;
        Ok(())
    }

    fn record(&self, syncs: Vec<crate::dispatch::SyncIntent>) {
        self.ctx.store.record(OrderUpdate {
            index: OrderIndexEntry::of(&self.order),
            syncs,
        });
    }
}

/// Marks `order` for the dispatchers as `held` says (see `OrderActorState::marked_held`).
fn mark_held(map: &crate::dispatch::HeldOrders, order: &str, held: &Option<Option<Vec<String>>>) {
    match held {
        None => map.set(order, false),
        Some(sinks) => map.hold(order, sinks.as_deref()),
    }
}
