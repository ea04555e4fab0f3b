//! MongoDB wire protocol framing: message headers, OP_MSG (body + document sequences,
//! checksum, `moreToCome`), the legacy OP_QUERY handshake and OP_REPLY.
//!
//! Owns byte-level parsing and encoding of messages. It must never panic on input and must
//! not interpret commands. Parse failures say whether the server answers with an error or
//! closes the connection, following reference §1.

use bson::{Document, RawDocumentBuf};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::CommandError;
use crate::rawbuf::validate;

/// OP_REPLY opcode.
pub const OP_REPLY: i32 = 1;
/// OP_QUERY opcode.
pub const OP_QUERY: i32 = 2004;
/// OP_COMPRESSED opcode.
pub const OP_COMPRESSED: i32 = 2012;
/// OP_MSG opcode.
pub const OP_MSG: i32 = 2013;
/// Largest message accepted (`maxMessageSizeBytes`).
pub const MAX_MESSAGE_SIZE: usize = 48_000_000;
/// Largest document (`maxBsonObjectSize`).
pub const MAX_BSON_OBJECT_SIZE: usize = 16 * 1024 * 1024;

const FLAG_CHECKSUM: u32 = 1;
const FLAG_MORE_TO_COME: u32 = 1 << 1;
const FLAG_EXHAUST_ALLOWED: u32 = 1 << 16;

/// The 16-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Whole message length.
    pub length: i32,
    /// Sender's id.
    pub request_id: i32,
    /// Id of the request answered.
    pub response_to: i32,
    /// Operation code.
    pub op_code: i32,
}

/// Why a message could not be used.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Socket error or EOF in the middle of a message.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A framing error after which the server closes the connection.
    #[error("closing connection: {0}")]
    Close(String),
    /// A message error the server answers with an error reply.
    #[error("bad message: {0}")]
    Reply(CommandError),
}

/// A parsed request.
#[derive(Debug)]
pub enum Request {
    /// OP_MSG command.
    Msg(MsgRequest),
    /// Legacy OP_QUERY on `<db>.$cmd`.
    Query {
        /// `fullCollectionName`.
        collection: String,
        /// The command document.
        query: Document,
    },
}

/// An OP_MSG request.
#[derive(Debug)]
pub struct MsgRequest {
    /// Raw flag bits.
    pub flags: u32,
    /// The kind-0 body.
    pub body: Document,
    /// Kind-1 document sequences (identifier, documents), kept raw for fast inserts.
    pub sequences: Vec<(String, Vec<RawDocumentBuf>)>,
}

impl MsgRequest {
    /// `moreToCome` on a request: the client wants no reply.
    pub fn more_to_come(&self) -> bool {
        self.flags & FLAG_MORE_TO_COME != 0
    }

    /// `exhaustAllowed`.
    pub fn exhaust_allowed(&self) -> bool {
        self.flags & FLAG_EXHAUST_ALLOWED != 0
    }
}

