//! Update operators and replacement documents (`update`, `findAndModify`, upserts).
//!
//! Owns mongosim's own implementation of `$set`, `$unset`, `$inc`, `$mul`, `$min`, `$max`,
//! `$rename`, `$push` (`$each`/`$slice`/`$position`), `$pull`, `$addToSet`, `$pop`,
//! `$currentDate`, `$setOnInsert` and replacements. It produces the post-image only; the oplog
//! diff is computed afterwards from pre- and post-image by `diff`. It must not share code
//! with the Ferry engine.

use std::cmp::Ordering;

use bson::{Bson, Document};

use crate::error::{CmdResult, CommandError};
use crate::filter;
use crate::value::{as_f64, as_i64, compare, type_bracket, values_equal};

/// What the `u` field of an update statement is.
#[derive(Debug, Clone)]
pub enum UpdateSpec {
    /// A whole new document (keeps the `_id`).
    Replacement(Document),
    /// `$`-operator document.
    Operators(Document),
    /// Aggregation pipeline update (limited: `$set`/`$addFields`/`$unset` with literals).
    Pipeline(Vec<Document>),
}

impl UpdateSpec {
    /// Classifies the `u` value of an update statement.
    pub fn parse(u: &Bson) -> CmdResult<Self> {
        match u {
            Bson::Document(d) => {
                let ops = d.keys().filter(|k| k.starts_with('$')).count();
                if ops == 0 {
                    Ok(Self::Replacement(d.clone()))
                } else if ops == d.len() {
                    Ok(Self::Operators(d.clone()))
                } else {
                    Err(CommandError::failed_to_parse(
                        "Unknown modifier mixed with fields in the update document",
                    ))
                }
            }
            Bson::Array(stages) => {
                let mut out = Vec::new();
                for s in stages {
                    match s {
                        Bson::Document(d) => out.push(d.clone()),
                        _ => {
                            return Err(CommandError::failed_to_parse(
                                "Each element of the 'pipeline' array must be an object",
                            ))
                        }
                    }
                }
                Ok(Self::Pipeline(out))
            }
            _ => Err(CommandError::failed_to_parse(
                "Update argument must be either an object or an array",
            )),
        }
    }
}

/// Applies `spec` to `pre`; `inserting` is true for the insert half of an upsert.
pub fn apply(pre: &Document, spec: &UpdateSpec, inserting: bool) -> CmdResult<Document> {
    let post = match spec {
        UpdateSpec::Replacement(r) => replace(pre, r)?,
        UpdateSpec::Operators(ops) => apply_operators(pre, ops, inserting)?,
        UpdateSpec::Pipeline(stages) => apply_pipeline(pre, stages)?,
    };
    if pre.get("_id").is_some() && !inserting {
        let same = match (pre.get("_id"), post.get("_id")) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        };
        if !same {
            return Err(CommandError::new(
                66,
                "Performing an update on the path '_id' would modify the immutable field '_id'",
            ));
        }
    }
    Ok(post)
}

fn replace(pre: &Document, r: &Document) -> CmdResult<Document> {
    let mut out = Document::new();
    if let Some(id) = pre.get("_id") {
        if let Some(new_id) = r.get("_id") {
            if new_id != id {
                return Err(CommandError::new(
                    66,
                    format!(
                        "After applying the update, the (immutable) field '_id' was found to have been altered to _id: {new_id}"
                    ),
                ));
            }
        }
        out.insert("_id", id.clone());
    }
    for (k, v) in r {
        if k != "_id" || !out.contains_key("_id") {
            out.insert(k.clone(), v.clone());
        }
    }
    Ok(out)
}

