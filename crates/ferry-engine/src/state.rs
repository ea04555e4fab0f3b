//! The engine-private checkpoint payload (`engine_state`, versioned JSON `{"v":1,...}`): the migration
//! plan (collections, options, `_id` ranges and which are done), the namespaces this task created on the
//! destination (recorded before creating them, for rollback), and the copy-end timestamp. BSON values
//! (options, range bounds) are stored as canonical extended JSON so types survive the round trip.

use mongodb::bson::{doc, Bson, Document};
use serde::{Deserialize, Serialize};

use crate::types::OpTime;
use crate::EngineError;

pub(crate) const STATE_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct EngineState {
    pub v: u32,
    /// Namespaces this task created on the destination, in creation order.
    pub created: Vec<String>,
    /// Collections to copy, with their ranges.
    pub collections: Vec<CollState>,
    /// Views (`ns`, options as extended JSON), created after the collections.
    pub views: Vec<ViewState>,
    /// Oldest point to fetch the oplog from (<= start_ts when transactions were open at plan time).
    pub fetch_from: Option<(u32, u32)>,
    /// Newest source oplog ts when the copy finished (the destination is consistent once it is applied).
    pub copy_end: Option<(u32, u32)>,
    /// Secondary indexes already built in INDEX_CREATION.
    pub indexes_built: u32,
    pub indexes_total: u32,
    /// Entries applied so far (for progress across restarts).
    pub oplog_entries_applied: u64,
    /// Unique and TTL indexes kept relaxed on the destination until cut-over, with the source's
    /// definition to restore (`indexes`).
    #[serde(default)]
    pub relaxed: Vec<RelaxedIndex>,
    /// Namespaces whose writes must keep the source's order (capped collections).
    #[serde(default)]
    pub ordered: Vec<String>,
    /// The source's rollback id (`replSetGetRBID`) when the task started; a change means the source
    /// rolled back writes after a failover.
    #[serde(default)]
    pub rbid: Option<i64>,
}

