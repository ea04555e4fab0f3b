//! Byte-exact BSON element access for the oplog applier. Real drivers have stored strings with invalid
//! UTF-8 (the server does not validate UTF-8 in stored documents), so the applier must carry entries
//! from the source oplog to the destination without decoding string values, lossily or strictly. This
//! module walks BSON elements by their declared lengths (bsonspec.org grammar) and builds documents from
//! element bytes; it never interprets string contents.

use mongodb::bson::{RawDocument, RawDocumentBuf};

/// One element of a BSON document: its type byte, key bytes (without the NUL) and value bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Element<'a> {
    pub kind: u8,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

fn read_i32(b: &[u8], at: usize) -> Option<usize> {
    let s = b.get(at..at + 4)?;
    let n = i32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    usize::try_from(n).ok()
}

fn cstring_len(b: &[u8], at: usize) -> Option<usize> {
    b.get(at..)?.iter().position(|c| *c == 0)
}

/// Length in bytes of a value of BSON type `kind` starting at `at`.
fn value_len(b: &[u8], kind: u8, at: usize) -> Option<usize> {
    Some(match kind {
        0x01 | 0x09 | 0x11 | 0x12 => 8,
        0x10 => 4,
        0x08 => 1,
        0x07 => 12,
        0x13 => 16,
        0x06 | 0x0A | 0x7F | 0xFF => 0,
        0x02 | 0x0D | 0x0E => 4 + read_i32(b, at)?,
        0x03 | 0x04 | 0x0F => read_i32(b, at)?,
        0x05 => 5 + read_i32(b, at)?,
        0x0B => {
            let p = cstring_len(b, at)? + 1;
            p + cstring_len(b, at + p)? + 1
        }
        0x0C => 4 + read_i32(b, at)? + 12,
        _ => return None,
    })
}

/// The elements of `doc`, in order; `None` if the bytes are not well-formed BSON framing.
pub(crate) fn elements(doc: &[u8]) -> Option<Vec<Element<'_>>> {
    let total = read_i32(doc, 0)?;
    if total < 5 || total > doc.len() || doc[total - 1] != 0 {
        return None;
    }
    let mut out = Vec::new();
    let mut at = 4;
    while at < total - 1 {
        let kind = doc[at];
        let klen = cstring_len(doc, at + 1)?;
        let key = &doc[at + 1..at + 1 + klen];
        let vstart = at + 1 + klen + 1;
        let vlen = value_len(doc, kind, vstart)?;
        let value = doc.get(vstart..vstart + vlen)?;
        if vstart + vlen > total - 1 {
            return None;
        }
        out.push(Element { kind, key, value });
        at = vstart + vlen;
    }
    Some(out)
}

/// The element `key` of `doc` (top level), if present.
pub(crate) fn field<'a>(doc: &'a RawDocument, key: &str) -> Option<Element<'a>> {
    elements(doc.as_bytes())?
        .into_iter()
        .find(|e| e.key == key.as_bytes())
}

/// Identity of a BSON value for hashing and equality of `_id`s: its type byte and value bytes.
/// (Numbers of different types are distinct here; the server's own `_id` index treats 1 and 1.0 as
/// equal, but one document's oplog entries always carry the same `_id` bytes.)
pub(crate) fn value_key(e: &Element<'_>) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + e.value.len());
    k.push(e.kind);
    k.extend_from_slice(e.value);
    k
}

/// Builds a BSON document from raw elements.
#[derive(Default)]
pub(crate) struct Builder {
    body: Vec<u8>,
}

impl Builder {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn element(&mut self, key: &[u8], kind: u8, value: &[u8]) -> &mut Self {
        self.body.push(kind);
        self.body.extend_from_slice(key);
        self.body.push(0);
        self.body.extend_from_slice(value);
        self
    }

    pub(crate) fn doc(&mut self, key: &str, doc: &RawDocument) -> &mut Self {
        self.element(key.as_bytes(), 0x03, doc.as_bytes())
    }

    pub(crate) fn string(&mut self, key: &str, value: &str) -> &mut Self {
        let mut v = Vec::with_capacity(value.len() + 5);
        v.extend_from_slice(&((value.len() + 1) as i32).to_le_bytes());
        v.extend_from_slice(value.as_bytes());
        v.push(0);
        self.element(key.as_bytes(), 0x02, &v)
    }

    pub(crate) fn boolean(&mut self, key: &str, value: bool) -> &mut Self {
        self.element(key.as_bytes(), 0x08, &[u8::from(value)])
    }

    pub(crate) fn int32(&mut self, key: &str, value: i32) -> &mut Self {
        self.element(key.as_bytes(), 0x10, &value.to_le_bytes())
    }

    pub(crate) fn array_of_docs(&mut self, key: &str, docs: &[&RawDocument]) -> &mut Self {
        let mut arr = Builder::new();
        for (i, d) in docs.iter().enumerate() {
            arr.element(i.to_string().as_bytes(), 0x03, d.as_bytes());
        }
        let bytes = arr.bytes();
        self.element(key.as_bytes(), 0x04, &bytes)
    }

