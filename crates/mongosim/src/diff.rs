//! `$v: 2` oplog diffs computed from a pre-image and a post-image (reference §7.2).
//!
//! Owns mongosim's diff calculator: walks both images in order like the server's
//! `document_diff_calculator` (same-name fields compared in place, sub-documents and arrays
//! diffed recursively, moved or new fields re-inserted at the end, array tails resized with
//! `l`). It must not apply diffs (the tests carry their own applier) and must not share code
//! with the Ferry engine.

use bson::{Bson, Document};

/// A computed diff node.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Obj(ObjDiff),
    Arr(ArrDiff),
}

#[derive(Debug, Clone, PartialEq, Default)]
struct ObjDiff {
    deletes: Vec<String>,
    updates: Vec<(String, Bson)>,
    inserts: Vec<(String, Bson)>,
    subs: Vec<(String, Node)>,
}

#[derive(Debug, Clone, PartialEq, Default)]
struct ArrDiff {
    resize: Option<usize>,
    mods: Vec<(usize, ArrMod)>,
}

#[derive(Debug, Clone, PartialEq)]
enum ArrMod {
    Update(Bson),
    Sub(Node),
}

/// Order- and type-sensitive equality (the server's `binaryEqual`).
pub fn binary_equal(a: &Bson, b: &Bson) -> bool {
    match (a, b) {
        (Bson::Double(x), Bson::Double(y)) => x.to_bits() == y.to_bits(),
        (Bson::Document(x), Bson::Document(y)) => docs_binary_equal(x, y),
        (Bson::Array(x), Bson::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| binary_equal(p, q))
        }
        _ => a == b,
    }
}

/// Order- and type-sensitive document equality.
pub fn docs_binary_equal(x: &Document, y: &Document) -> bool {
    x.len() == y.len()
        && x.iter()
            .zip(y.iter())
            .all(|((ka, va), (kb, vb))| ka == kb && binary_equal(va, vb))
}

/// The oplog `o` of an update that turned `pre` into `post`.
///
/// Returns `None` when the images are identical (no oplog entry is written). `size_limited`
/// applies the server's rule for computed diffs: when a diff would not be smaller than the
/// value it describes, the value (or, at the top, the whole document) is logged instead.
pub fn update_entry(pre: &Document, post: &Document, size_limited: bool) -> Option<Document> {
    if docs_binary_equal(pre, post) {
        return None;
    }
    let diff = match doc_diff(pre, post, size_limited) {
        Some(d) => d,
        None => return Some(post.clone()),
    };
    let mut o = Document::new();
    o.insert("$v", 2i32);
    o.insert("diff", serialize_obj(&diff));
    if size_limited && crate::value::doc_size(&o) >= crate::value::doc_size(post) {
        return Some(post.clone());
    }
    Some(o)
}

fn bson_size(v: &Bson) -> usize {
    let mut d = Document::new();
    d.insert("", v.clone());
    crate::value::doc_size(&d)
}

fn node_fits(node: &Node, post: &Bson) -> bool {
    let serialized = match node {
        Node::Obj(o) => Bson::Document(serialize_obj(o)),
        Node::Arr(a) => Bson::Document(serialize_arr(a)),
    };
    bson_size(&serialized) < bson_size(post)
}

fn sub_diff(pre: &Bson, post: &Bson, size_limited: bool) -> Option<Node> {
    let node = match (pre, post) {
        (Bson::Document(a), Bson::Document(b)) => Node::Obj(doc_diff(a, b, size_limited)?),
        (Bson::Array(a), Bson::Array(b)) => Node::Arr(array_diff(a, b, size_limited)?),
        _ => return None,
    };
    if size_limited && !node_fits(&node, post) {
        return None;
    }
    Some(node)
}

fn both_containers(a: &Bson, b: &Bson) -> bool {
    matches!(
        (a, b),
        (Bson::Document(_), Bson::Document(_)) | (Bson::Array(_), Bson::Array(_))
    )
}

fn doc_diff(pre: &Document, post: &Document, size_limited: bool) -> Option<ObjDiff> {
    let mut out = ObjDiff::default();
    let mut deletes: std::collections::BTreeSet<String> = Default::default();
    let mut pre_it = pre.iter().peekable();
    let mut post_it = post.iter().peekable();
    while let (Some((pk, pv)), Some((qk, qv))) = (pre_it.peek().copied(), post_it.peek().copied()) {
        if pk == qk {
            if !binary_equal(pv, qv) {
                if both_containers(pv, qv) {
                    match sub_diff(pv, qv, size_limited) {
                        Some(node) => out.subs.push((pk.clone(), node)),
                        None => out.updates.push((pk.clone(), qv.clone())),
                    }
                } else {
                    out.updates.push((pk.clone(), qv.clone()));
                }
            }
            pre_it.next();
            post_it.next();
        } else {
            // Gone, or present later in the post-image (then it is re-inserted at the end).
            deletes.insert(pk.clone());
            pre_it.next();
        }
    }
    for (pk, _) in pre_it {
        deletes.insert(pk.clone());
    }
    for (qk, qv) in post_it {
        deletes.remove(qk);
        out.inserts.push((qk.clone(), qv.clone()));
    }
    out.deletes = deletes.into_iter().collect();
    Some(out)
}

