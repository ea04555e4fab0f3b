//! Conformance suite run through the official Rust driver: replica-set discovery with
//! SCRAM-SHA-256, CRUD with every supported operator, cursors over many batches, catalog
//! shapes, duplicate keys, dbHash, oplog tailing latency, and `$v: 2` diffs checked by an
//! independent applier of reference §7.3.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document, Timestamp};
use mongodb::options::{ClientOptions, FindOptions};
use mongodb::Client;
use mongosim::MongoSim;

async fn client(uri: &str) -> Client {
    let mut opts = ClientOptions::parse(uri).await.unwrap();
    opts.server_selection_timeout = Some(Duration::from_secs(5));
    Client::with_options(opts).unwrap()
}

async fn rs_with_auth() -> (MongoSim, Client) {
    let sim = MongoSim::builder()
        .replset("rs0")
        .user("root", "secret")
        .start()
        .await
        .unwrap();
    let uri = format!(
        "{}&authMechanism=SCRAM-SHA-256",
        sim.uri_with_credentials("root", "secret")
    );
    let c = client(&uri).await;
    (sim, c)
}

/// Independent applier of a `$v: 2` diff (reference §7.3), written from the text.
fn apply_object(pre: &Document, diff: &Document) -> Document {
    enum Act<'a> {
        Delete,
        Update(&'a Bson),
        Insert,
        Sub(&'a Document),
    }
    let mut table: Vec<(String, Act)> = Vec::new();
    let mut to_append: Vec<(String, Bson)> = Vec::new();
    for (k, v) in diff {
        match k.as_str() {
            "d" => {
                for f in v.as_document().unwrap().keys() {
                    table.push((f.clone(), Act::Delete));
                }
            }
            "u" => {
                for (f, nv) in v.as_document().unwrap() {
                    table.push((f.clone(), Act::Update(nv)));
                    to_append.push((f.clone(), nv.clone()));
                }
            }
            "i" => {
                for (f, nv) in v.as_document().unwrap() {
                    table.push((f.clone(), Act::Insert));
                    to_append.push((f.clone(), nv.clone()));
                }
            }
            s if s.starts_with('s') => {
                table.push((s[1..].to_string(), Act::Sub(v.as_document().unwrap())))
            }
            other => panic!("unexpected diff section {other}"),
        }
    }
    let mut out = Document::new();
    let mut done = Vec::new();
    for (f, v) in pre {
        match table.iter().find(|(k, _)| k == f).map(|(_, a)| a) {
            None => {
                out.insert(f.clone(), v.clone());
            }
            Some(Act::Delete) | Some(Act::Insert) => {}
            Some(Act::Update(nv)) => {
                out.insert(f.clone(), (*nv).clone());
                done.push(f.clone());
            }
            Some(Act::Sub(sd)) => {
                let is_arr = sd.get("a") == Some(&Bson::Boolean(true));
                let nv = match (v, is_arr) {
                    (Bson::Array(a), true) => Bson::Array(apply_array(a, sd)),
                    (Bson::Document(d), false) => Bson::Document(apply_object(d, sd)),
                    _ => Bson::Null,
                };
                out.insert(f.clone(), nv);
            }
        }
    }
    for (f, v) in to_append {
        if !done.contains(&f) {
            out.insert(f, v);
        }
    }
    out
}

fn apply_array(pre: &[Bson], diff: &Document) -> Vec<Bson> {
    let n = diff.get("l").map(|l| match l {
        Bson::Int32(i) => *i as usize,
        Bson::Int64(i) => *i as usize,
        _ => panic!("bad l"),
    });
    let mut mods: Vec<(usize, bool, &Bson)> = diff
        .iter()
        .filter(|(k, _)| k.as_str() != "a" && k.as_str() != "l")
        .map(|(k, v)| (k[1..].parse().unwrap(), k.starts_with('u'), v))
        .collect();
    mods.sort_by_key(|m| m.0);
    let apply_mod = |m: &(usize, bool, &Bson), cur: Option<&Bson>| -> Bson {
        if m.1 {
            return m.2.clone();
        }
        let sd = m.2.as_document().unwrap();
        match (cur, sd.get("a") == Some(&Bson::Boolean(true))) {
            (Some(Bson::Array(a)), true) => Bson::Array(apply_array(a, sd)),
            (Some(Bson::Document(d)), false) => Bson::Document(apply_object(d, sd)),
            _ => Bson::Null,
        }
    };
    let mut out = Vec::new();
    for (idx, v) in pre.iter().enumerate() {
        if n.is_some_and(|n| idx >= n) {
            break;
        }
        match mods.iter().find(|m| m.0 == idx) {
            Some(m) => out.push(apply_mod(m, Some(v))),
            None => out.push(v.clone()),
        }
    }
    loop {
        let idx = out.len();
        let pending = mods.iter().any(|m| m.0 >= idx);
        if !(n.is_some_and(|n| out.len() < n) || pending) {
            break;
        }
        match mods.iter().find(|m| m.0 == idx) {
            Some(m) if m.1 => out.push(m.2.clone()),
            _ => out.push(Bson::Null),
        }
    }
    out
}

fn same_bytes(a: &Document, b: &Document) -> bool {
    a.to_vec().unwrap() == b.to_vec().unwrap()
}

#[tokio::test]
async fn replica_set_discovery_auth_and_hello_shape() {
    let (sim, c) = rs_with_auth().await;
    let hello = c
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await
        .unwrap();
    assert_eq!(hello.get_str("setName").unwrap(), "rs0");
    assert!(hello.get_bool("isWritablePrimary").unwrap());
    let host = sim.addr().to_string();
    assert_eq!(
        hello.get_array("hosts").unwrap(),
        &vec![Bson::String(host.clone())]
    );
    assert_eq!(hello.get_str("me").unwrap(), host);
    assert_eq!(hello.get_i32("maxWireVersion").unwrap(), 21);
    assert!(matches!(hello.get("$clusterTime"), Some(Bson::Document(_))));
    assert!(matches!(
        hello.get("operationTime"),
        Some(Bson::Timestamp(_))
    ));
    // Wrong password: 18.
    let bad = client(&sim.uri_with_credentials("root", "nope")).await;
    let err = bad
        .database("app")
        .run_command(doc! {"ping": 1})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Authentication failed"), "{err}");
    // No credentials: 13 on data commands.
    let anon = client(&sim.uri()).await;
    let err = anon
        .database("app")
        .collection::<Document>("c")
        .find_one(doc! {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("requires authentication"), "{err}");
    sim.shutdown().await;
}

#[tokio::test]
async fn crud_operators_and_their_oplog_diffs() {
    let (sim, c) = rs_with_auth().await;
    let coll = c.database("app").collection::<Document>("people");
    coll.insert_many(vec![
        doc! {"_id": 1, "name": "a", "n": 1, "tags": ["x", "y"], "sub": {"k": 1, "z": 0}, "old": 1},
        doc! {"_id": 2, "name": "b", "n": 5, "arr": [1, 2, 3, 4]},
        doc! {"_id": 3, "name": "c", "n": 9},
    ])
    .await
    .unwrap();
    let updates: Vec<(Document, Document)> = vec![
        (
            doc! {"_id": 1},
            doc! {"$set": {"name": "A", "sub.k": 2, "new": true}},
        ),
        (
            doc! {"_id": 1},
            doc! {"$unset": {"old": ""}, "$inc": {"n": 2}},
        ),
        (
            doc! {"_id": 1},
            doc! {"$push": {"tags": {"$each": ["z", "w"], "$slice": 3}}},
        ),
        (
            doc! {"_id": 1},
            doc! {"$pull": {"tags": "x"}, "$addToSet": {"set": {"$each": [1, 1, 2]}}},
        ),
        (
            doc! {"_id": 1},
            doc! {"$rename": {"name": "title"}, "$min": {"n": 0}, "$max": {"hi": 10}},
        ),
        (
            doc! {"_id": 2},
            doc! {"$pull": {"arr": {"$gte": 3}}, "$set": {"arr2": [[1, 2], {"q": 1}]}},
        ),
        (
            doc! {"_id": 2},
            doc! {"$set": {"arr2.0.1": 5, "arr2.1.q": 2}},
        ),
    ];
    for (q, u) in &updates {
        let pre = coll.find_one(q.clone()).await.unwrap().unwrap();
        let r = coll.update_one(q.clone(), u.clone()).await.unwrap();
        assert_eq!(r.modified_count, 1, "{u}");
        let post = coll.find_one(q.clone()).await.unwrap().unwrap();
        let entry = c
            .database("local")
            .collection::<Document>("oplog.rs")
            .find_one(doc! {"op": "u", "ns": "app.people"})
            .sort(doc! {"$natural": -1})
            .await
            .unwrap()
            .unwrap();
        let o = entry.get_document("o").unwrap();
        assert_eq!(o.get_i32("$v").unwrap(), 2, "{o}");
        assert_eq!(
            entry.get_document("o2").unwrap(),
            &doc! {"_id": q.get("_id").unwrap().clone()}
        );
        let applied = apply_object(&pre, o.get_document("diff").unwrap());
        assert!(
            same_bytes(&applied, &post),
            "diff {o} turned {pre} into {applied}, expected {post}"
        );
    }
    // Replacement is logged as the full document.
    coll.replace_one(doc! {"_id": 3}, doc! {"name": "C"})
        .await
        .unwrap();
    let entry = c
        .database("local")
        .collection::<Document>("oplog.rs")
        .find_one(doc! {"op": "u"})
        .sort(doc! {"$natural": -1})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        entry.get_document("o").unwrap(),
        &doc! {"_id": 3, "name": "C"}
    );
    // Upsert, multi update, filters.
    let r = coll
        .update_one(doc! {"_id": 10}, doc! {"$set": {"n": 100}})
        .upsert(true)
        .await
        .unwrap();
    assert_eq!(r.upserted_id, Some(Bson::Int32(10)));
    let r = coll
        .update_many(doc! {"n": {"$gte": 0}}, doc! {"$inc": {"n": 1}})
        .await
        .unwrap();
    assert_eq!(r.matched_count, 3);
    let found: Vec<Document> = coll
        .find(
            doc! {"$or": [{"n": {"$in": [101]}}, {"title": {"$exists": true}}], "_id": {"$ne": 2}},
        )
        .sort(doc! {"_id": 1})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let ids: Vec<i32> = found.iter().map(|d| d.get_i32("_id").unwrap()).collect();
    assert_eq!(ids, [1, 10]);
    let projected = coll
        .find_one(doc! {"_id": 2})
        .projection(doc! {"arr": 1, "_id": 0})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(projected, doc! {"arr": [1, 2]});
    let d = coll.delete_many(doc! {"n": {"$lt": 50}}).await.unwrap();
    assert_eq!(d.deleted_count, 2);
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn cursors_span_many_batches_and_catalog_shapes() {
    let (sim, c) = rs_with_auth().await;
    let db = c.database("app");
    let coll = db.collection::<Document>("big");
    let docs: Vec<Document> = (0..2500)
        .map(|i| doc! {"_id": i, "v": format!("{i:05}")})
        .collect();
    coll.insert_many(docs).ordered(false).await.unwrap();
    let opts = FindOptions::builder().batch_size(100).build();
    let all: Vec<Document> = coll
        .find(doc! {})
        .with_options(opts)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all.len(), 2500);
    assert!(all
        .windows(2)
        .all(|w| w[0].get_i32("_id").unwrap() < w[1].get_i32("_id").unwrap()));

    db.create_collection("capped")
        .capped(true)
        .size(1 << 20)
        .max(10)
        .await
        .unwrap();
    coll.create_index(
        mongodb::IndexModel::builder()
            .keys(doc! {"v": 1})
            .options(
                mongodb::options::IndexOptions::builder()
                    .unique(true)
                    .name("v_1".to_string())
                    .build(),
            )
            .build(),
    )
    .await
    .unwrap();
    let specs = db
        .list_collections()
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    let capped = specs.iter().find(|s| s.name == "capped").unwrap();
    assert_eq!(capped.options.capped, Some(true));
    assert!(capped.info.uuid.is_some());
    let idx: Vec<_> = coll
        .list_indexes()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(idx.len(), 2);
    assert_eq!(idx[1].keys, doc! {"v": 1});
    let err = coll
        .insert_one(doc! {"_id": 9999, "v": "00001"})
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("code: 11000"), "{msg}");
    assert!(
        msg.contains("E11000 duplicate key error collection: app.big index: v_1 dup key: { v: "),
        "{msg}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn db_hash_is_stable_across_identical_data() {
    let sim = MongoSim::builder().start().await.unwrap();
    let c = client(&sim.uri()).await;
    for db in ["a", "b"] {
        let coll = c.database(db).collection::<Document>("c");
        coll.insert_many((0..50).map(|i| doc! {"_id": i, "x": i * 2}))
            .await
            .unwrap();
    }
    let ha = c
        .database("a")
        .run_command(doc! {"dbHash": 1})
        .await
        .unwrap();
    let hb = c
        .database("b")
        .run_command(doc! {"dbHash": 1})
        .await
        .unwrap();
    assert_eq!(ha.get_str("md5").unwrap(), hb.get_str("md5").unwrap());
    c.database("b")
        .collection::<Document>("c")
        .update_one(doc! {"_id": 1}, doc! {"$set": {"x": 3}})
        .await
        .unwrap();
    let hb = c
        .database("b")
        .run_command(doc! {"dbHash": 1})
        .await
        .unwrap();
    assert_ne!(ha.get_str("md5").unwrap(), hb.get_str("md5").unwrap());
    sim.shutdown().await;
}

#[tokio::test]
async fn tailing_the_oplog_sees_a_write_quickly() {
    let sim = MongoSim::builder().start().await.unwrap();
    let c = client(&sim.uri()).await;
    let oplog = c.database("local").collection::<Document>("oplog.rs");
    let last = oplog
        .find_one(doc! {})
        .sort(doc! {"$natural": -1})
        .await
        .unwrap()
        .unwrap();
    let ts: Timestamp = last.get_timestamp("ts").unwrap();
    let mut cursor = oplog
        .find(doc! {"ts": {"$gt": ts}})
        .cursor_type(mongodb::options::CursorType::TailableAwait)
        .max_await_time(Duration::from_secs(5))
        .await
        .unwrap();
    let writer = c.database("app").collection::<Document>("t");
    let started = Instant::now();
    writer.insert_one(doc! {"_id": 1}).await.unwrap();
    let mut seen_insert = false;
    while !seen_insert {
        let e = tokio::time::timeout(Duration::from_secs(5), cursor.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen_insert = e.get_str("op").unwrap() == "i";
    }
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn single_node_has_no_oplog_and_no_set_name() {
    let sim = MongoSim::builder().single_node().start().await.unwrap();
    let c = client(&sim.uri()).await;
    let hello = c
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await
        .unwrap();
    assert!(hello.get("setName").is_none());
    c.database("app")
        .collection::<Document>("c")
        .insert_one(doc! {"a": 1})
        .await
        .unwrap();
    let n = c
        .database("local")
        .collection::<Document>("oplog.rs")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(n, 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn reader_without_oplog_privilege_gets_unauthorized() {
    let sim = MongoSim::builder()
        .user_with_roles("reader", "pw", &[("readAnyDatabase", "admin")])
        .start()
        .await
        .unwrap();
    let c = client(&sim.uri_with_credentials("reader", "pw")).await;
    c.database("app")
        .collection::<Document>("c")
        .find_one(doc! {})
        .await
        .unwrap();
    let err = c
        .database("local")
        .collection::<Document>("oplog.rs")
        .find_one(doc! {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not authorized on local"), "{err}");
    sim.shutdown().await;
}

#[tokio::test]
async fn unknown_command_and_fault_injection() {
    let sim = MongoSim::builder().start().await.unwrap();
    let c = client(&sim.uri()).await;
    let err = c
        .database("app")
        .run_command(doc! {"frobnicate": 1})
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no such command: 'frobnicate'"),
        "{err}"
    );
    sim.faults().fail_command("find", 11600, Some(1));
    sim.faults().fail_command("insert", 2, Some(1));
    let err = c
        .database("app")
        .collection::<Document>("c")
        .insert_one(doc! {"a": 1})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("fault injection"), "{err}");
    c.database("app")
        .collection::<Document>("c")
        .insert_one(doc! {"a": 1})
        .await
        .unwrap();
    sim.shutdown().await;
}

#[tokio::test]
async fn scram_sha1_and_idle_clients_do_not_spin() {
    let sim = MongoSim::builder()
        .user("root", "secret")
        .start()
        .await
        .unwrap();
    let uri = format!(
        "{}&authMechanism=SCRAM-SHA-1",
        sim.uri_with_credentials("root", "secret")
    );
    let c = client(&uri).await;
    c.database("app")
        .collection::<Document>("c")
        .insert_one(doc! {"a": 1})
        .await
        .unwrap();
    let commands = |d: &Document| {
        d.get_document("opcounters")
            .unwrap()
            .get_i64("command")
            .unwrap()
    };
    let before = c
        .database("admin")
        .run_command(doc! {"serverStatus": 1})
        .await
        .unwrap();
    // Awaitable hello keeps an idle client's monitor quiet: measure a short idle window.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = c
        .database("admin")
        .run_command(doc! {"serverStatus": 1})
        .await
        .unwrap();
    assert!(
        commands(&after) - commands(&before) < 20,
        "{} commands while idle",
        commands(&after) - commands(&before)
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn periodic_noops_keep_an_idle_oplog_moving() {
    let sim = MongoSim::builder()
        .noop_interval(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    let c = client(&sim.uri()).await;
    let oplog = c.database("local").collection::<Document>("oplog.rs");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = oplog
            .count_documents(doc! {"op": "n", "o.msg": "periodic noop"})
            .await
            .unwrap();
        if n > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no periodic noop written");
        tokio::task::yield_now().await;
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn an_outage_makes_the_server_unreachable_until_it_ends() {
    let sim = MongoSim::builder()
        .user("root", "secret")
        .start()
        .await
        .unwrap();
    let mut opts = ClientOptions::parse(sim.uri_with_credentials("root", "secret"))
        .await
        .unwrap();
    opts.server_selection_timeout = Some(Duration::from_millis(500));
    let c = Client::with_options(opts).unwrap();
    let admin = c.database("admin");
    admin.run_command(doc! {"ping": 1}).await.unwrap();

    sim.faults().set_outage(true);
    // The first ping may die on its pooled connection (I/O error); from then on the server is
    // unknown and cannot be selected, as when the network is cut.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let err = admin.run_command(doc! {"ping": 1}).await.unwrap_err();
        if matches!(*err.kind, mongodb::error::ErrorKind::ServerSelection { .. }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no server selection error: {err}"
        );
    }

    sim.faults().set_outage(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match admin.run_command(doc! {"ping": 1}).await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "still unreachable: {e}"),
        }
    }
    c.database("app")
        .collection::<Document>("c")
        .insert_one(doc! {"a": 1})
        .await
        .unwrap();
    sim.shutdown().await;
}

#[tokio::test]
async fn db_stats_reports_the_configured_filesystem() {
    const MIB: u64 = 1 << 20;
    let sim = MongoSim::builder()
        .filesystem(51_200 * MIB, 12_345 * MIB)
        .start()
        .await
        .unwrap();
    let c = client(&sim.uri()).await;
    let db = c.database("app");
    db.collection::<Document>("c")
        .insert_one(doc! {"a": 1})
        .await
        .unwrap();
    let ds = db.run_command(doc! {"dbStats": 1}).await.unwrap();
    assert_eq!(ds.get_f64("fsTotalSize").unwrap(), (51_200 * MIB) as f64);
    assert_eq!(ds.get_f64("fsUsedSize").unwrap(), (12_345 * MIB) as f64);
    let ds = db
        .run_command(doc! {"dbStats": 1, "scale": MIB as i64})
        .await
        .unwrap();
    assert_eq!(ds.get_f64("fsTotalSize").unwrap(), 51_200.0);
    assert_eq!(ds.get_f64("fsUsedSize").unwrap(), 12_345.0);
    assert_eq!(ds.get_f64("scaleFactor").unwrap(), MIB as f64);
    sim.shutdown().await;

    // The defaults: 100 GiB with 10 GiB used.
    let sim = MongoSim::builder().start().await.unwrap();
    let c = client(&sim.uri()).await;
    let ds = c
        .database("app")
        .run_command(doc! {"dbStats": 1, "scale": 1024})
        .await
        .unwrap();
    assert_eq!(
        ds.get_f64("fsTotalSize").unwrap(),
        (mongosim::DEFAULT_FS_TOTAL_BYTES / 1024) as f64
    );
    assert_eq!(ds.get_f64("fsUsedSize").unwrap(), (10u64 << 20) as f64);
    sim.shutdown().await;
}

#[tokio::test]
async fn the_binary_reports_the_filesystem_given_by_its_flags() {
    use tokio::io::AsyncBufReadExt;
    let bin = env!("CARGO_BIN_EXE_mongosim");
    let bad = tokio::process::Command::new(bin)
        .args([
            "--port",
            "0",
            "--fs-total-size",
            "100",
            "--fs-used-size",
            "101",
        ])
        .output()
        .await
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("--fs-used-size"), "{stderr}");

    let mut child = tokio::process::Command::new(bin)
        .args([
            "--port",
            "0",
            "--fs-total-size",
            "2000000",
            "--fs-used-size",
            "500000",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr = line
        .strip_prefix("mongosim listening on ")
        .unwrap()
        .to_string();
    let c = client(&format!("mongodb://{addr}/?directConnection=true")).await;
    let ds = c
        .database("app")
        .run_command(doc! {"dbStats": 1, "scale": 1000})
        .await
        .unwrap();
    assert_eq!(ds.get_f64("fsTotalSize").unwrap(), 2000.0);
    assert_eq!(ds.get_f64("fsUsedSize").unwrap(), 500.0);
    child.kill().await.unwrap();
}
