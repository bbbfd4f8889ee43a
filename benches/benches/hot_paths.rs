//! orderhub's hot paths, one criterion entry point (see BENCHMARKS.md for recorded results).
#![allow(missing_docs)]

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use orderhub_actors::dispatch::{
    Delivery, DeliveryFuture, Dispatch, PendingSync, RetryPolicy, RuleSet, RuleSpec, SinkConnector,
    SinkSpec, SyncIntent, SyncUpdate,
};
use orderhub_actors::order::{
    EventAction, JournaledEvent, Order, OrderEvent, OrderPolicy, OrderState,
};
use orderhub_actors::shard::{OrderRouter, ShardConfig, SystemClock};
use orderhub_actors::store::{StoreError, SyncStore};
use serde::Deserialize;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

/// A Douyin push as the platform sends it (shape from shared/reference/protocols.md).
const DOUYIN_PUSH: &str = r#"[{"tag":"101","msg_id":"7311112222333344445","data":"{\"p_id\":4987325601234567,\"s_ids\":[4987325601234568],\"shop_id\":12345678,\"order_status\":105,\"order_type\":0,\"biz\":2,\"pay_time\":1700000000,\"pay_amount\":19900,\"update_time\":1700000001}"}]"#;

#[derive(Deserialize)]
#[allow(dead_code)]
struct PushMessage {
    tag: String,
    msg_id: String,
    data: String,
}

/// A canonical event as `POST /v1/events` receives it.
const CANONICAL_EVENT: &str = r#"{"event_id":"wms-7311112222","order":"douyin:4987325601234567","source":"wms","status":"picked","raw_status":"PICK_DONE","occurred_at":"2026-11-22T10:00:00+08:00","fields":{"warehouse":"HZ-01","operator":"w042"}}"#;

#[derive(Deserialize)]
#[allow(dead_code)]
struct CanonicalEvent {
    event_id: Option<String>,
    order: String,
    source: String,
    status: String,
    raw_status: Option<String>,
    occurred_at: Option<serde_json::Value>,
    #[serde(default)]
    fields: serde_json::Map<String, serde_json::Value>,
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_canonical_event");
    group.throughput(Throughput::Bytes(CANONICAL_EVENT.len() as u64));
    group.bench_function("simd_json", |b| {
        b.iter(|| {
            let mut bytes = CANONICAL_EVENT.as_bytes().to_vec();
            let event: CanonicalEvent = simd_json::serde::from_slice(&mut bytes).unwrap();
            black_box(event)
        })
    });
    group.bench_function("serde_json", |b| {
        b.iter(|| black_box(serde_json::from_str::<CanonicalEvent>(CANONICAL_EVENT).unwrap()))
    });
    group.finish();

    // The lifecycle benchmark's shape: an event carrying the order's contents (~700 bytes).
    let lifecycle = serde_json::to_string(&serde_json::json!({
        "event_id": "wms-7311112222", "order": "douyin:4987325601234567", "source": "wms",
        "status": "paid", "occurred_at": "2026-11-22T10:00:00+08:00",
        "fields": orderhub_benches::contents(),
    }))
    .unwrap();
    let mut group = c.benchmark_group("decode_canonical_event_with_contents");
    group.throughput(Throughput::Bytes(lifecycle.len() as u64));
    group.bench_function("simd_json", |b| {
        b.iter(|| {
            let mut bytes = lifecycle.as_bytes().to_vec();
            let event: CanonicalEvent = simd_json::serde::from_slice(&mut bytes).unwrap();
            black_box(event)
        })
    });
    group.bench_function("serde_json", |b| {
        b.iter(|| black_box(serde_json::from_str::<CanonicalEvent>(&lifecycle).unwrap()))
    });
    group.finish();

    let mut group = c.benchmark_group("decode_douyin_push");
    group.throughput(Throughput::Bytes(DOUYIN_PUSH.len() as u64));
    group.bench_function("simd_json", |b| {
        b.iter(|| {
            let mut outer = DOUYIN_PUSH.as_bytes().to_vec();
            let messages: Vec<PushMessage> = simd_json::serde::from_slice(&mut outer).unwrap();
            let mut inner = messages[0].data.as_bytes().to_vec();
            let data: serde_json::Map<String, serde_json::Value> =
                simd_json::serde::from_slice(&mut inner).unwrap();
            black_box(data)
        })
    });
    group.bench_function("serde_json", |b| {
        b.iter(|| {
            let messages: Vec<PushMessage> = serde_json::from_str(DOUYIN_PUSH).unwrap();
            let data: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&messages[0].data).unwrap();
            black_box(data)
        })
    });
    group.finish();
}

