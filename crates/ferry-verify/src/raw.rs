//! Raw BSON without decoding: an element walker over document bytes (no UTF-8 validation, so
//! strings with invalid UTF-8 never break a comparison), `_id` extraction, the `_id` comparator in
//! MongoDB's BSON order (the order the server sorts `_id` in, which the merge relies on), and the
//! first differing field path of two documents. Owns no IO.
//!
//! Comparator coverage: MinKey, null/undefined, numbers (int32/int64/double compared by value
//! across types, NaN lowest; Decimal128 only against Decimal128, by bytes: a mixed Decimal128 `_id`
//! set may mis-merge), strings and symbols (bytewise, the simple collation), embedded documents and
//! arrays (element by element: type bracket, field name, value; shorter first), binary (length,
//! subtype, bytes), ObjectId, bool, date, timestamp, regex (pattern, flags), MaxKey. Code,
//! code-with-scope and DBPointer compare by their raw bytes inside their bracket (not the server's
//! exact order; such `_id`s are practically unheard of).

use std::cmp::Ordering;

/// One element: type byte, key bytes (no NUL), value bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Elem<'a> {
    pub ty: u8,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

fn le_i32(b: &[u8]) -> Option<i32> {
    Some(i32::from_le_bytes(b.get(..4)?.try_into().ok()?))
}

fn le_i64(b: &[u8]) -> Option<i64> {
    Some(i64::from_le_bytes(b.get(..8)?.try_into().ok()?))
}

fn le_f64(b: &[u8]) -> Option<f64> {
    Some(f64::from_le_bytes(b.get(..8)?.try_into().ok()?))
}

fn cstr_len(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == 0)
}

/// Size of a value of type `ty` at the start of `b`; `None` when malformed.
fn value_len(ty: u8, b: &[u8]) -> Option<usize> {
    let n = match ty {
        0x01 | 0x09 | 0x11 | 0x12 => 8,
        0x02 | 0x0D | 0x0E => 4 + usize::try_from(le_i32(b)?).ok()?,
        0x03 | 0x04 | 0x0F => usize::try_from(le_i32(b)?).ok()?,
        0x05 => 5 + usize::try_from(le_i32(b)?).ok()?,
        0x06 | 0x0A | 0x7F | 0xFF => 0,
        0x07 => 12,
        0x08 => 1,
        0x0B => {
            let p = cstr_len(b)? + 1;
            p + cstr_len(b.get(p..)?)? + 1
        }
        0x0C => 4 + usize::try_from(le_i32(b)?).ok()? + 12,
        0x10 => 4,
        0x13 => 16,
        _ => return None,
    };
    (n <= b.len()).then_some(n)
}

/// Iterates the elements of a BSON document; stops (yielding an `Err`) on malformed bytes.
pub(crate) struct Elems<'a> {
    body: &'a [u8],
    failed: bool,
}

pub(crate) fn elems(doc: &[u8]) -> Elems<'_> {
    let body = if doc.len() >= 5 {
        &doc[4..doc.len() - 1]
    } else {
        &[][..]
    };
    Elems {
        body,
        failed: doc.len() < 5,
    }
}

impl<'a> Iterator for Elems<'a> {
    type Item = Result<Elem<'a>, ()>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            self.failed = false;
            self.body = &[];
            return Some(Err(()));
        }
        let (&ty, rest) = self.body.split_first()?;
        let parsed = cstr_len(rest).and_then(|k| {
            let after = rest.get(k + 1..)?;
            let n = value_len(ty, after)?;
            Some((&rest[..k], &after[..n], &after[n..]))
        });
        match parsed {
            Some((key, value, tail)) => {
                self.body = tail;
                Some(Ok(Elem { ty, key, value }))
            }
            None => {
                self.body = &[];
                Some(Err(()))
            }
        }
    }
}

/// The `_id` element of a document (first top-level `_id`).
pub(crate) fn id_elem(doc: &[u8]) -> Option<Elem<'_>> {
    elems(doc).map_while(Result::ok).find(|e| e.key == b"_id")
}