/// Reads one message; `Ok(None)` on a clean EOF before a header.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<(Header, Vec<u8>)>, WireError> {
    let mut len_buf = [0u8; 4];
    match r.read_exact(&mut len_buf).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let length = i32::from_le_bytes(len_buf);
    if length < 16 || length as usize > MAX_MESSAGE_SIZE {
        return Err(WireError::Close(format!(
            "recv(): message msgLen {length} is invalid. Min 16 Max: {MAX_MESSAGE_SIZE}"
        )));
    }
    let mut head = [0u8; 12];
    r.read_exact(&mut head).await?;
    let field = |i: usize| i32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    let header = Header {
        length,
        request_id: field(0),
        response_to: field(4),
        op_code: field(8),
    };
    // The payload is read into its own buffer (no copy of a large insert batch afterwards),
    // straight into its spare capacity: no zero-filling of a multi-megabyte batch first.
    let want = length as usize - 16;
    let mut payload = Vec::with_capacity(want);
    while payload.len() < want {
        let left = (want - payload.len()) as u64;
        if (&mut *r).take(left).read_buf(&mut payload).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
    Ok(Some((header, payload)))
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn u32(&mut self) -> Option<u32> {
        let b = self.buf.get(self.pos..self.pos + 4)?;
        self.pos += 4;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i32(&mut self) -> Option<i32> {
        self.u32().map(|v| v as i32)
    }

    fn u8(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn cstring(&mut self) -> Option<&'a str> {
        let rest = self.buf.get(self.pos..)?;
        let end = rest.iter().position(|b| *b == 0)?;
        let s = std::str::from_utf8(&rest[..end]).ok()?;
        self.pos += end + 1;
        Some(s)
    }

    /// A length-prefixed BSON document (bytes only, validated).
    fn document(&mut self) -> Result<&'a [u8], WireError> {
        let start = self.pos;
        let len = self
            .buf
            .get(start..start + 4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| invalid_bson("document length truncated"))?;
        if len < 5 || len as usize > MAX_BSON_OBJECT_SIZE + 16 * 1024 {
            return Err(invalid_bson("invalid document length"));
        }
        let bytes = self
            .buf
            .get(start..start + len as usize)
            .ok_or_else(|| invalid_bson("document extends past the end of the message"))?;
        validate(bytes).map_err(|e| invalid_bson(&e))?;
        self.pos += len as usize;
        Ok(bytes)
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
}

/// Decodes a command body. A body whose string values hold invalid UTF-8 (already validated
/// structurally) decodes with U+FFFD in their place; documents sent in kind-1 sequences (how
/// drivers send `insert`/`update`/`delete` payloads) stay raw and byte-exact.
/// The body as a document, and, when it holds strings that are not valid UTF-8 (which a real server
/// stores as given), its top-level arrays of documents kept raw (`updates`, `documents`, `deletes`...):
/// `Cmd::take_docs` reads those before the lossy decoded body, so the bytes reach the store unchanged.
#[allow(clippy::type_complexity)]
fn decode_body(bytes: &[u8]) -> Result<(Document, Vec<(String, Vec<RawDocumentBuf>)>), WireError> {
    match Document::from_reader(bytes) {
        Ok(d) => Ok((d, Vec::new())),
        Err(e) => {
            let raw =
                bson::RawDocument::from_bytes(bytes).map_err(|_| invalid_bson(&e.to_string()))?;
            let lossy = bson::Utf8Lossy::<Document>::try_from(raw)
                .map_err(|_| invalid_bson(&e.to_string()))?
                .0;
            let mut arrays = Vec::new();
            for el in raw.iter_elements().flatten() {
                if el.element_type() != bson::spec::ElementType::Array {
                    continue;
                }
                let Ok(bson::RawBsonRef::Array(items)) = el.value() else {
                    continue;
                };
                let docs: Option<Vec<RawDocumentBuf>> = items
                    .into_iter()
                    .map(|v| match v {
                        Ok(bson::RawBsonRef::Document(d)) => Some(d.to_owned()),
                        _ => None,
                    })
                    .collect();
                if let Some(docs) = docs {
                    arrays.push((el.key().as_str().to_string(), docs));
                }
            }
            Ok((lossy, arrays))
        }
    }
}

fn invalid_bson(msg: &str) -> WireError {
    WireError::Reply(CommandError::new(22, format!("invalid BSON: {msg}")))
}

/// Parses a message payload (after the header).
pub fn parse(header: &Header, payload: &[u8]) -> Result<Request, WireError> {
    match header.op_code {
        OP_MSG => parse_msg(payload).map(Request::Msg),
        OP_QUERY => parse_query(payload),
        OP_COMPRESSED => Err(WireError::Close(
            "OP_COMPRESSED received but no compressor was negotiated".into(),
        )),
        other => Err(WireError::Close(format!("unsupported opCode {other}"))),
    }
}

fn parse_msg(payload: &[u8]) -> Result<MsgRequest, WireError> {
    let mut c = Cursor {
        buf: payload,
        pos: 0,
    };
    let flags = c
        .u32()
        .ok_or_else(|| WireError::Close("OP_MSG without flagBits".into()))?;
    let required = flags & 0xffff;
    if required & !(FLAG_CHECKSUM | FLAG_MORE_TO_COME) != 0 {
        return Err(WireError::Close(format!(
            "Illegal OP_MSG flag bits {required:#x} (IllegalOpMsgFlag 223)"
        )));
    }
    let end = if flags & FLAG_CHECKSUM != 0 {
        payload
            .len()
            .checked_sub(4)
            .ok_or_else(|| WireError::Close("checksum flag set but message too short".into()))?
    } else {
        payload.len()
    };
    let mut c = Cursor {
        buf: &payload[..end],
        pos: 4,
    };
    let mut body: Option<Document> = None;
    let mut sequences: Vec<(String, Vec<RawDocumentBuf>)> = Vec::new();
    while c.remaining() > 0 {
        let kind = c
            .u8()
            .ok_or_else(|| WireError::Close("truncated section".into()))?;
        match kind {
            0 => {
                let bytes = c.document()?;
                if body.is_some() {
                    return Err(WireError::Reply(CommandError::new(
                        40430,
                        "Multiple body sections in message",
                    )));
                }
                let (mut doc, raw_arrays) = decode_body(bytes)?;
                for (ident, docs) in raw_arrays {
                    if !sequences.iter().any(|(i, _)| *i == ident) {
                        doc.remove(&ident);
                        sequences.push((ident, docs));
                    }
                }
                body = Some(doc);
            }
            1 => {
                let start = c.pos;
                let size = c
                    .i32()
                    .ok_or_else(|| WireError::Close("truncated document sequence".into()))?;
                let seq_end = start
                    .checked_add(usize::try_from(size).unwrap_or(0))
                    .filter(|e| *e <= c.buf.len() && size >= 5)
                    .ok_or_else(|| WireError::Close("invalid document sequence size".into()))?;
                let ident = c
                    .cstring()
                    .ok_or_else(|| WireError::Close("invalid sequence identifier".into()))?
                    .to_string();
                let mut sub = Cursor {
                    buf: &c.buf[..seq_end],
                    pos: c.pos,
                };
                let mut docs = Vec::new();
                while sub.remaining() > 0 {
                    let bytes = sub.document()?;
                    docs.push(
                        RawDocumentBuf::from_bytes(bytes.to_vec())
                            .map_err(|e| invalid_bson(&e.to_string()))?,
                    );
                }
                c.pos = seq_end;
                if sequences.iter().any(|(i, _)| *i == ident) {
                    return Err(WireError::Reply(CommandError::new(
                        40431,
                        format!("Duplicate document sequence: {ident}"),
                    )));
                }
                sequences.push((ident, docs));
            }
            other => {
                return Err(WireError::Close(format!("Unknown section kind {other}")));
            }
        }
    }
    let body =
        body.ok_or_else(|| WireError::Reply(CommandError::new(40587, "OP_MSG requires a body")))?;
    for (ident, _) in &sequences {
        if body.contains_key(ident) {
            return Err(WireError::Reply(CommandError::new(
                40413,
                format!("Duplicate field '{ident}' in OP_MSG body and document sequence"),
            )));
        }
    }
    Ok(MsgRequest {
        flags,
        body,
        sequences,
    })
}

fn parse_query(payload: &[u8]) -> Result<Request, WireError> {
    let mut c = Cursor {
        buf: payload,
        pos: 0,
    };
    let _flags = c
        .i32()
        .ok_or_else(|| WireError::Close("truncated OP_QUERY".into()))?;
    let collection = c
        .cstring()
        .ok_or_else(|| WireError::Close("invalid OP_QUERY collection name".into()))?
        .to_string();
    let _skip = c.i32();
    let _ret = c
        .i32()
        .ok_or_else(|| WireError::Close("truncated OP_QUERY".into()))?;
    let bytes = c.document()?;
    let query = Document::from_reader(bytes).map_err(|e| invalid_bson(&e.to_string()))?;
    Ok(Request::Query { collection, query })
}

fn header_bytes(out: &mut Vec<u8>, request_id: i32, response_to: i32, op_code: i32) {
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&response_to.to_le_bytes());
    out.extend_from_slice(&op_code.to_le_bytes());
}

