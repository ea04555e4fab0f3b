//! `apply_diff(pre, diff)` on two documents decoded from the input: the first BSON document (by its
//! length prefix) is the pre-image, the remaining bytes the `$v:2` diff. Undecodable inputs are
//! skipped. No panic.
#![no_main]

use bson::Document;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(len) = data.get(..4) else {
        return;
    };
    let len = i32::from_le_bytes([len[0], len[1], len[2], len[3]]);
    let Ok(len) = usize::try_from(len) else {
        return;
    };
    if len > data.len() {
        return;
    }
    let (pre, diff) = data.split_at(len);
    let (Ok(pre), Ok(diff)) = (Document::from_reader(pre), Document::from_reader(diff)) else {
        return;
    };
    let _ = ferry_engine::diff::apply_diff(&pre, &diff);
});
