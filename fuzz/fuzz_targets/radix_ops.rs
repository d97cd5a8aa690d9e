//! Fuzz target: raw bytes decode into a pool/tree configuration and a stream of
//! engine-like operations (`arbor_cache::testing::run_bytes`). Any disagreement with the
//! reference model or broken invariant panics, which libFuzzer reports as a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(problem) = arbor_cache::testing::run_bytes(data) {
        panic!("radix cache misbehaved: {problem}");
    }
});
