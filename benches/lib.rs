//! Criterion benches of orderhub's hot paths live in `benches/hot_paths.rs` (one entry point):
//! decode, status mapping, state-machine apply, rules, journal append, order-actor round trip,
//! governor check, dispatcher overhead and SLA timer arm/disarm. Run `cargo bench -p
//! orderhub-benches`; results are recorded in BENCHMARKS.md. The examples measure what criterion
//! does not: `fill_journal` (recovery, compaction) and `actor_memory` (memory per active order).
//! Benches and examples share an order's contents ([`contents`]) and a store that holds
//! nothing ([`NullStore`]).
#![forbid(unsafe_code)]

use orderhub_actors::order::OrderEvent;
use orderhub_actors::store::{OrderStore, OrderUpdate, StoreError, StoredOrder};

/// A store that holds nothing, for measuring the actors alone: every order starts empty and
/// nothing is written.
pub struct NullStore;

impl OrderStore for NullStore {
    fn load(&self, _order: &str) -> Result<StoredOrder, StoreError> {
        Ok(StoredOrder::default())
    }
    fn append_internal(&self, _event: OrderEvent) -> Result<(), StoreError> {
        Ok(())
    }
    fn record(&self, _update: OrderUpdate) {}
    fn unfolded(&self, _order: &str) {}
}

/// An order's contents as channels push them (~600 bytes of JSON): items, address, amounts.
pub fn contents() -> serde_json::Map<String, serde_json::Value> {
    let value = serde_json::json!({
        "items": [
            {"sku": "SKU-00042", "name": "Hydrating face cream 50ml", "qty": 1, "price": 129.0},
            {"sku": "SKU-00294", "name": "Cleansing foam 120g", "qty": 1, "price": 59.9},
            {"sku": "SKU-00546", "name": "Sheet mask, pack of 10", "qty": 2, "price": 89.0}
        ],
        "address": {"name": "Zhang San", "phone": "138****0042", "province": "Zhejiang",
            "city": "Hangzhou", "district": "Xihu", "detail": "No. 42 Wensan Road, Building 3, Unit 2, Room 1502"},
        "amounts": {"total": 366.9, "discount": 20.0, "freight": 0.0, "paid": 346.9, "currency": "CNY"},
        "buyer_note": "Deliver after 6pm please",
        "shop": "flagship-store-01"
    });
    match value {
        serde_json::Value::Object(map) => map,
        _ => unreachable!("an object"),
    }
}
