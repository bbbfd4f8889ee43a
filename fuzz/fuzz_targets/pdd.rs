//! Fuzzes the `pdd` channel's frame decoder and message mapping.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = orderhub_engine::ingest::fuzzing::channel_frame("pdd", data);
});
