//! The verifier's durable state (the private JSON inside `VerifyCheckpoint`, `{"v":1,...}`): the
//! plan (collections, `_id` ranges with their bounds as canonical extended JSON, which are done and
//! what they counted), the confirmed mismatches so far, the recheck queue position and the oplog
//! watcher's position. Pure data and codecs; no IO.

use std::collections::BTreeMap;

use bson::{doc, Bson, Document};
use serde::{Deserialize, Serialize};

use crate::types::{Mismatch, MismatchKind};
use crate::VerifyError;

const VERSION: u32 = 1;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct RangePlan {
    /// Inclusive lower bound (`None`: the first range, which also holds `_id`s of other types).
    pub lo: Option<serde_json::Value>,
    /// Exclusive upper bound (`None`: unbounded).
    pub hi: Option<serde_json::Value>,
    pub done: bool,
    pub src_docs: u64,
    pub dst_docs: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct CollPlan {
    pub ns: String,
    pub docs_estimated: u64,
    pub ranges: Vec<RangePlan>,
}

/// Counts of confirmed mismatches beyond `max_reported_mismatches` (no details kept).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Overflow {
    pub missing: u64,
    pub extra: u64,
    pub different: u64,
    pub metadata: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct VerifyState {
    pub v: u32,
    /// Source oplog time when the verification started (packed `OpTime`).
    pub start_ts: Option<u64>,
    /// Last oplog entry the watcher queued (packed `OpTime`).
    pub watcher_ts: Option<u64>,
    pub metadata_done: bool,
    /// The metadata pass ran while the migration was running: compared again at the end.
    pub metadata_deferred: bool,
    pub collections: Vec<CollPlan>,
    /// Confirmed mismatches by key (`d:<ns>\0<hex _id>` for documents, `m:<ns>\0<what>` for metadata).
    pub confirmed: BTreeMap<String, Mismatch>,
    pub overflow: Overflow,
    pub queue_gen: u64,
    pub queue_head: u64,
}

impl VerifyState {
    pub(crate) fn new() -> Self {
        Self {
            v: VERSION,
            ..Self::default()
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, VerifyError> {
        let st: Self = serde_json::from_slice(bytes)
            .map_err(|e| VerifyError::BadCheckpoint(format!("cannot decode: {e}")))?;
        if st.v != VERSION {
            return Err(VerifyError::BadCheckpoint(format!(
                "version {} is not supported (expected {VERSION})",
                st.v
            )));
        }
        Ok(st)
    }

    /// Records a confirmed mismatch; `true` when it is new.
    pub(crate) fn confirm(&mut self, key: String, m: Mismatch, cap: usize) -> bool {
        if let Some(old) = self.confirmed.get_mut(&key) {
            *old = m;
            return false;
        }
        if self.confirmed.len() < cap {
            self.confirmed.insert(key, m);
            return true;
        }
        let o = &mut self.overflow;
        match m.kind {
            MismatchKind::MissingOnDestination => o.missing += 1,
            MismatchKind::ExtraOnDestination => o.extra += 1,
            MismatchKind::Different => o.different += 1,
            MismatchKind::Metadata => o.metadata += 1,
        }
        true
    }

    pub(crate) fn ranges(&self) -> (u64, u64) {
        let total = self.collections.iter().map(|c| c.ranges.len() as u64).sum();
        let done = self
            .collections
            .iter()
            .flat_map(|c| &c.ranges)
            .filter(|r| r.done)
            .count() as u64;
        (done, total)
    }
}

pub(crate) fn doc_key(ns: &str, id_doc: &[u8]) -> String {
    let mut s = format!("d:{ns}\0");
    for b in id_doc {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

pub(crate) fn meta_key(ns: &str, what: &str) -> String {
    format!("m:{ns}\0{what}")
}

pub(crate) fn to_ext(value: Bson) -> serde_json::Value {
    value.into_canonical_extjson()
}

fn from_ext(value: &serde_json::Value) -> Result<Bson, VerifyError> {
    Bson::try_from(value.clone())
        .map_err(|e| VerifyError::BadCheckpoint(format!("bad extended JSON: {e}")))
}

impl RangePlan {
    /// The `find` filter of this range. The first range is the complement of `{_id: {$gte: hi}}`, so
    /// `_id`s of other type brackets than the split points' are never skipped.
    pub(crate) fn filter(&self) -> Result<Document, VerifyError> {
        let lo = self.lo.as_ref().map(from_ext).transpose()?;
        let hi = self.hi.as_ref().map(from_ext).transpose()?;
        Ok(match (lo, hi) {
            (None, None) => Document::new(),
            (None, Some(h)) => doc! {"$nor": [{"_id": {"$gte": h}}]},
            (Some(l), None) => doc! {"_id": {"$gte": l}},
            (Some(l), Some(h)) => doc! {"_id": {"$gte": l, "$lt": h}},
        })
    }
}

pub(crate) fn ranges_from_splits(splits: Vec<Bson>) -> Vec<RangePlan> {
    let mut bounds: Vec<Option<serde_json::Value>> = vec![None];
    bounds.extend(splits.into_iter().map(|b| Some(to_ext(b))));
    bounds.push(None);
    bounds
        .windows(2)
        .map(|w| RangePlan {
            lo: w[0].clone(),
            hi: w[1].clone(),
            ..RangePlan::default()
        })
        .collect()
}

/// Picks `n - 1` split points from a server-sorted sample of `_id`s, keeping only values of the
/// dominant type bracket (range predicates compare within a bracket only), deduplicated.
pub(crate) fn pick_splits(sorted_sample: &[Bson], n: usize) -> Vec<Bson> {
    fn bracket(b: &Bson) -> Option<usize> {
        match b {
            Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) => Some(1),
            Bson::String(_) => Some(2),
            Bson::ObjectId(_) => Some(3),
            Bson::DateTime(_) => Some(4),
            _ => None,
        }
    }
    if n < 2 {
        return Vec::new();
    }
    let mut counts = [0usize; 5];
    for b in sorted_sample {
        if let Some(k) = bracket(b) {
            counts[k] += 1;
        }
    }
    let Some((best, _)) = counts
        .iter()
        .enumerate()
        .max_by_key(|(_, c)| **c)
        .filter(|(_, c)| **c > 0)
    else {
        return Vec::new();
    };
    let vals: Vec<&Bson> = sorted_sample
        .iter()
        .filter(|b| bracket(b) == Some(best))
        .collect();
    let mut out: Vec<Bson> = Vec::new();
    for k in 1..n {
        let idx = k * vals.len() / n;
        if let Some(v) = vals.get(idx) {
            if idx > 0 && out.last() != Some(*v) {
                out.push((*v).clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn state_round_trips_and_rejects_other_versions() {
        let mut st = VerifyState::new();
        st.collections.push(CollPlan {
            ns: "a.b".into(),
            docs_estimated: 3,
            ranges: ranges_from_splits(vec![Bson::Int32(5)]),
        });
        let back = VerifyState::decode(&st.encode()).unwrap();
        assert_eq!(back.collections[0].ranges.len(), 2);
        assert_eq!(
            back.collections[0].ranges[1].filter().unwrap(),
            doc! {"_id": {"$gte": 5}}
        );
        assert_eq!(
            back.collections[0].ranges[0].filter().unwrap(),
            doc! {"$nor": [{"_id": {"$gte": 5}}]}
        );
        let mut bad = st.clone();
        bad.v = 99;
        assert!(VerifyState::decode(&bad.encode()).is_err());
    }

    #[test]
    fn splits_come_from_the_dominant_bracket() {
        let sample: Vec<Bson> = (0..10)
            .map(Bson::Int32)
            .chain(std::iter::once(Bson::String("x".into())))
            .collect();
        let s = pick_splits(&sample, 2);
        assert_eq!(s, vec![Bson::Int32(5)]);
    }

    #[test]
    fn confirmations_beyond_the_cap_are_counted() {
        let mut st = VerifyState::new();
        let m = Mismatch {
            namespace: "a.b".into(),
            id: None,
            kind: MismatchKind::Different,
            field_path: None,
            description: String::new(),
        };
        assert!(st.confirm("k1".into(), m.clone(), 1));
        assert!(!st.confirm("k1".into(), m.clone(), 1));
        assert!(st.confirm("k2".into(), m, 1));
        assert_eq!(st.confirmed.len(), 1);
        assert_eq!(st.overflow.different, 1);
    }
}
