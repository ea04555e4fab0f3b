//! Wire-level behaviour over raw TCP: the legacy OP_QUERY handshake, `moreToCome`,
//! awaitable hello, and bad input (truncated, oversized, invalid BSON, unknown opcodes or
//! section kinds) getting an error or a closed connection without affecting other clients.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bson::{doc, Document};
use mongosim::MongoSim;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn op_msg(request_id: i32, flags: u32, body: &Document) -> Vec<u8> {
    let b = body.to_vec().unwrap();
    let mut out = Vec::new();
    out.extend_from_slice(&((16 + 4 + 1 + b.len()) as i32).to_le_bytes());
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&2013i32.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.push(0);
    out.extend_from_slice(&b);
    out
}

fn op_query(request_id: i32, ns: &str, q: &Document) -> Vec<u8> {
    let b = q.to_vec().unwrap();
    let mut body = Vec::new();
    body.extend_from_slice(&0i32.to_le_bytes());
    body.extend_from_slice(ns.as_bytes());
    body.push(0);
    body.extend_from_slice(&0i32.to_le_bytes());
    body.extend_from_slice(&(-1i32).to_le_bytes());
    body.extend_from_slice(&b);
    let mut out = Vec::new();
    out.extend_from_slice(&((16 + body.len()) as i32).to_le_bytes());
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&2004i32.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Reads one reply: (responseTo, opCode, body document).
async fn read_reply(s: &mut TcpStream) -> Option<(i32, i32, i32, Document)> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.ok()?;
    let len = i32::from_le_bytes(len) as usize;
    let mut rest = vec![0u8; len - 4];
    s.read_exact(&mut rest).await.ok()?;
    let response_to = i32::from_le_bytes(rest[4..8].try_into().unwrap());
    let op = i32::from_le_bytes(rest[8..12].try_into().unwrap());
    let (flags, doc_start) = if op == 1 {
        (
            i32::from_le_bytes(rest[12..16].try_into().unwrap()),
            12 + 20,
        )
    } else {
        (0, 12 + 5)
    };
    let d = Document::from_reader(&rest[doc_start..]).unwrap();
    Some((response_to, op, flags, d))
}

async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

async fn ping_ok(sim: &MongoSim) {
    let mut s = TcpStream::connect(sim.addr()).await.unwrap();
    s.write_all(&op_msg(1, 0, &doc! {"ping": 1, "$db": "admin"}))
        .await
        .unwrap();
    let (_, _, _, d) = read_reply(&mut s).await.unwrap();
    assert_eq!(d.get_f64("ok").unwrap(), 1.0);
}

#[tokio::test]
async fn legacy_handshake_gets_op_reply_and_other_op_query_gets_352() {
    let sim = MongoSim::builder().start().await.unwrap();
    let mut s = TcpStream::connect(sim.addr()).await.unwrap();
    s.write_all(&op_query(
        77,
        "admin.$cmd",
        &doc! {"isMaster": 1, "helloOk": true},
    ))
    .await
    .unwrap();
    let (resp_to, op, flags, d) = read_reply(&mut s).await.unwrap();
    assert_eq!((resp_to, op, flags), (77, 1, 8));
    assert!(d.get_bool("ismaster").unwrap());
    assert!(d.get("isWritablePrimary").is_none());
    assert!(d.get_bool("helloOk").unwrap());
    s.write_all(&op_query(78, "app.$cmd", &doc! {"find": "c"}))
        .await
        .unwrap();
    let (_, _, _, d) = read_reply(&mut s).await.unwrap();
    assert_eq!(d.get_i32("code").unwrap(), 352);
    sim.shutdown().await;
}

