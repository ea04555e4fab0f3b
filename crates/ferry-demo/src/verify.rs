//! Verification after cut-over: every collection of the source equals the destination byte for byte (documents
//! sorted by `_id`), with the same indexes.

use anyhow::Context;
use ferry_testkit::mongo::index_specs;
use futures::TryStreamExt;
use mongodb::bson::{doc, RawDocumentBuf};
use mongodb::Client;

/// What verification found for one collection.
pub struct CollectionReport {
    pub namespace: String,
    pub documents: u64,
    pub equal: bool,
    pub indexes_equal: bool,
    pub detail: String,
}

/// Compares one collection on both sides.
pub async fn compare(
    source: &Client,
    dest: &Client,
    db: &str,
    coll: &str,
) -> anyhow::Result<CollectionReport> {
    let namespace = format!("{db}.{coll}");
    let src = source.database(db).collection::<RawDocumentBuf>(coll);
    let dst = dest.database(db).collection::<RawDocumentBuf>(coll);
    let mut a = src
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .await
        .context("source find")?;
    let mut b = dst
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .await
        .context("destination find")?;
    let mut documents = 0_u64;
    let mut detail = String::new();
    let mut equal = true;
    loop {
        let (x, y) = (a.try_next().await?, b.try_next().await?);
        match (x, y) {
            (None, None) => break,
            (Some(x), Some(y)) if x.as_bytes() == y.as_bytes() => documents += 1,
            (x, y) => {
                equal = false;
                detail = format!(
                    "first difference after {documents} equal documents: source {:?}, destination {:?}",
                    x.map(|d| d.get("_id").ok().flatten().map(|v| format!("{v:?}"))),
                    y.map(|d| d.get("_id").ok().flatten().map(|v| format!("{v:?}"))),
                );
                break;
            }
        }
    }
    let indexes_equal = index_specs(source, db, coll).await? == index_specs(dest, db, coll).await?;
    if !indexes_equal && detail.is_empty() {
        detail = "indexes differ".to_string();
    }
    Ok(CollectionReport {
        namespace,
        documents,
        equal,
        indexes_equal,
        detail,
    })
}
