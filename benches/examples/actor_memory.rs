//! Memory an active order actor holds (BENCHMARKS.md): starts the order router on a store
//! that holds nothing (no disk), the engine's default SLA rules, and routes N orders' five
//! lifecycle events (`paid`, `allocated`, `packed`, `in_transit`, `delivered`), each carrying
//! the order's contents (~600 bytes of JSON) as the lifecycle benchmark sends them. Every order
//! stays active (none is idle long enough to passivate), as in a flash sale. Prints the
//! resident memory per order (the engine's allocator, `/proc/self/statm`).
//!
//! `cargo run --release -p orderhub-benches --example actor_memory -- [N]`

use orderhub_actors::order::{EventAction, JournaledEvent, OrderEvent, OrderState};
use orderhub_actors::shard::{OrderRouter, ShardConfig, SystemClock};
use std::sync::Arc;
use std::time::Duration;

// The engine's allocator, so that the resident memory measured is the engine's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// This process's resident memory, in bytes (`/proc/self/statm`, 4 KiB pages).
fn resident() -> Result<i64, Box<dyn std::error::Error>> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: i64 = statm
        .split_whitespace()
        .nth(1)
        .ok_or("/proc/self/statm has no resident field")?
        .parse()?;
    Ok(pages * 4096)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let orders: u64 = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(20_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let policy = orderhub_engine::config::Config::embedded()?.policy();
    let router = runtime.block_on(OrderRouter::start(
        ShardConfig::new(),
        policy,
        Arc::new(orderhub_benches::NullStore),
        Arc::new(SystemClock),
    ))?;
    let states = [
        OrderState::Paid,
        OrderState::Allocated,
        OrderState::Packed,
        OrderState::InTransit,
        OrderState::Delivered,
    ];
    let now = 1_700_000_000_000;
    // Resident memory counted from here; each event is built as it is routed, as the journal
    // hands them to the router, and dropped once applied unless an actor keeps it. One state
    // at a time, each applied before the next is routed: what is measured is the actors, not
    // events queued in their mailboxes. The first event of each order is routed as the
    // journal routes a new order's.
    let resident_before = resident()?;
    let mut seq = 0;
    for (i, state) in states.iter().enumerate() {
        for order in 0..orders {
            seq += 1;
            let route = if i == 0 {
                OrderRouter::route_first
            } else {
                OrderRouter::route
            };
            route(
                &router,
                Arc::new(JournaledEvent {
                    seq,
                    event: OrderEvent {
                        order: format!("douyin:{order}"),
                        source: "wms".into(),
                        source_event_id: format!("{order}-{i}"),
                        supersedes: None,
                        log_seq: None,
                        raw_status: state.as_str().into(),
                        action: EventAction::Move { state: *state },
                        occurred_at: now + i as i64,
                        received_at: now + i as i64,
                        fields: orderhub_benches::contents().into(),
                    },
                }),
            )?;
        }
        while router.pending_events() > 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    for order in 0..orders {
        let key = format!("douyin:{order}");
        let active = runtime.block_on(router.active_order(&key, Duration::from_secs(30)))?;
        if active.and_then(|o| o.state) != Some(OrderState::Delivered) {
            return Err(format!("{key} is not delivered").into());
        }
    }
    let grown = resident()? - resident_before;
    println!(
        "{orders} active orders after {seq} events: {} bytes resident per order",
        grown / orders as i64
    );
    runtime.block_on(router.stop(Duration::from_secs(5)));
    Ok(())
}