#[tokio::test]
async fn more_to_come_writes_get_no_reply_but_apply() {
    let sim = MongoSim::builder().start().await.unwrap();
    let mut s = TcpStream::connect(sim.addr()).await.unwrap();
    let insert =
        doc! {"insert": "c", "documents": [{"_id": 1}], "$db": "app", "writeConcern": {"w": 0}};
    s.write_all(&op_msg(1, 2, &insert)).await.unwrap();
    s.write_all(&op_msg(2, 0, &doc! {"count": "c", "$db": "app"}))
        .await
        .unwrap();
    let (resp_to, _, _, d) = read_reply(&mut s).await.unwrap();
    assert_eq!(resp_to, 2, "the unacknowledged insert must not be answered");
    assert_eq!(d.get_i32("n").unwrap(), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn awaitable_hello_waits_for_max_await_time() {
    let sim = MongoSim::builder().start().await.unwrap();
    let mut s = TcpStream::connect(sim.addr()).await.unwrap();
    s.write_all(&op_msg(1, 0, &doc! {"hello": 1, "$db": "admin"}))
        .await
        .unwrap();
    let (_, _, _, first) = read_reply(&mut s).await.unwrap();
    let tv = first.get_document("topologyVersion").unwrap().clone();
    let started = Instant::now();
    let req = doc! {"hello": 1, "topologyVersion": tv, "maxAwaitTimeMS": 300i64, "$db": "admin"};
    s.write_all(&op_msg(2, 1 << 16, &req)).await.unwrap();
    read_reply(&mut s).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    sim.shutdown().await;
}

#[tokio::test]
async fn bad_input_is_answered_or_closed_and_others_keep_working() {
    let sim = MongoSim::builder().start().await.unwrap();
    // Invalid BSON inside a body: error reply 22, connection stays usable.
    let mut s = TcpStream::connect(sim.addr()).await.unwrap();
    let mut m = op_msg(5, 0, &doc! {"ping": 1, "$db": "admin"});
    m[16 + 4 + 1 + 4] = 0x77; // corrupt the first element's type byte
    s.write_all(&m).await.unwrap();
    let (_, _, _, d) = read_reply(&mut s).await.unwrap();
    assert_eq!(d.get_i32("code").unwrap(), 22);
    s.write_all(&op_msg(6, 0, &doc! {"ping": 1, "$db": "admin"}))
        .await
        .unwrap();
    assert!(read_reply(&mut s).await.is_some());
    // Missing $db: 40571.
    s.write_all(&op_msg(7, 0, &doc! {"ping": 1})).await.unwrap();
    let (_, _, _, d) = read_reply(&mut s).await.unwrap();
    assert_eq!(d.get_i32("code").unwrap(), 40571);

    let cases: Vec<Vec<u8>> = vec![
        // Length below the header size.
        vec![4, 0, 0, 0],
        // Length above maxMessageSizeBytes.
        (100_000_000i32).to_le_bytes().to_vec(),
        // Unknown opcode.
        {
            let mut m = op_msg(1, 0, &doc! {"ping": 1, "$db": "admin"});
            m[12..16].copy_from_slice(&2002i32.to_le_bytes());
            m
        },
        // Unknown section kind.
        {
            let mut m = op_msg(1, 0, &doc! {"ping": 1, "$db": "admin"});
            m[20] = 9;
            m
        },
        // Unknown required flag bit.
        op_msg(1, 1 << 4, &doc! {"ping": 1, "$db": "admin"}),
        // Truncated message (length claims more than is sent, then EOF).
        {
            let mut m = op_msg(1, 0, &doc! {"ping": 1, "$db": "admin"});
            m.truncate(m.len() - 3);
            m
        },
    ];
    for (i, bytes) in cases.into_iter().enumerate() {
        let mut s = TcpStream::connect(sim.addr()).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        if i == 5 {
            s.shutdown().await.unwrap();
        }
        assert!(closed(&mut s).await, "case {i} should close the connection");
        ping_ok(&sim).await;
    }
    sim.shutdown().await;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_bytes_never_bring_the_server_down(body in proptest::collection::vec(any::<u8>(), 0..200), op in prop_oneof![Just(2013i32), Just(2004i32), any::<i32>()]) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let sim = MongoSim::builder().start().await.unwrap();
            let mut s = TcpStream::connect(sim.addr()).await.unwrap();
            let mut m = Vec::new();
            m.extend_from_slice(&((16 + body.len()) as i32).to_le_bytes());
            m.extend_from_slice(&1i32.to_le_bytes());
            m.extend_from_slice(&0i32.to_le_bytes());
            m.extend_from_slice(&op.to_le_bytes());
            m.extend_from_slice(&body);
            let _ = s.write_all(&m).await;
            ping_ok(&sim).await;
            sim.shutdown().await;
        });
    }
}

#[tokio::test]
async fn an_outage_closes_open_connections_and_refuses_handshakes_until_it_ends() {
    let sim = MongoSim::builder().start().await.unwrap();
    // An awaitable hello in progress (the drivers' monitoring connection) is cut at once.
    let mut monitor = TcpStream::connect(sim.addr()).await.unwrap();
    monitor
        .write_all(&op_msg(1, 0, &doc! {"hello": 1, "$db": "admin"}))
        .await
        .unwrap();
    let (_, _, _, d) = read_reply(&mut monitor).await.unwrap();
    let tv = d.get_document("topologyVersion").unwrap().clone();
    let req = doc! {"hello": 1, "topologyVersion": tv, "maxAwaitTimeMS": 60_000i64, "$db": "admin"};
    monitor.write_all(&op_msg(2, 0, &req)).await.unwrap();
    let mut idle = TcpStream::connect(sim.addr()).await.unwrap();
    // A round trip on another connection, so the server has most likely started the wait.
    ping_ok(&sim).await;
    sim.faults().set_outage(true);
    assert!(sim.faults().in_outage());
    assert!(closed(&mut monitor).await, "awaitable hello survived");
    assert!(closed(&mut idle).await, "idle connection survived");
    // New connections are closed before their handshake is read, legacy or OP_MSG.
    let mut s = TcpStream::connect(sim.addr()).await.unwrap();
    let _ = s
        .write_all(&op_query(3, "admin.$cmd", &doc! {"isMaster": 1}))
        .await;
    let reply = tokio::time::timeout(Duration::from_secs(5), read_reply(&mut s)).await;
    assert!(matches!(reply, Ok(None)), "legacy handshake answered");
    let mut s = TcpStream::connect(sim.addr()).await.unwrap();
    let _ = s
        .write_all(&op_msg(4, 0, &doc! {"hello": 1, "$db": "admin"}))
        .await;
    let reply = tokio::time::timeout(Duration::from_secs(5), read_reply(&mut s)).await;
    assert!(matches!(reply, Ok(None)), "hello answered");
    sim.faults().set_outage(false);
    ping_ok(&sim).await;
    // `clear` ends an outage too.
    sim.faults().set_outage(true);
    sim.faults().clear();
    assert!(!sim.faults().in_outage());
    ping_ok(&sim).await;
    sim.shutdown().await;
}
