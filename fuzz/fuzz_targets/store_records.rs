//! Arbitrary bytes as every kind of record the coordinator keeps in sled (tasks, instances, agents, join tokens,
//! audit and history events). No panic: a corrupted record is an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ferry_store::fuzz_decode_records(data);
});
