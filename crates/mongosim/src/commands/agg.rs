//! `aggregate` with the stages a migration tool uses: `$match`, `$sort`, `$limit`, `$skip`,
//! `$project`, `$count`, `$group` (`_id: null` or a field path; `$sum`, `$min`, `$max`,
//! `$avg`, `$first`, `$last`), `$sample`, `$bucketAuto` on `_id`, `$collStats`.
//!
//! Owns pipeline evaluation over decoded documents. It must not modify data.

use std::collections::VecDeque;
use std::sync::Arc;

use bson::{doc, Bson, Document, RawDocumentBuf};
use rand::seq::SliceRandom;

use super::cursor::{next_batch, Cursor, Source, DEFAULT_FIRST_BATCH};
use super::query::{decode, project, sort_cmp};
use super::{Cmd, ConnState, CursorReply, Reply};
use crate::error::{CmdResult, CommandError};
use crate::server::Shared;
use crate::value::{as_f64, as_i64, compare, get_path};

fn field_value(d: &Document, expr: &Bson) -> Bson {
    match expr {
        Bson::String(s) if s.starts_with('$') => {
            get_path(d, &s[1..]).cloned().unwrap_or(Bson::Null)
        }
        other => other.clone(),
    }
}

fn add(a: &Bson, b: &Bson) -> Bson {
    match (a, b) {
        (Bson::Int32(x), Bson::Int32(y)) => x
            .checked_add(*y)
            .map(Bson::Int32)
            .unwrap_or(Bson::Int64(i64::from(*x) + i64::from(*y))),
        (Bson::Int32(_) | Bson::Int64(_), Bson::Int32(_) | Bson::Int64(_)) => Bson::Int64(
            as_i64(a)
                .unwrap_or(0)
                .saturating_add(as_i64(b).unwrap_or(0)),
        ),
        _ => Bson::Double(as_f64(a).unwrap_or(0.0) + as_f64(b).unwrap_or(0.0)),
    }
}

fn group(docs: Vec<Document>, spec: &Document) -> CmdResult<Vec<Document>> {
    let id_expr = spec
        .get("_id")
        .ok_or_else(|| CommandError::new(15955, "a group specification must include an _id"))?;
    let mut groups: Vec<(Bson, Vec<Document>)> = Vec::new();
    for d in docs {
        let key = match id_expr {
            Bson::Document(fields) => {
                let mut k = Document::new();
                for (f, e) in fields {
                    k.insert(f.clone(), field_value(&d, e));
                }
                Bson::Document(k)
            }
            e => field_value(&d, e),
        };
        match groups
            .iter_mut()
            .find(|(k, _)| crate::value::values_equal(k, &key))
        {
            Some((_, members)) => members.push(d),
            None => groups.push((key, vec![d])),
        }
    }
    let mut out = Vec::new();
    for (key, members) in groups {
        let mut g = doc! {"_id": key};
        for (name, acc) in spec {
            if name == "_id" {
                continue;
            }
            let Bson::Document(acc) = acc else {
                return Err(CommandError::new(
                    40234,
                    format!("The field '{name}' must be an accumulator object"),
                ));
            };
            let Some((op, expr)) = acc.iter().next() else {
                return Err(CommandError::new(40234, "empty accumulator"));
            };
            let vals: Vec<Bson> = members.iter().map(|d| field_value(d, expr)).collect();
            let v = match op.as_str() {
                "$sum" => vals
                    .iter()
                    .filter(|v| as_f64(v).is_some())
                    .fold(Bson::Int32(0), |acc, v| add(&acc, v)),
                "$avg" => {
                    let nums: Vec<f64> = vals.iter().filter_map(as_f64).collect();
                    if nums.is_empty() {
                        Bson::Null
                    } else {
                        Bson::Double(nums.iter().sum::<f64>() / nums.len() as f64)
                    }
                }
                "$min" => vals
                    .iter()
                    .filter(|v| !matches!(v, Bson::Null))
                    .min_by(|a, b| compare(a, b))
                    .cloned()
                    .unwrap_or(Bson::Null),
                "$max" => vals
                    .iter()
                    .max_by(|a, b| compare(a, b))
                    .cloned()
                    .unwrap_or(Bson::Null),
                "$first" => vals.first().cloned().unwrap_or(Bson::Null),
                "$last" => vals.last().cloned().unwrap_or(Bson::Null),
                "$push" => Bson::Array(vals),
                other => {
                    return Err(CommandError::new(
                        15952,
                        format!("unknown group operator '{other}'"),
                    ))
                }
            };
            g.insert(name.clone(), v);
        }
        out.push(g);
    }
    Ok(out)
}

