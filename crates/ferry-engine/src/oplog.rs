//! Oplog entry parsing (reference/mongodb.md §6-§7.1): turns raw `local.oplog.rs` documents into typed
//! operations, unwinds `applyOps`, and reassembles transactions (partial chains, prepared + commit/abort).
//! Pure: no IO. It decides *what* an entry means, never how it is written to the destination.

use std::collections::HashMap;

use mongodb::bson::{Document, RawBsonRef, RawDocument, RawDocumentBuf};

use crate::types::OpTime;

/// One operation to apply (a CRUD op or a DDL command), carrying the `ts` of its oplog entry. CRUD
/// payloads stay raw BSON, exactly as the source logged them (strings are never decoded: real servers
/// store invalid UTF-8 as given, see `raw`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Op {
    /// `i`: the whole document.
    Insert { ns: String, doc: RawDocumentBuf },
    /// `u` with a replacement document.
    Replace {
        ns: String,
        key: RawDocumentBuf,
        doc: RawDocumentBuf,
    },
    /// `u` with a `$v:1` (or version-less) modifier document, `$v` stripped.
    UpdateModifier {
        ns: String,
        key: RawDocumentBuf,
        update: RawDocumentBuf,
    },
    /// `u` with a `$v:2` diff (the value of `o.diff`).
    UpdateDiff {
        ns: String,
        key: RawDocumentBuf,
        diff: RawDocumentBuf,
    },
    /// `d`: the document key.
    Delete { ns: String, key: RawDocumentBuf },
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

/// Parses a full oplog entry, keeping CRUD payloads raw.
pub(crate) fn parse_entry(raw: &RawDocument) -> Result<(OpTime, Entry), ParseError> {
    let ts = entry_ts(raw)?;
    Ok((ts, parse_raw(raw)?))
}

/// Parses an entry given as a decoded document (tests and tools).
#[cfg(test)]
pub(crate) fn parse_doc(d: &Document) -> Result<Entry, ParseError> {
    let raw = RawDocumentBuf::try_from(d).map_err(|e| perr(format!("invalid BSON: {e}")))?;
    parse_raw(&raw)
}

fn raw_doc<'a>(d: &'a RawDocument, key: &str) -> Result<&'a RawDocument, ParseError> {
    d.get_document(key)
        .map_err(|_| perr(format!("missing or non-document '{key}'")))
}

fn txn_key(d: &RawDocument) -> Option<TxnKey> {
    let lsid = d.get_document("lsid").ok()?;
    let id = crate::raw::field(lsid, "id").map(|e| crate::raw::value_key(&e))?;
    let txn = match d.get("txnNumber").ok()?? {
        RawBsonRef::Int64(n) => n,
        RawBsonRef::Int32(n) => i64::from(n),
        _ => return None,
    };
    Some((id, txn))
}

fn parse_raw(d: &RawDocument) -> Result<Entry, ParseError> {
    let op = d.get_str("op").map_err(|_| perr("missing 'op'"))?;
    match op {
        "n" => Ok(Entry::Noop),
        "i" | "u" | "d" => Ok(Entry::Ops(vec![parse_crud(d, op)?])),
        "c" => parse_command(d),
        other => Err(perr(format!("unknown op '{other}'"))),
    }
}

fn parse_crud(d: &RawDocument, op: &str) -> Result<Op, ParseError> {
    let ns = d
        .get_str("ns")
        .map_err(|_| perr("missing 'ns'"))?
        .to_string();
    let o = raw_doc(d, "o")?;
    match op {
        "i" => Ok(Op::Insert {
            ns,
            doc: o.to_owned(),
        }),
        "d" => Ok(Op::Delete {
            ns,
            key: o.to_owned(),
        }),
        _ => {
            let key = raw_doc(d, "o2")?.to_owned();
            classify_update(ns, key, o)
        }
    }
}

/// §7.1, refined for `$`-prefixed field names (legal since 5.0): an `o` with a top-level `_id` is a
/// full replacement whatever its other fields (`$v`, `diff` and `$set` may be user fields there), as the
/// server itself decides when applying oplog entries; otherwise `$v: 2` + `diff` document -> diff, any
/// `$` key -> modifier, and the rest (pre-3.6 replacements without `_id`) -> replacement.
fn classify_update(ns: String, key: RawDocumentBuf, o: &RawDocument) -> Result<Op, ParseError> {
    let els = crate::raw::elements(o.as_bytes()).ok_or_else(|| perr("bad BSON framing in 'o'"))?;
    if els.iter().any(|e| e.key == b"_id") {
        return Ok(Op::Replace {
            ns,
            key,
            doc: o.to_owned(),
        });
    }
    let version = match o.get("$v").ok().flatten() {
        Some(RawBsonRef::Int32(v)) => Some(i64::from(v)),
        Some(RawBsonRef::Int64(v)) => Some(v),
        Some(RawBsonRef::Double(v)) => Some(v as i64),
        _ => None,
    };
    if version == Some(2) {
        let diff = raw_doc(o, "diff")?.to_owned();
        return Ok(Op::UpdateDiff { ns, key, diff });
    }
    if els.iter().any(|e| e.key.first() == Some(&b'$')) {
        let update = crate::raw::without(o, "$v").ok_or_else(|| perr("bad BSON framing"))?;
        if update.is_empty() {
            return Err(perr("update entry with only '$v'"));
        }
        return Ok(Op::UpdateModifier { ns, key, update });
    }
    Ok(Op::Replace {
        ns,
        key,
        doc: o.to_owned(),
    })
}

