//! Fuzzes the `wdt` poller's reading of a `logistics_sync_query` answer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = orderhub_engine::ingest::fuzzing::channel_frame("wdt", data);
});
