//! Fills a journal with N paid orders (one event each) through the real journal, in group
//! commits of 1,024, for recovery and memory measurements (BENCHMARKS.md):
//!
//! `cargo run --release -p orderhub-benches --example fill_journal -- DATA_DIR N`
//!
//! With `--finished DAYS`, each order is paid and then completed (two events, the second with
//! items, address and amounts in `fields`, ~0.6 KB), both received DAYS days ago: finished
//! orders past `journal.retain` for the compaction benchmark.
//!
//! No order actor runs while filling, so no order summary is written: starting the engine on
//! the directory afterwards is the worst case of recovery after `kill -9` (every order
//! re-folded from the journal).

use orderhub_actors::order::{EventAction, Fields, OrderEvent, OrderState};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().ok_or("usage: fill_journal DATA_DIR N")?);
    let usage = "usage: fill_journal DATA_DIR N [--finished DAYS]";
    let total: u64 = args.next().ok_or(usage)?.parse()?;
    let finished_days: Option<i64> = match args.next().as_deref() {
        None => None,
        Some("--finished") => Some(args.next().ok_or(usage)?.parse()?),
        Some(other) => return Err(format!("{other:?}: {usage}").into()),
    };
    let config = orderhub_engine::config::Config::embedded()?;
    let (journal, _) =
        orderhub_engine::journal::Journal::open(&dir, &config.journal, &config.policy())?;
    journal.start(|_, _| {}, |_| {})?;
    let runtime = tokio::runtime::Runtime::new()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64
        - finished_days.unwrap_or(0) * 86_400_000;
    let contents: Fields = serde_json::from_value(serde_json::json!({
        "items": [
            {"sku": "SKU-1001-BLK-M", "name": "Down jacket, black, M", "qty": 1, "price": "899.00"},
            {"sku": "SKU-2002-WHT", "name": "Thermal socks, 3 pairs", "qty": 2, "price": "59.00"}
        ],
        "amount": {"total": "1017.00", "paid": "1017.00", "currency": "CNY", "tax_included": true},
        "receiver": {"name": "Li Na", "phone": "138****0000", "province": "Zhejiang", "city": "Hangzhou",
                     "district": "Xihu", "address": "No. 18 Wensan Road, Building 3, Room 1201"},
        "warehouse": "HZ-01", "waybill_no": null
    }))?;
    let started = Instant::now();
    let mut n = 0u64;
    while n < total {
        let orders = n..(n + 1024).min(total);
        let mut batch: Vec<OrderEvent> = Vec::with_capacity(orders.clone().count() * 2);
        for i in orders {
            let event = |id: String, raw: &str, state, fields| OrderEvent {
                order: format!("douyin:{}", 9_000_000_000 + i),
                source: "douyin".into(),
                source_event_id: id,
                supersedes: None,
                log_seq: None,
                raw_status: raw.into(),
                action: EventAction::Move { state },
                occurred_at: now,
                received_at: now,
                fields,
            };
            batch.push(event(
                format!("fill-{i}"),
                "101",
                OrderState::Paid,
                Fields::new(),
            ));
            if finished_days.is_some() {
                batch.push(event(
                    format!("fill-{i}-done"),
                    "105",
                    OrderState::Completed,
                    contents.clone(),
                ));
            }
        }
        n += (batch.len() / if finished_days.is_some() { 2 } else { 1 }) as u64;
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
