//! Query filter matching (`find`, `update`, `delete`, `count`, `$match`).
//!
//! Owns mongosim's own interpretation of MQL predicates over decoded documents. It must not
//! share code with the Ferry engine: the two implementations check each other.

use std::cmp::Ordering;

use bson::{Bson, Document};

use crate::error::{CmdResult, CommandError};
use crate::value::{collect_path, compare, type_bracket, values_equal};

/// Returns whether `doc` matches the query `filter`.
pub fn matches(doc: &Document, filter: &Document) -> CmdResult<bool> {
    for (key, cond) in filter {
        if !match_top(doc, key, cond)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn match_top(doc: &Document, key: &str, cond: &Bson) -> CmdResult<bool> {
    match key {
        "$and" | "$or" | "$nor" => {
            let Bson::Array(items) = cond else {
                return Err(CommandError::bad_value(format!("{key} must be an array")));
            };
            if items.is_empty() {
                return Err(CommandError::bad_value(
                    "$and/$or/$nor must be a nonempty array",
                ));
            }
            let mut results = Vec::with_capacity(items.len());
            for item in items {
                let Bson::Document(sub) = item else {
                    return Err(CommandError::bad_value(format!(
                        "{key} argument's entries must be objects"
                    )));
                };
                results.push(matches(doc, sub)?);
            }
            Ok(match key {
                "$and" => results.iter().all(|r| *r),
                "$or" => results.iter().any(|r| *r),
                _ => !results.iter().any(|r| *r),
            })
        }
        "$comment" => Ok(true),
        k if k.starts_with('$') => Err(CommandError::bad_value(format!(
            "unknown top level operator: {k}"
        ))),
        _ => match_field(doc, key, cond),
    }
}

fn is_operator_doc(cond: &Bson) -> Option<&Document> {
    match cond {
        Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')) => Some(d),
        _ => None,
    }
}

fn match_field(doc: &Document, path: &str, cond: &Bson) -> CmdResult<bool> {
    let parts: Vec<&str> = path.split('.').collect();
    let mut values = Vec::new();
    // Walk from the root document.
    if let Some((head, rest)) = parts.split_first() {
        if let Some(v) = doc.get(*head) {
            collect_path(v, rest, &mut values);
        }
    }
    match is_operator_doc(cond) {
        Some(ops) => {
            for (op, arg) in ops {
                if !apply_operator(&values, op, arg, ops)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        None => match cond {
            Bson::RegularExpression(re) => {
                regex_any(&values, re.pattern.as_str(), re.options.as_str())
            }
            _ => Ok(eq_any(&values, cond)),
        },
    }
}

thread_local! {
    static REGEX_CACHE: std::cell::RefCell<std::collections::HashMap<(String, String), regex::Regex>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Whether any string candidate (or string element of an array candidate) matches.
fn regex_any(values: &[&Bson], pattern: &str, options: &str) -> CmdResult<bool> {
    let key = (pattern.to_string(), options.to_string());
    let re = REGEX_CACHE.with(|c| -> CmdResult<regex::Regex> {
        if let Some(r) = c.borrow().get(&key) {
            return Ok(r.clone());
        }
        let mut flags = String::new();
        for o in options.chars() {
            match o {
                'i' | 'm' | 's' | 'x' => flags.push(o),
                'u' => {}
                other => {
                    return Err(CommandError::new(
                        51108,
                        format!("invalid flag in regex options: {other}"),
                    ))
                }
            }
        }
        let full = if flags.is_empty() {
            pattern.to_string()
        } else {
            format!("(?{flags}){pattern}")
        };
        let r = regex::Regex::new(&full)
            .map_err(|e| CommandError::new(51091, format!("Regular expression is invalid: {e}")))?;
        let mut cache = c.borrow_mut();
        if cache.len() > 256 {
            cache.clear();
        }
        cache.insert(key.clone(), r.clone());
        Ok(r)
    })?;
    let hit = |v: &Bson| matches!(v, Bson::String(s) | Bson::Symbol(s) if re.is_match(s));
    Ok(values
        .iter()
        .any(|v| hit(v) || matches!(v, Bson::Array(a) if a.iter().any(hit))))
}

/// Equality with array semantics: any candidate equal, or any element of an array candidate.
fn eq_any(values: &[&Bson], target: &Bson) -> bool {
    if matches!(target, Bson::Null) && values.is_empty() {
        return true;
    }
    values.iter().any(|v| {
        values_equal(v, target)
            || matches!(v, Bson::Array(a) if a.iter().any(|e| values_equal(e, target)))
    })
}

fn cmp_any(values: &[&Bson], target: &Bson, ok: fn(Ordering) -> bool) -> bool {
    let check = |v: &Bson| type_bracket(v) == type_bracket(target) && ok(compare(v, target));
    values
        .iter()
        .any(|v| check(v) || matches!(v, Bson::Array(a) if a.iter().any(check)))
}

fn apply_operator(values: &[&Bson], op: &str, arg: &Bson, all: &Document) -> CmdResult<bool> {
    Ok(match op {
        "$eq" => eq_any(values, arg),
        "$ne" => !eq_any(values, arg),
        "$gt" => cmp_any(values, arg, |o| o == Ordering::Greater),
        "$gte" => cmp_any(values, arg, |o| o != Ordering::Less),
        "$lt" => cmp_any(values, arg, |o| o == Ordering::Less),
        "$lte" => cmp_any(values, arg, |o| o != Ordering::Greater),
        "$in" | "$nin" => {
            let Bson::Array(items) = arg else {
                return Err(CommandError::bad_value(format!("{op} needs an array")));
            };
            let hit = items.iter().any(|t| eq_any(values, t));
            if op == "$in" {
                hit
            } else {
                !hit
            }
        }
        "$exists" => crate::value::truthy(Some(arg)) != values.is_empty(),
        "$size" => {
            let n = crate::value::as_i64(arg).unwrap_or(-1);
            values
                .iter()
                .any(|v| matches!(v, Bson::Array(a) if a.len() as i64 == n))
        }
        "$all" => {
            let Bson::Array(items) = arg else {
                return Err(CommandError::bad_value("$all needs an array"));
            };
            !items.is_empty() && items.iter().all(|t| eq_any(values, t))
        }
        "$elemMatch" => {
            let Bson::Document(sub) = arg else {
                return Err(CommandError::bad_value("$elemMatch needs an Object"));
            };
            let mut hit = false;
            for v in values {
                if let Bson::Array(a) = v {
                    for e in a {
                        let ok = match e {
                            Bson::Document(ed) if is_operator_doc(arg).is_none() => {
                                matches(ed, sub)?
                            }
                            other => {
                                let single = [other];
                                let mut all_ok = true;
                                for (o, a2) in sub {
                                    all_ok &= apply_operator(&single, o, a2, sub)?;
                                }
                                all_ok
                            }
                        };
                        hit |= ok;
                    }
                }
            }
            hit
        }
        "$type" => {
            let wanted: Vec<Bson> = match arg {
                Bson::Array(a) => a.clone(),
                other => vec![other.clone()],
            };
            values
                .iter()
                .any(|v| wanted.iter().any(|w| type_matches(v, w)))
        }
        "$not" => match arg {
            Bson::Document(sub) => {
                let mut all_ok = true;
                for (o, a2) in sub {
                    all_ok &= apply_operator(values, o, a2, sub)?;
                }
                !all_ok
            }
            _ => return Err(CommandError::bad_value("$not needs a regex or a document")),
        },
        "$regex" => {
            let (pattern, mut options) = match arg {
                Bson::String(p) => (p.clone(), String::new()),
                Bson::RegularExpression(r) => (
                    r.pattern.as_str().to_string(),
                    r.options.as_str().to_string(),
                ),
                _ => return Err(CommandError::bad_value("$regex has to be a string")),
            };
            if let Some(Bson::String(o)) = all.get("$options") {
                options = o.clone();
            }
            regex_any(values, &pattern, &options)?
        }
        "$options" if all.contains_key("$regex") => true,
        "$comment" => true,
        other => {
            return Err(CommandError::bad_value(format!(
                "unknown operator: {other}"
            )));
        }
    })
}

fn type_matches(v: &Bson, wanted: &Bson) -> bool {
    let code = match wanted {
        Bson::String(s) => match s.as_str() {
            "double" => 1,
            "string" => 2,
            "object" => 3,
            "array" => 4,
            "binData" => 5,
            "objectId" => 7,
            "bool" => 8,
            "date" => 9,
            "null" => 10,
            "int" => 16,
            "timestamp" => 17,
            "long" => 18,
            "decimal" => 19,
            "number" => return type_bracket(v) == 3,
            _ => return false,
        },
        other => crate::value::as_i64(other).unwrap_or(-1) as i32,
    };
    v.element_type() as i32 == code
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn comparison_and_logical_operators() {
        let d = doc! {"_id": 1, "a": 5, "b": {"c": [1, 2, 3]}, "s": "x"};
        assert!(matches(&d, &doc! {"a": {"$gt": 4, "$lte": 5}}).unwrap());
        assert!(!matches(&d, &doc! {"a": {"$gt": "a"}}).unwrap());
        assert!(matches(&d, &doc! {"b.c": 2}).unwrap());
        assert!(matches(&d, &doc! {"b.c": {"$in": [9, 3]}}).unwrap());
        assert!(matches(&d, &doc! {"$or": [{"a": 1}, {"s": "x"}]}).unwrap());
        assert!(matches(&d, &doc! {"z": {"$exists": false}, "z2": null}).unwrap());
        assert!(!matches(&d, &doc! {"a": {"$ne": 5}}).unwrap());
        assert!(matches(
            &d,
            &doc! {"$and": [{"a": {"$gte": 5}}, {"b.c": {"$lt": 2}}]}
        )
        .unwrap());
        assert!(matches(&d, &doc! {"a": {"$bogus": 1}}).is_err());
        assert!(matches(&d, &doc! {"s": {"$regex": "^X", "$options": "i"}}).unwrap());
        assert!(!matches(&d, &doc! {"s": {"$regex": "^y"}}).unwrap());
        let re = bson::Regex {
            pattern: "x".try_into().unwrap(),
            options: "".try_into().unwrap(),
        };
        assert!(matches(&d, &doc! {"s": Bson::RegularExpression(re)}).unwrap());
    }
}