/// `{_id: <value>}` as BSON bytes (the key of the recheck queue and of point reads).
pub(crate) fn id_doc(e: &Elem<'_>) -> Vec<u8> {
    let len = 4 + 1 + 4 + e.value.len() + 1;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as i32).to_le_bytes());
    out.push(e.ty);
    out.extend_from_slice(b"_id\0");
    out.extend_from_slice(e.value);
    out.push(0);
    out
}

/// `_id` of a `{_id: v}` document (or of any document) as canonical extended JSON; invalid UTF-8
/// is shown with U+FFFD.
pub(crate) fn id_json(doc: &[u8]) -> String {
    let Ok(raw) = bson::RawDocument::from_bytes(doc) else {
        return "<malformed>".into();
    };
    for el in raw.iter_elements().flatten() {
        if el.key().as_str() == "_id" {
            return match el
                .value_utf8_lossy()
                .ok()
                .and_then(|v| bson::Bson::try_from(v).ok())
            {
                Some(b) => b.into_canonical_extjson().to_string(),
                None => "<malformed>".into(),
            };
        }
    }
    "<none>".into()
}

/// MongoDB's canonical type order (mongodb/mongo `bsontypes.h`, `canonicalizeBSONType`).
fn bracket(ty: u8) -> i32 {
    match ty {
        0xFF => -1,
        0x06 | 0x0A => 5,
        0x01 | 0x10 | 0x12 | 0x13 => 10,
        0x02 | 0x0E => 15,
        0x03 => 20,
        0x04 => 25,
        0x05 => 30,
        0x07 => 35,
        0x08 => 40,
        0x09 => 45,
        0x11 => 47,
        0x0B => 50,
        0x0C => 55,
        0x0D => 60,
        0x0F => 65,
        0x7F => 127,
        _ => 200,
    }
}

enum Num {
    I(i64),
    F(f64),
}

fn num(ty: u8, v: &[u8]) -> Option<Num> {
    match ty {
        0x10 => le_i32(v).map(|n| Num::I(i64::from(n))),
        0x12 => le_i64(v).map(Num::I),
        0x01 => le_f64(v).map(Num::F),
        _ => None,
    }
}

/// Exact comparison of an integer with a double (no rounding through f64).
fn cmp_i_f(i: i64, f: f64) -> Ordering {
    if f.is_nan() {
        return Ordering::Greater;
    }
    if f >= 9_223_372_036_854_775_808.0 {
        return Ordering::Less;
    }
    if f < -9_223_372_036_854_775_808.0 {
        return Ordering::Greater;
    }
    let t = f.trunc();
    match i.cmp(&(t as i64)) {
        Ordering::Equal => 0.0f64.partial_cmp(&(f - t)).unwrap_or(Ordering::Equal),
        o => o,
    }
}

fn cmp_num(a: Num, b: Num) -> Ordering {
    match (a, b) {
        (Num::I(x), Num::I(y)) => x.cmp(&y),
        (Num::I(x), Num::F(y)) => cmp_i_f(x, y),
        (Num::F(x), Num::I(y)) => cmp_i_f(y, x).reverse(),
        (Num::F(x), Num::F(y)) => match (x.is_nan(), y.is_nan()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            _ => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        },
    }
}

/// Compares two values in MongoDB's BSON order.
pub(crate) fn cmp_values(aty: u8, a: &[u8], bty: u8, b: &[u8]) -> Ordering {
    let br = bracket(aty).cmp(&bracket(bty));
    if br != Ordering::Equal {
        return br;
    }
    match bracket(aty) {
        10 => match (num(aty, a), num(bty, b)) {
            (Some(x), Some(y)) => cmp_num(x, y),
            // Decimal128 (with anything) by type then bytes: documented limitation.
            _ => aty.cmp(&bty).then_with(|| a.cmp(b)),
        },
        15 | 60 => a.get(4..).unwrap_or(&[]).cmp(b.get(4..).unwrap_or(&[])),
        20 | 25 => cmp_docs(a, b),
        30 => {
            let (la, lb) = (le_i32(a).unwrap_or(0), le_i32(b).unwrap_or(0));
            la.cmp(&lb)
                .then_with(|| a.get(4).cmp(&b.get(4)))
                .then_with(|| a.get(5..).cmp(&b.get(5..)))
        }
        45 => le_i64(a).cmp(&le_i64(b)),
        47 => {
            let key = |v: &[u8]| le_i64(v).map(|n| (n as u64 >> 32, n as u64 & 0xFFFF_FFFF));
            key(a).cmp(&key(b))
        }
        // MinKey, null, MaxKey: one value each; ObjectId, bool, regex (pattern\0flags\0): bytes.
        _ => a.cmp(b),
    }
}

