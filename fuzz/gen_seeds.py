#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into fuzz/corpus/<target>/ (deterministic names).

engine_oplog: the oplog entries of crates/ferry-engine/tests/data/oplog-samples.jsonl as BSON (the
`$v:2` update samples, which are only the `o` field, wrapped in a full `u` entry).
engine_diff: pre-image BSON followed by diff BSON, for those `$v:2` samples (pre-images from their notes),
and regression inputs (array diffs with huge `l` or indices).
mongosim_wire: hand-built OP_MSG (hello, and an insert with a kind-1 document sequence) and OP_QUERY
(legacy isMaster) messages, header included.

Needs pymongo's `bson` (scripts/pymongo-conformance installs pymongo into .tools/venv):
    .tools/venv/bin/python fuzz/gen_seeds.py
"""
import json
import os
import struct
import sys

import bson
from bson import json_util
from bson.son import SON

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(ROOT, "crates/ferry-engine/tests/data/oplog-samples.jsonl")
CORPUS = os.path.join(ROOT, "fuzz/corpus")
OPTS = json_util.JSONOptions(document_class=SON, json_mode=json_util.JSONMode.CANONICAL)


def enc(doc):
    return bson.encode(doc, codec_options=OPTS)


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def oplog_seeds():
    diffs = []
    with open(SAMPLES) as f:
        for n, line in enumerate(f):
            rec = json.loads(line)
            kind = rec["kind"]
            if not kind.startswith("oplog."):
                continue
            doc = json_util.loads(json.dumps(rec["doc"]), json_options=OPTS)
            if kind == "oplog.update.o.v2":
                diffs.append(doc["diff"])
                doc = SON([
                    ("ts", bson.Timestamp(1700000000, n)), ("t", bson.Int64(1)), ("v", 2),
                    ("op", "u"), ("ns", "db.c"), ("o", doc), ("o2", SON([("_id", 1)])),
                ])
            write("engine_oplog", "%02d-%s.bson" % (n, kind[len("oplog."):]), enc(doc))
    return diffs


# Pre-images of the four `$v:2` samples, in file order (from each sample's note).
PRES = [
    SON([("_id", 1), ("b", 1)]),
    SON([("_id", 1), ("b", SON([("c", 1)]))]),
    SON([("_id", 1), ("a", 1), ("arrayForReplacement", [1, 2]), ("arrayForSubdiff", [SON([("a", 1)]), SON([("a", 2)]), 3])]),
    SON([("_id", 1), ("a", 1), ("doc", SON([("x", 1)])), ("arr", [SON([("x", 1), ("y", 2)])]),
         ("arr_a", [0]), ("arr_b", [[0, 1]]), ("arr_c", [[1, 2, 3]]),
         ("obj", SON([("x", SON([("a", 1), ("c", [1, 2])]))]))]),
]


def diff_seeds(diffs):
    if len(diffs) != len(PRES):
        sys.exit("expected %d $v:2 samples, found %d" % (len(PRES), len(diffs)))
    for i, (pre, diff) in enumerate(zip(PRES, diffs)):
        write("engine_diff", "%02d-v2.bin" % i, enc(pre) + enc(diff))
    # Regression inputs: array diffs that used to pad an array to billions of nulls.
    pre = enc(SON([("a", [1])]))
    for name, sub in [("l-i32max", ("l", 2147483647)), ("l-i64", ("l", bson.Int64(2 ** 62))),
                      ("u-huge-index", ("u999999999", 1))]:
        write("engine_diff", "regress-%s.bin" % name, pre + enc(SON([("sa", SON([("a", True), sub]))])))


def header(body, op_code, request_id):
    return struct.pack("<iiii", 16 + len(body), request_id, 0, op_code) + body


def wire_seeds():
    hello = enc(SON([("hello", 1), ("helloOk", True), ("$db", "admin")]))
    write("mongosim_wire", "op_msg-hello.bin", header(struct.pack("<I", 0) + b"\x00" + hello, 2013, 1))
    # insert: body (kind 0) plus a `documents` sequence (kind 1: size, identifier, documents).
    body = enc(SON([("insert", "c"), ("ordered", True), ("$db", "test")]))
    docs = enc(SON([("_id", 1), ("x", "a")])) + enc(SON([("_id", 2), ("x", "b")]))
    seq = b"documents\x00" + docs
    msg = struct.pack("<I", 0) + b"\x00" + body + b"\x01" + struct.pack("<i", 4 + len(seq)) + seq
    write("mongosim_wire", "op_msg-insert-seq.bin", header(msg, 2013, 2))
    # Legacy handshake: OP_QUERY isMaster on admin.$cmd.
    q = enc(SON([("isMaster", 1), ("client", SON([("driver", SON([("name", "fuzz")]))]))]))
    query = struct.pack("<i", 0) + b"admin.$cmd\x00" + struct.pack("<ii", 0, -1) + q
    write("mongosim_wire", "op_query-ismaster.bin", header(query, 2004, 3))


def main():
    diff_seeds(oplog_seeds())
    wire_seeds()
    for t in sorted(os.listdir(CORPUS)):
        files = os.listdir(os.path.join(CORPUS, t))
        print("%s: %d seeds" % (t, len(files)))


if __name__ == "__main__":
    main()
