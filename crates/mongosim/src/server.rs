//! Network side: accepting connections, the per-connection request loop, fault handling,
//! reply framing and the `$clusterTime`/`operationTime` decoration of every reply.
//!
//! Owns sockets and per-connection state. It must not implement command semantics (those
//! live in `commands`) and never holds the store lock across an `.await`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bson::{doc, oid::ObjectId, Bson};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::commands::{self, ConnState, Reply};
use crate::error::CommandError;
use crate::faults::{Action, Faults};
use crate::rawbuf::RawWriter;
use crate::store::{Store, Topology};
use crate::wire::{self, Request, WireError};
use crate::Config;

/// State shared by every connection of one server.
pub struct Shared {
    /// Configuration.
    pub config: Config,
    /// "127.0.0.1:PORT" exactly as clients dial it.
    pub host: String,
    store: Mutex<Store>,
    /// Open cursors.
    pub cursors: Mutex<commands::cursor::Cursors>,
    /// Fault injection.
    pub faults: Faults,
    /// Cancelled on shutdown.
    pub cancel: CancellationToken,
    tracker: TaskTracker,
    /// `topologyVersion.processId`.
    pub process_id: ObjectId,
    conn_counter: AtomicI32,
    /// Currently open connections.
    pub open_conns: AtomicI32,
    /// Start time (uptime).
    pub started: Instant,
    /// opcounters: insert, query, update, delete, getmore, command.
    pub opcounters: [AtomicU64; 6],
    /// Logical sessions and their transactions.
    pub sessions: Mutex<crate::txn::Sessions>,
}

impl Shared {
    /// Creates the shared state (and the store).
    pub fn new(
        config: Config,
        addr: SocketAddr,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        let topology = if config.replset.is_some() {
            Topology::ReplicaSet
        } else {
            Topology::Standalone
        };
        let store = Store::new(topology, config.oplog_bytes);
        Self {
            host: addr.to_string(),
            store: Mutex::new(store),
            cursors: Mutex::new(commands::cursor::Cursors::default()),
            faults: Faults::default(),
            cancel,
            tracker,
            process_id: ObjectId::new(),
            conn_counter: AtomicI32::new(0),
            open_conns: AtomicI32::new(0),
            started: Instant::now(),
            opcounters: Default::default(),
            sessions: Mutex::new(crate::txn::Sessions::default()),
            config,
        }
    }