/// An index the destination holds relaxed (non-unique, TTL paused) until cut-over.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct RelaxedIndex {
    pub ns: String,
    pub name: String,
    /// The source's index is unique.
    pub unique: bool,
    /// The source's index has `prepareUnique: true`.
    pub prepare_unique: bool,
    /// The source's `expireAfterSeconds` (extended JSON), when it is a TTL index.
    pub ttl: Option<serde_json::Value>,
    /// The source's whole spec (extended JSON), for a rebuild on servers without collMod conversion.
    pub spec: serde_json::Value,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct CollState {
    pub ns: String,
    /// `listCollections` options (extended JSON).
    pub options: serde_json::Value,
    pub docs_estimated: u64,
    pub bytes_estimated: u64,
    pub ranges: Vec<RangeState>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct RangeState {
    /// Inclusive lower bound (`None`: the first range, which also holds every `_id` of another type).
    pub lo: Option<serde_json::Value>,
    /// Exclusive upper bound (`None`: unbounded).
    pub hi: Option<serde_json::Value>,
    pub done: bool,
    pub docs: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct ViewState {
    pub ns: String,
    pub options: serde_json::Value,
}

pub(crate) fn to_ext(value: Bson) -> serde_json::Value {
    value.into_canonical_extjson()
}

pub(crate) fn from_ext(value: &serde_json::Value) -> Result<Bson, EngineError> {
    Bson::try_from(value.clone())
        .map_err(|e| EngineError::BadCheckpoint(format!("bad extended JSON: {e}")))
}

pub(crate) fn from_ext_doc(value: &serde_json::Value) -> Result<Document, EngineError> {
    match from_ext(value)? {
        Bson::Document(d) => Ok(d),
        other => Err(EngineError::BadCheckpoint(format!(
            "expected a document, got {other}"
        ))),
    }
}

pub(crate) fn pair(t: OpTime) -> (u32, u32) {
    (t.seconds, t.increment)
}

pub(crate) fn optime((seconds, increment): (u32, u32)) -> OpTime {
    OpTime { seconds, increment }
}

impl EngineState {
    pub(crate) fn new() -> Self {
        Self {
            v: STATE_VERSION,
            ..Self::default()
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, EngineError> {
        if bytes.is_empty() {
            return Ok(Self::new());
        }
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| EngineError::BadCheckpoint(e.to_string()))?;
        match value.get("v").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(STATE_VERSION) => {}
            other => {
                return Err(EngineError::BadCheckpoint(format!(
                    "engine_state version {other:?} is not supported (expected {STATE_VERSION})"
                )))
            }
        }
        serde_json::from_value(value).map_err(|e| EngineError::BadCheckpoint(e.to_string()))
    }
}

impl RangeState {
    /// The `find` filter selecting exactly this range. The first range is the complement of
    /// `{_id: {$gte: hi}}`, so `_id`s of other BSON types (which range predicates never match) land in it.
    pub(crate) fn filter(&self) -> Result<Document, EngineError> {
        let lo = self.lo.as_ref().map(from_ext).transpose()?;
        let hi = self.hi.as_ref().map(from_ext).transpose()?;
        Ok(match (lo, hi) {
            (None, None) => Document::new(),
            (None, Some(hi)) => doc! {"$nor": [{"_id": {"$gte": hi}}]},
            (Some(lo), None) => doc! {"_id": {"$gte": lo}},
            (Some(lo), Some(hi)) => doc! {"_id": {"$gte": lo, "$lt": hi}},
        })
    }
}

/// Builds the ranges of a collection from sorted split points (all of one BSON type bracket).
pub(crate) fn ranges_from_splits(splits: Vec<Bson>) -> Vec<RangeState> {
    let mut bounds: Vec<Option<serde_json::Value>> = vec![None];
    bounds.extend(splits.into_iter().map(|b| Some(to_ext(b))));
    bounds.push(None);
    bounds
        .windows(2)
        .map(|w| RangeState {
            lo: w[0].clone(),
            hi: w[1].clone(),
            ..RangeState::default()
        })
        .collect()
}

/// Picks `n - 1` split points from a server-sorted sample of `_id`s, keeping only values of the
/// dominant type bracket (range predicates compare within a bracket only), deduplicated.
pub(crate) fn pick_splits(sorted_sample: &[Bson], n: usize) -> Vec<Bson> {
    fn bracket(b: &Bson) -> Option<u8> {
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
            counts[k as usize] += 1;
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
        .filter(|b| bracket(b) == Some(best as u8))
        .collect();
    let mut out: Vec<Bson> = Vec::new();
    for k in 1..n {
        let idx = k * vals.len() / n;
        if let Some(v) = vals.get(idx) {
            if out.last() != Some(*v) && idx > 0 {
                out.push((*v).clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::oid::ObjectId;

    #[test]
    fn state_round_trips_with_bson_types() {
        let mut st = EngineState::new();
        st.created.push("db.c".into());
        let oid = ObjectId::new();
        st.collections.push(CollState {
            ns: "db.c".into(),
            options: to_ext(Bson::Document(doc! {"capped": true, "size": 4096i64})),
            ranges: ranges_from_splits(vec![Bson::ObjectId(oid)]),
            ..CollState::default()
        });
        let back = EngineState::decode(&st.encode()).unwrap();
        assert_eq!(back, st);
        let f = back.collections[0].ranges[1].filter().unwrap();
        assert_eq!(f, doc! {"_id": {"$gte": oid}});
        let opts = from_ext_doc(&back.collections[0].options).unwrap();
        assert_eq!(opts.get("size"), Some(&Bson::Int64(4096)));
    }

    #[test]
    fn unknown_version_is_rejected() {
        let err = EngineState::decode(br#"{"v":2}"#).unwrap_err();
        assert!(err.to_string().contains("version"));
    }

    #[test]
    fn ranges_partition_the_key_space() {
        let r = ranges_from_splits(vec![Bson::Int32(10), Bson::Int32(20)]);
        assert_eq!(r.len(), 3);
        assert_eq!(
            r[0].filter().unwrap(),
            doc! {"$nor": [{"_id": {"$gte": 10}}]}
        );
        assert_eq!(
            r[1].filter().unwrap(),
            doc! {"_id": {"$gte": 10, "$lt": 20}}
        );
        assert_eq!(r[2].filter().unwrap(), doc! {"_id": {"$gte": 20}});
        assert_eq!(
            ranges_from_splits(vec![])[0].filter().unwrap(),
            Document::new()
        );
    }

    #[test]
    fn splits_use_the_dominant_type_and_dedupe() {
        let mut sample: Vec<Bson> = (0..100).map(|i| Bson::Int32(i / 10)).collect();
        sample.push(Bson::String("x".into()));
        let s = pick_splits(&sample, 4);
        assert!(s.iter().all(|b| matches!(b, Bson::Int32(_))));
        assert!(s.windows(2).all(|w| w[0] != w[1]));
        assert_eq!(s.len(), 3);
        assert!(pick_splits(&[Bson::Boolean(true)], 4).is_empty());
    }
}
