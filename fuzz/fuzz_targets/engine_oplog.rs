//! The engine's oplog entry parser and raw BSON element walker on arbitrary bytes. No panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ferry_engine::fuzz_parse_oplog_entry(data);
});
