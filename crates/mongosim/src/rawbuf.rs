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

    fn key(&mut self, tag: u8, key: &str) {
        self.buf.push(tag);
        // Keys never contain NUL in documents we build; strip defensively.
        self.buf
            .extend(key.as_bytes().iter().copied().filter(|b| *b != 0));
        self.buf.push(0);
    }

    /// Appends an embedded document given as raw bytes.
    pub fn doc_bytes(&mut self, key: &str, bytes: &[u8]) {
        self.key(0x03, key);
        self.buf.extend_from_slice(bytes);
    }

    /// Appends a string.
    pub fn str(&mut self, key: &str, v: &str) {
        self.key(0x02, key);
        let len = (v.len() + 1) as i32;
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(v.as_bytes());
        self.buf.push(0);
    }

    /// Appends the string "`db`.`coll`" without building it first.
    pub fn ns(&mut self, key: &str, db: &str, coll: &str) {
        self.key(0x02, key);
        let len = (db.len() + coll.len() + 2) as i32;
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(db.as_bytes());
        self.buf.push(b'.');
        self.buf.extend_from_slice(coll.as_bytes());
        self.buf.push(0);
    }

    /// Appends an Int64.
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
/// UTF-8 strings, known element types). Never panics.
pub fn validate(bytes: &[u8]) -> Result<(), String> {
    let raw = RawDocument::from_bytes(bytes).map_err(|e| e.to_string())?;
    validate_doc(raw, 0)
}

fn validate_doc(raw: &RawDocument, depth: usize) -> Result<(), String> {
    if depth > 180 {
        return Err("BSON document nesting too deep".into());
    }
    for item in raw.iter() {
        let (_, v) = item.map_err(|e| e.to_string())?;
        validate_value(v, depth)?;
    }
    Ok(())
}

fn validate_value(v: bson::RawBsonRef<'_>, depth: usize) -> Result<(), String> {
    match v {
        bson::RawBsonRef::Document(d) => validate_doc(d, depth + 1),
        bson::RawBsonRef::Array(a) => {
            for el in a {
                validate_value(el.map_err(|e| e.to_string())?, depth + 1)?;
            }
            Ok(())
        }
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

    #[test]
    fn validate_rejects_garbage() {
        assert!(validate(&[5, 0, 0, 0, 0]).is_ok());
        assert!(validate(&[6, 0, 0, 0, 0x10, 0]).is_err());
        assert!(validate(&[1, 2, 3]).is_err());
    }
}
