//! mongosim's wire message parser on arbitrary bytes: the first 16 bytes are the message header
//! (as `read_message` decodes it), the rest the payload. No panic, no unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mongosim::wire::{self, Header};

fuzz_target!(|data: &[u8]| {
    let Some(head) = data.get(..16) else {
        return;
    };
    let field = |i: usize| i32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    let header = Header {
        length: field(0),
        request_id: field(4),
        response_to: field(8),
        op_code: field(12),
    };
    // read_message rejects these lengths before reading a payload.
    if header.length < 16 || header.length as usize > wire::MAX_MESSAGE_SIZE {
        return;
    }
    let _ = wire::parse(&header, &data[16..]);
});
