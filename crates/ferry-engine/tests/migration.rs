#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are assertions
//! Full migrations against mongosim: every BSON type, a concurrent writer (inserts, every update
//! operator, array changes, deletes, replacements, collection create/drop/rename, index create/drop)
//! through DATA_SYNC and OPLOG_SYNC, then cut-over and byte-for-byte comparison.
mod common;

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use common::*;
use ferry_engine::{Outcome, Phase};
use mongodb::bson::{
    doc, oid::ObjectId, spec::BinarySubtype, Binary, Bson, DateTime, Decimal128, Document,
    JavaScriptCodeWithScope, Regex, Timestamp,
};
use mongodb::options::IndexOptions;
use mongodb::{Client, IndexModel};

fn every_type(i: i32) -> Document {
    let mut deep = doc! {"leaf": i};
    for level in 0..40 {
        deep = doc! {"level": level, "child": deep, "arr": [level, {"x": level}]};
    }
    doc! {
        "_id": i,
        "double": 1.5 + f64::from(i),
        "string": format!("s{i}"),
        "doc": {"a": 1, "b": {"c": "d"}},
        "array": [1, "two", {"three": 3}, [4, 5]],
        "bin": Binary { subtype: BinarySubtype::Generic, bytes: vec![1, 2, 3, i as u8] },
        "uuid": Binary { subtype: BinarySubtype::Uuid, bytes: vec![7; 16] },
        "oid": ObjectId::from_bytes([i as u8; 12]),
        "bool": i % 2 == 0,
        "date": DateTime::from_millis(1_700_000_000_000 + i64::from(i)),
        "null": Bson::Null,
        "regex": Regex { pattern: "^a.*b$".to_string().try_into().unwrap(), options: "i".to_string().try_into().unwrap() },
        "js": Bson::JavaScriptCode("function() { return 1; }".into()),
        "jsscope": Bson::JavaScriptCodeWithScope(JavaScriptCodeWithScope { code: "x + 1".into(), scope: doc! {"x": 1} }),
        "int32": i,
        "ts": Timestamp { time: 1_700_000_000, increment: i as u32 },
        "int64": i64::from(i) << 40,
        "dec": Decimal128::from_str("1234.5678").unwrap_or_else(|_| Decimal128::from_bytes([0; 16])),
        "min": Bson::MinKey,
        "max": Bson::MaxKey,
        "deep": deep,
        "a.b": "dotted",
        "nested": {"$dollar": 1, "x.y": 2, "": "empty"},
    }
}

