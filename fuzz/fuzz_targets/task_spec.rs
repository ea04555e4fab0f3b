//! The `task_spec` target: see `ferry_fuzz_targets::task_spec` (crates/ferry-fuzz-targets).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ferry_fuzz_targets::task_spec(data);
});
