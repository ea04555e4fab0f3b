//! The `engine_diff` target: see `ferry_fuzz_targets::engine_diff` (crates/ferry-fuzz-targets).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ferry_fuzz_targets::engine_diff(data);
});