fn apply_pipeline(pre: &Document, stages: &[Document]) -> CmdResult<Document> {
    let mut doc = pre.clone();
    for stage in stages {
        let (name, arg) = stage
            .iter()
            .next()
            .ok_or_else(|| CommandError::bad_value("empty pipeline stage"))?;
        match (name.as_str(), arg) {
            ("$set" | "$addFields", Bson::Document(fields)) => {
                for (k, v) in fields {
                    if contains_expression(v) {
                        return Err(CommandError::new(
                            115,
                            "mongosim supports only literal values in pipeline updates",
                        ));
                    }
                    set_path(&mut doc, k, v.clone())?;
                }
            }
            ("$unset", Bson::String(f)) => unset_path(&mut doc, f),
            ("$unset", Bson::Array(fs)) => {
                for f in fs {
                    if let Bson::String(f) = f {
                        unset_path(&mut doc, f);
                    }
                }
            }
            _ => {
                return Err(CommandError::new(
                    115,
                    format!("mongosim does not support {name} in pipeline updates"),
                ))
            }
        }
    }
    Ok(doc)
}

fn contains_expression(v: &Bson) -> bool {
    match v {
        Bson::String(s) => s.starts_with('$'),
        Bson::Document(d) => d
            .iter()
            .any(|(k, v)| k.starts_with('$') || contains_expression(v)),
        Bson::Array(a) => a.iter().any(contains_expression),
        _ => false,
    }
}

struct Mod<'a> {
    op: &'a str,
    path: String,
    arg: &'a Bson,
}

fn path_cmp(a: &str, b: &str) -> Ordering {
    let mut ia = a.split('.');
    let mut ib = b.split('.');
    loop {
        match (ia.next(), ib.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let c = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(nx), Ok(ny)) => nx.cmp(&ny),
                    _ => x.cmp(y),
                };
                if c != Ordering::Equal {
                    return c;
                }
            }
        }
    }
}

fn is_prefix(a: &str, b: &str) -> bool {
    a == b || b.starts_with(&format!("{a}."))
}

fn apply_operators(pre: &Document, ops: &Document, inserting: bool) -> CmdResult<Document> {
    let mut mods: Vec<Mod<'_>> = Vec::new();
    for (op, arg) in ops {
        let Bson::Document(fields) = arg else {
            return Err(CommandError::failed_to_parse(format!(
                "Modifiers operate on fields but we found type {:?} instead. For example: {{$mod: {{<field>: ...}}}} not {{{op}: {arg}}}",
                arg.element_type()
            )));
        };
        match op.as_str() {
            "$set" | "$unset" | "$inc" | "$mul" | "$min" | "$max" | "$push" | "$pull"
            | "$addToSet" | "$pop" | "$currentDate" | "$rename" | "$pullAll" => {}
            "$setOnInsert" if inserting => {}
            "$setOnInsert" => continue,
            other => {
                return Err(CommandError::failed_to_parse(format!(
                    "Unknown modifier: {other}. Expected a valid update modifier or pipeline-style update specified as an array"
                )))
            }
        }
        for (path, a) in fields {
            if path.is_empty() || path.split('.').any(|p| p.is_empty()) {
                return Err(CommandError::new(
                    56,
                    format!("An update path '{path}' contains an empty field name, which is not allowed."),
                ));
            }
            mods.push(Mod {
                op: op.as_str(),
                path: path.clone(),
                arg: a,
            });
            if op == "$rename" {
                let Bson::String(to) = a else {
                    return Err(CommandError::bad_value(
                        "The 'to' field for $rename must be a string",
                    ));
                };
                mods.push(Mod {
                    op: "$renameTo",
                    path: to.clone(),
                    arg: a,
                });
            }
        }
    }
    for (i, a) in mods.iter().enumerate() {
        for b in &mods[i + 1..] {
            if is_prefix(&a.path, &b.path) || is_prefix(&b.path, &a.path) {
                return Err(CommandError::new(
                    40,
                    format!(
                        "Updating the path '{}' would create a conflict at '{}'",
                        b.path,
                        if a.path.len() <= b.path.len() {
                            &a.path
                        } else {
                            &b.path
                        }
                    ),
                ));
            }
        }
    }
    mods.sort_by(|a, b| path_cmp(&a.path, &b.path));
    let mut doc = pre.clone();
    // Renames read their source before any target is written.
    let mut renamed: Vec<(String, Option<Bson>)> = Vec::new();
    for m in &mods {
        if m.op == "$rename" {
            let v = crate::value::get_path(&doc, &m.path).cloned();
            if let Bson::String(to) = m.arg {
                renamed.push((to.clone(), v));
            }
        }
    }
    for m in &mods {
        apply_one(&mut doc, m, &renamed)?;
    }
    Ok(doc)
}

