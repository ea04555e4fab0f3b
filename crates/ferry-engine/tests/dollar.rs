#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are assertions
//! Documents with top-level `$`-prefixed field names (legal since MongoDB 5.0; no replacement `update`
//! accepts them): inserts, `$v:2` updates, replacement entries and deletes replay exactly, also after a
//! crash between the delete and the insert that write such a document.
mod common;

use std::time::Duration;

use anyhow::Result;
use common::*;
use ferry_engine::{apply_oplog_entries, Endpoint, OpTime, Outcome, Phase};
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document, Timestamp};
use mongodb::Client;

fn entry(op: &str, o: Document, o2: Option<Document>, i: u32) -> Document {
    let mut e = doc! {"op": op, "ns": "app.things", "o": o, "ts": Timestamp { time: 1_700_000_000, increment: i }};
    if let Some(o2) = o2 {
        e.insert("o2", o2);
    }
    e
}

async fn get(c: &Client, id: impl Into<Bson>) -> Option<Document> {
    c.database("app")
        .collection::<Document>("things")
        .find_one(doc! {"_id": id.into()})
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dollar_field_entries_apply_and_replay() -> Result<()> {
    init_tracing();
    let p = pair().await?;
    let ep = Endpoint {
        uri: p.dest.uri(),
        username: USER.into(),
        password: PASSWORD.into(),
    };
    let all: Vec<String> = Vec::new();
    let entries = vec![
        entry("i", doc! {"_id": 1, "$dollar": "x", "a": 1}, None, 1),
        entry(
            "u",
            doc! {"$v": 2, "diff": {"u": {"a": 2}, "i": {"b": {"$n": 1}}}},
            Some(doc! {"_id": 1}),
            2,
        ),
        entry(
            "u",
            doc! {"_id": 1, "$dollar": "y", "$other": [1], "c": 3},
            Some(doc! {"_id": 1}),
            3,
        ),
        entry(
            "u",
            doc! {"$v": 2, "diff": {"u": {"c": 4}}},
            Some(doc! {"_id": 1}),
            4,
        ),
        // A replacement that drops the `$` fields, then one that brings one back.
        entry("i", doc! {"_id": 2, "$d": 1}, None, 5),
        entry(
            "u",
            doc! {"_id": 2, "plain": true},
            Some(doc! {"_id": 2}),
            6,
        ),
        entry("u", doc! {"_id": 2, "$back": 1}, Some(doc! {"_id": 2}), 7),
        entry("i", doc! {"_id": 3, "$gone": 1}, None, 8),
        entry("d", doc! {"_id": 3}, None, 9),
    ];
    let expect1 = doc! {"_id": 1, "$dollar": "y", "$other": [1], "c": 4};
    let expect2 = doc! {"_id": 2, "$back": 1};
    apply_oplog_entries(&ep, &all, &entries).await?;
    assert_eq!(get(&p.dst, 1).await, Some(expect1.clone()));
    assert_eq!(get(&p.dst, 2).await, Some(expect2.clone()));
    assert_eq!(get(&p.dst, 3).await, None);
    // Replays (whole, and from every suffix) converge to the same documents.
    for from in 0..entries.len() {
        apply_oplog_entries(&ep, &all, &entries[from..]).await?;
        assert_eq!(get(&p.dst, 1).await, Some(expect1.clone()), "from {from}");
        assert_eq!(get(&p.dst, 2).await, Some(expect2.clone()), "from {from}");
        assert_eq!(get(&p.dst, 3).await, None, "from {from}");
    }
    Ok(())
}

async fn newest_source_ts(src: &Client) -> Result<OpTime> {
    let newest = src
        .database("local")
        .collection::<Document>("oplog.rs")
        .find_one(doc! {})
        .sort(doc! {"$natural": -1})
        .await?
        .expect("oplog entry");
    let ts = newest.get_timestamp("ts")?;
    Ok(OpTime {
        seconds: ts.time,
        increment: ts.increment,
    })
}

/// The source's `u` entries of `app.things` for `_id` `id` (their `o`).
async fn update_entries(src: &Client, id: i32) -> Result<Vec<Document>> {
    let v: Vec<Document> = src
        .database("local")
        .collection::<Document>("oplog.rs")
        .find(doc! {"op": "u", "ns": "app.things", "o2._id": id})
        .await?
        .try_collect()
        .await?;
    Ok(v.into_iter()
        .filter_map(|e| e.get_document("o").ok().cloned())
        .collect())
}

async fn wait_applied(run: &Run, src: &Client) -> Result<()> {
    let target = newest_source_ts(src).await?;
    run.wait_for(
        "applied through the newest entry",
        Duration::from_secs(30),
        |s| {
            s.checkpoints
                .iter()
                .any(|c| c.phase == Phase::OplogSync && c.last_applied.is_some_and(|t| t >= target))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dollar_fields_migrate_through_insert_update_replacement_and_resume() -> Result<()> {
    init_tracing();
    let p = pair().await?;
    let things = p.src.database("app").collection::<Document>("things");
    let seed: Vec<Document> = (0..500)
        .map(|i| doc! {"_id": i, "$dollar": format!("d{i}"), "a": i, "pad": "p".repeat(100)})
        .collect();
    things.insert_many(seed).await?;
    let config = p.config(&["app"]);

    let run = start(config.clone(), None);
    run.wait_for("oplog sync", Duration::from_secs(60), |s| {
        s.phases.contains(&Phase::OplogSync)
    })
    .await?;
    // Insert, $v:2 update, an update the source logs as a replacement (a pipeline update whose diff
    // would be larger than the document), delete.
    things
        .insert_one(doc! {"_id": 1000, "$new": "n", "a": 1})
        .await?;
    things
        .update_one(doc! {"_id": 1}, doc! {"$set": {"a": -1, "sub.$x": 1}})
        .await?;
    things.insert_one(doc! {"_id": 2000, "$s": 1}).await?;
    things
        .update_one(
            doc! {"_id": 2000},
            vec![doc! {"$set": {"big": "y".repeat(300)}}],
        )
        .await?;
    things.delete_one(doc! {"_id": 2}).await?;
    let kinds = update_entries(&p.src, 2000).await?;
    assert!(
        kinds
            .iter()
            .any(|o| o.contains_key("$s") && o.contains_key("big")),
        "expected a replacement entry with a `$` field, got {kinds:?}"
    );
    assert!(update_entries(&p.src, 1)
        .await?
        .iter()
        .any(|o| o.get_i32("$v").ok() == Some(2)));
    wait_applied(&run, &p.src).await?;
    assert_eq!(get(&p.dst, 2000).await, get(&p.src, 2000).await);

    // "Crash" between the delete and the insert of a `$v:2` update's write-back: the insert fails
    // and the task stops with the document missing on the destination.
    p.dest.faults().fail_command("insert", 2, Some(1));
    things
        .update_one(doc! {"_id": 3}, doc! {"$set": {"a": -3}})
        .await?;
    let seen = run.seen.clone();
    let out = run.finish(Duration::from_secs(30)).await?;
    assert!(out.is_err(), "{out:?}");
    assert_eq!(get(&p.dst, 3).await, None);
    p.dest.faults().clear();
    let cp = seen
        .lock()
        .unwrap()
        .checkpoints
        .iter()
        .rev()
        .find(|c| c.phase == Phase::OplogSync)
        .cloned()
        .expect("oplog checkpoint");

    // Later writes to the same document (one more diff on top), then resume from the checkpoint:
    // the replayed diff finds no target and takes the source's version; everything converges.
    things
        .update_one(doc! {"_id": 3}, doc! {"$inc": {"a": 10}})
        .await?;
    things
        .replace_one(doc! {"_id": 5}, doc! {"_id": 5, "plain": 1})
        .await?;
    things.insert_one(doc! {"_id": 3000, "$late": true}).await?;
    let run = start(config, Some(cp));
    wait_applied(&run, &p.src).await?;
    run.control.request_complete();
    let out = run.finish(Duration::from_secs(60)).await??;
    assert!(matches!(out, Outcome::Completed(_)), "{out:?}");
    assert_eq!(
        get(&p.dst, 3).await.and_then(|d| d.get_i32("a").ok()),
        Some(7)
    );
    assert_equal(&p, &["app"]).await?;
    Ok(())
}
