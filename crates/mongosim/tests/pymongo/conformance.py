"""mongosim conformance suite through pymongo (legacy OP_QUERY handshake, SCRAM-SHA-256).

Mirrors crates/mongosim/tests/rust_driver.rs: CRUD with every operator, cursors across many
batches, catalog shapes, duplicate keys, dbHash, oplog tailing latency, and $v:2 diffs checked
by an independent implementation of reference section 7.3. Prints "N passed, N failed".
"""
import sys
import time
import traceback

import bson
import pymongo
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient
from pymongo.errors import DuplicateKeyError, OperationFailure

URI = sys.argv[1]
SINGLE_URI = sys.argv[2] if len(sys.argv) > 2 else None
RESULTS = []


def case(fn):
    RESULTS.append(fn)
    return fn


def apply_object(pre, diff):
    table, to_append, out, done = {}, [], {}, set()
    for k, v in diff.items():
        if k == "d":
            for f in v:
                table[f] = ("del", None)
        elif k == "u":
            for f, nv in v.items():
                table[f] = ("upd", nv)
                to_append.append((f, nv))
        elif k == "i":
            for f, nv in v.items():
                table[f] = ("ins", None)
                to_append.append((f, nv))
        elif k.startswith("s"):
            table[k[1:]] = ("sub", v)
        else:
            raise AssertionError("bad section " + k)
    for f, v in pre.items():
        act = table.get(f)
        if act is None:
            out[f] = v
        elif act[0] in ("del", "ins"):
            pass
        elif act[0] == "upd":
            out[f] = act[1]
            done.add(f)
        else:
            sd = act[1]
            if sd.get("a") is True and isinstance(v, list):
                out[f] = apply_array(v, sd)
            elif sd.get("a") is not True and isinstance(v, dict):
                out[f] = apply_object(v, sd)
            else:
                out[f] = None
    for f, v in to_append:
        if f not in done:
            out[f] = v
    return out


def apply_array(pre, diff):
    n = diff.get("l")
    mods = {int(k[1:]): (k[0], v) for k, v in diff.items() if k not in ("a", "l")}

    def one(kind, val, cur):
        if kind == "u":
            return val
        if val.get("a") is True and isinstance(cur, list):
            return apply_array(cur, val)
        if val.get("a") is not True and isinstance(cur, dict):
            return apply_object(cur, val)
        return None

    out = []
    for i, v in enumerate(pre):
        if n is not None and i >= n:
            break
        out.append(one(*mods[i], v) if i in mods else v)
    while (n is not None and len(out) < n) or any(i >= len(out) for i in mods):
        i = len(out)
        out.append(mods[i][1] if i in mods and mods[i][0] == "u" else None)
    return out


def client():
    return MongoClient(URI, serverSelectionTimeoutMS=5000, document_class=dict)


@case
def hello_shape_and_discovery():
    c = client()
    h = c.admin.command("hello")
    assert h["setName"] == "rs0" and h["isWritablePrimary"] is True
    assert h["me"] in h["hosts"] and isinstance(h["maxWireVersion"], int)
    assert isinstance(h["topologyVersion"]["counter"], bson.int64.Int64)
    assert isinstance(h["operationTime"], bson.timestamp.Timestamp)
    assert c.primary is not None


@case
def bad_password_is_18():
    bad = URI.replace("root:secret", "root:wrong")
    try:
        MongoClient(bad, serverSelectionTimeoutMS=3000).admin.command("ping")
    except OperationFailure as e:
        assert e.code == 18, e.code
    else:
        raise AssertionError("expected failure")


@case
def crud_operators_and_v2_diffs():
    c = client()
    coll = c.app.py_people
    coll.drop()
    coll.insert_many([
        {"_id": 1, "name": "a", "n": 1, "tags": ["x", "y"], "sub": {"k": 1}, "old": 1},
        {"_id": 2, "arr": [1, 2, 3, 4]},
    ])
    updates = [
        ({"_id": 1}, {"$set": {"name": "A", "sub.k": 2, "new": True}}),
        ({"_id": 1}, {"$unset": {"old": ""}, "$inc": {"n": 2}}),
        ({"_id": 1}, {"$push": {"tags": {"$each": ["z", "w"], "$slice": 3}}}),
        ({"_id": 1}, {"$pull": {"tags": "x"}, "$addToSet": {"set": {"$each": [1, 1, 2]}}}),
        ({"_id": 1}, {"$rename": {"name": "title"}, "$min": {"n": 0}, "$max": {"hi": 10}}),
        ({"_id": 2}, {"$pull": {"arr": {"$gte": 3}}, "$set": {"arr2": [[1, 2], {"q": 1}]}}),
        ({"_id": 2}, {"$set": {"arr2.0.1": 5, "arr2.1.q": 2}}),
    ]
    oplog = c.local["oplog.rs"]
    for q, u in updates:
        pre = coll.find_one(q)
        assert coll.update_one(q, u).modified_count == 1
        post = coll.find_one(q)
        entry = oplog.find_one({"op": "u", "ns": "app.py_people"}, sort=[("$natural", -1)])
        o = entry["o"]
        assert o["$v"] == 2, o
        got = apply_object(pre, o["diff"])
        assert bson.encode(got) == bson.encode(post), (o, got, post)
    assert coll.replace_one({"_id": 2}, {"x": 1}).modified_count == 1
    r = coll.update_one({"_id": 9}, {"$set": {"n": 1}}, upsert=True)
    assert r.upserted_id == 9
    assert coll.count_documents({"n": {"$gte": 0}}) == 2
    assert coll.delete_many({"_id": {"$in": [1, 9]}}).deleted_count == 2


