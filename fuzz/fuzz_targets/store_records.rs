//! The `store_records` target: see `ferry_fuzz_targets::store_records` (crates/ferry-fuzz-targets).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ferry_fuzz_targets::store_records(data);
});
