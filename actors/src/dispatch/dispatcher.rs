//! The dispatcher actor: one per sink. It takes the sink's pending syncs from the outbox on
//! disk (a bounded window in memory, paged in row order), sends them at the sink's rate
//! (governor: work over the quota waits, it is never dropped), with at most `max_in_flight`
//! at once, one at a time per order (FIFO), retrying transient failures with backoff and
//! jitter, pausing behind a circuit breaker, and dead-lettering what the sink refuses or what
//! exhausts the retries.

use super::connector::{Delivery, SinkConnector};
use super::policy::{Breaker, RetryPolicy};
use crate::order::Millis;
use crate::order::sync::{PendingSync, SyncStatus, SyncUpdate};
use crate::shard::Clock;
use crate::store::{StoreError, SyncStore};
use crate::telemetry as t;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use metrics::{Counter, Gauge, Histogram};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// How often a dispatcher wakes to move due retries, page in and refresh its gauges.
const TICK: Duration = Duration::from_millis(50);
/// How often the syncs another node now owns are checked for having been settled there.
const DEFERRED_CHECK: Duration = Duration::from_secs(1);
/// Deferred orders checked per round at most.
const DEFERRED_CHECKS_PER_ROUND: usize = 256;
/// Default syncs a dispatcher holds in memory; the rest wait on disk.
pub const DEFAULT_WINDOW: usize = 10_000;
/// Rows read from the outbox per page.
const PAGE: usize = 1_000;

/// A sink's dispatch settings.
#[derive(Clone, Debug)]
pub struct SinkSpec {
    /// The sink's name (rules refer to it).
    pub name: String,
    /// Sends allowed per `per`.
    pub rate_count: u32,
    /// The quota's period.
    pub rate_per: Duration,
    /// Sends that may start back to back before the pacing applies (1: evenly spaced).
    pub burst: u32,
    /// Sends in flight at most.
    pub max_in_flight: usize,
    /// How long one send may take.
    pub timeout: Duration,
    /// Retry schedule.
    pub retry: RetryPolicy,
    /// Consecutive transient failures that open the breaker.
    pub breaker_threshold: u32,
    /// How long the breaker stays open.
    pub breaker_cooldown: Duration,
    /// Syncs held in memory.
    pub window: usize,
    /// Whether this sink's backlog counts toward `dispatch.max_backlog`, beyond which ingest
    /// answers 429. False for work that trails ingest by design (order-detail fetches at a
    /// channel's quota): throttling pushes would not make it go faster.
    pub holds_back_ingest: bool,
}

impl SinkSpec {
    /// This node's part of the sink's quota when `share` nodes split it evenly (1: the whole
    /// quota): the sends are spaced `share` times wider and the burst is split too, so the
    /// nodes together never exceed the configured rate.
    fn quota(&self, share: u32) -> Quota {
        let count = self.rate_count.max(1);
        let share = share.max(1);
        let period = (self.rate_per * share / count).max(Duration::from_nanos(1));
        let burst = (self.burst / share).max(1);
        Quota::with_period(period)
            .expect("period is positive")
            .allow_burst(NonZeroU32::new(burst).expect("burst is positive"))
    }

    /// Sends per second of this node's part of the quota.
    fn per_second(&self, share: u32) -> f64 {
        f64::from(self.rate_count) / self.rate_per.as_secs_f64().max(1e-9) / f64::from(share.max(1))
    }
}

/// A deferred order (see `DispatcherState::defer`).
struct Deferred {
    /// When its head was last asked about.
    checked: Option<Instant>,
    /// Rows at the front of its queue taken out of `held` and `backlog`.
    uncounted: usize,
}

/// A sink's observable state.
#[derive(Clone, Debug, PartialEq)]
pub struct SinkStatus {
    /// Pending syncs (on disk and in memory).
    pub backlog: i64,
    /// Sends in flight.
    pub in_flight: usize,
    /// 0 closed, 1 half-open, 2 open.
    pub breaker: f64,
    /// Delivered since start.
    pub delivered: u64,
    /// Dead-lettered since start.
    pub dead: u64,
    /// Held back: another node owns their orders' partitions (not in `backlog`).
    pub deferred: usize,
}