@case
def cursors_across_batches():
    coll = client().app.py_big
    coll.drop()
    coll.insert_many([{"_id": i} for i in range(1500)], ordered=False)
    ids = [d["_id"] for d in coll.find({}, batch_size=100)]
    assert ids == list(range(1500))


@case
def catalog_shapes_and_duplicate_key():
    db = client().app
    db.drop_collection("py_idx")
    db.create_collection("py_idx", capped=True, size=1 << 20)
    db.py_idx.create_index("v", unique=True, name="v_1")
    info = [c for c in db.list_collections() if c["name"] == "py_idx"][0]
    assert info["type"] == "collection" and info["options"]["capped"] is True
    assert isinstance(info["info"]["uuid"], bson.binary.Binary) or info["info"]["uuid"]
    idx = list(db.py_idx.list_indexes())
    assert [i["name"] for i in idx] == ["_id_", "v_1"] and "ns" not in idx[0]
    db.py_idx.insert_one({"v": 1})
    try:
        db.py_idx.insert_one({"v": 1})
    except DuplicateKeyError as e:
        assert e.code == 11000
        assert "index: v_1 dup key" in str(e)
        assert e.details["keyPattern"] == {"v": 1}
    else:
        raise AssertionError("expected 11000")


@case
def dbhash_stable():
    c = client()
    for name in ("py_h1", "py_h2"):
        c.drop_database(name)
        c[name].c.insert_many([{"_id": i, "x": i} for i in range(20)])
    assert c.py_h1.command("dbHash")["md5"] == c.py_h2.command("dbHash")["md5"]


@case
def oplog_tail_latency():
    c = client()
    oplog = c.local["oplog.rs"]
    last = oplog.find_one(sort=[("$natural", -1)])
    cur = oplog.find({"ts": {"$gt": last["ts"]}}, cursor_type=pymongo.CursorType.TAILABLE_AWAIT)
    cur.max_await_time_ms(5000)
    start = time.monotonic()
    c.app.py_tail.insert_one({"x": 1})
    while True:
        e = cur.next()
        if e["op"] == "i":
            break
    elapsed = time.monotonic() - start
    assert elapsed < 0.1, elapsed


@case
def unknown_command_is_59():
    try:
        client().app.command("frobnicate")
    except OperationFailure as e:
        assert e.code == 59 and "no such command" in str(e)
    else:
        raise AssertionError("expected 59")


@case
def transaction_commits_as_one_apply_ops():
    c = client()
    c.app.txn.drop()
    c.app.txn.insert_one({"_id": 0})
    with c.start_session() as s:
        session_id = s.session_id["id"]
        with s.start_transaction():
            c.app.txn.insert_one({"_id": 1}, session=s)
            c.app.txn.update_one({"_id": 0}, {"$set": {"a": 1}}, session=s)
            assert c.app.txn.find_one({"_id": 1}) is None
            # pymongo pools server sessions: a reused one continues its txnNumber sequence.
            txn_number = s._server_session.transaction_id
    last = c.local["oplog.rs"].find().sort("$natural", -1).limit(1)[0]
    assert last["op"] == "c" and last["ns"] == "admin.$cmd", last
    assert last["txnNumber"] == txn_number and last["lsid"]["id"] == session_id, (last, txn_number)
    assert last["prevOpTime"] == {"ts": bson.timestamp.Timestamp(0, 0), "t": -1}
    assert list(last["o"].keys()) == ["applyOps"]
    assert [op["op"] for op in last["o"]["applyOps"]] == ["i", "u"]
    assert c.app.txn.count_documents({}) == 2


@case
def single_node_has_no_set_name_and_no_oplog():
    if SINGLE_URI is None:
        return
    c = MongoClient(SINGLE_URI, serverSelectionTimeoutMS=5000)
    h = c.admin.command("hello")
    assert "setName" not in h and h["isWritablePrimary"] is True
    c.app.single.insert_one({"x": 1})
    assert c.local["oplog.rs"].count_documents({}) == 0
    assert c.app.single.count_documents({}) == 1


def main():
    passed = failed = 0
    for fn in RESULTS:
        try:
            fn()
            passed += 1
            print("ok   " + fn.__name__)
        except Exception:
            failed += 1
            print("FAIL " + fn.__name__)
            traceback.print_exc()
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
