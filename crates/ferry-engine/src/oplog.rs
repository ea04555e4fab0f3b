//! Oplog entry parsing (reference/mongodb.md §6-§7.1): turns raw `local.oplog.rs` documents into typed
//! operations, unwinds `applyOps`, and reassembles transactions (partial chains, prepared + commit/abort).
//! Pure: no IO. It decides *what* an entry means, never how it is written to the destination.

use std::collections::HashMap;

use mongodb::bson::{Bson, Document, RawDocument};

use crate::types::OpTime;

/// One operation to apply (a CRUD op or a DDL command), carrying the `ts` of its oplog entry.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Op {
    /// `i`: the whole document.
    Insert { ns: String, doc: Document },
    /// `u` with a replacement document.
    Replace {
        ns: String,
        key: Document,
        doc: Document,
    },
    /// `u` with a `$v:1` (or version-less) modifier document, `$v` stripped.
    UpdateModifier {
        ns: String,
        key: Document,
        update: Document,
    },
    /// `u` with a `$v:2` diff (the value of `o.diff`).
    UpdateDiff {
        ns: String,
        key: Document,
        diff: Document,
    },
    /// `d`: the document key.
    Delete { ns: String, key: Document },
    /// `c` other than applyOps/commit/abort: `db` and the command document (and `o2`).
    Command { db: String, cmd: Document },
}

impl Op {
    pub(crate) fn namespace(&self) -> String {
        match self {
            Op::Insert { ns, .. }
            | Op::Replace { ns, .. }
            | Op::UpdateModifier { ns, .. }
            | Op::UpdateDiff { ns, .. }
            | Op::Delete { ns, .. } => ns.clone(),
            Op::Command { db, .. } => format!("{db}.$cmd"),
        }
    }
}

/// Transaction identity: (lsid.id bytes, txnNumber).
pub(crate) type TxnKey = (Vec<u8>, i64);

/// What one oplog entry means.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Entry {
    Ops(Vec<Op>),
    /// A link of a multi-entry or prepared transaction: buffer until commit.
    TxnPart {
        key: TxnKey,
        ops: Vec<Op>,
        terminal: bool,
    },
    Commit {
        key: TxnKey,
    },
    Abort {
        key: TxnKey,
    },
    Noop,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("malformed oplog entry: {0}")]
pub(crate) struct ParseError(pub String);

fn perr(msg: impl Into<String>) -> ParseError {
    ParseError(msg.into())
}

/// Reads `ts` without decoding the rest.
pub(crate) fn entry_ts(raw: &RawDocument) -> Result<OpTime, ParseError> {
    raw.get_timestamp("ts")
        .map(OpTime::from_ts)
        .map_err(|e| perr(format!("no ts: {e}")))
}

/// Parses a full oplog entry.
pub(crate) fn parse_entry(raw: &RawDocument) -> Result<(OpTime, Entry), ParseError> {
    let ts = entry_ts(raw)?;
    let doc = Document::try_from(raw).map_err(|e| perr(format!("invalid BSON: {e}")))?;
    Ok((ts, parse_doc(&doc)?))
}

fn get_doc<'a>(d: &'a Document, key: &str) -> Result<&'a Document, ParseError> {
    d.get_document(key)
        .map_err(|_| perr(format!("missing or non-document '{key}'")))
}

fn txn_key(d: &Document) -> Option<TxnKey> {
    let lsid = d.get_document("lsid").ok()?;
    let id = match lsid.get("id")? {
        Bson::Binary(b) => b.bytes.clone(),
        other => other.to_string().into_bytes(),
    };
    let txn = match d.get("txnNumber")? {
        Bson::Int64(n) => *n,
        Bson::Int32(n) => i64::from(*n),
        _ => return None,
    };
    Some((id, txn))
}

pub(crate) fn parse_doc(d: &Document) -> Result<Entry, ParseError> {
    let op = d.get_str("op").map_err(|_| perr("missing 'op'"))?;
    match op {
        "n" => Ok(Entry::Noop),
        "i" | "u" | "d" => Ok(Entry::Ops(vec![parse_crud(d, op)?])),
        "c" => parse_command(d),
        other => Err(perr(format!("unknown op '{other}'"))),
    }
}

