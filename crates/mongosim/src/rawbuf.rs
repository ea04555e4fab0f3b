//! A tiny BSON document writer for the hot paths (cursor replies, insert oplog entries)
//! where copying raw document bytes beats decoding and re-encoding.
//!
//! Owns byte-level encoding only; it must not interpret documents.

use bson::{Bson, Document, RawDocument};

/// Appends elements to a BSON document under construction.
pub struct RawWriter {
    buf: Vec<u8>,
    /// Offset of the document in `buf` (bytes before it are a caller's message header).
    start: usize,
}

impl Default for RawWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl RawWriter {
    /// Starts an empty document.
    pub fn new() -> Self {
        Self::with_capacity(64)
    }

    /// Starts an empty document with room for `cap` bytes.
    pub fn with_capacity(cap: usize) -> Self {
        Self::with_prefix(0, cap)
    }

    /// Starts an empty document after `prefix` zero bytes (room for a message header that
    /// the caller fills in later), so the finished buffer is sent without another copy.
    pub fn with_prefix(prefix: usize, cap: usize) -> Self {
        let mut buf = Vec::with_capacity(prefix + cap.max(5));
        buf.resize(prefix + 4, 0);
        Self { buf, start: prefix }
    }

    /// Opens an embedded document (`tag` 0x03) or array (0x04) written in place; close it
    /// with [`RawWriter::end_sub`] and the returned position.
    pub fn begin_sub(&mut self, tag: u8, key: &str) -> usize {
        self.key(tag, key);
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0, 0, 0]);
        at
    }

    /// Closes an embedded document opened with [`RawWriter::begin_sub`].
    pub fn end_sub(&mut self, at: usize) {
        self.buf.push(0);
        let len = (self.buf.len() - at) as i32;
        self.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// Appends an embedded document under the decimal key `i` (array elements).
    pub fn indexed_doc_bytes(&mut self, i: usize, bytes: &[u8]) {
        self.buf.push(0x03);
        let mut digits = [0u8; 20];
        let mut n = i;
        let mut pos = digits.len();
        loop {
            pos -= 1;
            digits[pos] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.buf.extend_from_slice(&digits[pos..]);
        self.buf.push(0);
        self.buf.extend_from_slice(bytes);
    }

    #[inline]
    fn key(&mut self, tag: u8, key: &str) {
        self.buf.push(tag);
        let k = key.as_bytes();
        if k.contains(&0) {
            // Keys never contain NUL in documents we build; strip defensively.
            self.buf.extend(k.iter().copied().filter(|b| *b != 0));
        } else {
            self.buf.extend_from_slice(k);
        }
        self.buf.push(0);
    }

    /// Appends an embedded document given as raw bytes.
    #[inline]
    pub fn doc_bytes(&mut self, key: &str, bytes: &[u8]) {
        self.key(0x03, key);
        self.buf.extend_from_slice(bytes);
    }

    /// Appends a string.
    #[inline]
    pub fn str(&mut self, key: &str, v: &str) {
        self.key(0x02, key);
        let len = (v.len() + 1) as i32;
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(v.as_bytes());
        self.buf.push(0);
    }

    /// Appends the string "`db`.`coll`" without building it first.
    #[inline]
    pub fn ns(&mut self, key: &str, db: &str, coll: &str) {
        self.key(0x02, key);
        let len = (db.len() + coll.len() + 2) as i32;
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(db.as_bytes());
        self.buf.push(b'.');
        self.buf.extend_from_slice(coll.as_bytes());
        self.buf.push(0);
    }

    /// Appends a UUID (binary subtype 4) without building a `Bson` value.
    #[inline]
    pub fn uuid(&mut self, key: &str, u: bson::Uuid) {
        self.key(0x05, key);
        self.buf.extend_from_slice(&16i32.to_le_bytes());
        self.buf.push(0x04);
        self.buf.extend_from_slice(&u.bytes());
    }

    /// Appends a Timestamp.
    #[inline]
    pub fn timestamp(&mut self, key: &str, t: bson::Timestamp) {
        self.key(0x11, key);
        self.buf.extend_from_slice(&t.increment.to_le_bytes());
        self.buf.extend_from_slice(&t.time.to_le_bytes());
    }

    /// Appends a UTC datetime given in ms since the epoch.
    #[inline]
    pub fn datetime(&mut self, key: &str, ms: i64) {
        self.key(0x09, key);
        self.buf.extend_from_slice(&ms.to_le_bytes());
    }

    /// Appends an Int64.
    #[inline]
    pub fn i64(&mut self, key: &str, v: i64) {
        self.key(0x12, key);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// Appends any value; common scalar types are written directly, the rest are encoded
    /// through `bson`.
    pub fn value(&mut self, key: &str, v: &Bson) {
        match v {
            Bson::Double(f) => {
                self.key(0x01, key);
                self.buf.extend_from_slice(&f.to_le_bytes());
            }
            Bson::String(s) if !s.contains('\0') => self.str(key, s),
            Bson::Document(d) => {
                if let Ok(bytes) = d.to_vec() {
                    self.doc_bytes(key, &bytes);
                }
            }
            Bson::Binary(b) if b.subtype != bson::spec::BinarySubtype::BinaryOld => {
                self.key(0x05, key);
                self.buf
                    .extend_from_slice(&(b.bytes.len() as i32).to_le_bytes());
                self.buf.push(u8::from(b.subtype));
                self.buf.extend_from_slice(&b.bytes);
            }
            Bson::ObjectId(o) => {
                self.key(0x07, key);
                self.buf.extend_from_slice(&o.bytes());
            }
            Bson::Boolean(b) => {
                self.key(0x08, key);
                self.buf.push(u8::from(*b));
            }
            Bson::DateTime(d) => {
                self.key(0x09, key);
                self.buf
                    .extend_from_slice(&d.timestamp_millis().to_le_bytes());
            }
            Bson::Null => self.key(0x0A, key),
            Bson::Int32(i) => {
                self.key(0x10, key);
                self.buf.extend_from_slice(&i.to_le_bytes());
            }
            Bson::Timestamp(t) => {
                self.key(0x11, key);
                self.buf.extend_from_slice(&t.increment.to_le_bytes());
                self.buf.extend_from_slice(&t.time.to_le_bytes());
            }
            Bson::Int64(i) => self.i64(key, *i),
            other => self.value_slow(key, other),
        }
    }

    fn value_slow(&mut self, key: &str, v: &Bson) {
        let mut d = Document::new();
        d.insert(key, v.clone());
        if let Ok(bytes) = d.to_vec() {
            if bytes.len() > 5 {
                self.buf.extend_from_slice(&bytes[4..bytes.len() - 1]);
            }
        }
    }

    /// Appends every element of a document.
    pub fn extend_doc(&mut self, d: &Document) {
        if let Ok(bytes) = d.to_vec() {
            if bytes.len() > 5 {
                self.buf.extend_from_slice(&bytes[4..bytes.len() - 1]);
            }
        }
    }

    /// Appends one element given as its raw bytes (type, key and value).
    pub fn raw_element(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Appends every element of a raw document.
    pub fn extend_raw(&mut self, d: &RawDocument) {
        let bytes = d.as_bytes();
        if bytes.len() > 5 {
            self.buf.extend_from_slice(&bytes[4..bytes.len() - 1]);
        }
    }

    /// Finishes the document and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.push(0);
        let len = (self.buf.len() - self.start) as i32;
        self.buf[self.start..self.start + 4].copy_from_slice(&len.to_le_bytes());
        self.buf
    }
}

/// Checks that `bytes` is a well-formed BSON document, recursively (lengths, terminators,
/// UTF-8 keys, known element types). Never panics.
///
/// String *values* are not checked for UTF-8: like a real server (whose BSON validation
/// does not check UTF-8 by default, mongodb/mongo `src/mongo/bson/bson_validate.cpp`), mongosim
/// stores and returns them byte for byte.
///
/// Documents made only of the common element types are checked by a byte-level scan; any
/// other document (rare types, or anything the scan does not accept) goes through `bson`'s
/// parser, which also produces the error message. The scan accepts a subset of what the
/// parser accepts, so the verdict is the parser's.
pub fn validate(bytes: &[u8]) -> Result<(), String> {
    if fast::container(bytes, 0) {
        return Ok(());
    }
    validate_with_bson(bytes)
}

/// The reference check through `bson`'s raw parser.
fn validate_with_bson(bytes: &[u8]) -> Result<(), String> {
    let raw = RawDocument::from_bytes(bytes).map_err(|e| e.to_string())?;
    validate_doc(raw, 0)
}

/// Byte-level scan of the common case. Returns `true` only for documents `bson` accepts
/// (see [`validate_with_bson`]); `false` means "not sure", never "invalid".
mod fast {
    /// Nesting depth beyond which the scan gives up (the parser rejects documents deeper
    /// than 180; arrays are left to it).
    const MAX_DEPTH: usize = 180;

    /// Valid UTF-8 (ASCII, the common case, is checked first: it is cheaper).
    fn utf8(b: &[u8]) -> bool {
        b.is_ascii() || std::str::from_utf8(b).is_ok()
    }

    fn i32_at(b: &[u8], at: usize) -> Option<i32> {
        let s = b.get(at..at.checked_add(4)?)?;
        Some(i32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    /// A document or array (`bytes` is exactly its encoding) whose element values sit at
    /// nesting `depth`.
    pub(super) fn container(bytes: &[u8], depth: usize) -> bool {
        if depth > MAX_DEPTH || bytes.len() < 5 {
            return false;
        }
        if i32_at(bytes, 0).and_then(|l| usize::try_from(l).ok()) != Some(bytes.len()) {
            return false;
        }
        let last = bytes.len() - 1;
        if bytes[last] != 0 {
            return false;
        }
        let mut pos = 4;
        while pos < last {
            let tag = bytes[pos];
            // Key: a NUL-terminated UTF-8 string that ends before the terminator.
            let key_start = pos + 1;
            let Some(key_len) = bytes[key_start..last].iter().position(|b| *b == 0) else {
                return false;
            };
            if !utf8(&bytes[key_start..key_start + key_len]) {
                return false;
            }
            let v = key_start + key_len + 1;
            let size = match tag {
                0x0A | 0x06 | 0x7F | 0xFF => 0,
                0x08 => {
                    if bytes.get(v).is_none_or(|b| *b > 1) {
                        return false;
                    }
                    1
                }
                0x10 => 4,
                0x01 | 0x09 | 0x11 | 0x12 => 8,
                0x07 => 12,
                0x13 => 16,
                0x02 => {
                    // String: length >= 1 including the NUL, valid UTF-8 before it.
                    let Some(n) = i32_at(bytes, v).and_then(|l| usize::try_from(l).ok()) else {
                        return false;
                    };
                    if n < 1 || v + 4 + n > last {
                        return false;
                    }
                    if bytes[v + 4 + n - 1] != 0 {
                        return false;
                    }
                    4 + n
                }
                0x03 | 0x04 => {
                    let Some(n) = i32_at(bytes, v).and_then(|l| usize::try_from(l).ok()) else {
                        return false;
                    };
                    if v + n > last || !container(&bytes[v..v + n], depth + 1) {
                        return false;
                    }
                    n
                }
                0x05 => {
                    // Binary, except the old subtype 0x02 (left to the parser).
                    let Some(n) = i32_at(bytes, v).and_then(|l| usize::try_from(l).ok()) else {
                        return false;
                    };
                    if bytes.get(v + 4).is_none_or(|s| *s == 0x02) {
                        return false;
                    }
                    5 + n
                }
                _ => return false,
            };
            match v.checked_add(size) {
                Some(end) if end <= last => pos = end,
                _ => return false,
            }
        }
        pos == last
    }
}

fn validate_doc(raw: &RawDocument, depth: usize) -> Result<(), String> {
    if depth > 180 {
        return Err("BSON document nesting too deep".into());
    }
    validate_elements(raw.iter_elements(), depth)
}

fn validate_elements(iter: bson::raw::RawIter<'_>, depth: usize) -> Result<(), String> {
    for item in iter {
        let el = item.map_err(|e| e.to_string())?;
        if el.element_type() == bson::spec::ElementType::String {
            // Structure only: the bytes of a string value are kept as they are.
            el.value_utf8_lossy().map_err(|e| e.to_string())?;
            continue;
        }
        validate_value(el.value().map_err(|e| e.to_string())?, depth)?;
    }
    Ok(())
}

fn validate_value(v: bson::RawBsonRef<'_>, depth: usize) -> Result<(), String> {
    // Arrays nest without passing through `validate_doc`: bound them here too, or a message of
    // deeply nested arrays would overflow the stack.
    if depth > 180 {
        return Err("BSON document nesting too deep".into());
    }
    match v {
        bson::RawBsonRef::Document(d) => validate_doc(d, depth + 1),
        bson::RawBsonRef::Array(a) => validate_elements(a.iter_elements(), depth + 1),
        bson::RawBsonRef::JavaScriptCodeWithScope(c) => validate_doc(c.scope, depth + 1),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn writer_output_decodes() {
        let mut w = RawWriter::new();
        w.str("a", "x");
        w.i64("b", 7);
        w.doc_bytes("c", &doc! {"d": 1}.to_vec().unwrap());
        let arr = w.begin_sub(0x04, "e");
        w.value("0", &Bson::Int32(1));
        w.end_sub(arr);
        let d = Document::from_reader(&w.finish()[..]).unwrap();
        assert_eq!(d, doc! {"a": "x", "b": 7i64, "c": {"d": 1}, "e": [1]});
    }

    #[test]
    fn fast_values_encode_like_bson() {
        let values = vec![
            Bson::Double(-1.5),
            Bson::Double(f64::NAN),
            Bson::String("héllo".into()),
            Bson::Document(doc! {"a": 1, "b": [1, "x"]}),
            Bson::Binary(bson::Binary {
                subtype: bson::spec::BinarySubtype::Uuid,
                bytes: vec![1, 2, 3],
            }),
            Bson::Binary(bson::Binary {
                subtype: bson::spec::BinarySubtype::BinaryOld,
                bytes: vec![1, 2, 3],
            }),
            Bson::ObjectId(bson::oid::ObjectId::new()),
            Bson::Boolean(true),
            Bson::DateTime(bson::DateTime::from_millis(-12345)),
            Bson::Null,
            Bson::Int32(-7),
            Bson::Timestamp(bson::Timestamp {
                time: 1_700_000_000,
                increment: 42,
            }),
            Bson::Int64(i64::MIN),
            Bson::Array(vec![Bson::Int32(1)]),
            Bson::MaxKey,
        ];
        for v in values {
            let mut fast = RawWriter::new();
            fast.value("k", &v);
            let mut slow = RawWriter::new();
            slow.value_slow("k", &v);
            assert_eq!(fast.finish(), slow.finish(), "{v:?}");
        }
    }

    #[test]
    fn direct_writers_encode_like_bson() {
        let ts = bson::Timestamp {
            time: 1_700_000_000,
            increment: 7,
        };
        let mut fast = RawWriter::new();
        fast.timestamp("ts", ts);
        fast.datetime("wall", -5);
        fast.value("k\0ey", &Bson::Int32(1));
        let mut slow = RawWriter::new();
        slow.value_slow("ts", &Bson::Timestamp(ts));
        slow.value_slow("wall", &Bson::DateTime(bson::DateTime::from_millis(-5)));
        slow.value_slow("key", &Bson::Int32(1));
        assert_eq!(fast.finish(), slow.finish());
    }

    #[test]
    fn uuid_encodes_like_bson() {
        let u = bson::Uuid::new();
        let mut fast = RawWriter::new();
        fast.uuid("ui", u);
        let mut slow = RawWriter::new();
        slow.value_slow("ui", &Bson::from(u));
        assert_eq!(fast.finish(), slow.finish());
    }

    #[test]
    fn nested_writes_in_place_match_copies() {
        let mut a = RawWriter::with_prefix(3, 16);
        let cur = a.begin_sub(0x03, "cursor");
        a.i64("id", 5);
        let arr = a.begin_sub(0x04, "firstBatch");
        for i in 0..12 {
            a.indexed_doc_bytes(i, &doc! {"_id": i as i32}.to_vec().unwrap());
        }
        a.end_sub(arr);
        a.end_sub(cur);
        let bytes = a.finish();
        assert_eq!(&bytes[..3], &[0, 0, 0]);
        let d = Document::from_reader(&bytes[3..]).unwrap();
        let ids: Vec<Bson> = (0..12).map(|i| Bson::Document(doc! {"_id": i})).collect();
        assert_eq!(d, doc! {"cursor": {"id": 5i64, "firstBatch": ids}});
    }

    /// Documents covering every element type, common and rare, nested.
    fn sample_docs() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let rare = doc! {
            "re": bson::Regex { pattern: "a.*".try_into().unwrap(), options: "i".try_into().unwrap() },
            "code": Bson::JavaScriptCode("f()".into()),
            "sym": Bson::Symbol("s".into()),
            "cws": Bson::JavaScriptCodeWithScope(bson::JavaScriptCodeWithScope {
                code: "g()".into(),
                scope: doc! {"x": 1},
            }),
            "old": bson::Binary { subtype: bson::spec::BinarySubtype::BinaryOld, bytes: vec![1, 2] },
        };
        for i in 0..40i64 {
            let mut d = doc! {
                "_id": i,
                "s": "x".repeat(i as usize % 7),
                "u": "héllo\u{1F600}",
                "f": 1.5,
                "b": i % 2 == 0,
                "n": Bson::Null,
                "i32": i as i32,
                "ts": bson::Timestamp { time: 1, increment: 2 },
                "dt": bson::DateTime::from_millis(i),
                "oid": bson::oid::ObjectId::new(),
                "bin": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![7; i as usize % 5] },
                "arr": [1, "two", {"three": [3.0, {"deep": Bson::MaxKey}]}],
                "min": Bson::MinKey,
                "empty": {},
            };
            if i % 3 == 0 {
                d.insert("rare", rare.clone());
            }
            if i % 5 == 0 {
                d.insert(
                    "dec",
                    Bson::Decimal128(bson::Decimal128::from_bytes([3; 16])),
                );
                d.insert("undef", Bson::Undefined);
            }
            out.push(d.to_vec().unwrap());
        }
        out
    }

    #[test]
    fn fast_scan_never_accepts_what_bson_rejects() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let docs = sample_docs();
        for d in &docs {
            assert!(validate_with_bson(d).is_ok());
            assert!(validate(d).is_ok());
        }
        let common = doc! {"_id": 1i64, "pad": "x".repeat(100), "a": [1, {"b": true}]};
        assert!(fast::container(&common.to_vec().unwrap(), 0));
        let mut fast_ok = 0;
        for round in 0..200_000 {
            let mut b = docs[round % docs.len()].clone();
            for _ in 0..rng.gen_range(1..4) {
                match rng.gen_range(0..5) {
                    0 => {
                        let at = rng.gen_range(0..b.len());
                        b[at] = rng.gen();
                    }
                    1 => {
                        let at = rng.gen_range(0..b.len());
                        b[at] = [0u8, 1, 2, 0x7f, 0xff, 0x80, 0x05][rng.gen_range(0..7)];
                    }
                    2 => {
                        let at = rng.gen_range(0..b.len());
                        b.truncate(at.max(1));
                    }
                    3 => {
                        let at = rng.gen_range(0..b.len());
                        b.insert(at, rng.gen());
                    }
                    _ => {
                        let at = rng.gen_range(0..b.len());
                        b.remove(at);
                    }
                }
                if b.is_empty() {
                    b.push(0);
                }
            }
            if rng.gen_bool(0.7) && b.len() >= 4 {
                // Keep the outer length consistent so the scan gets past the header.
                let len = (b.len() as i32).to_le_bytes();
                b[..4].copy_from_slice(&len);
            }
            let reference = validate_with_bson(&b);
            if fast::container(&b, 0) {
                fast_ok += 1;
                assert!(reference.is_ok(), "fast scan accepted {b:?}: {reference:?}");
            }
            assert_eq!(validate(&b).is_ok(), reference.is_ok());
        }
        assert!(
            fast_ok > 100,
            "the mutations should leave some documents valid"
        );
    }

    #[test]
    fn fast_scan_respects_nesting_limit() {
        let mut d = doc! {"x": 1};
        for _ in 0..200 {
            d = doc! {"d": d};
        }
        let b = d.to_vec().unwrap();
        assert!(!fast::container(&b, 0));
        assert!(validate(&b).is_err());
    }

    #[test]
    fn deeply_nested_arrays_are_refused_not_a_stack_overflow() {
        // 20,000 arrays inside each other: {"a": [[[...]]]}, built from the inside out.
        let mut inner: Vec<u8> = vec![5, 0, 0, 0, 0];
        for _ in 0..20_000 {
            let mut arr = Vec::with_capacity(inner.len() + 12);
            let len = (inner.len() + 4 + 3 + 1) as i32; // header + type + "0\0" + terminator
            arr.extend_from_slice(&len.to_le_bytes());
            arr.push(0x04);
            arr.extend_from_slice(b"0\0");
            arr.extend_from_slice(&inner);
            arr.push(0);
            inner = arr;
        }
        let mut doc = Vec::with_capacity(inner.len() + 12);
        let len = (inner.len() + 4 + 3 + 1) as i32;
        doc.extend_from_slice(&len.to_le_bytes());
        doc.push(0x04);
        doc.extend_from_slice(b"a\0");
        doc.extend_from_slice(&inner);
        doc.push(0);
        let err = validate(&doc).unwrap_err();
        assert!(err.contains("too deep"), "{err}");
    }

    #[test]
    fn validate_rejects_garbage() {
        assert!(validate(&[5, 0, 0, 0, 0]).is_ok());
        assert!(validate(&[6, 0, 0, 0, 0x10, 0]).is_err());
        assert!(validate(&[1, 2, 3]).is_err());
    }
}