/// Compares two embedded documents (or arrays) in MongoDB's order (`BSONObj::woCompare`).
pub(crate) fn cmp_docs(a: &[u8], b: &[u8]) -> Ordering {
    let (mut ia, mut ib) = (elems(a), elems(b));
    loop {
        match (ia.next(), ib.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(Ok(x)), Some(Ok(y))) => {
                let o = bracket(x.ty)
                    .cmp(&bracket(y.ty))
                    .then_with(|| x.key.cmp(y.key))
                    .then_with(|| cmp_values(x.ty, x.value, y.ty, y.value));
                if o != Ordering::Equal {
                    return o;
                }
            }
            // Malformed: fall back to bytes so the order is at least total.
            _ => return a.cmp(b),
        }
    }
}

/// Orders two documents by `_id` (a document without `_id` sorts first).
pub(crate) fn cmp_ids(a: &[u8], b: &[u8]) -> Ordering {
    match (id_elem(a), id_elem(b)) {
        (Some(x), Some(y)) => cmp_values(x.ty, x.value, y.ty, y.value),
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
    }
}

fn join(prefix: &str, key: &[u8]) -> String {
    let k = String::from_utf8_lossy(key);
    if prefix.is_empty() {
        k.into_owned()
    } else {
        format!("{prefix}.{k}")
    }
}

/// The first field (dotted path) where two documents differ; `None` when byte-identical.
pub(crate) fn first_difference(a: &[u8], b: &[u8]) -> Option<String> {
    if a == b {
        return None;
    }
    Some(diff_in(a, b, "").unwrap_or_default())
}

