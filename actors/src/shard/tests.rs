//! Supervision, passivation and SLA timer tests against an in-memory journal.

use super::*;
use crate::order::{EventAction, JournaledEvent, OrderEvent, SlaRule, SlaStatus};
use crate::store::{OrderIndexEntry, OrderUpdate, StoreError, StoredOrder};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// A journal in memory: appends assign the next sequence number and route, as the engine's
/// writer does after a commit.
#[derive(Default)]
struct MemoryJournal {
    events: Mutex<Vec<JournaledEvent>>,
    index: Mutex<HashMap<String, OrderIndexEntry>>,
    syncs: Mutex<Vec<crate::dispatch::SyncIntent>>,
    router: OnceLock<OrderRouter>,
    /// An order whose load fails (a journal that cannot read it).
    unreadable: Mutex<Option<String>>,
    /// Orders the shards gave up on.
    unfolded: Mutex<Vec<String>>,
    /// Loads per order (one per actor started).
    loads: Mutex<HashMap<String, usize>>,
    /// An order whose loads wait until the test answers them (a slow disk read).
    stalled: Mutex<Option<String>>,
    /// The loads of the stalled order waiting for an answer.
    stalled_replies: Mutex<Vec<crate::store::LoadReply>>,
}

impl MemoryJournal {
    /// How many events orderhub raised itself (SLA breaches here) were journaled.
    fn internal_events(&self) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.event.source == crate::order::INTERNAL_SOURCE)
            .count()
    }

    fn append(&self, event: OrderEvent) {
        self.append_telling(event, false);
    }

    /// [`append`](Self::append), routing the event as its order's first when it is (as the
    /// engine's journal does) if `tell_first`.
    fn append_telling(&self, event: OrderEvent, tell_first: bool) {
        let (journaled, first) = {
            let mut events = self.events.lock().unwrap();
            if events.iter().any(|e| {
                e.event.source == event.source && e.event.source_event_id == event.source_event_id
            }) {
                return;
            }
            let first = !events.iter().any(|e| e.event.order == event.order);
            let journaled = JournaledEvent {
                seq: events.len() as u64 + 1,
                event,
            };
            events.push(journaled.clone());
            (journaled, first)
        };
        let router = self.router.get().expect("router set");
        let routed = if tell_first && first {
            router.route_first(Arc::new(journaled))
        } else {
            router.route(Arc::new(journaled))
        };
        routed.unwrap();
    }

    fn index(&self, order: &str) -> Option<OrderIndexEntry> {
        self.index.lock().unwrap().get(order).cloned()
    }
}

impl OrderStore for MemoryJournal {
    fn load(&self, order: &str) -> Result<StoredOrder, StoreError> {
        *self
            .loads
            .lock()
            .unwrap()
            .entry(order.to_owned())
            .or_default() += 1;
        if self.unreadable.lock().unwrap().as_deref() == Some(order) {
            return Err(StoreError::Unavailable("unreadable".into()));
        }
        let events = self
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.event.order == order)
            .cloned()
            .collect();
        let indexed_seq = self.index(order).map_or(0, |e| e.applied_seq);
        Ok(StoredOrder {
            events,
            indexed_seq,
        })
    }

    fn load_later(&self, order: &str, reply: crate::store::LoadReply) {
        if self.stalled.lock().unwrap().as_deref() == Some(order) {
            self.stalled_replies.lock().unwrap().push(reply);
        } else {
            let _ = reply.send(self.load(order));
        }
    }

    fn append_internal(&self, event: OrderEvent) -> Result<(), StoreError> {
        self.append(event);
        Ok(())
    }

    fn record(&self, update: OrderUpdate) {
        self.syncs.lock().unwrap().extend(update.syncs);
        let entry = update.index;
        let mut index = self.index.lock().unwrap();
        let keep = index
            .get(&entry.key)
            .is_none_or(|old| old.applied_seq <= entry.applied_seq);
        if keep {
            index.insert(entry.key.clone(), entry);
        }
    }

    fn unfolded(&self, order: &str) {
        self.unfolded.lock().unwrap().push(order.to_owned());
    }
}

const T0: Millis = 1_700_000_000_000;