fn finish(mut out: Vec<u8>) -> Vec<u8> {
    let len = out.len() as i32;
    out[0..4].copy_from_slice(&len.to_le_bytes());
    out
}

/// Bytes before the body of an OP_MSG reply (header, flags, section kind).
pub const MSG_PREFIX: usize = 21;
/// Bytes before the document of an OP_REPLY.
pub const REPLY_PREFIX: usize = 36;

/// Fills in the OP_MSG header of `buf`, whose body starts at [`MSG_PREFIX`].
pub fn frame_msg(buf: &mut [u8], request_id: i32, response_to: i32) {
    let len = buf.len() as i32;
    buf[0..4].copy_from_slice(&len.to_le_bytes());
    buf[4..8].copy_from_slice(&request_id.to_le_bytes());
    buf[8..12].copy_from_slice(&response_to.to_le_bytes());
    buf[12..16].copy_from_slice(&OP_MSG.to_le_bytes());
    buf[16..20].copy_from_slice(&0u32.to_le_bytes());
    buf[20] = 0;
}

/// Fills in the OP_REPLY header of `buf`, whose document starts at [`REPLY_PREFIX`].
pub fn frame_reply(buf: &mut [u8], request_id: i32, response_to: i32) {
    let len = buf.len() as i32;
    buf[0..4].copy_from_slice(&len.to_le_bytes());
    buf[4..8].copy_from_slice(&request_id.to_le_bytes());
    buf[8..12].copy_from_slice(&response_to.to_le_bytes());
    buf[12..16].copy_from_slice(&OP_REPLY.to_le_bytes());
    buf[16..20].copy_from_slice(&8i32.to_le_bytes());
    buf[20..28].copy_from_slice(&0i64.to_le_bytes());
    buf[28..32].copy_from_slice(&0i32.to_le_bytes());
    buf[32..36].copy_from_slice(&1i32.to_le_bytes());
}