fn array_diff(pre: &[Bson], post: &[Bson], size_limited: bool) -> Option<ArrDiff> {
    let mut out = ArrDiff::default();
    let common = pre.len().min(post.len());
    for i in 0..common {
        let (p, q) = (&pre[i], &post[i]);
        if binary_equal(p, q) {
            continue;
        }
        if both_containers(p, q) {
            match sub_diff(p, q, size_limited) {
                Some(node) => out.mods.push((i, ArrMod::Sub(node))),
                None => out.mods.push((i, ArrMod::Update(q.clone()))),
            }
        } else {
            out.mods.push((i, ArrMod::Update(q.clone())));
        }
    }
    for (i, q) in post.iter().enumerate().skip(common) {
        out.mods.push((i, ArrMod::Update(q.clone())));
    }
    if pre.len() > post.len() {
        out.resize = Some(post.len());
    }
    Some(out)
}

fn serialize_node(n: &Node) -> Bson {
    match n {
        Node::Obj(o) => Bson::Document(serialize_obj(o)),
        Node::Arr(a) => Bson::Document(serialize_arr(a)),
    }
}

fn serialize_obj(d: &ObjDiff) -> Document {
    let mut out = Document::new();
    if !d.deletes.is_empty() {
        let mut del = Document::new();
        for k in &d.deletes {
            del.insert(k.clone(), false);
        }
        out.insert("d", del);
    }
    if !d.updates.is_empty() {
        let mut u = Document::new();
        for (k, v) in &d.updates {
            u.insert(k.clone(), v.clone());
        }
        out.insert("u", u);
    }
    if !d.inserts.is_empty() {
        let mut i = Document::new();
        for (k, v) in &d.inserts {
            i.insert(k.clone(), v.clone());
        }
        out.insert("i", i);
    }
    for (k, n) in &d.subs {
        out.insert(format!("s{k}"), serialize_node(n));
    }
    out
}

fn serialize_arr(a: &ArrDiff) -> Document {
    let mut out = Document::new();
    out.insert("a", true);
    if let Some(l) = a.resize {
        out.insert("l", i32::try_from(l).unwrap_or(i32::MAX));
    }
    for (i, m) in &a.mods {
        match m {
            ArrMod::Update(v) => out.insert(format!("u{i}"), v.clone()),
            ArrMod::Sub(n) => out.insert(format!("s{i}"), serialize_node(n)),
        };
    }
    out
}

/// Largest array index a diff or update may pad up to (the server's limit).
pub const MAX_PADDING: usize = 1_500_000;

/// Applies a `$v: 2` diff to `pre` (used by `applyOps`). Unknown sections are errors.
pub fn apply_diff(pre: &Document, diff: &Document) -> Result<Document, String> {
    let mut deletes = std::collections::HashSet::new();
    let mut updates: Vec<(String, Bson)> = Vec::new();
    let mut inserts: Vec<(String, Bson)> = Vec::new();
    let mut subs: std::collections::HashMap<String, &Document> = Default::default();
    for (k, v) in diff {
        match (k.as_str(), v) {
            ("d", Bson::Document(d)) => deletes.extend(d.keys().cloned()),
            ("u", Bson::Document(d)) => {
                updates.extend(d.iter().map(|(a, b)| (a.clone(), b.clone())))
            }
            ("i", Bson::Document(d)) => {
                inserts.extend(d.iter().map(|(a, b)| (a.clone(), b.clone())))
            }
            (s, Bson::Document(d)) if s.starts_with('s') => {
                subs.insert(s[1..].to_string(), d);
            }
            (other, _) => return Err(format!("unsupported diff section '{other}'")),
        }
    }
    let mut out = Document::new();
    let mut done = std::collections::HashSet::new();
    for (k, v) in pre {
        if deletes.contains(k) || inserts.iter().any(|(f, _)| f == k) {
            continue;
        }
        if let Some((_, nv)) = updates.iter().find(|(f, _)| f == k) {
            out.insert(k.clone(), nv.clone());
            done.insert(k.clone());
            continue;
        }
        if let Some(sd) = subs.get(k) {
            let is_array_diff = sd.get("a").is_some_and(|a| a == &Bson::Boolean(true));
            let nv = match (v, is_array_diff) {
                (Bson::Array(a), true) => Bson::Array(apply_array_diff(a, sd)?),
                (Bson::Document(d), false) => Bson::Document(apply_diff(d, sd)?),
                _ => Bson::Null,
            };
            out.insert(k.clone(), nv);
            continue;
        }
        out.insert(k.clone(), v.clone());
    }
    for (k, v) in updates.into_iter().chain(inserts) {
        if !done.contains(&k) {
            out.insert(k, v);
        }
    }
    Ok(out)
}

