//! The `mongosim_wire` target: see `ferry_fuzz_targets::mongosim_wire` (crates/ferry-fuzz-targets).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ferry_fuzz_targets::mongosim_wire(data);
});
