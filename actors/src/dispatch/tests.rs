//! Dispatcher tests against an in-memory outbox and a scripted sink.

use super::*;
use crate::shard::SystemClock;
use crate::store::StoreError;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

/// A stored sync, its status and its last error.
type OutboxRow = (PendingSync, SyncStatus, Option<String>);

#[derive(Default)]
struct MemoryOutbox {
    rows: Mutex<BTreeMap<i64, OutboxRow>>,
}

impl MemoryOutbox {
    fn add(&self, row: i64, order: &str, seq: u64) -> PendingSync {
        let sync = PendingSync {
            row,
            intent: std::sync::Arc::new(SyncIntent {
                id: SyncIntent::key(order, seq, "erp"),
                sink: "erp".into(),
                order: order.into(),
                seq,
                rule: "r".into(),
                payload: serde_json::json!({ "seq": seq }),
                fields: None,
                contents: None,
            }),
            attempts: 0,
            not_before: 0,
            created_at: 0,
            unreadable: None,
        };
        self.rows
            .lock()
            .unwrap()
            .insert(row, (sync.clone(), SyncStatus::Pending, None));
        sync
    }

    fn statuses(&self) -> BTreeMap<SyncStatusKey, usize> {
        let mut counts = BTreeMap::new();
        for (_, status, _) in self.rows.lock().unwrap().values() {
            *counts.entry(SyncStatusKey(status.as_str())).or_default() += 1;
        }
        counts
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct SyncStatusKey(&'static str);

impl SyncStore for MemoryOutbox {
    fn pending_page(
        &self,
        _sink: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<PendingSync>, StoreError> {
        Ok(self
            .rows
            .lock()
            .unwrap()
            .range(after + 1..)
            .filter(|(_, (_, status, _))| *status == SyncStatus::Pending)
            .take(limit)
            .map(|(_, (sync, _, _))| sync.clone())
            .collect())
    }

    fn pending_count(&self, _sink: &str) -> Result<u64, StoreError> {
        Ok(self
            .rows
            .lock()
            .unwrap()
            .values()
            .filter(|(_, status, _)| *status == SyncStatus::Pending)
            .count() as u64)
    }

    fn record_attempt(&self, update: SyncUpdate) {
        if let Some(entry) = self.rows.lock().unwrap().get_mut(&update.row) {
            entry.1 = update.status;
            entry.2 = update.last_error;
            entry.0.attempts = update.attempts;
        }
    }
}

type Script = dyn Fn(&SyncIntent, u32) -> Delivery + Send + Sync;

/// A sink that answers by script and records every attempt.
struct ScriptedSink {
    script: Box<Script>,
    attempts: Mutex<Vec<(String, u32, Instant)>>,
    delivered: Mutex<Vec<SyncIntent>>,
}

impl ScriptedSink {
    fn new(script: impl Fn(&SyncIntent, u32) -> Delivery + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(ScriptedSink {
            script: Box::new(script),
            attempts: Mutex::default(),
            delivered: Mutex::default(),
        })
    }

    /// The sync ids of every attempt so far, in order.
    fn attempted(&self) -> Vec<String> {
        self.attempts
            .lock()
            .unwrap()
            .iter()
            .map(|a| a.0.clone())
            .collect()
    }
}

impl SinkConnector for ScriptedSink {
    fn deliver(&self, sync: std::sync::Arc<SyncIntent>, attempt: u32) -> DeliveryFuture {
        let answer = (self.script)(&sync, attempt);
        self.attempts
            .lock()
            .unwrap()
            .push((sync.id.clone(), attempt, Instant::now()));
        if answer == Delivery::Delivered {
            self.delivered.lock().unwrap().push((*sync).clone());
        }
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            answer
        })
    }
}

fn spec(rate_per_second: u32) -> SinkSpec {
    SinkSpec {
        name: "erp".into(),
        rate_count: rate_per_second,
        rate_per: Duration::from_secs(1),
        burst: 1,
        max_in_flight: 4,
        timeout: Duration::from_secs(2),
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            max_attempts: 50,
        },
        breaker_threshold: 1000,
        breaker_cooldown: Duration::from_millis(100),
        window: DEFAULT_WINDOW,
        holds_back_ingest: true,
    }
}

async fn start(spec: SinkSpec, sink: Arc<ScriptedSink>, outbox: Arc<MemoryOutbox>) -> Dispatch {
    Dispatch::start(
        vec![(spec, sink as Arc<dyn SinkConnector>)],
        outbox,
        Arc::new(SystemClock),
    )
    .await
    .unwrap()
}

async fn until_backlog_empty(dispatch: &Dispatch, limit: Duration) {
    let started = Instant::now();
    while dispatch.status("erp").await.unwrap().backlog > 0 {
        assert!(
            started.elapsed() < limit,
            "backlog not drained: {:?}",
            dispatch.status("erp").await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Each order's deliveries are in transition order.
fn assert_fifo(delivered: &[SyncIntent]) {
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    for sync in delivered {
        let previous = last.insert(&sync.order, sync.seq);
        assert!(
            previous.is_none_or(|p| p < sync.seq),
            "{} delivered out of order",
            sync.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sync_is_delivered_in_order_per_order_and_never_above_the_rate() {
    let outbox = Arc::new(MemoryOutbox::default());
    let rate = 200;
    // A flaky sink: the first attempt of every third sync fails, every fifth is throttled.
    let sink = ScriptedSink::new(
        |sync, attempt| match (sync.seq % 3, sync.seq % 5, attempt) {
            (0, _, 1) => Delivery::Failed {
                retry_after: None,
                detail: "503".into(),
            },
            (_, 0, 1) => Delivery::Throttled {
                retry_after: Some(Duration::from_millis(20)),
                detail: "429".into(),
            },
            _ => Delivery::Delivered,
        },
    );
    let dispatch = start(spec(rate), sink.clone(), outbox.clone()).await;
    let mut row = 0;
    for round in 1..=10u64 {
        let batch: Vec<PendingSync> = (0..6)
            .map(|order| {
                row += 1;
                outbox.add(row, &format!("o:{order}"), round)
            })
            .collect();
        dispatch.notify(batch);
    }
    until_backlog_empty(&dispatch, Duration::from_secs(10)).await;
    let delivered = sink.delivered.lock().unwrap().clone();
    assert_eq!(delivered.len(), 60, "every sync delivered once");
    assert_fifo(&delivered);
    let attempts = sink.attempts.lock().unwrap().clone();
    let first = attempts.first().unwrap().2;
    let span = attempts
        .last()
        .unwrap()
        .2
        .duration_since(first)
        .as_secs_f64();
    let allowed = 1.0 + span * rate as f64 * 1.05;
    assert!(
        attempts.len() as f64 <= allowed,
        "{} attempts in {span:.3}s exceed {rate}/s",
        attempts.len()
    );
    assert_eq!(outbox.statuses()[&SyncStatusKey("delivered")], 60);
    dispatch.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_exhausted_syncs_are_dead_lettered_and_the_rest_flow() {
    let outbox = Arc::new(MemoryOutbox::default());
    let sink = ScriptedSink::new(|sync, _| match sync.order.as_str() {
        "o:refused" => Delivery::Rejected {
            detail: "400 bad customer".into(),
        },
        "o:broken" => Delivery::Failed {
            retry_after: None,
            detail: "500".into(),
        },
        _ => Delivery::Delivered,
    });
    let mut spec = spec(1000);
    spec.retry.max_attempts = 3;
    let dispatch = start(spec, sink.clone(), outbox.clone()).await;
    dispatch.notify(vec![
        outbox.add(1, "o:refused", 1),
        outbox.add(2, "o:broken", 1),
        outbox.add(3, "o:fine", 1),
        outbox.add(4, "o:refused", 2),
    ]);
    until_backlog_empty(&dispatch, Duration::from_secs(5)).await;
    let status = dispatch.status("erp").await.unwrap();
    assert_eq!((status.delivered, status.dead), (1, 3));
    {
        let rows = outbox.rows.lock().unwrap();
        assert_eq!(rows[&1].2.as_deref(), Some("400 bad customer"));
        assert_eq!(rows[&2].0.attempts, 3, "dead after max_attempts");
        assert_eq!(rows[&3].1, SyncStatus::Delivered);
    }
    dispatch.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_holds_back_during_an_outage_and_everything_flows_after() {
    let outbox = Arc::new(MemoryOutbox::default());
    let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sink = {
        let down = down.clone();
        ScriptedSink::new(move |_, _| {
            if down.load(Ordering::Relaxed) {
                Delivery::Failed {
                    retry_after: None,
                    detail: "connection refused".into(),
                }
            } else {
                Delivery::Delivered
            }
        })
    };
    let mut spec = spec(1000);
    spec.breaker_threshold = 3;
    spec.breaker_cooldown = Duration::from_millis(200);
    let dispatch = start(spec, sink.clone(), outbox.clone()).await;
    dispatch.notify(
        (1..=20)
            .map(|i| outbox.add(i, &format!("o:{i}"), 1))
            .collect(),
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let during = sink.attempts.lock().unwrap().len();
    // Without a breaker 20 syncs retried every 10–40 ms would make hundreds of attempts.
    assert!(
        during <= 3 + 4 + 1 + 6,
        "{during} attempts while the sink was down"
    );
    let breaker = dispatch.status("erp").await.unwrap().breaker;
    assert!(
        breaker > 0.0,
        "open or half-open between probes, got {breaker}"
    );
    down.store(false, Ordering::Relaxed);
    until_backlog_empty(&dispatch, Duration::from_secs(5)).await;
    assert_eq!(sink.delivered.lock().unwrap().len(), 20);
    assert_eq!(dispatch.status("erp").await.unwrap().breaker, 0.0);
    dispatch.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_window_pages_from_disk_without_reordering() {
    let outbox = Arc::new(MemoryOutbox::default());
    for i in 0..40i64 {
        outbox.add(i + 1, &format!("o:{}", i % 4), i as u64 / 4 + 1);
    }
    let sink = ScriptedSink::new(|_, _| Delivery::Delivered);
    let mut spec = spec(2000);
    spec.window = 5;
    let dispatch = start(spec, sink.clone(), outbox.clone()).await;
    // New syncs while paging must not overtake older ones of the same order still on disk.
    let late: Vec<PendingSync> = (0..4)
        .map(|o| outbox.add(41 + o, &format!("o:{o}"), 11))
        .collect();
    dispatch.notify(late);
    until_backlog_empty(&dispatch, Duration::from_secs(5)).await;
    let delivered = sink.delivered.lock().unwrap().clone();
    assert_eq!(delivered.len(), 44);
    assert_fifo(&delivered);
    dispatch.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_answered_with_429_releases_the_breaker() {
    // The sink is down (opening the breaker), then its first answer after the cool-down, the
    // half-open probe, is a 429. That answer must be reported to the breaker, or the sink
    // would never be tried again.
    let outbox = Arc::new(MemoryOutbox::default());
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sink = {
        let calls = calls.clone();
        ScriptedSink::new(move |_, _| match calls.fetch_add(1, Ordering::Relaxed) {
            0..3 => Delivery::Failed {
                retry_after: None,
                detail: "503".into(),
            },
            3 => Delivery::Throttled {
                retry_after: Some(Duration::from_millis(10)),
                detail: "429".into(),
            },
            _ => Delivery::Delivered,
        })
    };
    let mut spec = spec(1000);
    spec.max_in_flight = 1;
    spec.breaker_threshold = 3;
    spec.breaker_cooldown = Duration::from_millis(100);
    let dispatch = start(spec, sink.clone(), outbox.clone()).await;
    dispatch.notify(
        (1..=10)
            .map(|i| outbox.add(i, &format!("o:{i}"), 1))
            .collect(),
    );
    until_backlog_empty(&dispatch, Duration::from_secs(5)).await;
    assert_eq!(sink.delivered.lock().unwrap().len(), 10);
    assert_eq!(dispatch.status("erp").await.unwrap().breaker, 0.0);
    dispatch.stop().await;
}

/// A connector that knows which syncs another node already settled (cluster mode).
struct SettledElsewhere {
    sink: Arc<ScriptedSink>,
    elsewhere: std::collections::HashSet<String>,
}

impl SinkConnector for SettledElsewhere {
    fn deliver(&self, sync: std::sync::Arc<SyncIntent>, attempt: u32) -> DeliveryFuture {
        self.sink.deliver(sync, attempt)
    }

    fn settled(&self, sync: &SyncIntent) -> Option<connector::SettledFuture> {
        let known = self.elsewhere.contains(&sync.id);
        Some(Box::pin(async move { known }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_settled_on_another_node_is_recorded_without_a_send_or_quota() {
    // 40 syncs, 30 of them already delivered by the node that owned their partition before;
    // at 10/s the 30 would take three seconds of quota if they were sent again.
    let outbox = Arc::new(MemoryOutbox::default());
    let mut elsewhere = std::collections::HashSet::new();
    for i in 0..40i64 {
        let sync = outbox.add(i + 1, &format!("o:{i}"), 1);
        if i < 30 {
            elsewhere.insert(sync.intent.id.clone());
        }
    }
    let sink = ScriptedSink::new(|_, _| Delivery::Delivered);
    let connector = Arc::new(SettledElsewhere {
        sink: sink.clone(),
        elsewhere,
    });
    let started = Instant::now();
    let dispatch = Dispatch::start(
        vec![(spec(10), connector as Arc<dyn SinkConnector>)],
        outbox.clone(),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    until_backlog_empty(&dispatch, Duration::from_secs(5)).await;
    let sent = sink.attempted();
    assert_eq!(
        sent.len(),
        10,
        "only the ten nobody settled are sent: {sent:?}"
    );
    let order_number = |id: &str| id.split(':').nth(1).unwrap().parse::<u32>().unwrap();
    assert!(sent.iter().all(|id| order_number(id) >= 30), "{sent:?}");
    assert_eq!(
        outbox.statuses().get(&SyncStatusKey("delivered")),
        Some(&40)
    );
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "settled syncs used no quota: {:?}",
        started.elapsed()
    );
    dispatch.stop().await;
}

/// A connector for a node that does not hold some orders' partitions (cluster mode): their
/// syncs are another node's to send, and that node settles some of them.
struct OwnedElsewhere {
    sink: Arc<ScriptedSink>,
    /// Orders whose partition another node holds.
    elsewhere: Mutex<std::collections::HashSet<String>>,
    /// Syncs that node settled.
    settled_there: Mutex<std::collections::HashSet<String>>,
}

impl SinkConnector for OwnedElsewhere {
    fn deliver(&self, sync: std::sync::Arc<SyncIntent>, attempt: u32) -> DeliveryFuture {
        self.sink.deliver(sync, attempt)
    }

    fn settled(&self, sync: &SyncIntent) -> Option<connector::SettledFuture> {
        let known = self.settled_there.lock().unwrap().contains(&sync.id);
        Some(Box::pin(async move { known }))
    }

    fn defers(&self, order: &str) -> bool {
        self.elsewhere.lock().unwrap().contains(order)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_of_orders_another_node_owns_are_never_sent_and_let_go_once_it_settles_them() {
    // o:0..o:9 belong to partitions another node holds; o:10..o:19 are this node's. The other
    // node settles o:0's two syncs and those of o:1..o:4 meanwhile.
    let outbox = Arc::new(MemoryOutbox::default());
    let mut settled_there = std::collections::HashSet::new();
    let mut row = 0;
    for i in 0..20 {
        let order = format!("o:{i}");
        for seq in 1..=if i == 0 { 2 } else { 1 } {
            row += 1;
            let sync = outbox.add(row, &order, seq);
            if i < 5 {
                settled_there.insert(sync.intent.id.clone());
            }
        }
    }
    let sink = ScriptedSink::new(|_, _| Delivery::Delivered);
    let connector = Arc::new(OwnedElsewhere {
        sink: sink.clone(),
        elsewhere: Mutex::new((0..10).map(|i| format!("o:{i}")).collect()),
        settled_there: Mutex::new(settled_there),
    });
    let dispatch = Dispatch::start(
        vec![(spec(1000), connector.clone() as Arc<dyn SinkConnector>)],
        outbox.clone(),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let sent = || sink.attempted();
    let order_number = |id: &str| id.split(':').nth(1).unwrap().parse::<u32>().unwrap();
    // The settled ones are let go (as delivered, unsent) within a few checks; the other five
    // stay back here, out of the backlog (they are another node's work).
    let started = Instant::now();
    loop {
        let status = dispatch.status("erp").await.unwrap();
        let delivered = outbox.statuses().get(&SyncStatusKey("delivered")).copied();
        if (status.backlog, status.deferred, delivered) == (0, 5, Some(16)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{status:?}, {delivered:?} delivered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A later sync of an order held back (decided here just before its partition moved) is
    // held back with it, not counted as this node's backlog.
    dispatch.notify(vec![outbox.add(row + 1, "o:7", 2)]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = dispatch.status("erp").await.unwrap();
    assert_eq!((status.backlog, status.deferred), (0, 6), "{status:?}");
    let mut sent_now = sent();
    sent_now.sort_by_key(|id| order_number(id));
    assert_eq!(
        sent_now
            .iter()
            .map(|id| order_number(id))
            .collect::<Vec<_>>(),
        (10..20).collect::<Vec<_>>(),
        "only this node's orders are sent"
    );
    assert_eq!(
        outbox.statuses().get(&SyncStatusKey("delivered")),
        Some(&16)
    );

    // The partition comes back: the five still pending go out from here.
    connector.elsewhere.lock().unwrap().clear();
    let started = Instant::now();
    loop {
        let status = dispatch.status("erp").await.unwrap();
        if (status.backlog, status.deferred) == (0, 0) && sent().len() == 16 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{status:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut all: Vec<u32> = sent().iter().map(|id| order_number(id)).collect();
    all.sort_unstable();
    let mut expected: Vec<u32> = (5..20).collect();
    expected.insert(3, 7);
    assert_eq!(all, expected);
    assert_eq!(
        outbox.statuses().get(&SyncStatusKey("delivered")),
        Some(&22)
    );
    dispatch.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_sinks_that_hold_back_ingest_count_in_the_backlog() {
    let outbox = Arc::new(MemoryOutbox::default());
    // A sink that never answers in time: its syncs stay pending.
    let slow = ScriptedSink::new(|_, _| Delivery::Failed {
        retry_after: Some(Duration::from_secs(60)),
        detail: "busy".into(),
    });
    let mut trailing = spec(100);
    trailing.holds_back_ingest = false;
    let dispatch = start(trailing, slow, outbox.clone()).await;
    let batch: Vec<PendingSync> = (1..=5)
        .map(|row| outbox.add(row, &format!("o:{row}"), 1))
        .collect();
    dispatch.notify(batch);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(dispatch.status("erp").await.unwrap().backlog, 5);
    assert_eq!(
        dispatch.backlog(),
        0,
        "its backlog does not hold back ingest"
    );
    dispatch.stop().await;

    let outbox = Arc::new(MemoryOutbox::default());
    let slow = ScriptedSink::new(|_, _| Delivery::Failed {
        retry_after: Some(Duration::from_secs(60)),
        detail: "busy".into(),
    });
    let dispatch = start(spec(100), slow, outbox.clone()).await;
    let batch: Vec<PendingSync> = (1..=5)
        .map(|row| outbox.add(row, &format!("o:{row}"), 1))
        .collect();
    dispatch.notify(batch);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(dispatch.backlog(), 5);
    dispatch.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_orders_syncs_wait_for_its_release_and_then_go_in_order() {
    let outbox = Arc::new(MemoryOutbox::default());
    let sink = ScriptedSink::new(|_, _| Delivery::Delivered);
    let held = crate::dispatch::HeldOrders::default();
    held.set("o:held", true);
    let dispatch = Dispatch::start_with_holds(
        vec![(spec(1000), sink.clone() as Arc<dyn SinkConnector>)],
        outbox.clone(),
        Arc::new(SystemClock),
        held.clone(),
    )
    .await
    .unwrap();
    let batch = vec![
        outbox.add(1, "o:held", 1),
        outbox.add(2, "o:free", 1),
        outbox.add(3, "o:held", 2),
    ];
    dispatch.notify(batch);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let delivered: Vec<String> = sink
        .delivered
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.order.clone())
        .collect();
    assert_eq!(delivered, ["o:free"], "the held order's syncs wait");
    held.set("o:held", false);
    until_backlog_empty(&dispatch, Duration::from_secs(5)).await;
    let delivered = sink.delivered.lock().unwrap().clone();
    assert_eq!(delivered.len(), 3);
    assert_fifo(&delivered);
    dispatch.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_that_names_sinks_keeps_back_only_their_syncs() {
    let outbox = Arc::new(MemoryOutbox::default());
    let sink = ScriptedSink::new(|_, _| Delivery::Delivered);
    let held = crate::dispatch::HeldOrders::default();
    // Held for the WMS only: this dispatcher is the ERP's, so the syncs go.
    held.hold("o:held", Some(&["wms".to_owned()]));
    assert!(held.holds("o:held", "wms") && !held.holds("o:held", "erp"));
    let dispatch = Dispatch::start_with_holds(
        vec![(spec(1000), sink.clone() as Arc<dyn SinkConnector>)],
        outbox.clone(),
        Arc::new(SystemClock),
        held.clone(),
    )
    .await
    .unwrap();
    dispatch.notify(vec![outbox.add(1, "o:held", 1)]);
    until_backlog_empty(&dispatch, Duration::from_secs(5)).await;
    assert_eq!(sink.delivered.lock().unwrap().len(), 1);
    // Now held for the ERP too: the next one waits until the release.
    held.hold("o:held", Some(&["wms".to_owned(), "erp".to_owned()]));
    dispatch.notify(vec![outbox.add(2, "o:held", 2)]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.delivered.lock().unwrap().len(), 1, "held for erp");
    held.set("o:held", false);
    until_backlog_empty(&dispatch, Duration::from_secs(5)).await;
    assert_eq!(sink.delivered.lock().unwrap().len(), 2);
    dispatch.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_outbox_cannot_read_back_is_dead_lettered_and_holds_nothing_up() {
    let outbox = Arc::new(MemoryOutbox::default());
    let mut broken = outbox.add(1, "o:1", 1);
    broken.unreadable = Some("sync row 1: its contents' event 7 is not in the journal".into());
    outbox.rows.lock().unwrap().get_mut(&1).unwrap().0 = broken;
    outbox.add(2, "o:1", 2);
    outbox.add(3, "o:2", 1);
    let sink = ScriptedSink::new(|_, _| Delivery::Delivered);
    let dispatch = Dispatch::start(
        vec![(spec(1000), sink.clone() as Arc<dyn SinkConnector>)],
        outbox.clone(),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let started = Instant::now();
    loop {
        let status = dispatch.status("erp").await.unwrap();
        if (status.backlog, status.delivered, status.dead) == (0, 2, 1) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{status:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Never sent partial; the order's next sync and the other order's went out.
    let sent = sink.attempted();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(
        !sent.contains(&SyncIntent::key("o:1", 1, "erp")),
        "{sent:?}"
    );
    let (_, status, error) = outbox.rows.lock().unwrap()[&1].clone();
    assert_eq!(status, SyncStatus::Dead);
    assert!(
        error
            .as_deref()
            .unwrap()
            .contains("cannot be read back from the outbox: sync row 1: its contents' event 7"),
        "{error:?}"
    );
    dispatch.stop().await;
}
