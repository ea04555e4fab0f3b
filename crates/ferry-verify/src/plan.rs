//! Planning the document comparison: per collection present on both sides, a count estimate and
//! `_id` ranges split at points sampled with `$sample` + `$sort` on the source (the engine's method:
//! split points of the dominant `_id` type only; the first range is the complement of
//! `{_id: {$gte: p1}}`, so `_id`s of other types are never skipped). Ranges are the unit of
//! parallelism and of resumption.

use std::time::Duration;

use bson::{doc, Bson, Document};
use futures::TryStreamExt;
use mongodb::Client;
use tokio_util::sync::CancellationToken;

use crate::mongo::{self, Side};
use crate::state::{self, CollPlan};
use crate::VerifyError;

pub(crate) fn split_ns(ns: &str) -> (&str, &str) {
    ns.split_once('.').unwrap_or((ns, ""))
}

fn num(d: &Document, key: &str) -> u64 {
    match d.get(key) {
        Some(Bson::Int32(n)) => (*n).max(0) as u64,
        Some(Bson::Int64(n)) => (*n).max(0) as u64,
        Some(Bson::Double(n)) if *n > 0.0 => *n as u64,
        _ => 0,
    }
}

/// Plans every collection in `namespaces`.
pub(crate) async fn build(
    src: &Client,
    cancel: &CancellationToken,
    budget: Duration,
    namespaces: &[String],
    docs_per_range: u64,
) -> Result<Vec<CollPlan>, VerifyError> {
    let mut out = Vec::with_capacity(namespaces.len());
    for ns in namespaces {
        out.push(plan_collection(src, cancel, budget, ns, docs_per_range).await?);
    }
    Ok(out)
}

async fn plan_collection(
    src: &Client,
    cancel: &CancellationToken,
    budget: Duration,
    ns: &str,
    docs_per_range: u64,
) -> Result<CollPlan, VerifyError> {
    let (db, name) = split_ns(ns);
    let count = mongo::command(src, cancel, budget, Side::Source, db, doc! {"count": name})
        .await
        .map_err(|e| e.into_verify("count", ns))?
        .map_or(0, |d| num(&d, "n"));
    let n_ranges = if docs_per_range == 0 {
        1
    } else {
        count.div_ceil(docs_per_range).clamp(1, 4096) as usize
    };
    let mut splits = Vec::new();
    if n_ranges > 1 {
        let sample_size = (n_ranges as u64 * 16).min(count).max(1) as i64;
        let coll = src.database(db).collection::<Document>(name);
        let pipeline = vec![
            doc! {"$sample": {"size": sample_size}},
            doc! {"$project": {"_id": 1}},
            doc! {"$sort": {"_id": 1}},
        ];
        let sample = mongo::retry(cancel, budget, Side::Source, "sample _id", || async {
            coll.aggregate(pipeline.clone())
                .await?
                .try_collect::<Vec<Document>>()
                .await
        })
        .await;
        match sample {
            Ok(Some(docs)) => {
                let ids: Vec<Bson> = docs
                    .into_iter()
                    .filter_map(|mut d| d.remove("_id"))
                    .collect();
                splits = state::pick_splits(&ids, n_ranges);
            }
            Ok(None) => return Err(VerifyError::Cancelled),
            Err(e) => {
                tracing::warn!(%ns, error = %e.error, "cannot sample _id; comparing the collection as one range")
            }
        }
    }
    Ok(CollPlan {
        ns: ns.to_string(),
        docs_estimated: count,
        ranges: state::ranges_from_splits(splits),
    })
}