fn parse_crud(d: &Document, op: &str) -> Result<Op, ParseError> {
    let ns = d
        .get_str("ns")
        .map_err(|_| perr("missing 'ns'"))?
        .to_string();
    let o = get_doc(d, "o")?.clone();
    match op {
        "i" => Ok(Op::Insert { ns, doc: o }),
        "d" => Ok(Op::Delete { ns, key: o }),
        _ => {
            let key = get_doc(d, "o2")?.clone();
            classify_update(ns, key, o)
        }
    }
}

/// §7.1, refined for `$`-prefixed field names (legal since 5.0): an `o` with a top-level `_id` is a
/// full replacement whatever its other fields (`$v`, `diff` and `$set` may be user fields there), as the
/// server itself decides when applying oplog entries; otherwise `$v: 2` + `diff` document -> diff, any
/// `$` key -> modifier, and the rest (pre-3.6 replacements without `_id`) -> replacement.
fn classify_update(ns: String, key: Document, o: Document) -> Result<Op, ParseError> {
    if o.contains_key("_id") {
        return Ok(Op::Replace { ns, key, doc: o });
    }
    let version = match o.get("$v") {
        Some(Bson::Int32(v)) => Some(i64::from(*v)),
        Some(Bson::Int64(v)) => Some(*v),
        Some(Bson::Double(v)) => Some(*v as i64),
        _ => None,
    };
    if version == Some(2) {
        let diff = get_doc(&o, "diff")?.clone();
        return Ok(Op::UpdateDiff { ns, key, diff });
    }
    if o.keys().any(|k| k.starts_with('$')) {
        let mut update = o;
        update.remove("$v");
        if update.is_empty() {
            return Err(perr("update entry with only '$v'"));
        }
        return Ok(Op::UpdateModifier { ns, key, update });
    }
    Ok(Op::Replace { ns, key, doc: o })
}

fn parse_command(d: &Document) -> Result<Entry, ParseError> {
    let ns = d.get_str("ns").map_err(|_| perr("missing 'ns'"))?;
    let db = ns
        .split_once('.')
        .map(|(db, _)| db)
        .unwrap_or(ns)
        .to_string();
    let o = get_doc(d, "o")?;
    let first = o.keys().next().map(String::as_str).unwrap_or("");
    match first {
        "applyOps" => {
            let inner = o
                .get_array("applyOps")
                .map_err(|_| perr("applyOps is not an array"))?;
            let mut ops = Vec::with_capacity(inner.len());
            for item in inner {
                let Bson::Document(child) = item else {
                    return Err(perr("applyOps element is not a document"));
                };
                match parse_doc(child)? {
                    Entry::Ops(mut v) => ops.append(&mut v),
                    Entry::Noop => {}
                    other => return Err(perr(format!("unexpected nested entry {other:?}"))),
                }
            }
            let partial = o.get_bool("partialTxn").unwrap_or(false);
            let prepare = o.get_bool("prepare").unwrap_or(false);
            match txn_key(d) {
                Some(key) if partial || prepare => Ok(Entry::TxnPart {
                    key,
                    ops,
                    terminal: false,
                }),
                Some(key) => Ok(Entry::TxnPart {
                    key,
                    ops,
                    terminal: true,
                }),
                None => Ok(Entry::Ops(ops)),
            }
        }
        "commitTransaction" => txn_key(d)
            .map(|key| Entry::Commit { key })
            .ok_or_else(|| perr("commitTransaction without lsid/txnNumber")),
        "abortTransaction" => txn_key(d)
            .map(|key| Entry::Abort { key })
            .ok_or_else(|| perr("abortTransaction without lsid/txnNumber")),
        _ => {
            let mut cmd = o.clone();
            if let Ok(o2) = d.get_document("o2") {
                cmd.insert("$o2", o2.clone());
            }
            Ok(Entry::Ops(vec![Op::Command { db, cmd }]))
        }
    }
}

/// Reassembles transactions: returns the ops to apply now for each entry, in order.
#[derive(Default)]
pub(crate) struct TxnBuffer {
    pending: HashMap<TxnKey, (OpTime, Vec<Op>)>,
}

