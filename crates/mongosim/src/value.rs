//! BSON value semantics mongosim needs everywhere: the server's comparison order, numeric
//! helpers and dotted-path lookup.
//!
//! Owns only pure functions over `bson` values; it must not know about collections, commands
//! or the wire.

use std::cmp::Ordering;

use bson::{Bson, Document};

/// Canonical type bracket of a value in MongoDB's sort order.
pub fn type_bracket(v: &Bson) -> u8 {
    match v {
        Bson::MinKey => 1,
        Bson::Null | Bson::Undefined => 2,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 3,
        Bson::Symbol(_) | Bson::String(_) => 4,
        Bson::Document(_) => 5,
        Bson::Array(_) => 6,
        Bson::Binary(_) => 7,
        Bson::ObjectId(_) => 8,
        Bson::Boolean(_) => 9,
        Bson::DateTime(_) => 10,
        Bson::Timestamp(_) => 11,
        Bson::RegularExpression(_) => 12,
        Bson::DbPointer(_) => 13,
        Bson::JavaScriptCode(_) => 14,
        Bson::JavaScriptCodeWithScope(_) => 15,
        Bson::MaxKey => 127,
    }
}

/// A numeric value as f64 (Decimal128 is parsed from its string form).
pub fn as_f64(v: &Bson) -> Option<f64> {
    match v {
        Bson::Int32(i) => Some(f64::from(*i)),
        Bson::Int64(i) => Some(*i as f64),
        Bson::Double(d) => Some(*d),
        Bson::Decimal128(d) => d.to_string().parse().ok(),
        _ => None,
    }
}

/// A numeric value as i64 when it is integral.
pub fn as_i64(v: &Bson) -> Option<i64> {
    match v {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        Bson::Double(d) if d.fract() == 0.0 && d.abs() < 9.0e15 => Some(*d as i64),
        _ => None,
    }
}

fn cmp_numbers(a: &Bson, b: &Bson) -> Ordering {
    match (a, b) {
        (Bson::Int32(x), Bson::Int32(y)) => x.cmp(y),
        (Bson::Int64(x), Bson::Int64(y)) => x.cmp(y),
        (Bson::Int32(x), Bson::Int64(y)) => i64::from(*x).cmp(y),
        (Bson::Int64(x), Bson::Int32(y)) => x.cmp(&i64::from(*y)),
        // Integers against doubles compare exactly (not through a lossy i64 -> f64 cast), so
        // the order stays total and transitive for the `_id`-keyed map.
        (Bson::Int32(x), Bson::Double(y)) => cmp_int_double(i64::from(*x), *y),
        (Bson::Int64(x), Bson::Double(y)) => cmp_int_double(*x, *y),
        (Bson::Double(x), Bson::Int32(y)) => cmp_int_double(i64::from(*y), *x).reverse(),
        (Bson::Double(x), Bson::Int64(y)) => cmp_int_double(*y, *x).reverse(),
        _ => {
            let x = as_f64(a).unwrap_or(f64::NAN);
            let y = as_f64(b).unwrap_or(f64::NAN);
            // NaN sorts before every other number in MongoDB.
            match (x.is_nan(), y.is_nan()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Less,
                (false, true) => Ordering::Greater,
                _ => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
            }
        }
    }
}

/// Exact comparison of an integer with a double (NaN sorts before every number).
fn cmp_int_double(i: i64, d: f64) -> Ordering {
    if d.is_nan() {
        return Ordering::Greater;
    }
    // 2^63: every i64 is below it; below -2^63 every i64 is above.
    if d >= 9_223_372_036_854_775_808.0 {
        return Ordering::Less;
    }
    if d < -9_223_372_036_854_775_808.0 {
        return Ordering::Greater;
    }
    let t = d.trunc();
    i.cmp(&(t as i64))
        .then_with(|| 0.0f64.partial_cmp(&(d - t)).unwrap_or(Ordering::Equal))
}

fn str_of(v: &Bson) -> &str {
    match v {
        Bson::String(s) | Bson::Symbol(s) => s,
        _ => "",
    }
}

/// Compares two values the way the server sorts them (type bracket first, then value).
#[inline]
pub fn compare(a: &Bson, b: &Bson) -> Ordering {
    // Same-type `_id`s (the `_id`-keyed maps compare these on every insert and lookup).
    match (a, b) {
        (Bson::Int64(x), Bson::Int64(y)) => x.cmp(y),
        (Bson::Int32(x), Bson::Int32(y)) => x.cmp(y),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::String(x), Bson::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        _ => compare_slow(a, b),
    }
}

