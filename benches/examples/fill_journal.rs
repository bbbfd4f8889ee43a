//! Fills a journal with N paid orders (one event each) through the real journal, in group
//! commits of 1,024, for recovery and memory measurements (BENCHMARKS.md):
//!
//! `cargo run --release -p orderhub-benches --example fill_journal -- DATA_DIR N`
//!
//! No order actor runs while filling, so no order summary is written: starting the engine on
//! the directory afterwards is the worst case of recovery after `kill -9` (every order
//! re-folded from the journal).

use orderhub_actors::order::{EventAction, OrderEvent, OrderState};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().ok_or("usage: fill_journal DATA_DIR N")?);
    let total: u64 = args
        .next()
        .ok_or("usage: fill_journal DATA_DIR N")?
        .parse()?;
    let config = orderhub_engine::config::Config::embedded()?;
    let (journal, _) =
        orderhub_engine::journal::Journal::open(&dir, &config.journal, &config.policy())?;
    journal.start(|_| {}, |_| {})?;
    let runtime = tokio::runtime::Runtime::new()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let started = Instant::now();
    let mut n = 0u64;
    while n < total {
        let batch: Vec<OrderEvent> = (n..(n + 1024).min(total))
            .map(|i| OrderEvent {
                order: format!("douyin:{}", 9_000_000_000 + i),
                source: "douyin".into(),
                source_event_id: format!("fill-{i}"),
                supersedes: None,
                log_seq: None,
                raw_status: "101".into(),
                action: EventAction::Move {
                    state: OrderState::Paid,
                },
                occurred_at: now,
                received_at: now,
                fields: serde_json::Map::new(),
            })
            .collect();
        n += batch.len() as u64;
        runtime.block_on(journal.append(batch))?;
    }
    runtime.block_on(journal.close());
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{total} orders journaled in {seconds:.1} s ({:.0} events/s)",
        total as f64 / seconds
    );
    Ok(())
}