    pub(crate) fn array_of_elements(&mut self, key: &str, items: &[Element<'_>]) -> &mut Self {
        let mut arr = Builder::new();
        for (i, e) in items.iter().enumerate() {
            arr.element(i.to_string().as_bytes(), e.kind, e.value);
        }
        let bytes = arr.bytes();
        self.element(key.as_bytes(), 0x04, &bytes)
    }

    fn bytes(&self) -> Vec<u8> {
        let len = self.body.len() + 5;
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&(len as i32).to_le_bytes());
        out.extend_from_slice(&self.body);
        out.push(0);
        out
    }

    pub(crate) fn build(&self) -> RawDocumentBuf {
        let bytes = self.bytes();
        // The framing is ours and valid; from_bytes checks only the length and terminator.
        RawDocumentBuf::from_bytes(bytes).unwrap_or_default()
    }
}

/// `{key: <value of e>}`.
pub(crate) fn single(key: &str, e: &Element<'_>) -> RawDocumentBuf {
    Builder::new()
        .element(key.as_bytes(), e.kind, e.value)
        .build()
}

/// `doc` without its top-level `key` elements.
pub(crate) fn without(doc: &RawDocument, key: &str) -> Option<RawDocumentBuf> {
    let mut b = Builder::new();
    for e in elements(doc.as_bytes())? {
        if e.key != key.as_bytes() {
            b.element(e.key, e.kind, e.value);
        }
    }
    Some(b.build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{doc, Document};

    fn invalid_utf8_doc() -> Vec<u8> {
        // {_id: 1, s: "\xff\xfe"} built by hand: a string the server stores as given.
        let mut b = Builder::new();
        b.element(b"_id", 0x10, &1i32.to_le_bytes());
        let mut s = Vec::new();
        s.extend_from_slice(&3i32.to_le_bytes());
        s.extend_from_slice(&[0xff, 0xfe, 0]);
        b.element(b"s", 0x02, &s);
        b.build().into_bytes()
    }

    #[test]
    fn walks_every_type_of_a_real_document() {
        let d = doc! {
            "_id": mongodb::bson::oid::ObjectId::new(), "d": 1.5, "s": "x", "o": {"a": [1, 2]},
            "b": mongodb::bson::Binary { subtype: mongodb::bson::spec::BinarySubtype::Generic, bytes: vec![1, 2] },
            "u": mongodb::bson::Bson::Undefined, "t": true, "dt": mongodb::bson::DateTime::now(), "n": null,
            "re": mongodb::bson::Regex { pattern: "a.c".to_string().try_into().unwrap(), options: "i".to_string().try_into().unwrap() },
            "i": 5, "ts": mongodb::bson::Timestamp { time: 1, increment: 2 }, "l": 7i64,
            "dec": mongodb::bson::Decimal128::from_bytes([0; 16]), "min": mongodb::bson::Bson::MinKey,
            "max": mongodb::bson::Bson::MaxKey, "js": mongodb::bson::Bson::JavaScriptCode("f()".into()),
        };
        let raw = RawDocumentBuf::try_from(&d).unwrap();
        let els = elements(raw.as_bytes()).unwrap();
        assert_eq!(els.len(), d.len());
        let mut b = Builder::new();
        for e in &els {
            b.element(e.key, e.kind, e.value);
        }
        assert_eq!(b.build().as_bytes(), raw.as_bytes());
        assert_eq!(Document::try_from(b.build()).unwrap(), d);
    }

    #[test]
    fn invalid_utf8_is_carried_byte_for_byte() {
        let bytes = invalid_utf8_doc();
        let raw = RawDocumentBuf::from_bytes(bytes.clone()).unwrap();
        assert!(
            Document::try_from(&raw).is_err(),
            "strict decoding refuses it"
        );
        let id = field(&raw, "_id").unwrap();
        assert_eq!(single("_id", &id).as_bytes(), doc_bytes(doc! {"_id": 1}));
        let stmt = {
            let mut b = Builder::new();
            b.doc("u", &raw);
            b.build()
        };
        let inner = field(&stmt, "u").unwrap();
        assert_eq!(inner.value, &bytes[..]);
        assert_eq!(
            without(&raw, "_id").unwrap().as_bytes().len(),
            bytes.len() - 9
        );
    }

    fn doc_bytes(d: Document) -> Vec<u8> {
        RawDocumentBuf::try_from(&d).unwrap().into_bytes()
    }

    #[test]
    fn truncated_or_bad_framing_is_refused() {
        let bytes = invalid_utf8_doc();
        assert!(elements(&bytes[..bytes.len() - 1]).is_none());
        let mut bad = bytes.clone();
        bad[4] = 0x42; // unknown type
        assert!(elements(&bad).is_none());
        let mut long = bytes;
        long[7] = 0xff; // a key that runs past the end
        long[8] = 0xff;
        assert!(elements(&long).is_none() || elements(&long).unwrap().len() <= 2);
    }
}
