//! The bodies of Ferry's cargo-fuzz targets (issue #12). `fuzz/fuzz_targets/*.rs` are one-line wrappers around these
//! functions for libFuzzer (nightly, `scripts/fuzz`); on stable, `tests/smoke.rs` replays each target's corpus
//! (`fuzz/corpus/<target>/`) and feeds it mutated inputs for a few seconds, as part of the test suite. A target
//! panics only on a finding.

// A fuzz target reports a finding by panicking.
#![allow(clippy::panic)]

use bson::{Bson, Document};
use ferry_coordinator::fuzzing::{instance_input, spec_input};
use ferry_core::TaskSpec;
use ferry_proto::v1 as pb;
use mongosim::diff::{docs_binary_equal, update_entry};
use mongosim::wire::{self, Header};
use prost::Message;

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target by name (the names of fuzz/'s `[[bin]]`s and corpus folders).
pub const TARGETS: [(&str, Target); 6] = [
    ("mongosim_wire", mongosim_wire),
    ("engine_oplog", engine_oplog),
    ("engine_diff", engine_diff),
    ("spool_segment", spool_segment),
    ("store_records", store_records),
    ("task_spec", task_spec),
];

/// mongosim's wire message parser on arbitrary bytes: the first 16 bytes are the message header
/// (as `read_message` decodes it), the rest the payload. No panic, no unbounded allocation.
pub fn mongosim_wire(data: &[u8]) {
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
}

/// The engine's oplog entry parser and raw BSON element walker on arbitrary bytes. No panic.
pub fn engine_oplog(data: &[u8]) {
    ferry_engine::fuzz_parse_oplog_entry(data);
}

/// The engine's `$v:2` diff application against an independent model: mongosim's own diff calculator and applier
/// (separate code written from the server's `document_diff_calculator` and `doc_diff::applyDiff`; the two share no
/// code, so one's mistake shows as a disagreement).
///
/// The input is two BSON documents: the first (by its length prefix) is the pre-image, the remaining bytes a second
/// document `b`. Undecodable inputs are skipped. Checked, besides "no panic":
/// 1. `b` as a diff: when both the engine and mongosim apply it without error, they produce byte-identical
///    documents (either may refuse a diff the other accepts: strictness differs, results may not);
/// 2. `b` as a post-image: the oplog entry mongosim computes for `pre -> b` (with and without the server's size
///    rule), when it is a `$v:2` diff, applied by the engine to `pre` gives exactly `b`.
pub fn engine_diff(data: &[u8]) {
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
    let (pre, rest) = data.split_at(len);
    let (Ok(pre), Ok(b)) = (Document::from_reader(pre), Document::from_reader(rest)) else {
        return;
    };

    // 1. Two appliers, one diff.
    let engine = ferry_engine::diff::apply_diff(&pre, &b);
    let model = mongosim::diff::apply_diff(&pre, &b);
    if let (Ok(engine), Ok(model)) = (&engine, &model) {
        assert!(
            docs_binary_equal(engine, model),
            "the engine and mongosim applied the same diff differently\npre    {pre:?}\ndiff   {b:?}\nengine {engine:?}\nmodel  {model:?}"
        );
    }

    // 2. A diff computed by the model, applied by the engine.
    for size_limited in [false, true] {
        let Some(entry) = update_entry(&pre, &b, size_limited) else {
            continue;
        };
        if entry.get("$v") != Some(&Bson::Int32(2)) {
            continue; // a full replacement: nothing to apply
        }
        let Ok(diff) = entry.get_document("diff") else {
            panic!("mongosim logged a $v:2 entry without a diff: {entry:?}");
        };
        match ferry_engine::diff::apply_diff(&pre, diff) {
            Ok(post) => assert!(
                docs_binary_equal(&post, &b),
                "applying mongosim's diff did not give the post-image\npre      {pre:?}\npost     {b:?}\ndiff     {diff:?}\nengine   {post:?}"
            ),
            Err(e) => panic!(
                "the engine refused mongosim's diff ({e})\npre  {pre:?}\npost {b:?}\ndiff {diff:?}"
            ),
        }
    }
}

/// A spool segment's bytes as a crash or a bad disk could leave them (torn entries, garbage, huge length prefixes),
/// read back by the engine's spool reader. No panic, no unbounded allocation: a bad segment is an error.
pub fn spool_segment(data: &[u8]) {
    ferry_engine::fuzz_spool_segment(data);
}

/// Arbitrary bytes as every kind of record the coordinator keeps in sled (tasks, instances, agents, join tokens,
/// audit and history events). No panic: a corrupted record is an error.
pub fn store_records(data: &[u8]) {
    ferry_store::fuzz_decode_records(data);
}

/// CreateTask / RegisterInstance / CreateJoinToken requests from arbitrary protobuf bytes through ferry-core's
/// validation (TaskSpec, Instance with its URI allow-list, tenants, public-source addresses). No panic: bad input is
/// an error naming the field.
pub fn task_spec(data: &[u8]) {
    if let Ok(req) = pb::CreateTaskRequest::decode(data) {
        if let Some(spec) = &req.spec {
            let _ = ferry_core::check_public_source_host(&spec.mongo_host);
            let _ = ferry_core::validate_tenant("spec.tenant", &spec.tenant);
        }
        let _ = TaskSpec::try_from(spec_input(req.spec));
    }
    if let Ok(req) = pb::RegisterInstanceRequest::decode(data) {
        let _ = ferry_core::Instance::from_input(instance_input(req.instance), 0);
    }
    let _ = ferry_core::net::is_loopback_authority(&String::from_utf8_lossy(data));
}