fn apply_array_diff(pre: &[Bson], diff: &Document) -> Result<Vec<Bson>, String> {
    let mut len = None;
    let mut mods: std::collections::BTreeMap<usize, &Bson> = Default::default();
    let mut sub_idx = std::collections::HashSet::new();
    for (k, v) in diff {
        if k == "a" {
            continue;
        }
        if k == "l" {
            len = crate::value::as_i64(v).map(|l| l.max(0) as usize);
            if len.is_some_and(|l| l > MAX_PADDING) {
                return Err("array resize is too large".into());
            }
            continue;
        }
        let (kind, idx) = match k.strip_prefix('u') {
            Some(rest) => ("u", rest),
            None => (
                "s",
                k.strip_prefix('s')
                    .ok_or_else(|| format!("bad array diff key '{k}'"))?,
            ),
        };
        let idx: usize = idx
            .parse()
            .map_err(|_| format!("bad array diff key '{k}'"))?;
        if idx > MAX_PADDING {
            return Err(format!("array index {idx} is too large"));
        }
        match kind {
            "u" => {}
            "s" => {
                sub_idx.insert(idx);
            }
            _ => return Err(format!("bad array diff key '{k}'")),
        }
        mods.insert(idx, v);
    }
    let mut out: Vec<Bson> = pre
        .iter()
        .take(len.unwrap_or(usize::MAX))
        .cloned()
        .collect();
    if let Some(l) = len {
        out.resize(l, Bson::Null);
    }
    for (idx, v) in mods {
        while out.len() <= idx {
            out.push(Bson::Null);
        }
        out[idx] = if sub_idx.contains(&idx) {
            match (&out[idx], v) {
                (Bson::Array(a), Bson::Document(sd)) if sd.contains_key("a") => {
                    Bson::Array(apply_array_diff(a, sd)?)
                }
                (Bson::Document(d), Bson::Document(sd)) => Bson::Document(apply_diff(d, sd)?),
                _ => Bson::Null,
            }
        } else {
            v.clone()
        };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn diff(pre: Document, post: Document) -> Document {
        let o = update_entry(&pre, &post, false).unwrap();
        assert_eq!(o.get_i32("$v").unwrap(), 2);
        o.get_document("diff").unwrap().clone()
    }

    #[test]
    fn reference_examples() {
        assert_eq!(
            diff(
                doc! {"_id": 3, "a": 5, "b": 1},
                doc! {"_id": 3, "a": 5, "b": 3}
            ),
            doc! {"u": {"b": 3}}
        );
        assert_eq!(
            diff(
                doc! {"_id": 8, "a": 2, "b": {"c": 1}},
                doc! {"_id": 8, "a": 2, "b": {"c": 1, "d": 2}}
            ),
            doc! {"sb": {"i": {"d": 2}}}
        );
        assert_eq!(
            diff(
                doc! {"_id": 1, "l": [1, 2, 3, 4], "x": 1},
                doc! {"_id": 1, "l": [1, 9], "y": 2}
            ),
            doc! {"d": {"x": false}, "i": {"y": 2}, "sl": {"a": true, "l": 2, "u1": 9}}
        );
    }

    #[test]
    fn moved_fields_are_reinserted_and_identical_images_log_nothing() {
        assert_eq!(
            diff(
                doc! {"_id": 1, "a": 1, "b": 2},
                doc! {"_id": 1, "b": 2, "a": 1}
            ),
            doc! {"i": {"a": 1}}
        );
        assert!(update_entry(&doc! {"a": 1}, &doc! {"a": 1}, false).is_none());
        // Type changes count: Int32 1 and Int64 1 are different bytes.
        assert_eq!(
            diff(doc! {"a": 1i32}, doc! {"a": 1i64}),
            doc! {"u": {"a": 1i64}}
        );
    }

    #[test]
    fn own_applier_round_trips() {
        let pre = doc! {"_id": 1, "a": {"b": 1, "c": [1, 2, 3]}, "x": 1, "l": [{"q": 1}]};
        let post = doc! {"_id": 1, "a": {"c": [1, 5], "b": 2}, "l": [{"q": 2}, 7], "y": {"z": 1}};
        let o = update_entry(&pre, &post, false).unwrap();
        let got = apply_diff(&pre, o.get_document("diff").unwrap()).unwrap();
        assert!(docs_binary_equal(&got, &post), "{got} != {post}");
    }

    #[test]
    fn malformed_diffs_are_errors_not_panics() {
        let pre = doc! {"l": [1, 2]};
        for bad in [
            doc! {"sl": {"a": true, "": 1}},
            doc! {"sl": {"a": true, "é1": 1}},
            doc! {"sl": {"a": true, "ux": 1}},
            doc! {"zz": 1},
        ] {
            assert!(apply_diff(&pre, &bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn size_limited_diffs_fall_back_to_replacement() {
        let pre = doc! {"_id": 1, "a": 1};
        let post = doc! {"_id": 1, "a": 2};
        assert_eq!(update_entry(&pre, &post, true).unwrap(), post);
    }
}