pub(crate) enum DispatchMsg {
    New(Vec<PendingSync>),
    Replay(PendingSync),
    Paged(Result<Vec<PendingSync>, StoreError>),
    Done {
        row: i64,
        delivery: Delivery,
        elapsed: Duration,
    },
    Tick,
    /// A send that waited for the quota found its order's partition owned elsewhere by then:
    /// not sent.
    Deferred {
        row: i64,
    },
    /// Whether the head sync `row` of a deferred order was settled by the node that owns it.
    Checked {
        row: i64,
        settled: bool,
    },
    Status(RpcReplyPort<SinkStatus>),
    /// `n` nodes now split the sink's quota (cluster mode; 1 on a single node).
    Share(u32),
}

struct SinkMetrics {
    outcomes: HashMap<&'static str, Counter>,
    latency: Histogram,
    throttled_waits: Counter,
    retries: Counter,
    dead: Counter,
    breaker: Gauge,
    backlog: Gauge,
    deferred: Gauge,
    oldest: Gauge,
}

impl SinkMetrics {
    fn new(spec: &SinkSpec) -> Self {
        let sink = spec.name.as_str();
        metrics::gauge!(t::DISPATCH_QUOTA, "sink" => sink.to_owned()).set(spec.per_second(1));
        let outcomes = ["delivered", "throttled", "failed", "rejected"]
            .into_iter()
            .map(|o| (o, metrics::counter!(t::DISPATCH_REQUESTS, "sink" => sink.to_owned(), "outcome" => o)))
            .collect();
        SinkMetrics {
            outcomes,
            latency: metrics::histogram!(t::DISPATCH_LATENCY, "sink" => sink.to_owned()),
            throttled_waits: metrics::counter!(t::DISPATCH_THROTTLED_WAITS, "sink" => sink.to_owned()),
            retries: metrics::counter!(t::DISPATCH_RETRIES, "sink" => sink.to_owned()),
            dead: metrics::counter!(t::DISPATCH_DEAD_LETTERS, "sink" => sink.to_owned()),
            breaker: metrics::gauge!(t::DISPATCH_BREAKER_STATE, "sink" => sink.to_owned()),
            backlog: metrics::gauge!(t::DISPATCH_BACKLOG, "sink" => sink.to_owned()),
            deferred: metrics::gauge!(t::DISPATCH_DEFERRED, "sink" => sink.to_owned()),
            oldest: metrics::gauge!(t::DISPATCH_OLDEST, "sink" => sink.to_owned()),
        }
    }
}

pub(crate) struct Dispatcher;

pub(crate) struct DispatcherArgs {
    pub(crate) spec: SinkSpec,
    pub(crate) connector: Arc<dyn SinkConnector>,
    pub(crate) store: Arc<dyn SyncStore>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) backlog_total: Arc<AtomicI64>,
    pub(crate) held: super::HeldOrders,
}

