//! The metadata comparison: which namespaces exist on each side (collections present on one side
//! only), collection options (`listCollections` `options`; `uuid` lives in `info` and is not
//! compared), view definitions (`viewOn`, `pipeline`, `collation`) and indexes in canonical form
//! (`canonical_index_spec`). Returns the differences and the collections present on both sides (the
//! ones whose documents are compared). `system.*` namespaces are not compared: views are compared
//! by definition, time-series buckets are out of scope. Never reads documents.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use bson::{doc, Bson, Document};
use mongodb::Client;
use tokio_util::sync::CancellationToken;

use crate::mongo::{self, error_code, Side};
use crate::state::meta_key;
use crate::types::{Mismatch, MismatchKind, VerifyConfig};
use crate::VerifyError;

pub(crate) const SYSTEM_DBS: [&str; 3] = ["admin", "local", "config"];

/// Index options the migration relaxes until cut-over (compared as "pending" on relaxed indexes).
const RELAXED_FIELDS: [&str; 3] = ["unique", "prepareUnique", "expireAfterSeconds"];

/// What the metadata pass found.
pub(crate) struct Metadata {
    /// `(key, mismatch)` pairs (keys as in `VerifyState::confirmed`).
    pub mismatches: Vec<(String, Mismatch)>,
    /// Collections present on both sides (their documents are compared).
    pub collections: Vec<String>,
}

struct Sides<'a> {
    src: &'a Client,
    dst: &'a Client,
    cancel: &'a CancellationToken,
    budget: Duration,
}

/// An index spec in a form where equal means "the same index": `v` and `ns` removed, `key` first
/// (its order matters), the other options in name order with whole numbers as Int64 (`collMod`
/// rewrites options at the end of the spec and `expireAfterSeconds` as Int64, mongodb/mongo
/// `bson_collection_catalog_entry.cpp`; same logic as ferry-testkit's `canonical_index_spec`).
pub(crate) fn canonical_index_spec(mut spec: Document) -> Document {
    spec.remove("v");
    spec.remove("ns");
    let mut out = Document::new();
    if let Some(key) = spec.remove("key") {
        out.insert("key", key);
    }
    let mut rest: Vec<(String, Bson)> = spec.into_iter().collect();
    rest.sort_by(|a, b| a.0.cmp(&b.0));
    for (k, v) in rest {
        let v = match v {
            Bson::Int32(n) => Bson::Int64(i64::from(n)),
            other => other,
        };
        out.insert(k, v);
    }
    out
}

fn mismatch(ns: &str, what: &str, description: String) -> (String, Mismatch) {
    (
        meta_key(ns, what),
        Mismatch {
            namespace: ns.to_string(),
            id: None,
            kind: MismatchKind::Metadata,
            field_path: None,
            description,
        },
    )
}

/// Compares the metadata of the selected databases.
pub(crate) async fn compare(
    src: &Client,
    dst: &Client,
    cfg: &VerifyConfig,
    cancel: &CancellationToken,
) -> Result<Metadata, VerifyError> {
    let sides = Sides {
        src,
        dst,
        cancel,
        budget: cfg.tuning.retry_budget,
    };
    let relaxed: HashSet<(String, String)> = cfg.relaxed_indexes.iter().cloned().collect();
    let mut out = Metadata {
        mismatches: Vec::new(),
        collections: Vec::new(),
    };
    for db in databases(&sides, &cfg.databases).await? {
        let s = list_collections(&sides, Side::Source, &db).await?;
        let d = list_collections(&sides, Side::Destination, &db).await?;
        let names: std::collections::BTreeSet<&String> = s.keys().chain(d.keys()).collect();
        for name in names {
            let ns = format!("{db}.{name}");
            match (s.get(name), d.get(name)) {
                (Some(a), Some(b)) => {
                    if compare_entry(&ns, a, b, &mut out.mismatches) {
                        compare_indexes(&sides, &ns, &relaxed, &mut out.mismatches).await?;
                        out.collections.push(ns);
                    }
                }
                (Some(a), None) => out.mismatches.push(mismatch(
                    &ns,
                    "presence",
                    format!("{} only on the source", kind_of(a)),
                )),
                (None, Some(b)) => out.mismatches.push(mismatch(
                    &ns,
                    "presence",
                    format!("{} only on the destination", kind_of(b)),
                )),
                (None, None) => {}
            }
        }
    }
    Ok(out)
}

