//! Fuzzes the `youzan` source: input is `headers\0query\0body` (see `ingest::fuzzing::split`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (headers, query, body) = orderhub_engine::ingest::fuzzing::split(data);
    let _ = orderhub_engine::ingest::fuzzing::decode("youzan", &headers, &query, body);
});