fn event(order: &str, id: &str, state: OrderState, at: Millis) -> OrderEvent {
    OrderEvent {
        order: order.into(),
        source: "wms".into(),
        source_event_id: id.into(),
        supersedes: None,
        log_seq: None,
        raw_status: state.as_str().into(),
        action: EventAction::Move { state },
        occurred_at: at,
        received_at: at,
        fields: Default::default(),
    }
}

async fn start(config: ShardConfig, policy: OrderPolicy) -> (Arc<MemoryJournal>, OrderRouter) {
    let journal = Arc::new(MemoryJournal::default());
    let router = OrderRouter::start(
        config,
        policy,
        journal.clone(),
        Arc::new(TokioClock::starting_at(T0)),
    )
    .await
    .unwrap();
    journal.router.set(router.clone()).ok().unwrap();
    (journal, router)
}

/// Polls `check` until it holds, yielding to the actors between tries.
async fn eventually<F: FnMut() -> bool>(what: &str, mut check: F) {
    for _ in 0..2_000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn timeline_len(router: &OrderRouter, order: &str) -> usize {
    router
        .active_order(order, Duration::from_secs(1))
        .await
        .unwrap()
        .map_or(0, |o| o.timeline.len())
}

/// An order whose actor cannot start, or keeps crashing, is reported to the store as unfolded
/// (so the journal stops waiting for its summary and recovery tries it again); others are not.
#[tokio::test]
async fn an_order_given_up_on_is_reported_unfolded() {
    let (journal, router) = start(ShardConfig::new(), OrderPolicy::permissive()).await;
    *journal.unreadable.lock().unwrap() = Some("douyin:9".into());
    journal.append(event("douyin:9", "9a", OrderState::Paid, T0));
    journal.append(event("douyin:1", "1a", OrderState::Paid, T0));
    eventually("the unreadable order given up", || {
        journal.unfolded.lock().unwrap().as_slice() == ["douyin:9"]
    })
    .await;
    eventually("both events settled", || router.pending_events() == 0).await;

    // Crashing past the restart limit: given up too.
    journal.append(event("douyin:2", "2a", OrderState::Paid, T0));
    eventually("applied", || router.pending_events() == 0).await;
    // Each crash is followed by a restart (a new load) until the limit, then by giving up.
    let loads = || journal.loads.lock().unwrap()["douyin:2"];
    let given_up = || journal.unfolded.lock().unwrap().len() == 2;
    for crash in 0..=supervisor::MAX_RESTARTS {
        assert!(!given_up(), "given up after {crash} crashes");
        let before = loads();
        router.inject_panic("douyin:2");
        eventually("a restart, or giving up", || loads() > before || given_up()).await;
    }
    eventually("the crash-looping order given up", || {
        journal.unfolded.lock().unwrap().as_slice() == ["douyin:9", "douyin:2"]
    })
    .await;
    router.stop(Duration::from_secs(1)).await;
}

/// A cold order's load (here one that waits for the disk) holds up neither its shard nor the
/// events of its shard's other orders; its own events wait for it and then apply in order.
#[tokio::test]
async fn a_slow_load_holds_up_only_its_own_order() {
    let config = ShardConfig {
        shards: 1,
        ..ShardConfig::new()
    };
    let (journal, router) = start(config, OrderPolicy::permissive()).await;
    *journal.stalled.lock().unwrap() = Some("douyin:slow".into());
    journal.append(event("douyin:slow", "s1", OrderState::Paid, T0));
    journal.append(event("douyin:slow", "s2", OrderState::Allocated, T0 + 1));
    journal.append(event("douyin:fast", "f1", OrderState::Paid, T0));
    journal.append(event("douyin:fast", "f2", OrderState::Allocated, T0 + 1));
    eventually("the other order's load asked for", || {
        journal.stalled_replies.lock().unwrap().len() == 1
            && journal.loads.lock().unwrap().contains_key("douyin:fast")
    })
    .await;
    // (The query queues behind both of the other order's events.)
    assert_eq!(
        timeline_len(&router, "douyin:fast").await,
        2,
        "the other order's events applied while the slow load waits"
    );
    assert_eq!(
        router.pending_events(),
        2,
        "the slow order's two events wait"
    );

    // The disk answers: the slow order's events apply, in journal order.
    answer_the_slow_load(&journal, &router).await;
    router.stop(Duration::from_secs(1)).await;
}

/// Answers the stalled load of `douyin:slow` and checks that its two events (paid, allocated)
/// applied, in order, on the one actor that loaded it.
async fn answer_the_slow_load(journal: &MemoryJournal, router: &OrderRouter) {
    *journal.stalled.lock().unwrap() = None;
    let reply = journal.stalled_replies.lock().unwrap().pop().unwrap();
    let _ = reply.send(journal.load("douyin:slow"));
    eventually("the slow order's events applied", || {
        router.pending_events() == 0
    })
    .await;
    let order = router
        .active_order("douyin:slow", Duration::from_secs(1))
        .await
        .unwrap()
        .expect("still active");
    assert_eq!(order.state, Some(OrderState::Allocated));
    assert_eq!(order.timeline.len(), 2);
    assert_eq!(journal.loads.lock().unwrap()["douyin:slow"], 1, "one actor");
}

/// A full shard evicts the least recently used order that has loaded, never one still loading:
/// evicted, it would stop after its load while a second incarnation of the order loaded and
/// applied the order's next events, and the two could mark the order out of order.
#[tokio::test]
async fn a_full_shard_never_evicts_an_order_still_loading() {
    let config = ShardConfig {
        shards: 1,
        max_active_per_shard: 1,
        ..ShardConfig::new()
    };
    let (journal, router) = start(config, OrderPolicy::permissive()).await;
    *journal.stalled.lock().unwrap() = Some("douyin:slow".into());
    journal.append(event("douyin:slow", "s1", OrderState::Paid, T0));
    journal.append(event("douyin:fast", "f1", OrderState::Paid, T0));
    // Over the cap: the order that loaded goes (its summary written), the one loading stays.
    eventually("the other order applied and passivated", || {
        router.pending_events() == 1
            && journal
                .index("douyin:fast")
                .is_some_and(|e| e.state == Some(OrderState::Paid))
    })
    .await;
    assert_eq!(timeline_len(&router, "douyin:fast").await, 0, "passivated");
    journal.append(event("douyin:slow", "s2", OrderState::Allocated, T0 + 1));
    assert_eq!(
        journal.stalled_replies.lock().unwrap().len(),
        1,
        "the order still loading kept its actor: no second incarnation loads it"
    );

    answer_the_slow_load(&journal, &router).await;
    router.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_crashed_order_actor_recovers_its_full_timeline() {
    let (journal, router) = start(ShardConfig::new(), OrderPolicy::permissive()).await;
    journal.append(event("douyin:1", "a", OrderState::Paid, T0));
    journal.append(event("douyin:1", "b", OrderState::Allocated, T0 + 1));
    journal.append(event("douyin:1", "c", OrderState::Picked, T0 + 2));
    eventually("three events applied", || router.pending_events() == 0).await;
    assert_eq!(timeline_len(&router, "douyin:1").await, 3);

    router.inject_panic("douyin:1");
    journal.append(event("douyin:1", "d", OrderState::Packed, T0 + 3));
    eventually("the actor restarted", || router.pending_events() == 0).await;
    let mut order = None;
    for _ in 0..100 {
        order = router
            .active_order("douyin:1", Duration::from_secs(1))
            .await
            .unwrap();
        if order.as_ref().is_some_and(|o| o.timeline.len() == 4) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let order = order.expect("restarted actor is active");
    assert_eq!(order.state, Some(OrderState::Packed));
    let ids: Vec<&str> = order
        .timeline
        .iter()
        .map(|e| e.source_event_id.as_str())
        .collect();
    assert_eq!(ids, ["a", "b", "c", "d"]);
    router.stop(Duration::from_secs(1)).await;
}

/// An order's first event starts its actor without a load (the journal has nothing else of
/// it); the order's next events are applied as messages, and an actor started later (after
/// passivation) loads the whole order.
#[tokio::test]
async fn a_new_orders_first_event_starts_its_actor_without_a_load() {
    let mut config = ShardConfig::new();
    config.shards = 1;
    config.max_active_per_shard = 1;
    let (journal, router) = start(config, OrderPolicy::permissive()).await;
    let loads = |order: &str| journal.loads.lock().unwrap().get(order).copied();
    journal.append_telling(event("o:1", "1a", OrderState::Paid, T0), true);
    journal.append_telling(event("o:1", "1b", OrderState::Packed, T0 + 1), true);
    eventually("events applied", || router.pending_events() == 0).await;
    assert_eq!(loads("o:1"), None, "nothing loaded for a new order");
    let order = router
        .active_order("o:1", Duration::from_secs(1))
        .await
        .unwrap()
        .expect("active");
    assert_eq!(order.state, Some(OrderState::Packed));
    assert_eq!(order.timeline.len(), 2);

    // A second order takes the shard's only place; o:1 comes back from the journal whole.
    journal.append_telling(event("o:2", "2a", OrderState::Paid, T0), true);
    eventually("o:2 applied", || router.pending_events() == 0).await;
    eventually("o:1 passivated", || router.active_actors() == 1).await;
    assert!(
        router
            .active_order("o:1", Duration::from_secs(1))
            .await
            .unwrap()
            .is_none()
    );
    journal.append_telling(event("o:1", "1c", OrderState::Shipped, T0 + 2), true);
    eventually("event applied", || router.pending_events() == 0).await;
    assert_eq!(loads("o:1"), Some(1));
    let order = router
        .active_order("o:1", Duration::from_secs(1))
        .await
        .unwrap()
        .expect("reactivated");
    assert_eq!(order.state, Some(OrderState::Shipped));
    assert_eq!(order.timeline.len(), 3);
    assert_eq!(loads("o:2"), None);
    router.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn least_recently_used_orders_passivate_at_the_cap_and_come_back_whole() {
    let mut config = ShardConfig::new();
    config.shards = 1;
    config.max_active_per_shard = 2;
    let (journal, router) = start(config, OrderPolicy::permissive()).await;
    for i in 0..5 {
        journal.append(event(
            &format!("o:{i}"),
            &format!("p{i}"),
            OrderState::Paid,
            T0,
        ));
    }
    eventually("events applied", || router.pending_events() == 0).await;
    eventually("cap respected", || router.active_actors() <= 2).await;
    assert!(
        router
            .active_order("o:0", Duration::from_secs(1))
            .await
            .unwrap()
            .is_none()
    );
    eventually("summary written on passivation", || {
        journal
            .index("o:0")
            .is_some_and(|e| e.state == Some(OrderState::Paid))
    })
    .await;

    journal.append(event("o:0", "s0", OrderState::Shipped, T0 + 10));
    eventually("event applied", || router.pending_events() == 0).await;
    let order = router
        .active_order("o:0", Duration::from_secs(1))
        .await
        .unwrap()
        .expect("reactivated");
    assert_eq!(order.state, Some(OrderState::Shipped));
    assert_eq!(order.timeline.len(), 2);
    router.stop(Duration::from_secs(1)).await;
    assert_eq!(router.active_actors(), 0, "stop passivates every actor");
}

#[tokio::test(start_paused = true)]
async fn idle_orders_passivate_after_the_timeout() {
    let mut config = ShardConfig::new();
    config.idle_timeout = Duration::from_secs(60);
    let (journal, router) = start(config, OrderPolicy::permissive()).await;
    journal.append(event("o:1", "a", OrderState::Paid, T0));
    eventually("active", || router.active_actors() == 1).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(router.active_actors(), 1, "not idle long enough yet");
    tokio::time::sleep(Duration::from_secs(60)).await;
    eventually("passivated", || router.active_actors() == 0).await;
    router.stop(Duration::from_secs(1)).await;
}

fn two_hour_rule() -> OrderPolicy {
    OrderPolicy::permissive().with_sla(SlaRule {
        name: "allocate_within_2h".into(),
        from: OrderState::Paid,
        within_ms: 2 * 3_600_000,
        reset_on_event: false,
    })
}

#[tokio::test(start_paused = true)]
async fn an_sla_deadline_fires_once_even_for_a_passivated_order() {
    let mut config = ShardConfig::new();
    config.idle_timeout = Duration::from_secs(60);
    let (journal, router) = start(config, two_hour_rule()).await;
    journal.append(event("o:late", "paid", OrderState::Paid, T0));
    journal.append(event("o:ok", "paid", OrderState::Paid, T0));
    journal.append(event("o:ok", "alloc", OrderState::Allocated, T0 + 60_000));
    eventually("timer armed", || router.armed_timers() == 1).await;

    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(router.active_actors(), 0, "both passivated while waiting");
    assert!(!journal.index("o:late").unwrap().sla_breached);

    tokio::time::sleep(Duration::from_secs(3601)).await;
    eventually("breach recorded", || {
        journal.index("o:late").is_some_and(|e| e.sla_breached)
    })
    .await;
    let order = router
        .active_order("o:late", Duration::from_secs(1))
        .await
        .unwrap()
        .expect("woken by its timer");
    assert!(matches!(
        order.sla[0].status,
        SlaStatus::Breached { late: false, .. }
    ));
    assert!(!journal.index("o:ok").unwrap().sla_breached);
    assert_eq!(router.armed_timers(), 0);
    let breaches = journal.internal_events();
    assert_eq!(breaches, 1);
    router.stop(Duration::from_secs(1)).await;
}

/// A flash sale pays many orders within one millisecond (platforms stamp whole seconds), so
/// their deadlines are equal. Each breach is its own event, even in a journal that, like this
/// one and like journals made before deduplication was per order, deduplicates by source and
/// source event id alone.
#[tokio::test(start_paused = true)]
async fn orders_paid_in_the_same_millisecond_each_breach() {
    let (journal, router) = start(ShardConfig::new(), two_hour_rule()).await;
    let orders = ["o:1", "o:2", "o:3"];
    for order in orders {
        journal.append(event(order, &format!("paid-{order}"), OrderState::Paid, T0));
    }
    eventually("timers armed", || router.armed_timers() == 3).await;
    tokio::time::sleep(Duration::from_secs(2 * 3600 + 1)).await;
    for order in orders {
        eventually(order, || {
            journal.index(order).is_some_and(|e| e.sla_breached)
        })
        .await;
    }
    let breaches = journal.internal_events();
    assert_eq!(breaches, 3);
    router.stop(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_deadline_missed_while_down_fires_at_once_flagged_late() {
    // The order was paid three hours before this engine started; its timer is re-armed from
    // the index at start-up.
    let (journal, router) = start(ShardConfig::new(), two_hour_rule()).await;
    let paid_at = T0 - 3 * 3_600_000;
    journal.events.lock().unwrap().push(JournaledEvent {
        seq: 1,
        event: event("o:1", "paid", OrderState::Paid, paid_at),
    });
    router.arm("o:1", "allocate_within_2h", paid_at + 2 * 3_600_000);
    eventually("late breach recorded", || {
        journal.index("o:1").is_some_and(|e| e.sla_breached)
    })
    .await;
    let order = router
        .active_order("o:1", Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        order.sla[0].status,
        SlaStatus::Breached { late: true, .. }
    ));
    router.stop(Duration::from_secs(1)).await;
}

#[test]
fn transitions_are_counted_for_the_event_that_starts_an_actor() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut config = ShardConfig::new();
            config.shards = 1;
            config.max_active_per_shard = 1;
            let (journal, router) = start(config, OrderPolicy::permissive()).await;
            journal.append(event("o:1", "a", OrderState::Paid, T0));
            // A second order evicts the first, so its next event starts a fresh actor.
            journal.append(event("o:2", "b", OrderState::Paid, T0));
            journal.append(event("o:1", "c", OrderState::Shipped, T0 + 1));
            eventually("applied", || router.pending_events() == 0).await;
            router.stop(Duration::from_secs(1)).await;
        });
    });
    // One snapshot: taking it drains the debugging recorder.
    let snapshot = snapshotter.snapshot().into_vec();
    let count = |from: &str, to: &str| {
        snapshot
            .iter()
            .find_map(|(key, _, _, value)| {
                let labels: Vec<_> = key
                    .key()
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                let matches = key.key().name() == crate::telemetry::ORDERS_TRANSITIONS
                    && labels.contains(&("from".into(), from.into()))
                    && labels.contains(&("to".into(), to.into()));
                match (matches, value) {
                    (true, DebugValue::Counter(n)) => Some(*n),
                    _ => None,
                }
            })
            .unwrap_or(0)
    };
    assert_eq!(count("none", "paid"), 2);
    assert_eq!(count("paid", "shipped"), 1);
}