pub(crate) struct DispatcherState {
    spec: SinkSpec,
    connector: Arc<dyn SinkConnector>,
    store: Arc<dyn SyncStore>,
    clock: Arc<dyn Clock>,
    /// The current limiter; replaced when the quota's share changes (cluster mode).
    limiter: tokio::sync::watch::Sender<Arc<DefaultDirectRateLimiter>>,
    breaker: Breaker,
    metrics: SinkMetrics,
    /// Per order, its syncs in row order; the head is the next to send.
    queues: HashMap<Arc<str>, VecDeque<PendingSync>>,
    /// Orders whose head may be sent now.
    ready: VecDeque<Arc<str>>,
    /// Orders whose head waits for its retry time.
    delayed: BTreeSet<(Millis, Arc<str>)>,
    /// Orders with a send in flight.
    busy: HashSet<Arc<str>>,
    /// Rows in flight → their order.
    in_flight: HashMap<i64, Arc<str>>,
    /// Pending rows held in memory.
    held: HashSet<i64>,
    loaded_max_row: i64,
    notified_max_row: i64,
    behind: bool,
    paging: bool,
    backlog: i64,
    backlog_total: Arc<AtomicI64>,
    delivered: u64,
    dead: u64,
    /// Orders on hold (set by their actors).
    on_hold: super::HeldOrders,
    /// Orders whose syncs wait for their hold's release.
    parked: HashSet<Arc<str>>,
    /// Orders whose syncs are another node's to send (see `SinkConnector::defers`).
    deferred: HashMap<Arc<str>, Deferred>,
    /// Rows of deferred orders taken out of `held` and `backlog`.
    deferred_rows: usize,
    /// Head rows of deferred orders being checked for having been settled elsewhere.
    checking: HashMap<i64, Arc<str>>,
    last_deferred_check: Instant,
}