fn compare_slow(a: &Bson, b: &Bson) -> Ordering {
    let (ta, tb) = (type_bracket(a), type_bracket(b));
    if ta != tb {
        return ta.cmp(&tb);
    }
    match (a, b) {
        _ if ta == 3 => cmp_numbers(a, b),
        _ if ta == 4 => str_of(a).as_bytes().cmp(str_of(b).as_bytes()),
        (Bson::Document(x), Bson::Document(y)) => compare_docs(x, y),
        (Bson::Array(x), Bson::Array(y)) => {
            for (ex, ey) in x.iter().zip(y.iter()) {
                let c = compare(ex, ey);
                if c != Ordering::Equal {
                    return c;
                }
            }
            x.len().cmp(&y.len())
        }
        (Bson::Binary(x), Bson::Binary(y)) => x
            .bytes
            .len()
            .cmp(&y.bytes.len())
            .then(u8::from(x.subtype).cmp(&u8::from(y.subtype)))
            .then(x.bytes.cmp(&y.bytes)),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.cmp(y),
        (Bson::Timestamp(x), Bson::Timestamp(y)) => {
            (x.time, x.increment).cmp(&(y.time, y.increment))
        }
        (Bson::RegularExpression(x), Bson::RegularExpression(y)) => x
            .pattern
            .as_str()
            .cmp(y.pattern.as_str())
            .then(x.options.as_str().cmp(y.options.as_str())),
        (Bson::JavaScriptCode(x), Bson::JavaScriptCode(y)) => x.cmp(y),
        _ => Ordering::Equal,
    }
}

/// Compares two documents field by field (type, then name, then value), like the server.
pub fn compare_docs(x: &Document, y: &Document) -> Ordering {
    let mut ix = x.iter();
    let mut iy = y.iter();
    loop {
        match (ix.next(), iy.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some((kx, vx)), Some((ky, vy))) => {
                let c = type_bracket(vx)
                    .cmp(&type_bracket(vy))
                    .then_with(|| kx.as_bytes().cmp(ky.as_bytes()))
                    .then_with(|| compare(vx, vy));
                if c != Ordering::Equal {
                    return c;
                }
            }
        }
    }
}

/// Values equal in MongoDB's sense (1 == 1.0, field order matters for documents).
pub fn values_equal(a: &Bson, b: &Bson) -> bool {
    compare(a, b) == Ordering::Equal
}

/// `true` for a value that is "truthy" in command arguments (`1`, `true`, non-zero numbers).
pub fn truthy(v: Option<&Bson>) -> bool {
    match v {
        None | Some(Bson::Null) | Some(Bson::Undefined) => false,
        Some(Bson::Boolean(b)) => *b,
        Some(other) => as_f64(other).map(|f| f != 0.0).unwrap_or(true),
    }
}

/// Value at a dotted path without array traversal (numeric components index arrays).
pub fn get_path<'a>(doc: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut parts = path.split('.');
    let first = parts.next()?;
    let mut cur = doc.get(first)?;
    for p in parts {
        cur = match cur {
            Bson::Document(d) => d.get(p)?,
            Bson::Array(a) => a.get(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// All values reachable at a dotted path, traversing arrays like the query engine does.
/// `out` receives each candidate; arrays at the leaf are pushed as a whole (the matcher
/// also looks inside them).
pub fn collect_path<'a>(value: &'a Bson, parts: &[&str], out: &mut Vec<&'a Bson>) -> bool {
    let Some((head, rest)) = parts.split_first() else {
        out.push(value);
        return true;
    };
    match value {
        Bson::Document(d) => match d.get(*head) {
            Some(v) => collect_path(v, rest, out),
            None => false,
        },
        Bson::Array(a) => {
            let mut found = false;
            if let Ok(i) = head.parse::<usize>() {
                if let Some(v) = a.get(i) {
                    found |= collect_path(v, rest, out);
                }
            }
            for el in a {
                if matches!(el, Bson::Document(_)) {
                    found |= collect_path(el, parts, out);
                }
            }
            found
        }
        _ => false,
    }
}

/// Encoded BSON size of a document (0 when it cannot be encoded).
pub fn doc_size(d: &Document) -> usize {
    d.to_vec().map(|v| v.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn numbers_compare_across_types() {
        assert_eq!(
            compare(&Bson::Int32(1), &Bson::Double(1.0)),
            Ordering::Equal
        );
        assert_eq!(
            compare(&Bson::Int64(2), &Bson::Double(1.5)),
            Ordering::Greater
        );
        assert_eq!(compare(&Bson::Null, &Bson::Int32(0)), Ordering::Less);
        assert_eq!(
            compare(&Bson::String("a".into()), &Bson::Int32(5)),
            Ordering::Greater
        );
    }

    #[test]
    fn dotted_paths_traverse_arrays() {
        let d = doc! {"a": [{"b": 1}, {"b": 2}], "c": {"d": 3}};
        let mut out = Vec::new();
        let root = Bson::Document(d.clone());
        collect_path(&root, &["a", "b"], &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(get_path(&d, "c.d"), Some(&Bson::Int32(3)));
        assert_eq!(get_path(&d, "a.1.b"), Some(&Bson::Int32(2)));
    }
}