fn diff_in(a: &[u8], b: &[u8], prefix: &str) -> Option<String> {
    let (mut ia, mut ib) = (elems(a), elems(b));
    loop {
        match (ia.next(), ib.next()) {
            (None, None) => return None,
            (Some(Ok(x)), None) => return Some(join(prefix, x.key)),
            (None, Some(Ok(y))) => return Some(join(prefix, y.key)),
            (Some(Ok(x)), Some(Ok(y))) => {
                if x.key != y.key {
                    return Some(join(prefix, x.key));
                }
                if x.ty != y.ty {
                    return Some(join(prefix, x.key));
                }
                if x.value == y.value {
                    continue;
                }
                let path = join(prefix, x.key);
                if x.ty == 0x03 || x.ty == 0x04 {
                    return Some(diff_in(x.value, y.value, &path).unwrap_or(path));
                }
                return Some(path);
            }
            // Malformed on either side: the difference is here.
            _ => return Some(prefix.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use bson::{doc, oid::ObjectId, Binary, Bson, DateTime};

    fn bytes(d: bson::Document) -> Vec<u8> {
        bson::RawDocumentBuf::try_from(&d)
            .unwrap()
            .as_bytes()
            .to_vec()
    }

    fn cmp(a: Bson, b: Bson) -> Ordering {
        cmp_ids(&bytes(doc! {"_id": a}), &bytes(doc! {"_id": b}))
    }

    #[test]
    fn numbers_compare_by_value_across_types() {
        assert_eq!(cmp(Bson::Int32(1), Bson::Double(1.0)), Ordering::Equal);
        assert_eq!(cmp(Bson::Int64(1), Bson::Int32(1)), Ordering::Equal);
        assert_eq!(cmp(Bson::Int32(1), Bson::Double(1.5)), Ordering::Less);
        assert_eq!(cmp(Bson::Double(-0.5), Bson::Int64(0)), Ordering::Less);
        assert_eq!(
            cmp(Bson::Double(f64::NAN), Bson::Int32(i32::MIN)),
            Ordering::Less
        );
        assert_eq!(
            cmp(Bson::Int64(i64::MAX), Bson::Double(9.3e18)),
            Ordering::Less
        );
        assert_eq!(
            cmp(
                Bson::Int64(9_007_199_254_740_993),
                Bson::Double(9_007_199_254_740_992.0)
            ),
            Ordering::Greater
        );
    }

    #[test]
    fn type_brackets_follow_mongodb_order() {
        let ordered = vec![
            Bson::MinKey,
            Bson::Null,
            Bson::Int32(5),
            Bson::String("a".into()),
            Bson::Document(doc! {"a": 1}),
            Bson::Array(vec![Bson::Int32(1)]),
            Bson::Binary(Binary {
                subtype: bson::spec::BinarySubtype::Generic,
                bytes: vec![1],
            }),
            Bson::ObjectId(ObjectId::new()),
            Bson::Boolean(false),
            Bson::DateTime(DateTime::from_millis(0)),
            Bson::Timestamp(bson::Timestamp {
                time: 1,
                increment: 1,
            }),
            Bson::MaxKey,
        ];
        for w in ordered.windows(2) {
            assert_eq!(cmp(w[0].clone(), w[1].clone()), Ordering::Less, "{w:?}");
        }
    }

    #[test]
    fn within_brackets() {
        assert_eq!(cmp("ab".into(), "b".into()), Ordering::Less);
        assert_eq!(cmp("a".into(), "ab".into()), Ordering::Less);
        assert_eq!(
            cmp(
                Bson::Document(doc! {"a": 1, "b": 2}),
                Bson::Document(doc! {"a": 1.0, "b": 3})
            ),
            Ordering::Less
        );
        assert_eq!(
            cmp(
                Bson::Document(doc! {"a": 1}),
                Bson::Document(doc! {"a": 1, "b": 0})
            ),
            Ordering::Less
        );
        assert_eq!(
            cmp(Bson::Boolean(false), Bson::Boolean(true)),
            Ordering::Less
        );
        assert_eq!(
            cmp(
                Bson::DateTime(DateTime::from_millis(-5)),
                Bson::DateTime(DateTime::from_millis(3))
            ),
            Ordering::Less
        );
        let short = Bson::Binary(Binary {
            subtype: bson::spec::BinarySubtype::Generic,
            bytes: vec![9, 9],
        });
        let long = Bson::Binary(Binary {
            subtype: bson::spec::BinarySubtype::Generic,
            bytes: vec![1, 1, 1],
        });
        assert_eq!(cmp(short, long), Ordering::Less);
    }

    #[test]
    fn first_difference_names_the_nested_path() {
        let a = bytes(doc! {"_id": 1, "a": {"b": [1, 2, 3]}, "c": "x"});
        let b = bytes(doc! {"_id": 1, "a": {"b": [1, 2, 4]}, "c": "x"});
        assert_eq!(first_difference(&a, &b).as_deref(), Some("a.b.2"));
        let c = bytes(doc! {"_id": 1, "c": "x", "a": {"b": [1, 2, 3]}});
        assert_eq!(first_difference(&a, &c).as_deref(), Some("a"));
        let d = bytes(doc! {"_id": 1, "a": {"b": [1, 2, 3]}});
        assert_eq!(first_difference(&a, &d).as_deref(), Some("c"));
        let e = bytes(doc! {"_id": 1i64, "a": {"b": [1, 2, 3]}, "c": "x"});
        assert_eq!(first_difference(&a, &e).as_deref(), Some("_id"));
        assert_eq!(first_difference(&a, &a), None);
    }

    #[test]
    fn invalid_utf8_strings_are_compared_as_bytes() {
        // {_id: 1, s: "\xff"} and {_id: 1, s: "\xfe"}, built by hand.
        let make = |c: u8| {
            let mut v = vec![0, 0, 0, 0, 0x10, b'_', b'i', b'd', 0, 1, 0, 0, 0];
            v.extend_from_slice(&[0x02, b's', 0, 2, 0, 0, 0, c, 0, 0]);
            let n = v.len() as i32;
            v[..4].copy_from_slice(&n.to_le_bytes());
            v
        };
        let (a, b) = (make(0xff), make(0xfe));
        assert_eq!(first_difference(&a, &b).as_deref(), Some("s"));
        assert_eq!(cmp_ids(&a, &b), Ordering::Equal);
        assert_eq!(
            id_json(&id_doc(&id_elem(&a).unwrap())),
            r#"{"$numberInt":"1"}"#
        );
    }
}
