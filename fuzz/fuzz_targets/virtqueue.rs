//! Hostile virtqueues: descriptor tables, indirect tables and avail rings built from the input,
//! walked by Cove's chain parser and a live virtio-rng device.
//!
//! Run with `cargo +nightly fuzz run virtqueue` from `fuzz/`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = cove_virtio::fuzzing::fuzz_virtqueue(data);
});
