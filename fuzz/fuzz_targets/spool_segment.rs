//! The `spool_segment` target: see `ferry_fuzz_targets::spool_segment` (crates/ferry-fuzz-targets).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ferry_fuzz_targets::spool_segment(data);
});