fn apply_one(doc: &mut Document, m: &Mod<'_>, renamed: &[(String, Option<Bson>)]) -> CmdResult<()> {
    let current = crate::value::get_path(doc, &m.path).cloned();
    match m.op {
        "$set" | "$setOnInsert" => set_path(doc, &m.path, m.arg.clone()),
        "$unset" => {
            unset_path(doc, &m.path);
            Ok(())
        }
        "$rename" => {
            unset_path(doc, &m.path);
            Ok(())
        }
        "$renameTo" => {
            if let Some((_, Some(v))) = renamed.iter().find(|(to, _)| to == &m.path) {
                set_path(doc, &m.path, v.clone())?;
            }
            Ok(())
        }
        "$inc" | "$mul" => {
            if as_f64(m.arg).is_none() {
                return Err(CommandError::type_mismatch(format!(
                    "Cannot {} with non-numeric argument: {{{}: {}}}",
                    if m.op == "$inc" {
                        "increment"
                    } else {
                        "multiply"
                    },
                    m.path,
                    m.arg
                )));
            }
            let base = match &current {
                None => {
                    if m.op == "$inc" {
                        m.arg.clone()
                    } else {
                        zero_like(m.arg)
                    }
                }
                Some(v) if as_f64(v).is_some() => arith(v, m.arg, m.op == "$mul"),
                Some(v) => {
                    return Err(CommandError::type_mismatch(format!(
                        "Cannot apply {} to a value of non-numeric type. {{_id: {}}} has the field '{}' of non-numeric type {}",
                        m.op,
                        doc.get("_id").map(|x| x.to_string()).unwrap_or_default(),
                        m.path,
                        type_name(v)
                    )))
                }
            };
            set_path(doc, &m.path, base)
        }
        "$min" | "$max" => {
            let replace = match &current {
                None => true,
                Some(v) => {
                    let c = compare(m.arg, v);
                    if m.op == "$min" {
                        c == Ordering::Less
                    } else {
                        c == Ordering::Greater
                    }
                }
            };
            if replace {
                set_path(doc, &m.path, m.arg.clone())?;
            }
            Ok(())
        }
        "$currentDate" => set_path(doc, &m.path, Bson::DateTime(bson::DateTime::now())),
        "$push" | "$addToSet" => {
            let mut arr = array_at(doc, &m.path, current.as_ref())?;
            let (items, each) = match m.arg {
                Bson::Document(d) if d.contains_key("$each") => match d.get("$each") {
                    Some(Bson::Array(a)) => (a.clone(), Some(d)),
                    _ => {
                        return Err(CommandError::bad_value(
                            "The argument to $each in $push must be an array",
                        ))
                    }
                },
                other => (vec![other.clone()], None),
            };
            if m.op == "$addToSet" {
                for it in items {
                    if !arr.iter().any(|e| values_equal(e, &it)) {
                        arr.push(it);
                    }
                }
            } else {
                let pos = each
                    .and_then(|d| d.get("$position"))
                    .and_then(as_i64)
                    .map(|p| {
                        if p < 0 {
                            (arr.len() as i64 + p).max(0) as usize
                        } else {
                            (p as usize).min(arr.len())
                        }
                    })
                    .unwrap_or(arr.len());
                for (i, it) in items.into_iter().enumerate() {
                    arr.insert(pos + i, it);
                }
                if let Some(Bson::Document(spec)) = each.and_then(|d| d.get("$sort")).map(|s| {
                    if let Bson::Document(_) = s {
                        s.clone()
                    } else {
                        Bson::Document(bson::doc! {"": s.clone()})
                    }
                }) {
                    sort_array(&mut arr, &spec);
                }
                if let Some(n) = each.and_then(|d| d.get("$slice")).and_then(as_i64) {
                    if n >= 0 {
                        arr.truncate(n as usize);
                    } else {
                        let keep = (-n) as usize;
                        if arr.len() > keep {
                            arr.drain(..arr.len() - keep);
                        }
                    }
                }
            }
            set_path(doc, &m.path, Bson::Array(arr))
        }
        "$pull" | "$pullAll" => {
            if current.is_none() {
                return Ok(());
            }
            let arr = array_at(doc, &m.path, current.as_ref())?;
            let mut kept = Vec::with_capacity(arr.len());
            for e in arr {
                let remove = if m.op == "$pullAll" {
                    match m.arg {
                        Bson::Array(a) => a.iter().any(|x| values_equal(x, &e)),
                        _ => {
                            return Err(CommandError::bad_value(
                                "$pullAll requires an array argument",
                            ))
                        }
                    }
                } else {
                    pull_matches(&e, m.arg)?
                };
                if !remove {
                    kept.push(e);
                }
            }
            set_path(doc, &m.path, Bson::Array(kept))
        }
        "$pop" => {
            if current.is_none() {
                return Ok(());
            }
            let mut arr = array_at(doc, &m.path, current.as_ref())?;
            if !arr.is_empty() {
                if as_i64(m.arg).unwrap_or(1) < 0 {
                    arr.remove(0);
                } else {
                    arr.pop();
                }
            }
            set_path(doc, &m.path, Bson::Array(arr))
        }
        other => Err(CommandError::failed_to_parse(format!(
            "Unknown modifier: {other}"
        ))),
    }
}