async fn seed(src: &Client) -> Result<()> {
    let types = src.database("shop").collection::<Document>("types");
    types
        .insert_many((0..400).map(every_type).collect::<Vec<_>>())
        .await?;
    let orders = src.database("shop").collection::<Document>("orders");
    orders
        .insert_many((0..1500).map(|i| doc! {"_id": ObjectId::new(), "n": i, "sku": format!("sku{}", i % 50), "tags": ["a", "b"], "email": format!("u{i}@x")}).collect::<Vec<_>>())
        .await?;
    orders
        .create_index(
            IndexModel::builder()
                .keys(doc! {"email": 1})
                .options(
                    IndexOptions::builder()
                        .unique(true)
                        .name("email_unique".to_string())
                        .build(),
                )
                .build(),
        )
        .await?;
    orders
        .create_index(
            IndexModel::builder()
                .keys(doc! {"sku": 1, "n": -1})
                .options(
                    IndexOptions::builder()
                        .partial_filter_expression(doc! {"n": {"$gt": 5}})
                        .build(),
                )
                .build(),
        )
        .await?;
    orders
        .create_index(
            IndexModel::builder()
                .keys(doc! {"tags": 1})
                .options(IndexOptions::builder().sparse(true).hidden(true).build())
                .build(),
        )
        .await?;
    let logs = src.database("logs").collection::<Document>("events");
    logs.insert_many(
        (0..600)
            .map(|i| doc! {"_id": format!("e{i:05}"), "at": DateTime::now(), "v": i})
            .collect::<Vec<_>>(),
    )
    .await?;
    logs.create_index(
        IndexModel::builder()
            .keys(doc! {"at": 1})
            .options(
                IndexOptions::builder()
                    .expire_after(Duration::from_secs(86_400 * 365))
                    .build(),
            )
            .build(),
    )
    .await?;
    src.database("logs")
        .run_command(
            doc! {"create": "capped", "capped": true, "size": 1_048_576i64, "max": 1000i64},
        )
        .await?;
    src.database("logs")
        .collection::<Document>("capped")
        .insert_many(
            (0..50)
                .map(|i| doc! {"_id": i, "m": "x"})
                .collect::<Vec<_>>(),
        )
        .await?;
    src.database("shop")
        .run_command(doc! {"create": "validated", "validator": {"$jsonSchema": {"bsonType": "object", "required": ["name"]}}, "collation": {"locale": "simple"}})
        .await?;
    src.database("shop")
        .collection::<Document>("validated")
        .insert_one(doc! {"_id": 1, "name": "ok"})
        .await?;
    src.database("shop").run_command(doc! {"create": "big_orders", "viewOn": "orders", "pipeline": [{"$match": {"n": {"$gt": 1000}}}]}).await?;
    let uniq = src.database("shop").collection::<Document>("uniq");
    uniq.insert_many(vec![doc! {"_id": 1, "u": 1}, doc! {"_id": 2, "u": 2}])
        .await?;
    uniq.create_index(
        IndexModel::builder()
            .keys(doc! {"u": 1})
            .options(IndexOptions::builder().unique(true).build())
            .build(),
    )
    .await?;
    // Not selected: must not be migrated.
    src.database("other")
        .collection::<Document>("x")
        .insert_one(doc! {"_id": 1})
        .await?;
    Ok(())
}

