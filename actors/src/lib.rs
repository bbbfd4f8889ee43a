//! # orderhub-actors — the order brain
//!
//! In orderhub's data flow (DESIGN.md §1) this crate sits after the journal: every durably
//! journaled event is routed here, to the actor of its order, which applies it to the canonical
//! state machine, keeps the order's SLA timers and emits what follows. It holds no HTTP and no
//! SQL: storage is reached through the [`store`] ports, which the engine implements.
//!
//! Modules:
//! - [`digest`] — per-order warnings aggregated into one log line per rule or sink;
//! - [`dispatch`] — rules (CEL conditions, minijinja payloads) and the syncs they decide;
//! - [`order`] — canonical states, events, policy and the pure state machine (no clock, no I/O);
//! - [`shard`] — the [`OrderRouter`](shard::OrderRouter) handle, shard supervisors, order actors
//!   and per-shard SLA timer structures (ractor);
//! - [`store`] — the storage ports the actors use;
//! - [`telemetry`] — the catalogue of every metric orderhub exports.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod digest;
pub mod dispatch;
pub mod order;
pub mod shard;
pub mod store;
pub mod telemetry;