fn sort_array(arr: &mut [Bson], spec: &Document) {
    arr.sort_by(|a, b| {
        for (k, dir) in spec {
            let (va, vb) = if k.is_empty() {
                (Some(a), Some(b))
            } else {
                (
                    a.as_document().and_then(|d| crate::value::get_path(d, k)),
                    b.as_document().and_then(|d| crate::value::get_path(d, k)),
                )
            };
            let c = compare(va.unwrap_or(&Bson::Null), vb.unwrap_or(&Bson::Null));
            let c = if as_i64(dir).unwrap_or(1) < 0 {
                c.reverse()
            } else {
                c
            };
            if c != Ordering::Equal {
                return c;
            }
        }
        Ordering::Equal
    });
}

fn pull_matches(e: &Bson, cond: &Bson) -> CmdResult<bool> {
    match cond {
        Bson::Document(c) if c.keys().next().is_some_and(|k| k.starts_with('$')) => {
            let mut wrapper = Document::new();
            wrapper.insert("v", e.clone());
            filter::matches(&wrapper, &bson::doc! {"v": c.clone()})
        }
        Bson::Document(c) => match e {
            Bson::Document(ed) => filter::matches(ed, c),
            _ => Ok(false),
        },
        other => Ok(values_equal(e, other)),
    }
}

fn array_at(doc: &Document, path: &str, current: Option<&Bson>) -> CmdResult<Vec<Bson>> {
    match current {
        None => Ok(Vec::new()),
        Some(Bson::Array(a)) => Ok(a.clone()),
        Some(other) => Err(CommandError::bad_value(format!(
            "The field '{path}' must be an array but is of type {} in document {{_id: {}}}",
            type_name(other),
            doc.get("_id").map(|x| x.to_string()).unwrap_or_default()
        ))),
    }
}

/// The server's name of a BSON type (as used in error messages).
pub fn type_name(v: &Bson) -> &'static str {
    match v {
        Bson::Double(_) => "double",
        Bson::String(_) => "string",
        Bson::Document(_) => "object",
        Bson::Array(_) => "array",
        Bson::Binary(_) => "binData",
        Bson::ObjectId(_) => "objectId",
        Bson::Boolean(_) => "bool",
        Bson::DateTime(_) => "date",
        Bson::Null => "null",
        Bson::Int32(_) => "int",
        Bson::Timestamp(_) => "timestamp",
        Bson::Int64(_) => "long",
        Bson::Decimal128(_) => "decimal",
        _ => "other",
    }
}

fn zero_like(arg: &Bson) -> Bson {
    match arg {
        Bson::Int32(_) => Bson::Int32(0),
        Bson::Int64(_) => Bson::Int64(0),
        _ => Bson::Double(0.0),
    }
}

