//! A spool segment's bytes as a crash or a bad disk could leave them (torn entries, garbage, huge length prefixes),
//! read back by the engine's spool reader. No panic, no unbounded allocation: a bad segment is an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ferry_engine::fuzz_spool_segment(data);
});