impl Actor for Dispatcher {
    type Msg = DispatchMsg;
    type State = DispatcherState;
    type Arguments = DispatcherArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<DispatchMsg>,
        args: DispatcherArgs,
    ) -> Result<DispatcherState, ActorProcessingErr> {
        let backlog = args.store.pending_count(&args.spec.name)? as i64;
        args.backlog_total.fetch_add(backlog, Ordering::Relaxed);
        myself.send_interval(TICK, || DispatchMsg::Tick);
        let limiter =
            tokio::sync::watch::Sender::new(Arc::new(RateLimiter::direct(args.spec.quota(1))));
        Ok(DispatcherState {
            breaker: Breaker::new(args.spec.breaker_threshold, args.spec.breaker_cooldown),
            metrics: SinkMetrics::new(&args.spec),
            spec: args.spec,
            connector: args.connector,
            store: args.store,
            clock: args.clock,
            limiter,
            queues: HashMap::new(),
            ready: VecDeque::new(),
            delayed: BTreeSet::new(),
            busy: HashSet::new(),
            in_flight: HashMap::new(),
            held: HashSet::new(),
            loaded_max_row: 0,
            notified_max_row: 0,
            behind: true,
            paging: false,
            backlog,
            backlog_total: args.backlog_total,
            delivered: 0,
            dead: 0,
            on_hold: args.held,
            parked: HashSet::new(),
            deferred: HashMap::new(),
            deferred_rows: 0,
            checking: HashMap::new(),
            last_deferred_check: Instant::now(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<DispatchMsg>,
        message: DispatchMsg,
        state: &mut DispatcherState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            DispatchMsg::New(syncs) => state.new_syncs(syncs),
            DispatchMsg::Replay(sync) => {
                state.add_backlog(1);
                state.hold(sync);
            }
            DispatchMsg::Paged(page) => state.paged(page),
            DispatchMsg::Done {
                row,
                delivery,
                elapsed,
            } => state.done(row, delivery, elapsed, true),
            DispatchMsg::Tick => state.tick(&myself),
            DispatchMsg::Checked { row, settled } => state.checked(row, settled),
            DispatchMsg::Deferred { row } => {
                if let Some(order) = state.in_flight.remove(&row) {
                    state.busy.remove(&order);
                    state.breaker.release();
                    state.defer(order);
                }
            }
            DispatchMsg::Share(share) => {
                // Sends already waiting on the old limiter wait on this one too (see pump).
                state
                    .limiter
                    .send_replace(Arc::new(RateLimiter::direct(state.spec.quota(share))));
                metrics::gauge!(t::DISPATCH_QUOTA, "sink" => state.spec.name.clone())
                    .set(state.spec.per_second(share));
            }
            DispatchMsg::Status(reply) => {
                let _ = reply.send(SinkStatus {
                    backlog: state.backlog,
                    in_flight: state.in_flight.len(),
                    breaker: state.breaker.gauge(),
                    delivered: state.delivered,
                    dead: state.dead,
                    deferred: state.deferred_rows,
                });
            }
        }
        state.pump(&myself);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<DispatchMsg>,
        state: &mut DispatcherState,
    ) -> Result<(), ActorProcessingErr> {
        state
            .backlog_total
            .fetch_sub(state.backlog, Ordering::Relaxed);
        Ok(())
    }
}

impl DispatcherState {
    fn now(&self) -> Millis {
        self.clock.now_ms()
    }

    fn add_backlog(&mut self, delta: i64) {
        self.backlog += delta;
        self.backlog_total.fetch_add(delta, Ordering::Relaxed);
    }

    fn new_syncs(&mut self, syncs: Vec<PendingSync>) {
        self.add_backlog(syncs.len() as i64);
        if let Some(max) = syncs.iter().map(|s| s.row).max() {
            self.notified_max_row = self.notified_max_row.max(max);
        }
        // Once behind, everything newer stays on disk until paging catches up, so that no
        // order's later sync overtakes an earlier one still on disk.
        if self.behind || self.held.len() + syncs.len() > self.spec.window {
            self.behind = true;
            return;
        }
        for sync in syncs {
            if sync.row > self.loaded_max_row {
                self.loaded_max_row = sync.row;
                self.hold(sync);
            }
        }
    }

    fn paged(&mut self, page: Result<Vec<PendingSync>, StoreError>) {
        self.paging = false;
        let page = match page {
            Ok(page) => page,
            Err(err) => {
                tracing::error!(sink = %self.spec.name, error = %err, "cannot read the outbox; will retry");
                return;
            }
        };
        let complete = page.len() < PAGE;
        for sync in page {
            if sync.row > self.loaded_max_row {
                self.loaded_max_row = sync.row;
                self.hold(sync);
            }
        }
        if complete && self.loaded_max_row >= self.notified_max_row {
            self.behind = false;
        }
    }

    /// Takes a pending sync into memory.
    fn hold(&mut self, sync: PendingSync) {
        if let Some(why) = &sync.unreadable {
            self.dead_letter_unreadable(&sync, why);
            return;
        }
        let order: Arc<str> = sync.intent.order.as_str().into();
        if let Some(deferred) = self.deferred.get_mut(&order) {
            // A later sync of an order held back for another node (decided here just before
            // its partition moved) is held back with the rest: out of the window and backlog.
            deferred.uncounted += 1;
            self.deferred_rows += 1;
            self.add_backlog(-1);
            self.queues.entry(order).or_default().push_back(sync);
            return;
        }
        self.held.insert(sync.row);
        let queue = self.queues.entry(order.clone()).or_default();
        let was_empty = queue.is_empty();
        queue.push_back(sync);
        if was_empty && !self.busy.contains(&order) {
            self.schedule_head(order);
        }
    }

    /// A row the outbox cannot read back whole is dead-lettered with why: never sent partial,
    /// and not left pending where it would hold up its order's later syncs (or, unreadable on
    /// every page, the sink).
    fn dead_letter_unreadable(&mut self, sync: &PendingSync, why: &str) {
        tracing::error!(
            sink = %self.spec.name,
            row = sync.row,
            sync = %sync.intent.id,
            error = why,
            "a pending sync cannot be read back from the outbox: dead-lettered"
        );
        self.store.record_attempt(SyncUpdate {
            row: sync.row,
            status: SyncStatus::Dead,
            attempts: sync.attempts,
            not_before: 0,
            last_error: Some(format!("cannot be read back from the outbox: {why}")),
            at: self.now(),
        });
        self.add_backlog(-1);
        self.dead += 1;
        self.metrics.dead.increment(1);
        crate::digest::note(
            crate::digest::Warning::DeadLettered,
            &self.spec.name,
            &sync.intent.id,
        );
    }

    /// Puts the order's head in the ready queue, or among the delayed ones.
    fn schedule_head(&mut self, order: Arc<str>) {
        let Some(head) = self.queues.get(&order).and_then(VecDeque::front) else {
            self.queues.remove(&order);
            return;
        };
        if head.not_before > self.now() {
            self.delayed.insert((head.not_before, order));
        } else {
            self.ready.push_back(order);
        }
    }

    fn tick(&mut self, myself: &ActorRef<DispatchMsg>) {
        let now = self.now();
        if !self.parked.is_empty() {
            let released: Vec<Arc<str>> = self
                .parked
                .iter()
                .filter(|order| !self.on_hold.holds(order, &self.spec.name))
                .cloned()
                .collect();
            for order in released {
                self.parked.remove(&order);
                self.schedule_head(order);
            }
        }
        if !self.deferred.is_empty() {
            self.recheck_deferred(myself);
        }
        while let Some((at, _)) = self.delayed.first() {
            if *at > now {
                break;
            }
            let (_, order) = self.delayed.pop_first().expect("first exists");
            self.ready.push_back(order);
        }
        if self.behind && !self.paging && self.held.len() < self.spec.window {
            self.paging = true;
            let store = self.store.clone();
            let sink = self.spec.name.clone();
            let after = self.loaded_max_row;
            let limit = PAGE.min(self.spec.window - self.held.len());
            let myself = myself.clone();
            tokio::task::spawn_blocking(move || {
                let page = store.pending_page(&sink, after, limit.max(1));
                let _ = myself.cast(DispatchMsg::Paged(page));
            });
        }
        self.breaker.state(now);
        self.metrics.breaker.set(self.breaker.gauge());
        self.metrics.backlog.set(self.backlog as f64);
        self.metrics.deferred.set(self.deferred_rows as f64);
        let oldest = self
            .queues
            .iter()
            .filter(|(order, _)| !self.deferred.contains_key(*order))
            .filter_map(|(_, queue)| queue.front())
            .map(|s| s.created_at)
            .min();
        self.metrics
            .oldest
            .set(oldest.map_or(0.0, |at| (now - at).max(0) as f64 / 1000.0));
    }

    /// Starts sends while there is room, work and the breaker allows.
    fn pump(&mut self, myself: &ActorRef<DispatchMsg>) {
        while self.in_flight.len() < self.spec.max_in_flight {
            let Some(order) = self.ready.pop_front() else {
                return;
            };
            let Some(head) = self.queues.get(&order).and_then(VecDeque::front).cloned() else {
                continue;
            };
            // An order on hold keeps its syncs until released (checked at every tick).
            if self.on_hold.holds(&order, &self.spec.name) {
                self.parked.insert(order);
                continue;
            }
            // Another node's to send (its partition moved): none goes out from here.
            if self.connector.defers(&order) {
                self.defer(order);
                continue;
            }
            // Only once there is something to send: a half-open breaker's single probe slot
            // taken without a send would never be given back.
            if !self.breaker.try_acquire(self.now()) {
                self.ready.push_front(order);
                return;
            }
            self.busy.insert(order.clone());
            self.in_flight.insert(head.row, order);
            let mut limiter = self.limiter.subscribe();
            let connector = self.connector.clone();
            let timeout = self.spec.timeout;
            let throttled = self.metrics.throttled_waits.clone();
            let myself = myself.clone();
            tokio::spawn(async move {
                if let Some(check) = connector.settled(&head.intent)
                    && check.await
                {
                    let _ = myself.cast(DispatchMsg::Done {
                        row: head.row,
                        delivery: Delivery::Settled,
                        elapsed: Duration::ZERO,
                    });
                    return;
                }
                let waited = Instant::now();
                // A send goes once the limiter current at that moment lets it: one replaced
                // while it waited (a new quota share) is waited on too, so the old and the new
                // never pace sends side by side.
                loop {
                    let current = limiter.borrow_and_update().clone();
                    current.until_ready().await;
                    if !limiter.has_changed().unwrap_or(false) {
                        break;
                    }
                }
                if waited.elapsed() > Duration::from_millis(1) {
                    throttled.increment(1);
                    // The partition may have moved while the send waited for the quota.
                    if connector.defers(&head.intent.order) {
                        let _ = myself.cast(DispatchMsg::Deferred { row: head.row });
                        return;
                    }
                }
                let started = Instant::now();
                let row = head.row;
                let attempt = head.attempts + 1;
                let delivery = match tokio::time::timeout(
                    timeout + Duration::from_secs(1),
                    connector.deliver(head.intent, attempt),
                )
                .await
                {
                    Ok(delivery) => delivery,
                    Err(_) => Delivery::Failed {
                        retry_after: None,
                        detail: format!("no answer within {timeout:?}"),
                    },
                };
                let _ = myself.cast(DispatchMsg::Done {
                    row,
                    delivery,
                    elapsed: started.elapsed(),
                });
            });
        }
    }

    /// Holds `order`'s syncs back for the node that owns its partition: they leave the window
    /// and the backlog (they are not this node's work: they must not page this node's own syncs
    /// out or hold back its ingest) until the partition comes back or the owner settles them.
    fn defer(&mut self, order: Arc<str>) {
        let rows: Vec<i64> = self
            .queues
            .get(&order)
            .map(|queue| queue.iter().map(|sync| sync.row).collect())
            .unwrap_or_default();
        for row in &rows {
            self.held.remove(row);
        }
        self.add_backlog(-(rows.len() as i64));
        self.deferred_rows += rows.len();
        self.deferred.insert(
            order,
            Deferred {
                checked: None,
                uncounted: rows.len(),
            },
        );
    }

    /// Counts a deferred order's rows again (it is this node's again, or its head is done).
    fn count_again(&mut self, order: &Arc<str>) {
        let Some(deferred) = self.deferred.remove(order) else {
            return;
        };
        let rows: Vec<i64> = self
            .queues
            .get(order)
            .map(|queue| {
                queue
                    .iter()
                    .take(deferred.uncounted)
                    .map(|sync| sync.row)
                    .collect()
            })
            .unwrap_or_default();
        self.held.extend(rows.iter().copied());
        self.add_backlog(rows.len() as i64);
        self.deferred_rows -= deferred.uncounted;
    }

    /// Deferred orders that are this node's again are scheduled; the others' heads are asked
    /// now and then (those asked longest ago first) whether their owner settled them.
    fn recheck_deferred(&mut self, myself: &ActorRef<DispatchMsg>) {
        let checking: HashSet<Arc<str>> = self.checking.values().cloned().collect();
        let back: Vec<Arc<str>> = self
            .deferred
            .keys()
            .filter(|order| !checking.contains(*order) && !self.connector.defers(order))
            .cloned()
            .collect();
        for order in back {
            self.count_again(&order);
            self.schedule_head(order);
        }
        if self.last_deferred_check.elapsed() < DEFERRED_CHECK {
            return;
        }
        let now = Instant::now();
        self.last_deferred_check = now;
        let mut due: Vec<(Option<Instant>, Arc<str>)> = self
            .deferred
            .iter()
            .filter(|(order, _)| !checking.contains(*order))
            .map(|(order, deferred)| (deferred.checked, order.clone()))
            .collect();
        if due.len() > DEFERRED_CHECKS_PER_ROUND {
            due.select_nth_unstable(DEFERRED_CHECKS_PER_ROUND);
            due.truncate(DEFERRED_CHECKS_PER_ROUND);
        }
        for (_, order) in due {
            let Some(head) = self.queues.get(&order).and_then(VecDeque::front) else {
                continue;
            };
            let Some(check) = self.connector.settled(&head.intent) else {
                continue;
            };
            let (row, myself) = (head.row, myself.clone());
            if let Some(deferred) = self.deferred.get_mut(&order) {
                deferred.checked = Some(now);
            }
            self.checking.insert(row, order);
            tokio::spawn(async move {
                let settled = check.await;
                let _ = myself.cast(DispatchMsg::Checked { row, settled });
            });
        }
    }

    /// The answer for a deferred order's head: settled by its owner, it is recorded delivered
    /// here too (no send) and the order's next sync comes up (and is deferred in turn).
    fn checked(&mut self, row: i64, settled: bool) {
        let Some(order) = self.checking.remove(&row) else {
            return;
        };
        let is_head = self
            .queues
            .get(&order)
            .and_then(VecDeque::front)
            .is_some_and(|head| head.row == row);
        if !settled || !is_head || !self.deferred.contains_key(&order) {
            return;
        }
        self.count_again(&order);
        self.busy.insert(order.clone());
        self.in_flight.insert(row, order);
        self.done(row, Delivery::Settled, Duration::ZERO, false);
    }

    /// The end of `row`'s send (`sent`: it took a breaker slot) or of its check.
    fn done(&mut self, row: i64, delivery: Delivery, elapsed: Duration, sent: bool) {
        let Some(order) = self.in_flight.remove(&row) else {
            return;
        };
        self.busy.remove(&order);
        let settled = delivery == Delivery::Settled;
        if !settled {
            self.metrics.latency.record(elapsed.as_secs_f64());
        }
        if let Some(counter) = self.metrics.outcomes.get(delivery.label()) {
            counter.increment(1);
        }
        let now = self.now();
        // Every answer reports to the breaker, before anything else: a half-open probe whose
        // result went unreported would hold the sink back for good. A refusal or a 429 comes
        // from a sink that is up.
        match &delivery {
            Delivery::Failed { .. } => self.breaker.failure(now),
            Delivery::Delivered | Delivery::Rejected { .. } | Delivery::Throttled { .. } => {
                self.breaker.success()
            }
            Delivery::Settled if sent => self.breaker.release(),
            Delivery::Settled => {}
        }
        let Some(queue) = self.queues.get_mut(&order) else {
            return;
        };
        let Some(head) = queue.front_mut() else {
            return;
        };
        let attempts = head.attempts + u32::from(!settled);
        let (status, error, retry_after) = match delivery {
            Delivery::Delivered | Delivery::Settled => (SyncStatus::Delivered, None, None),
            Delivery::Rejected { detail } => (SyncStatus::Dead, Some(detail), None),
            Delivery::Throttled {
                retry_after,
                detail,
            }
            | Delivery::Failed {
                retry_after,
                detail,
            } => (SyncStatus::Pending, Some(detail), Some(retry_after)),
        };
        let status = if status == SyncStatus::Pending && attempts >= self.spec.retry.max_attempts {
            SyncStatus::Dead
        } else {
            status
        };
        let not_before = match (status, retry_after) {
            (SyncStatus::Pending, Some(after)) => {
                let wait = self.spec.retry.backoff(attempts, after, fastrand::f64());
                now + wait.as_millis() as Millis
            }
            _ => 0,
        };
        self.store.record_attempt(SyncUpdate {
            row,
            status,
            attempts,
            not_before,
            last_error: error.clone(),
            at: now,
        });
        match status {
            SyncStatus::Pending => {
                self.metrics.retries.increment(1);
                crate::digest::note(
                    crate::digest::Warning::Retried,
                    &self.spec.name,
                    &head.intent.id,
                );
                head.attempts = attempts;
                head.not_before = not_before;
                self.delayed.insert((not_before, order));
            }
            SyncStatus::Delivered | SyncStatus::Dead => {
                let sync_id = queue.pop_front().map(|head| head.intent.id.clone());
                self.held.remove(&row);
                self.add_backlog(-1);
                if status == SyncStatus::Dead {
                    self.dead += 1;
                    self.metrics.dead.increment(1);
                    tracing::debug!(sink = %self.spec.name, row, error = ?error, "sync dead-lettered");
                    crate::digest::note(
                        crate::digest::Warning::DeadLettered,
                        &self.spec.name,
                        sync_id.as_deref().unwrap_or_default(),
                    );
                } else {
                    self.delivered += 1;
                }
                self.schedule_head(order);
            }
        }
    }
}
