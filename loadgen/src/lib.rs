//! # orderhub-loadgen — will we survive tonight's live stream?
//!
//! An open-model load generator for orderhub (DESIGN.md §2): it sends realistic order
//! lifecycles in each source's native format at a profile's rate whatever the engine's latency,
//! runs the downstream systems the engine drives, verifies end to end that nothing was lost, and
//! reports latencies and rates. It talks to the engine over HTTP only.
//!
//! Modules:
//! - [`profile`] — steady, ramp, spike and flash-sale rates over time;
//! - [`lifecycle`] — what each simulated order reports, with duplicates, disorder, cancels;
//! - [`wire`] — requests in native formats with valid signatures;
//! - [`run`] — the open-model sender;
//! - [`http`] — the request loops' keep-alive HTTP/1.1 client;
//! - [`sinks`] — the downstream simulators;
//! - [`details`] — the simulated channels' order APIs (`loadgen sinks --details`);
//! - [`verify`] — the end-to-end verifier;
//! - [`report`] — the JSON report and summary;
//! - [`replay`] — `loadgen replay`: an `orderhub export` file sent again at ×N;
//! - [`closed`] — `loadgen lifecycle`: the closed-loop benchmark (CPU and disk per event);
//! - [`cli`] — the `loadgen run` command put together.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod cli;
pub mod closed;
pub mod details;
pub mod http;
pub mod lifecycle;
pub mod profile;
pub mod replay;
pub mod report;
pub mod run;
pub mod sinks;
pub mod verify;
pub mod wire;
