//! A tiny BSON document writer for the hot paths (cursor replies, insert oplog entries)
//! where copying raw document bytes beats decoding and re-encoding.
//!
//! Owns byte-level encoding only; it must not interpret documents.

use bson::{Bson, Document, RawDocument};

/// Appends elements to a BSON document under construction.
pub struct RawWriter {
    buf: Vec<u8>,
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
        let mut buf = Vec::with_capacity(cap.max(5));
        buf.extend_from_slice(&[0, 0, 0, 0]);
        Self { buf }
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

    /// Appends an array given as a finished `RawWriter` (keys "0", "1", ...).
    pub fn array(&mut self, key: &str, arr: RawWriter) {
        self.key(0x04, key);
        self.buf.extend_from_slice(&arr.finish());
    }

    /// Appends an embedded document given as a finished `RawWriter`.
    pub fn sub(&mut self, key: &str, d: RawWriter) {
        self.key(0x03, key);
        self.buf.extend_from_slice(&d.finish());
    }

    /// Appends a string.
    pub fn str(&mut self, key: &str, v: &str) {
        self.key(0x02, key);
        let len = (v.len() + 1) as i32;
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(v.as_bytes());
        self.buf.push(0);
    }

    /// Appends an Int64.
    pub fn i64(&mut self, key: &str, v: i64) {
        self.key(0x12, key);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// Appends any value by encoding it through `bson`.
    pub fn value(&mut self, key: &str, v: &Bson) {
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
        let len = self.buf.len() as i32;
        self.buf[0..4].copy_from_slice(&len.to_le_bytes());
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
        let mut arr = RawWriter::new();
        arr.value("0", &Bson::Int32(1));
        w.array("e", arr);
        let d = Document::from_reader(&w.finish()[..]).unwrap();
        assert_eq!(d, doc! {"a": "x", "b": 7i64, "c": {"d": 1}, "e": [1]});
    }

    #[test]
    fn validate_rejects_garbage() {
        assert!(validate(&[5, 0, 0, 0, 0]).is_ok());
        assert!(validate(&[6, 0, 0, 0, 0x10, 0]).is_err());
        assert!(validate(&[1, 2, 3]).is_err());
    }
}