    /// Runs `f` with the store locked (never across an await). Inside a transactional
    /// command, `f` runs on the transaction's own data instead (see `txn`).
    pub fn with_store<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let f = match crate::txn::with_current(f) {
            Ok(r) => return r,
            Err(f) => f,
        };
        let mut guard = match self.store.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// Runs `f` with the cursor table locked.
    pub fn with_cursors<T>(&self, f: impl FnOnce(&mut commands::cursor::Cursors) -> T) -> T {
        let mut guard = match self.cursors.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// `true` for a replica-set member.
    pub fn is_replset(&self) -> bool {
        self.config.replset.is_some()
    }

    /// Counts `n` operations in `opcounters`.
    pub fn count_ops(&self, idx: usize, n: u64) {
        if let Some(c) = self.opcounters.get(idx) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Counts an operation in `opcounters`.
    pub fn count_op(&self, idx: usize) {
        if let Some(c) = self.opcounters.get(idx) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Accepts connections until shutdown.
pub async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = shared.cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                if shared.faults.in_outage() {
                    // A network outage: the peer sees the connection die before any byte.
                    debug!(%peer, "fault injection: outage, closing a new connection");
                    drop(stream);
                    continue;
                }
                let id = shared.conn_counter.fetch_add(1, Ordering::Relaxed) + 1;
                let s = shared.clone();
                shared.tracker.spawn(async move {
                    s.open_conns.fetch_add(1, Ordering::Relaxed);
                    if let Err(error) = connection(s.clone(), stream, id).await {
                        debug!(%error, %peer, conn_id = id, "connection ended");
                    }
                    s.open_conns.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(error) => {
                warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Writes a periodic no-op while idle, like the primary's no-op writer.
pub async fn noop_writer(shared: Arc<Shared>) {
    if !shared.is_replset() {
        return;
    }
    let every = shared.config.noop_interval.max(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        shared.with_store(|s| {
            let idle = bson::DateTime::now().timestamp_millis() - s.last_write_ms;
            if idle >= every.as_millis() as i64 {
                s.log_noop(doc! {"msg": "periodic noop"});
            }
        });
    }
}

async fn connection(shared: Arc<Shared>, stream: TcpStream, conn_id: i32) -> Result<(), WireError> {
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    let mut reader = BufReader::with_capacity(64 * 1024, r);
    let mut writer = BufWriter::with_capacity(64 * 1024, w);
    let mut state = ConnState::new(conn_id);
    let mut generation = shared.faults.generation();
    generation.borrow_and_update();
    // Checked after subscribing: an outage that began before is seen here, one that begins
    // later moves the generation.
    if shared.faults.in_outage() {
        return Ok(());
    }
    let mut next_request_id: i32 = 1;
    loop {
        let msg = tokio::select! {
            _ = shared.cancel.cancelled() => return Ok(()),
            _ = generation.changed() => return Ok(()),
            m = wire::read_message(&mut reader) => m?,
        };
        let Some((header, payload)) = msg else {
            return Ok(());
        };
        if shared.faults.in_outage() {
            // Read in the same instant the outage began: never answered.
            return Ok(());
        }
        let request = match wire::parse(&header, &payload) {
            Ok(r) => r,
            Err(WireError::Reply(e)) => {
                next_request_id = next_request_id.wrapping_add(1);
                let legacy = header.op_code == wire::OP_QUERY;
                let bytes = framed_reply(
                    &shared,
                    Reply::Doc(e.to_document()),
                    legacy,
                    next_request_id,
                    header.request_id,
                );
                writer.write_all(&bytes).await?;
                writer.flush().await?;
                continue;
            }
            Err(e) => {
                warn!(error = %e, conn_id, "closing connection on bad message");
                return Err(e);
            }
        };
        let (cmd, legacy, more_to_come, sequences) = match request {
            Request::Msg(m) => {
                let more = m.more_to_come();
                (m.body, false, more, m.sequences)
            }
            Request::Query {
                collection,
                mut query,
            } => {
                // The legacy handshake only: `<db>.$cmd` with isMaster/hello.
                let db = collection
                    .strip_suffix(".$cmd")
                    .unwrap_or("admin")
                    .to_string();
                if let Some(Bson::Document(inner)) = query.get("$query").cloned() {
                    query = inner;
                }
                query.insert("$db", db);
                (query, true, false, Vec::new())
            }
        };
        let name = cmd.keys().next().cloned().unwrap_or_default();
        let retryable_write = cmd.contains_key("txnNumber");
        let reply = if legacy && !matches!(name.as_str(), "isMaster" | "ismaster" | "hello") {
            Some(Reply::Doc(
                CommandError::new(352, format!("Unsupported OP_QUERY command: {name}. The client driver may require an upgrade. For more details see https://dochub.mongodb.org/core/legacy-opcode-removal")).to_document(),
            ))
        } else {
            match shared.faults.on_command(&name) {
                Action::Close => {
                    info!(conn_id, command = %name, "fault injection: closing connection");
                    return Ok(());
                }
                Action::Fail(e) => Some(Reply::Doc(error_reply(&shared, &e, retryable_write))),
                Action::Proceed(delay) => {
                    if let Some(d) = delay {
                        tokio::select! {
                            _ = shared.cancel.cancelled() => return Ok(()),
                            _ = generation.changed() => return Ok(()),
                            _ = tokio::time::sleep(d) => {}
                        }
                    }
                    None
                }
            }
        };
        let reply = match reply {
            Some(r) => r,
            None => {
                // Only awaitable `hello` and awaitData `getMore` wait inside; a dropped connection
                // (or an outage) must not wait for them to end. An interrupted getMore loses its
                // cursor, as a getMore that fails on a real server kills it.
                let result = tokio::select! {
                    _ = generation.changed() => return Ok(()),
                    r = commands::dispatch(&shared, &mut state, cmd, sequences, legacy) => r,
                };
                match result {
                    Ok(r) => r,
                    Err(e) => Reply::Doc(error_reply(&shared, &e, retryable_write)),
                }
            }
        };
        if more_to_come {
            continue;
        }
        next_request_id = next_request_id.wrapping_add(1);
        let bytes = framed_reply(&shared, reply, legacy, next_request_id, header.request_id);
        writer.write_all(&bytes).await?;
        writer.flush().await?;
    }
}

/// Codes a 4.4+ server labels `RetryableWriteError` when the command carried `txnNumber`.
const RETRYABLE_CODES: [i32; 12] = [
    6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436,
];

/// "Not primary" and "shutting down" codes: replies carry `topologyVersion` so SDAM can tell
/// a stale error from a real state change (reference §2.4).
const STATE_CHANGE_CODES: [i32; 7] = [91, 189, 10107, 11600, 11602, 13435, 13436];

/// The error reply of a command, with the labels drivers rely on for retries.
fn error_reply(shared: &Shared, e: &CommandError, retryable_write: bool) -> bson::Document {
    let mut d = e.to_document();
    if STATE_CHANGE_CODES.contains(&e.code) {
        d.insert(
            "topologyVersion",
            doc! {"processId": shared.process_id, "counter": 0i64},
        );
    }
    if retryable_write && RETRYABLE_CODES.contains(&e.code) {
        d.insert("errorLabels", vec!["RetryableWriteError"]);
    }
    d
}

/// The whole reply message (OP_REPLY when `legacy`, else OP_MSG), built in one buffer.
fn framed_reply(
    shared: &Shared,
    reply: Reply,
    legacy: bool,
    request_id: i32,
    response_to: i32,
) -> Vec<u8> {
    let prefix = if legacy {
        wire::REPLY_PREFIX
    } else {
        wire::MSG_PREFIX
    };
    let mut bytes = finish_reply(shared, reply, prefix);
    if legacy {
        wire::frame_reply(&mut bytes, request_id, response_to);
    } else {
        wire::frame_msg(&mut bytes, request_id, response_to);
    }
    bytes
}

/// Serialises a reply after `prefix` header bytes and appends `$clusterTime`/`operationTime`
/// on replica sets. Cursor batches are written in place: each stored document is copied once.
fn finish_reply(shared: &Shared, reply: Reply, prefix: usize) -> Vec<u8> {
    let optime = shared.with_store(|s| s.optime());
    let cap = match &reply {
        Reply::Cursor(c) => c.bytes + c.docs.len() * 8 + 512,
        Reply::Doc(_) => 512,
    };
    let mut w = RawWriter::with_prefix(prefix, cap);
    match reply {
        Reply::Doc(d) => {
            let mut d = d;
            if !d.contains_key("ok") {
                d.insert("ok", 1.0);
            }
            w.extend_doc(&d);
        }
        Reply::Cursor(c) => {
            let cur = w.begin_sub(0x03, "cursor");
            w.i64("id", c.id);
            w.str("ns", &c.ns);
            let arr = w.begin_sub(0x04, if c.first { "firstBatch" } else { "nextBatch" });
            for (i, d) in c.docs.iter().enumerate() {
                w.indexed_doc_bytes(i, d.as_bytes());
            }
            w.end_sub(arr);
            if let Some(extra) = &c.extra {
                w.extend_doc(extra);
            }
            w.end_sub(cur);
            w.value("ok", &Bson::Double(1.0));
        }
    }
    if shared.is_replset() {
        w.value(
            "$clusterTime",
            &Bson::Document(doc! {
                "clusterTime": optime,
                "signature": {
                    "hash": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![0u8; 20] },
                    "keyId": 0i64,
                },
            }),
        );
        w.value("operationTime", &Bson::Timestamp(optime));
    }
    w.finish()
}