/// Byte equality: `Document`'s `==` ignores field order, which matters in index keys, pipelines (`$sort`) and
/// validators alike.
fn same(a: &Document, b: &Document) -> bool {
    match (a.to_vec(), b.to_vec()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

fn kind_of(entry: &Document) -> &str {
    entry.get_str("type").unwrap_or("collection")
}

/// Compares two `listCollections` entries; `true` when both are collections (documents to compare).
fn compare_entry(ns: &str, a: &Document, b: &Document, out: &mut Vec<(String, Mismatch)>) -> bool {
    let (ka, kb) = (kind_of(a), kind_of(b));
    if ka != kb {
        out.push(mismatch(
            ns,
            "type",
            format!("a {ka} on the source, a {kb} on the destination"),
        ));
        return false;
    }
    let empty = Document::new();
    let oa = a.get_document("options").unwrap_or(&empty);
    let ob = b.get_document("options").unwrap_or(&empty);
    if ka == "view" {
        let def = |o: &Document| -> Document {
            let mut d = Document::new();
            for k in ["viewOn", "pipeline", "collation"] {
                if let Some(v) = o.get(k) {
                    d.insert(k, v.clone());
                }
            }
            d
        };
        let (da, db) = (def(oa), def(ob));
        if !same(&da, &db) {
            out.push(mismatch(
                ns,
                "view",
                format!("view definition differs: source {da}, destination {db}"),
            ));
        }
        return false;
    }
    let strip = |o: &Document| -> Document {
        let mut o = o.clone();
        o.remove("uuid");
        o
    };
    let (sa, sb) = (strip(oa), strip(ob));
    if !same(&sa, &sb) {
        out.push(mismatch(
            ns,
            "options",
            format!("collection options differ: source {sa}, destination {sb}"),
        ));
    }
    ka == "collection"
}

async fn databases(sides: &Sides<'_>, selected: &[String]) -> Result<Vec<String>, VerifyError> {
    if !selected.is_empty() {
        return Ok(selected.to_vec());
    }
    let mut all = std::collections::BTreeSet::new();
    for (client, side) in [(sides.src, Side::Source), (sides.dst, Side::Destination)] {
        let cmd = doc! {"listDatabases": 1, "nameOnly": true};
        let reply = mongo::command(client, sides.cancel, sides.budget, side, "admin", cmd)
            .await
            .map_err(|e| e.into_verify("listDatabases", "admin"))?
            .ok_or(VerifyError::Cancelled)?;
        for d in reply.get_array("databases").into_iter().flatten() {
            if let Some(name) = d.as_document().and_then(|d| d.get_str("name").ok()) {
                if !SYSTEM_DBS.contains(&name) {
                    all.insert(name.to_string());
                }
            }
        }
    }
    Ok(all.into_iter().collect())
}

async fn list_collections(
    sides: &Sides<'_>,
    side: Side,
    db: &str,
) -> Result<BTreeMap<String, Document>, VerifyError> {
    let client = if side == Side::Source {
        sides.src
    } else {
        sides.dst
    };
    let entries = mongo::cursor_command(
        client,
        sides.cancel,
        sides.budget,
        side,
        db,
        doc! {"listCollections": 1},
    )
    .await
    .map_err(|e| e.into_verify("listCollections", db))?
    .ok_or(VerifyError::Cancelled)?;
    Ok(entries
        .into_iter()
        .filter_map(|e| {
            let name = e.get_str("name").ok()?.to_string();
            (!name.starts_with("system.")).then_some((name, e))
        })
        .collect())
}

async fn list_indexes(
    sides: &Sides<'_>,
    side: Side,
    ns: &str,
) -> Result<BTreeMap<String, Document>, VerifyError> {
    let client = if side == Side::Source {
        sides.src
    } else {
        sides.dst
    };
    let (db, coll) = crate::plan::split_ns(ns);
    let res = mongo::cursor_command(
        client,
        sides.cancel,
        sides.budget,
        side,
        db,
        doc! {"listIndexes": coll},
    )
    .await;
    let specs = match res {
        Ok(Some(s)) => s,
        Ok(None) => return Err(VerifyError::Cancelled),
        // Dropped meanwhile: no indexes (the presence check reports it on the next pass).
        Err(e) if error_code(&e.error) == Some(26) => Vec::new(),
        Err(e) => return Err(e.into_verify("listIndexes", ns)),
    };
    Ok(specs
        .into_iter()
        .filter_map(|s| {
            let name = s.get_str("name").ok()?.to_string();
            Some((name, canonical_index_spec(s)))
        })
        .collect())
}

async fn compare_indexes(
    sides: &Sides<'_>,
    ns: &str,
    relaxed: &HashSet<(String, String)>,
    out: &mut Vec<(String, Mismatch)>,
) -> Result<(), VerifyError> {
    let s = list_indexes(sides, Side::Source, ns).await?;
    let d = list_indexes(sides, Side::Destination, ns).await?;
    let names: std::collections::BTreeSet<&String> = s.keys().chain(d.keys()).collect();
    for name in names {
        let what = format!("index {name}");
        match (s.get(name), d.get(name)) {
            (Some(a), Some(b)) => {
                let (mut a, mut b) = (a.clone(), b.clone());
                if relaxed.contains(&(ns.to_string(), name.clone())) {
                    for f in RELAXED_FIELDS {
                        a.remove(f);
                        b.remove(f);
                    }
                }
                if !same(&a, &b) {
                    out.push(mismatch(
                        ns,
                        &what,
                        format!("index {name} differs: source {a}, destination {b}"),
                    ));
                }
            }
            (Some(a), None) => out.push(mismatch(
                ns,
                &what,
                format!("index {name} missing on the destination (source {a})"),
            )),
            (None, Some(b)) => out.push(mismatch(
                ns,
                &what,
                format!("index {name} only on the destination ({b})"),
            )),
            (None, None) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ttl_restored_by_coll_mod_is_the_same_index() {
        let created = doc! {"v": 2, "key": {"at": 1}, "expireAfterSeconds": 3600, "name": "at_1"};
        let restored =
            doc! {"v": 2, "key": {"at": 1}, "name": "at_1", "expireAfterSeconds": 3600i64};
        assert_eq!(
            canonical_index_spec(created.clone()),
            canonical_index_spec(restored)
        );
        let other = doc! {"v": 2, "key": {"at": 1}, "name": "at_1", "expireAfterSeconds": 60i64};
        assert_ne!(canonical_index_spec(created), canonical_index_spec(other));
        let ab = canonical_index_spec(doc! {"key": {"a": 1, "b": 1}, "name": "x"});
        let ba = canonical_index_spec(doc! {"key": {"b": 1, "a": 1}, "name": "x"});
        assert!(!same(&ab, &ba), "an index key's order matters");
        assert!(same(&ab, &ab.clone()));
    }

    #[test]
    fn options_and_views_are_compared() {
        let mut out = Vec::new();
        let a = doc! {"name": "c", "type": "collection", "options": {"validator": {"a": 1}}, "info": {"uuid": 1}};
        let b = doc! {"name": "c", "type": "collection", "options": {"validator": {"a": 2}}, "info": {"uuid": 2}};
        assert!(compare_entry("d.c", &a, &a, &mut out));
        assert!(out.is_empty());
        assert!(compare_entry("d.c", &a, &b, &mut out));
        assert_eq!(out.len(), 1);
        let v1 = doc! {"name": "v", "type": "view", "options": {"viewOn": "c", "pipeline": [{"$match": {"a": 1}}]}};
        let v2 = doc! {"name": "v", "type": "view", "options": {"viewOn": "c", "pipeline": [{"$match": {"a": 2}}]}};
        assert!(!compare_entry("d.v", &v1, &v2, &mut out));
        assert_eq!(out.len(), 2);
        assert!(out[1].1.description.contains("view definition differs"));
    }
}