fn parse_command(d: &RawDocument) -> Result<Entry, ParseError> {
    let ns = d.get_str("ns").map_err(|_| perr("missing 'ns'"))?;
    let db = ns
        .split_once('.')
        .map(|(db, _)| db)
        .unwrap_or(ns)
        .to_string();
    let o = raw_doc(d, "o")?;
    let first = crate::raw::elements(o.as_bytes())
        .and_then(|e| e.first().map(|e| e.key.to_vec()))
        .unwrap_or_default();
    match first.as_slice() {
        b"applyOps" => {
            let inner = o
                .get_array("applyOps")
                .map_err(|_| perr("applyOps is not an array"))?;
            let mut ops = Vec::new();
            for item in inner {
                let Ok(RawBsonRef::Document(child)) = item else {
                    return Err(perr("applyOps element is not a document"));
                };
                match parse_raw(child)? {
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
        b"commitTransaction" => txn_key(d)
            .map(|key| Entry::Commit { key })
            .ok_or_else(|| perr("commitTransaction without lsid/txnNumber")),
        b"abortTransaction" => txn_key(d)
            .map(|key| Entry::Abort { key })
            .ok_or_else(|| perr("abortTransaction without lsid/txnNumber")),
        _ => {
            let mut cmd = Document::try_from(o)
                .map_err(|e| perr(format!("command entry is not decodable: {e}")))?;
            if let Ok(o2) = d.get_document("o2") {
                if let Ok(o2) = Document::try_from(o2) {
                    cmd.insert("$o2", o2);
                }
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
    /// Whether an oplog entry counts as one of the task's in the progress figures and the apply
    /// throttle: not a no-op, and on a selected database, or a command on `admin.$cmd` (transactions:
    /// `applyOps`, commit, abort), which may carry the task's writes.
    pub(crate) fn counts(&self, raw: &RawDocument) -> bool {
        if raw.get_str("op").map_or(true, |op| op == "n") {
            return false;
        }
        match raw.get_str("ns") {
            Ok("admin.$cmd") => true,
            Ok(ns) => self.db_selected(ns.split_once('.').map_or(ns, |(db, _)| db)),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{doc, Bson};

    fn raw(d: Document) -> RawDocumentBuf {
        RawDocumentBuf::try_from(&d).unwrap()
    }

    #[test]
    fn entries_of_the_task_count_noops_and_other_databases_do_not() {
        let f = NsFilter::new(&["app".to_string()]);
        let e = |op: &str, ns: &str| raw(doc! {"op": op, "ns": ns, "o": {}});
        assert!(f.counts(&e("i", "app.items")));
        assert!(f.counts(&e("c", "app.$cmd")));
        assert!(f.counts(&e("c", "admin.$cmd")));
        assert!(!f.counts(&e("n", "")));
        assert!(!f.counts(&e("i", "other.items")));
        assert!(!f.counts(&e("i", "config.system.sessions")));
        assert!(!f.counts(&raw(doc! {"ns": "app.items"})));
    }

    fn cu(key: Document, o: Document) -> Op {
        classify_update("a.b".into(), raw(key), &raw(o)).unwrap()
    }

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
                    assert!(update.get("$v").unwrap().is_none());
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
            let op = cu(doc! {"_id": 1}, o);
            assert!(matches!(op, Op::UpdateDiff { .. }));
        }
    }

    #[test]
    fn replacement_with_dollar_fields_is_a_replacement() {
        let o = doc! {"_id": 1, "$v": 2, "diff": {"u": {"a": 1}}, "$set": {"x": 1}};
        let op = cu(doc! {"_id": 1}, o.clone());
        assert_eq!(
            op,
            Op::Replace {
                ns: "a.b".into(),
                key: raw(doc! {"_id": 1}),
                doc: raw(o)
            }
        );
        let op = cu(doc! {"_id": 1}, doc! {"$set": {"_id": 1}});
        assert!(matches!(op, Op::UpdateModifier { .. }));
    }

    #[test]
    fn replacement_with_field_named_diff_is_not_a_diff() {
        let op = cu(doc! {"_id": 1}, doc! {"_id": 1, "diff": {"u": {"a": 1}}});
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