fn mapping(c: &mut Criterion) {
    c.bench_function("status_mapping", |b| {
        b.iter(|| {
            black_box(orderhub_engine::ingest::parse_status(black_box(
                "in_transit",
            )))
        })
    });
}

/// [`lifecycle`] with the order's contents on every event, as the lifecycle benchmark sends.
fn lifecycle_with_contents(order: &str) -> Vec<JournaledEvent> {
    let mut events = lifecycle(order);
    for journaled in &mut events {
        journaled.event.fields = orderhub_benches::contents().into();
    }
    events
}

fn lifecycle(order: &str) -> Vec<JournaledEvent> {
    [
        OrderState::PendingPayment,
        OrderState::Paid,
        OrderState::Allocated,
        OrderState::Picked,
        OrderState::Packed,
        OrderState::Shipped,
        OrderState::InTransit,
        OrderState::Delivered,
        OrderState::Completed,
    ]
    .into_iter()
    .enumerate()
    .map(|(i, state)| JournaledEvent {
        seq: i as u64 + 1,
        event: OrderEvent {
            order: order.into(),
            source: "wms".into(),
            source_event_id: format!("e{i}"),
            supersedes: None,
            log_seq: None,
            raw_status: state.as_str().into(),
            action: EventAction::Move { state },
            occurred_at: 1_700_000_000_000 + i as i64,
            received_at: 1_700_000_000_000 + i as i64,
            fields: Default::default(),
        },
    })
    .collect()
}