fn bucket_auto(mut docs: Vec<Document>, spec: &Document) -> CmdResult<Vec<Document>> {
    let group_by = spec.get("groupBy").cloned().unwrap_or(Bson::Null);
    let buckets = spec.get("buckets").and_then(as_i64).unwrap_or(0);
    if buckets <= 0 {
        return Err(CommandError::new(
            40243,
            "$bucketAuto 'buckets' must be a positive integer",
        ));
    }
    let mut keyed: Vec<Bson> = docs.drain(..).map(|d| field_value(&d, &group_by)).collect();
    keyed.sort_by(compare);
    let n = keyed.len();
    let per = n.div_ceil(buckets as usize).max(1);
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let mut end = (i + per).min(n);
        // Equal values stay in the same bucket.
        while end < n && crate::value::values_equal(&keyed[end - 1], &keyed[end]) {
            end += 1;
        }
        let min = keyed[i].clone();
        let max = if end < n {
            keyed[end].clone()
        } else {
            keyed[n - 1].clone()
        };
        out.push(doc! {"_id": {"min": min, "max": max}, "count": (end - i) as i32});
        i = end;
    }
    Ok(out)
}

/// `n` distinct documents in random order, chosen by position (nothing is decoded).
fn pick_random(all: Vec<&Arc<RawDocumentBuf>>, n: usize) -> Vec<Arc<RawDocumentBuf>> {
    let mut rng = rand::thread_rng();
    let mut out: Vec<Arc<RawDocumentBuf>> =
        rand::seq::index::sample(&mut rng, all.len(), n.min(all.len()))
            .into_iter()
            .map(|i| all[i].clone())
            .collect();
    out.shuffle(&mut rng);
    out
}