fn arith(a: &Bson, b: &Bson, mul: bool) -> Bson {
    let int_op = |x: i64, y: i64| {
        if mul {
            x.checked_mul(y)
        } else {
            x.checked_add(y)
        }
    };
    match (a, b) {
        (Bson::Int32(x), Bson::Int32(y)) => match int_op(i64::from(*x), i64::from(*y)) {
            Some(r) => i32::try_from(r).map(Bson::Int32).unwrap_or(Bson::Int64(r)),
            None => Bson::Double(f(a, b, mul)),
        },
        (Bson::Int32(_) | Bson::Int64(_), Bson::Int32(_) | Bson::Int64(_)) => {
            match (as_i64(a), as_i64(b)) {
                (Some(x), Some(y)) => int_op(x, y)
                    .map(Bson::Int64)
                    .unwrap_or(Bson::Double(f(a, b, mul))),
                _ => Bson::Double(f(a, b, mul)),
            }
        }
        _ => Bson::Double(f(a, b, mul)),
    }
}

fn f(a: &Bson, b: &Bson, mul: bool) -> f64 {
    let (x, y) = (as_f64(a).unwrap_or(0.0), as_f64(b).unwrap_or(0.0));
    if mul {
        x * y
    } else {
        x + y
    }
}

/// Sets a dotted path, creating intermediate documents (and padding arrays with nulls).
pub fn set_path(doc: &mut Document, path: &str, value: Bson) -> CmdResult<()> {
    let parts: Vec<&str> = path.split('.').collect();
    set_in_doc(doc, &parts, value, path)
}

fn set_in_doc(doc: &mut Document, parts: &[&str], value: Bson, full: &str) -> CmdResult<()> {
    let Some((head, rest)) = parts.split_first() else {
        return Ok(());
    };
    if rest.is_empty() {
        doc.insert(*head, value);
        return Ok(());
    }
    if !doc.contains_key(*head) {
        doc.insert(*head, Bson::Document(Document::new()));
    }
    match doc.get_mut(*head) {
        Some(child) => set_in_value(child, rest, value, full),
        None => Ok(()),
    }
}

fn set_in_value(target: &mut Bson, parts: &[&str], value: Bson, full: &str) -> CmdResult<()> {
    match target {
        Bson::Document(d) => set_in_doc(d, parts, value, full),
        Bson::Array(a) => {
            let Some((head, rest)) = parts.split_first() else {
                return Ok(());
            };
            let idx: usize = head.parse().map_err(|_| {
                CommandError::new(
                    28,
                    format!("Cannot create field '{head}' in element {{{full}: [...]}}"),
                )
            })?;
            if idx > crate::diff::MAX_PADDING {
                return Err(CommandError::bad_value(format!(
                    "can't backfill array to larger than 1500000 elements (path {full})"
                )));
            }
            while a.len() <= idx {
                a.push(Bson::Null);
            }
            if rest.is_empty() {
                a[idx] = value;
                return Ok(());
            }
            if matches!(a[idx], Bson::Null) {
                a[idx] = Bson::Document(Document::new());
            }
            set_in_value(&mut a[idx], rest, value, full)
        }
        other => Err(CommandError::new(
            28,
            format!(
                "Cannot create field '{}' in element {{{}}}",
                parts.first().copied().unwrap_or(""),
                other
            ),
        )),
    }
}

/// Removes a dotted path (array elements become null, like `$unset` does).
pub fn unset_path(doc: &mut Document, path: &str) {
    let parts: Vec<&str> = path.split('.').collect();
    unset_in_doc(doc, &parts);
}

fn unset_in_doc(doc: &mut Document, parts: &[&str]) {
    let Some((head, rest)) = parts.split_first() else {
        return;
    };
    if rest.is_empty() {
        doc.remove(*head);
        return;
    }
    match doc.get_mut(*head) {
        Some(Bson::Document(d)) => unset_in_doc(d, rest),
        Some(Bson::Array(a)) => unset_in_array(a, rest),
        _ => {}
    }
}

