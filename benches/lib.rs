//! Criterion benches of orderhub's hot paths live in `benches/hot_paths.rs` (one entry point):
//! decode, status mapping, state-machine apply, rules, journal append, order-actor round trip,
//! governor check, dispatcher overhead and SLA timer arm/disarm. Run `cargo bench -p
//! orderhub-benches`; results are recorded in BENCHMARKS.md.
#![forbid(unsafe_code)]