/// `aggregate`.
pub fn aggregate(shared: &Arc<Shared>, conn: &ConnState, cmd: &Cmd) -> CmdResult<Reply> {
    let pipeline: Vec<Document> = cmd
        .body
        .get_array("pipeline")
        .map_err(|_| {
            CommandError::new(
                40414,
                "BSON field 'aggregate.pipeline' is missing but a required field",
            )
        })?
        .iter()
        .map(|v| match v {
            Bson::Document(d) => Ok(d.clone()),
            _ => Err(CommandError::type_mismatch(
                "Each element of the 'pipeline' array must be an object",
            )),
        })
        .collect::<CmdResult<_>>()?;
    let cursor_opts = cmd.doc_arg("cursor")?;
    if cursor_opts.is_none() && !cmd.flag("explain") {
        return Err(CommandError::failed_to_parse(
            "The 'cursor' option is required, except for aggregate with the explain argument",
        ));
    }
    let batch = cursor_opts
        .as_ref()
        .and_then(|c| c.get("batchSize"))
        .and_then(as_i64)
        .map(|b| b.max(0) as usize)
        .unwrap_or(DEFAULT_FIRST_BATCH);
    let coll = match cmd.first_value() {
        Some(Bson::String(s)) => Some(s.clone()),
        _ => None,
    };
    let ns = match &coll {
        Some(c) => format!("{}.{c}", cmd.db),
        None => format!("{}.$cmd.aggregate", cmd.db),
    };
    let mut docs: Vec<Document> = Vec::new();
    let mut stages = pipeline.iter().peekable();
    if let Some(&first) = stages.peek() {
        if let Ok(spec) = first.get_document("$collStats") {
            let coll = coll.clone().unwrap_or_default();
            let mut out = doc! {"ns": ns.clone(), "host": shared.host.clone(), "localTime": bson::DateTime::now()};
            let stats = shared.with_store(|s| match s.oplog.as_ref() {
                Some(o) if cmd.db == "local" && coll == "oplog.rs" => {
                    super::ddl::oplog_storage_stats(&ns, o, 1)
                }
                _ => super::ddl::storage_stats(&ns, s.coll(&cmd.db, &coll), 1),
            });
            if spec.contains_key("storageStats") {
                out.insert("storageStats", stats.clone());
            }
            if spec.contains_key("count") {
                out.insert(
                    "count",
                    stats.get("count").cloned().unwrap_or(Bson::Int64(0)),
                );
            }
            if spec.contains_key("latencyStats") {
                out.insert("latencyStats", doc! {"reads": {"latency": 0i64, "ops": 0i64}, "writes": {"latency": 0i64, "ops": 0i64}, "commands": {"latency": 0i64, "ops": 0i64}, "transactions": {"latency": 0i64, "ops": 0i64}});
            }
            docs.push(out);
            stages.next();
        } else if let Some(c) = &coll {
            let is_oplog = cmd.db == "local" && c == "oplog.rs";
            // A leading `$sample` picks its documents before anything is decoded; a leading
            // `$match` that cannot fail uses the `_id` access paths of `find`.
            let sample = first
                .get_document("$sample")
                .ok()
                .and_then(|spec| spec.get("size").and_then(as_i64))
                .filter(|n| *n >= 0 && first.len() == 1)
                .map(|n| n as usize);
            let matching = first
                .get_document("$match")
                .ok()
                .filter(|f| first.len() == 1 && !is_oplog && crate::idplan::never_errors(f));
            let raws: Vec<Arc<RawDocumentBuf>> = shared.with_store(|s| -> CmdResult<_> {
                if is_oplog {
                    let all = s.oplog.as_ref().map(|o| o.iter_from(0).map(|e| &e.doc));
                    return Ok(match (all, sample) {
                        (None, _) => Vec::new(),
                        (Some(all), Some(n)) => pick_random(all.collect(), n),
                        (Some(all), None) => all.cloned().collect(),
                    });
                }
                let Some(col) = s.coll(&cmd.db, c) else {
                    return Ok(Vec::new());
                };
                Ok(if let Some(n) = sample {
                    pick_random(col.docs.values().collect(), n)
                } else if let Some(f) = matching {
                    super::query::select(col, f, None, 0, None)?.docs
                } else {
                    col.docs.values().cloned().collect()
                })
            })?;
            if sample.is_some() || matching.is_some() {
                stages.next();
            }
            docs.reserve(raws.len());
            for r in raws {
                docs.push(decode(&r)?);
            }
        }
    }
    for stage in stages {
        let Some((name, arg)) = stage.iter().next() else {
            return Err(CommandError::new(
                40323,
                "A pipeline stage specification object must contain exactly one field.",
            ));
        };
        docs = match (name.as_str(), arg) {
            ("$match", Bson::Document(f)) => {
                let mut kept = Vec::new();
                for d in docs {
                    if crate::filter::matches(&d, f)? {
                        kept.push(d);
                    }
                }
                kept
            }
            ("$sort", Bson::Document(spec)) => {
                let mut v = docs;
                v.sort_by(|a, b| sort_cmp(a, b, spec));
                v
            }
            ("$limit", v) => {
                let n = as_i64(v)
                    .filter(|n| *n > 0)
                    .ok_or_else(|| CommandError::new(15958, "the limit must be positive"))?;
                docs.into_iter().take(n as usize).collect()
            }
            ("$skip", v) => {
                let n = as_i64(v)
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| CommandError::new(15956, "invalid argument to $skip stage"))?;
                docs.into_iter().skip(n as usize).collect()
            }
            ("$project", Bson::Document(p)) => docs
                .iter()
                .map(|d| project(d, p))
                .collect::<CmdResult<_>>()?,
            ("$count", Bson::String(f)) => {
                if docs.is_empty() {
                    Vec::new()
                } else {
                    vec![doc! {f.clone(): docs.len() as i32}]
                }
            }
            ("$group", Bson::Document(spec)) => group(docs, spec)?,
            ("$sample", Bson::Document(spec)) => {
                let n = spec
                    .get("size")
                    .and_then(as_i64)
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| {
                        CommandError::new(
                            28746,
                            "size argument to $sample must be a non-negative number",
                        )
                    })?;
                let mut v = docs;
                v.shuffle(&mut rand::thread_rng());
                v.truncate(n as usize);
                v
            }
            ("$bucketAuto", Bson::Document(spec)) => bucket_auto(docs, spec)?,
            ("$addFields" | "$set", Bson::Document(fields)) => {
                let mut out = Vec::with_capacity(docs.len());
                for mut d in docs {
                    for (k, e) in fields {
                        let v = field_value(&d, e);
                        crate::update::set_path(&mut d, k, v)?;
                    }
                    out.push(d);
                }
                out
            }
            ("$unset", Bson::String(f)) => docs
                .into_iter()
                .map(|mut d| {
                    crate::update::unset_path(&mut d, f);
                    d
                })
                .collect(),
            (other, _) => {
                return Err(CommandError::new(
                    40324,
                    format!("Unrecognized pipeline stage name: '{other}'"),
                ));
            }
        };
    }
    let mut raws: VecDeque<Arc<RawDocumentBuf>> = VecDeque::with_capacity(docs.len());
    for d in &docs {
        raws.push_back(Arc::new(
            RawDocumentBuf::try_from(d).map_err(|e| CommandError::new(22, e.to_string()))?,
        ));
    }
    let (first, bytes) = next_batch(&mut raws, batch);
    let id = if raws.is_empty() {
        0
    } else {
        shared.with_cursors(|c| {
            c.insert(Cursor {
                ns: ns.clone(),
                source: Source::Docs(raws),
                remaining: None,
                user: conn.user.clone(),
                no_timeout: false,
            })
        })
    };
    Ok(Reply::Cursor(CursorReply {
        id,
        ns,
        first: true,
        docs: first,
        bytes,
        extra: None,
    }))
}