fn unset_in_array(a: &mut [Bson], parts: &[&str]) {
    let Some((head, rest)) = parts.split_first() else {
        return;
    };
    let Ok(idx) = head.parse::<usize>() else {
        return;
    };
    let Some(el) = a.get_mut(idx) else { return };
    if rest.is_empty() {
        *el = Bson::Null;
        return;
    }
    match el {
        Bson::Document(d) => unset_in_doc(d, rest),
        Bson::Array(inner) => unset_in_array(inner, rest),
        _ => {}
    }
}

/// Builds the base document of an upsert from the equality parts of the query.
pub fn upsert_seed(query: &Document) -> Document {
    let mut out = Document::new();
    for (k, v) in query {
        if k.starts_with('$') {
            if k == "$and" {
                if let Bson::Array(items) = v {
                    for it in items {
                        if let Bson::Document(d) = it {
                            for (k2, v2) in upsert_seed(d) {
                                let _ = set_path(&mut out, &k2, v2);
                            }
                        }
                    }
                }
            }
            continue;
        }
        let value = match v {
            Bson::Document(d) if d.keys().next().is_some_and(|x| x.starts_with('$')) => {
                match d.get("$eq") {
                    Some(eq) => eq.clone(),
                    None => continue,
                }
            }
            other => other.clone(),
        };
        let _ = set_path(&mut out, k, value);
    }
    out
}

/// `true` when numeric type brackets match (used by callers that compare types).
pub fn same_bracket(a: &Bson, b: &Bson) -> bool {
    type_bracket(a) == type_bracket(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn up(pre: Document, u: Document) -> Document {
        apply(&pre, &UpdateSpec::parse(&Bson::Document(u)).unwrap(), false).unwrap()
    }

    #[test]
    fn operators_produce_server_shaped_documents() {
        assert_eq!(
            up(
                doc! {"_id": 1, "a": 1},
                doc! {"$set": {"z": 1, "b": 2}, "$inc": {"a": 2}}
            ),
            doc! {"_id": 1, "a": 3, "b": 2, "z": 1}
        );
        assert_eq!(
            up(
                doc! {"_id": 1, "l": [1, 2]},
                doc! {"$push": {"l": {"$each": [3, 4], "$slice": -3}}}
            ),
            doc! {"_id": 1, "l": [2, 3, 4]}
        );
        assert_eq!(
            up(
                doc! {"_id": 1, "l": [1, 2, 1]},
                doc! {"$pull": {"l": 1}, "$rename": {"x": "y"}}
            ),
            doc! {"_id": 1, "l": [2]}
        );
        assert_eq!(
            up(
                doc! {"_id": 1, "x": 5, "l": [1]},
                doc! {"$rename": {"x": "y"}, "$addToSet": {"l": {"$each": [1, 2]}}}
            ),
            doc! {"_id": 1, "l": [1, 2], "y": 5}
        );
        assert_eq!(
            up(
                doc! {"_id": 1, "a": 5},
                doc! {"$min": {"a": 3}, "$max": {"b": 1}, "$unset": {"c": ""}}
            ),
            doc! {"_id": 1, "a": 3, "b": 1}
        );
        assert_eq!(
            up(doc! {"_id": 1}, doc! {"$set": {"a.b.c": 1}}),
            doc! {"_id": 1, "a": {"b": {"c": 1}}}
        );
    }

    #[test]
    fn conflicts_and_immutable_id_are_rejected() {
        let pre = doc! {"_id": 1, "a": {"b": 1}};
        let spec = UpdateSpec::parse(&Bson::Document(doc! {"$set": {"a": 1, "a.b": 2}})).unwrap();
        assert_eq!(apply(&pre, &spec, false).unwrap_err().code, 40);
        let spec = UpdateSpec::parse(&Bson::Document(doc! {"$set": {"_id": 2}})).unwrap();
        assert_eq!(apply(&pre, &spec, false).unwrap_err().code, 66);
        let spec = UpdateSpec::parse(&Bson::Document(doc! {"$inc": {"a": 1}})).unwrap();
        assert_eq!(apply(&pre, &spec, false).unwrap_err().code, 14);
    }
}