impl TxnBuffer {
    /// Feeds one entry (with its `ts`); returns the operations to apply now.
    pub(crate) fn feed(&mut self, ts: OpTime, entry: Entry) -> Vec<Op> {
        match entry {
            Entry::Ops(ops) => ops,
            Entry::Noop => Vec::new(),
            Entry::TxnPart {
                key,
                mut ops,
                terminal,
            } => {
                if terminal {
                    let mut all = self.pending.remove(&key).map(|p| p.1).unwrap_or_default();
                    all.append(&mut ops);
                    all
                } else {
                    self.pending
                        .entry(key)
                        .or_insert_with(|| (ts, Vec::new()))
                        .1
                        .append(&mut ops);
                    Vec::new()
                }
            }
            Entry::Commit { key } => self.pending.remove(&key).map(|p| p.1).unwrap_or_default(),
            Entry::Abort { key } => {
                self.pending.remove(&key);
                Vec::new()
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn open_transactions(&self) -> usize {
        self.pending.len()
    }

    /// `ts` of the first link of the oldest transaction still open (resume must fetch from there).
    pub(crate) fn oldest_open(&self) -> Option<OpTime> {
        self.pending.values().map(|p| p.0).min()
    }
}

/// Namespace selection: never system databases or `system.*` collections.
#[derive(Clone, Debug)]
pub(crate) struct NsFilter {
    databases: Vec<String>,
}

pub(crate) const SYSTEM_DBS: &[&str] = &["admin", "local", "config"];

impl NsFilter {
    pub(crate) fn new(databases: &[String]) -> Self {
        Self {
            databases: databases.to_vec(),
        }
    }
    pub(crate) fn db_selected(&self, db: &str) -> bool {
        !SYSTEM_DBS.contains(&db)
            && (self.databases.is_empty() || self.databases.iter().any(|d| d == db))
    }
    pub(crate) fn ns_selected(&self, ns: &str) -> bool {
        match ns.split_once('.') {
            Some((db, coll)) => self.db_selected(db) && !coll.starts_with("system."),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    pub(crate) fn samples() -> Vec<(String, Document)> {
        include_str!("../tests/data/oplog-samples.jsonl")
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let kind = v["kind"].as_str().unwrap().to_string();
                let Bson::Document(d) = Bson::try_from(v["doc"].clone()).unwrap() else {
                    panic!()
                };
                (kind, d)
            })
            .collect()
    }

    #[test]
    fn every_oplog_sample_parses_to_the_expected_kind() {
        let mut buf = TxnBuffer::default();
        for (kind, d) in samples() {
            if !kind.starts_with("oplog.") || kind.starts_with("oplog.update.o.") {
                continue;
            }
            let entry = parse_doc(&d).unwrap_or_else(|e| panic!("{kind}: {e}"));
            match kind.as_str() {
                "oplog.insert" => {
                    assert!(matches!(&entry, Entry::Ops(v) if matches!(v[0], Op::Insert{..})))
                }
                "oplog.delete" => {
                    assert!(matches!(&entry, Entry::Ops(v) if matches!(v[0], Op::Delete{..})))
                }
                "oplog.update.replacement" => {
                    assert!(matches!(&entry, Entry::Ops(v) if matches!(v[0], Op::Replace{..})))
                }
                "oplog.update.v1" => {
                    let Entry::Ops(v) = &entry else { panic!() };
                    let Op::UpdateModifier { update, .. } = &v[0] else {
                        panic!("{kind}")
                    };
                    assert!(!update.contains_key("$v"));
                }
                k if k.starts_with("oplog.command.applyOps") => {
                    assert!(
                        matches!(
                            &entry,
                            Entry::TxnPart {
                                terminal: false,
                                ..
                            }
                        ),
                        "{kind}"
                    )
                }
                "oplog.command.commitTransaction" => assert!(matches!(entry, Entry::Commit { .. })),
                "oplog.command.abortTransaction" => assert!(matches!(entry, Entry::Abort { .. })),
                k if k.starts_with("oplog.command.") => {
                    let Entry::Ops(v) = &entry else {
                        panic!("{kind}")
                    };
                    assert!(matches!(v[0], Op::Command { .. }), "{kind}");
                }
                other => panic!("unhandled sample kind {other}"),
            }
            let _ = buf.feed(
                OpTime {
                    seconds: 1,
                    increment: 1,
                },
                entry,
            );
        }
    }

    #[test]
    fn v2_samples_classify_as_diffs() {
        for (kind, o) in samples() {
            if kind != "oplog.update.o.v2" {
                continue;
            }
            let op = classify_update("a.b".into(), doc! {"_id": 1}, o).unwrap();
            assert!(matches!(op, Op::UpdateDiff { .. }));
        }
    }

    #[test]
    fn replacement_with_dollar_fields_is_a_replacement() {
        let o = doc! {"_id": 1, "$v": 2, "diff": {"u": {"a": 1}}, "$set": {"x": 1}};
        let op = classify_update("a.b".into(), doc! {"_id": 1}, o.clone()).unwrap();
        assert_eq!(
            op,
            Op::Replace {
                ns: "a.b".into(),
                key: doc! {"_id": 1},
                doc: o
            }
        );
        let op = classify_update("a.b".into(), doc! {"_id": 1}, doc! {"$set": {"_id": 1}}).unwrap();
        assert!(matches!(op, Op::UpdateModifier { .. }));
    }

    #[test]
    fn replacement_with_field_named_diff_is_not_a_diff() {
        let op = classify_update(
            "a.b".into(),
            doc! {"_id": 1},
            doc! {"_id": 1, "diff": {"u": {"a": 1}}},
        )
        .unwrap();
        assert!(matches!(op, Op::Replace { .. }));
    }

    const T0: OpTime = OpTime {
        seconds: 1,
        increment: 0,
    };

    #[test]
    fn transactions_apply_only_at_commit() {
        let lsid = doc! {"id": Bson::Binary(mongodb::bson::Binary{subtype: mongodb::bson::spec::BinarySubtype::Uuid, bytes: vec![1;16]})};
        let part = |partial: bool, prepare: bool, id: i32| {
            let mut o = doc! {"applyOps": [{"op": "i", "ns": "db.c", "o": {"_id": id}}]};
            if partial {
                o.insert("partialTxn", true);
            }
            if prepare {
                o.insert("prepare", true);
            }
            doc! {"op": "c", "ns": "admin.$cmd", "lsid": lsid.clone(), "txnNumber": 5i64, "o": o}
        };
        let mut buf = TxnBuffer::default();
        assert!(buf
            .feed(T0, parse_doc(&part(true, false, 1)).unwrap())
            .is_empty());
        let ops = buf.feed(T0, parse_doc(&part(false, false, 2)).unwrap());
        assert_eq!(ops.len(), 2);
        assert!(buf
            .feed(T0, parse_doc(&part(false, true, 3)).unwrap())
            .is_empty());
        let commit = doc! {"op": "c", "ns": "admin.$cmd", "lsid": lsid.clone(), "txnNumber": 5i64, "o": {"commitTransaction": 1}};
        assert_eq!(buf.feed(T0, parse_doc(&commit).unwrap()).len(), 1);
        assert!(buf
            .feed(T0, parse_doc(&part(false, true, 4)).unwrap())
            .is_empty());
        let abort = doc! {"op": "c", "ns": "admin.$cmd", "lsid": lsid, "txnNumber": 5i64, "o": {"abortTransaction": 1}};
        assert!(buf.feed(T0, parse_doc(&abort).unwrap()).is_empty());
        assert_eq!(buf.open_transactions(), 0);
        // Batched writes without a session apply immediately.
        let batched = doc! {"op": "c", "ns": "admin.$cmd", "o": {"applyOps": [{"op": "d", "ns": "db.c", "o": {"_id": 1}}]}};
        assert_eq!(buf.feed(T0, parse_doc(&batched).unwrap()).len(), 1);
    }

    #[test]
    fn filter_excludes_system_namespaces() {
        let f = NsFilter::new(&[]);
        assert!(f.ns_selected("app.users"));
        assert!(!f.ns_selected("admin.users"));
        assert!(!f.ns_selected("config.x"));
        assert!(!f.ns_selected("app.system.views"));
        let f = NsFilter::new(&["app".to_string()]);
        assert!(!f.ns_selected("other.users"));
    }
}