/// One round of every kind of change the writer makes; `round` keeps names unique.
async fn write_round(src: &Client, round: i32) -> Result<()> {
    let types = src.database("shop").collection::<Document>("types");
    let id = round % 400;
    types.insert_one(every_type(10_000 + round)).await?;
    types.update_one(doc! {"_id": id}, doc! {"$set": {"string": "changed", "doc.b.c": "e", "new.field": 1}, "$inc": {"int32": 3}}).await?;
    types.update_one(doc! {"_id": id}, doc! {"$unset": {"null": ""}, "$mul": {"double": 2.0}, "$min": {"int64": 1}, "$max": {"count": 9}}).await?;
    types
        .update_one(
            doc! {"_id": id},
            doc! {"$rename": {"bool": "boolean"}, "$currentDate": {"touched": true}},
        )
        .await?;
    types
        .update_one(
            doc! {"_id": id},
            doc! {"$push": {"array": {"$each": [6, 7]}}, "$addToSet": {"set": "v"}},
        )
        .await?;
    types
        .update_one(
            doc! {"_id": id},
            doc! {"$pull": {"array": "two"}, "$pop": {"set": 1}},
        )
        .await?;
    types
        .update_one(
            doc! {"_id": id},
            doc! {"$set": {"array.0": 100, "deep.child.level": -1}},
        )
        .await?;
    types
        .update_one(
            doc! {"_id": id},
            vec![doc! {"$set": {"array": [100, 6], "piped": round}}],
        )
        .await?;
    types
        .update_one(
            doc! {"_id": 20_000 + round},
            doc! {"$setOnInsert": {"created": true}, "$set": {"u": 1}},
        )
        .upsert(true)
        .await?;
    types
        .replace_one(
            doc! {"_id": (id + 1) % 400},
            doc! {"_id": (id + 1) % 400, "replaced": round, "a.b": {"$x": 1}},
        )
        .await?;
    types.delete_one(doc! {"_id": (id + 2) % 400}).await?;
    let orders = src.database("shop").collection::<Document>("orders");
    orders.insert_one(doc! {"_id": ObjectId::new(), "n": 5000 + round, "sku": "new", "email": format!("w{round}@x")}).await?;
    orders
        .update_many(doc! {"n": {"$lt": 3}}, doc! {"$inc": {"hits": 1}})
        .await?;
    orders.delete_many(doc! {"n": 100 + round}).await?;
    // Two documents swap a unique value through a temporary one (transient states that a
    // reordering applier would turn into duplicate-key errors).
    let uniq = src.database("shop").collection::<Document>("uniq");
    let a = uniq
        .find_one(doc! {"_id": 1})
        .await?
        .and_then(|d| d.get_i32("u").ok())
        .unwrap_or(1);
    let b = uniq
        .find_one(doc! {"_id": 2})
        .await?
        .and_then(|d| d.get_i32("u").ok())
        .unwrap_or(2);
    uniq.update_one(doc! {"_id": 1}, doc! {"$set": {"u": -1 - round}})
        .await?;
    uniq.update_one(doc! {"_id": 2}, doc! {"$set": {"u": a}})
        .await?;
    uniq.update_one(doc! {"_id": 1}, doc! {"$set": {"u": b}})
        .await?;
    // DDL on collections the writer owns.
    let db = src.database("shop");
    let tmp = format!("tmp{round}");
    db.collection::<Document>(&tmp)
        .insert_one(doc! {"_id": 1, "v": round})
        .await?;
    db.collection::<Document>(&tmp)
        .create_index(IndexModel::builder().keys(doc! {"v": 1}).build())
        .await?;
    if round % 3 == 0 {
        db.collection::<Document>(&tmp).drop_index("v_1").await?;
    }
    if round % 2 == 0 {
        src.database("admin").run_command(doc! {"renameCollection": format!("shop.{tmp}"), "to": format!("shop.renamed{round}")}).await?;
    } else if round % 5 == 1 {
        db.collection::<Document>(&tmp).drop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bson_type_with_concurrent_writer_migrates_byte_for_byte() -> Result<()> {
    init_tracing();
    let p = pair().await?;
    seed(&p.src).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let src = p.src.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut round = 0;
            while !stop.load(Ordering::SeqCst) {
                write_round(&src, round).await?;
                round += 1;
            }
            anyhow::Ok(round)
        })
    };
    let run = start(p.config(&["shop", "logs"]), None);
    run.wait_for("oplog sync", Duration::from_secs(60), |s| {
        s.phases.contains(&Phase::OplogSync)
    })
    .await?;
    let writer_done = writer.is_finished();
    let applied = run.wait_for("some oplog applied", Duration::from_secs(30), |s| {
        s.progress
            .last()
            .is_some_and(|p| p.oplog_entries_applied > 50)
    });
    let applied = applied.await;
    stop.store(true, Ordering::SeqCst);
    let rounds = writer.await??;
    assert!(!writer_done);
    applied?;
    assert!(rounds > 0);
    run.control.request_complete();
    let seen = run.seen.clone();
    let out = run.finish(Duration::from_secs(60)).await??;
    let Outcome::Completed(c) = out else {
        panic!("not completed: {out:?}")
    };
    assert!(c.progress.documents_copied >= 2550, "{:?}", c.progress);
    assert!(c.progress.indexes_built >= 4);
    {
        let s = seen.lock().unwrap();
        assert_eq!(
            s.phases,
            vec![Phase::DataSync, Phase::IndexCreation, Phase::OplogSync]
        );
        assert!(s.checkpoints.len() > 5);
        let last = s.progress.last().unwrap();
        assert!(
            last.collections.iter().any(|c| c.ranges_total > 1),
            "large collections are split"
        );
    }
    assert_equal(&p, &["shop", "logs"]).await?;
    let other = p.dst.list_database_names().await?;
    assert!(!other.contains(&"other".to_string()));
    Ok(())
}