fn default_rules() -> Arc<RuleSet> {
    let rule = |name: &str, when: &str, sink: &str| RuleSpec {
        name: name.into(),
        when: when.into(),
        sync: Some(sink.into()),
        ..RuleSpec::default()
    };
    RuleSet::compile(vec![
        rule("erp", r#"order.state == "paid""#, "erp"),
        rule("wms", r#"order.state == "paid""#, "wms"),
        rule(
            "cancel",
            r#"order.state == "cancelled" && order.previous_state in ["paid", "packed"]"#,
            "wms",
        ),
    ])
    .unwrap()
}

fn state_machine(c: &mut Criterion) {
    let events = lifecycle("douyin:1");
    let plain = OrderPolicy::permissive();
    let with_rules = OrderPolicy::permissive().with_rules(default_rules());
    let mut group = c.benchmark_group("state_machine");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("apply_lifecycle_9_events", |b| {
        b.iter(|| black_box(Order::replay("douyin:1", &events, &plain)))
    });
    group.bench_function("apply_lifecycle_9_events_with_3_rules", |b| {
        b.iter(|| black_box(Order::replay("douyin:1", &events, &with_rules)))
    });
    // The same with ~600 bytes of contents on every event: rules that do not read `fields`
    // no longer pay for converting them; one that does (the last) shows that cost.
    let with_contents = lifecycle_with_contents("douyin:1");
    group.bench_function("apply_lifecycle_9_events_with_contents_and_3_rules", |b| {
        b.iter(|| black_box(Order::replay("douyin:1", &with_contents, &with_rules)))
    });
    let reading = OrderPolicy::permissive().with_rules(
        RuleSet::compile(vec![RuleSpec {
            name: "big".into(),
            when: r#"order.state == "paid" && order.fields.amounts.total > 100.0"#.into(),
            sync: Some("erp".into()),
            ..RuleSpec::default()
        }])
        .unwrap(),
    );
    group.bench_function(
        "apply_lifecycle_9_events_with_contents_and_a_rule_reading_them",
        |b| b.iter(|| black_box(Order::replay("douyin:1", &with_contents, &reading))),
    );
    group.finish();
}

fn journal_append(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = orderhub_engine::config::Config::embedded().unwrap().journal;
    let (journal, _) =
        orderhub_engine::journal::Journal::open(dir.path(), &config, &OrderPolicy::permissive())
            .unwrap();
    journal.start(|_, _| {}, |_| {}).unwrap();
    let mut group = c.benchmark_group("journal_append_fsync");
    let mut next = 0u64;
    for batch in [1usize, 64, 1024] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.iter_batched(
                || {
                    (0..batch)
                        .map(|_| {
                            next += 1;
                            let mut event = lifecycle("douyin:1")[1].event.clone();
                            event.order = format!("douyin:{}", next / 8);
                            event.source_event_id = format!("b{next}");
                            event
                        })
                        .collect::<Vec<_>>()
                },
                |events| runtime.block_on(journal.append(events)).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
    runtime.block_on(journal.close());
}

fn actor_round_trip(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let router = runtime
        .block_on(OrderRouter::start(
            ShardConfig::new(),
            OrderPolicy::permissive(),
            Arc::new(orderhub_benches::NullStore),
            Arc::new(SystemClock),
        ))
        .unwrap();
    let mut seq = 0u64;
    c.bench_function("order_actor_route_and_query", |b| {
        b.iter(|| {
            // One order per lifecycle, so the queried order (cloned in the answer) stays at
            // most 9 events long instead of growing with the iteration count.
            seq += 1;
            let key = format!("douyin:{}", seq / 9);
            let mut event = lifecycle(&key)[(seq % 9) as usize].clone();
            event.seq = seq;
            router.route(Arc::new(event)).unwrap();
            black_box(
                runtime
                    .block_on(router.active_order(&key, Duration::from_secs(1)))
                    .unwrap(),
            )
        })
    });
    runtime.block_on(router.stop(Duration::from_secs(1)));
}

fn governor_check(c: &mut Criterion) {
    use governor::{Quota, RateLimiter};
    let limiter = RateLimiter::direct(Quota::per_second(
        std::num::NonZeroU32::new(1_000_000_000).unwrap(),
    ));
    c.bench_function("governor_check", |b| b.iter(|| black_box(limiter.check())));
}

struct Instant200;
impl SinkConnector for Instant200 {
    fn deliver(&self, _sync: std::sync::Arc<SyncIntent>, _attempt: u32) -> DeliveryFuture {
        Box::pin(async { Delivery::Delivered })
    }
}

struct EmptyOutbox;
impl SyncStore for EmptyOutbox {
    fn pending_page(&self, _: &str, _: i64, _: usize) -> Result<Vec<PendingSync>, StoreError> {
        Ok(Vec::new())
    }
    fn pending_count(&self, _: &str) -> Result<u64, StoreError> {
        Ok(0)
    }
    fn record_attempt(&self, _: SyncUpdate) {}
}

fn dispatcher_overhead(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let spec = SinkSpec {
        name: "erp".into(),
        rate_count: 1_000_000_000,
        rate_per: Duration::from_secs(1),
        burst: 1_000_000,
        max_in_flight: 64,
        timeout: Duration::from_secs(5),
        retry: RetryPolicy::default(),
        breaker_threshold: 5,
        breaker_cooldown: Duration::from_secs(10),
        window: 100_000,
        holds_back_ingest: true,
    };
    let dispatch = runtime
        .block_on(Dispatch::start(
            vec![(spec, Arc::new(Instant200) as Arc<dyn SinkConnector>)],
            Arc::new(EmptyOutbox),
            Arc::new(SystemClock),
        ))
        .unwrap();
    // Let the dispatcher page its (empty) outbox so it takes notifications directly.
    runtime.block_on(async { tokio::time::sleep(Duration::from_millis(200)).await });
    let mut row = 0i64;
    let mut group = c.benchmark_group("dispatcher");
    const BATCH: usize = 1000;
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("1000_syncs_to_an_instant_sink", |b| {
        b.iter(|| {
            let syncs = (0..BATCH)
                .map(|i| {
                    row += 1;
                    PendingSync {
                        row,
                        intent: std::sync::Arc::new(SyncIntent {
                            id: format!("o:{i}:{row}:erp"),
                            sink: "erp".into(),
                            order: format!("o:{}", i % 100),
                            seq: row as u64,
                            rule: "r".into(),
                            payload: serde_json::Value::Null,
                            fields: None,
                            contents: None,
                        }),
                        attempts: 0,
                        not_before: 0,
                        created_at: 0,
                        unreadable: None,
                    }
                })
                .collect();
            dispatch.notify(syncs);
            runtime.block_on(async {
                while dispatch.backlog() > 0 {
                    tokio::task::yield_now().await;
                }
            });
        })
    });
    group.finish();
    runtime.block_on(dispatch.stop());
}

fn sla_timers(c: &mut Criterion) {
    use tokio_util::time::DelayQueue;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    // The structure each shard keeps its deadlines in, holding 1,000,000 of them.
    let mut queue: DelayQueue<u64> = DelayQueue::with_capacity(1_000_001);
    for i in 0..1_000_000u64 {
        queue.insert(i, Duration::from_secs(3600 + i % 86_400));
    }
    let mut i = 0u64;
    c.bench_function("sla_timer_arm_and_disarm_at_1m_deadlines", |b| {
        b.iter(|| {
            i += 1;
            let key = queue.insert(i, Duration::from_secs(7200 + i % 3600));
            black_box(queue.remove(&key));
        })
    });
}

criterion_group!(
    hot_paths,
    decode,
    mapping,
    state_machine,
    journal_append,
    actor_round_trip,
    governor_check,
    dispatcher_overhead,
    sla_timers
);
criterion_main!(hot_paths);