/// Encodes an OP_MSG reply with a single body section.
pub fn encode_msg(request_id: i32, response_to: i32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 21);
    header_bytes(&mut out, request_id, response_to, OP_MSG);
    out.extend_from_slice(&0u32.to_le_bytes());
    out.push(0);
    out.extend_from_slice(body);
    finish(out)
}

/// Encodes an OP_REPLY (flags 8 = AwaitCapable, cursor 0, one document).
pub fn encode_reply(request_id: i32, response_to: i32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 36);
    header_bytes(&mut out, request_id, response_to, OP_REPLY);
    out.extend_from_slice(&8i32.to_le_bytes());
    out.extend_from_slice(&0i64.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&1i32.to_le_bytes());
    out.extend_from_slice(body);
    finish(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn msg(flags: u32, sections: &[u8]) -> Vec<u8> {
        let mut p = flags.to_le_bytes().to_vec();
        p.extend_from_slice(sections);
        p
    }

    #[test]
    fn parses_body_and_sequence_in_any_order() {
        let body = doc! {"insert": "c", "$db": "app"}.to_vec().unwrap();
        let d1 = doc! {"_id": 1}.to_vec().unwrap();
        let mut seq = Vec::new();
        seq.push(1u8);
        let size = 4 + "documents\0".len() + d1.len() * 2;
        seq.extend_from_slice(&(size as i32).to_le_bytes());
        seq.extend_from_slice(b"documents\0");
        seq.extend_from_slice(&d1);
        seq.extend_from_slice(&d1);
        let mut sections = seq.clone();
        sections.push(0);
        sections.extend_from_slice(&body);
        let m = parse_msg(&msg(0, &sections)).unwrap();
        assert_eq!(m.body.get_str("insert").unwrap(), "c");
        assert_eq!(m.sequences[0].0, "documents");
        assert_eq!(m.sequences[0].1.len(), 2);
    }

    #[test]
    fn checksum_is_stripped_and_unknown_flags_rejected() {
        let body = doc! {"ping": 1, "$db": "admin"}.to_vec().unwrap();
        let mut sections = vec![0u8];
        sections.extend_from_slice(&body);
        sections.extend_from_slice(&[1, 2, 3, 4]);
        assert!(parse_msg(&msg(1, &sections)).is_ok());
        assert!(matches!(
            parse_msg(&msg(1 << 3, &sections)),
            Err(WireError::Close(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_payloads_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = parse_msg(&bytes);
            let _ = parse_query(&bytes);
        }

        #[test]
        fn arbitrary_sections_after_valid_flags_never_panic(kind in 0u8..3, body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let mut p = 0u32.to_le_bytes().to_vec();
            p.push(kind);
            p.extend_from_slice(&(body.len() as i32 + 4).to_le_bytes());
            p.extend_from_slice(&body);
            let _ = parse_msg(&p);
        }
    }

    #[test]
    fn in_place_framing_matches_encoders() {
        let body = doc! {"ok": 1.0}.to_vec().unwrap();
        let mut m = vec![0u8; MSG_PREFIX];
        m.extend_from_slice(&body);
        frame_msg(&mut m, 7, 3);
        assert_eq!(m, encode_msg(7, 3, &body));
        let mut r = vec![0u8; REPLY_PREFIX];
        r.extend_from_slice(&body);
        frame_reply(&mut r, 7, 3);
        assert_eq!(r, encode_reply(7, 3, &body));
    }

    #[test]
    fn garbage_never_panics() {
        for len in 0..40 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            let _ = parse_msg(&bytes);
            let _ = parse_query(&bytes);
        }
        let mut bad = vec![0u8];
        bad.extend_from_slice(&[10, 0, 0, 0, 0x02, b'a', 0, 0xff, 0xff, 0]);
        assert!(matches!(parse_msg(&msg(0, &bad)), Err(WireError::Reply(e)) if e.code == 22));
        assert!(matches!(
            parse_msg(&msg(0, &[7u8, 1, 2])),
            Err(WireError::Close(_))
        ));
    }
}
