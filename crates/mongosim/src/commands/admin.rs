//! Handshake, authentication and server-level commands: `hello`/`isMaster`, `buildInfo`,
//! `saslStart`/`saslContinue`, `serverStatus`, `replSetGetStatus`, `getParameter`, session
//! commands and `configureFailPoint`.
//!
//! Owns the shapes of these replies (reference §2-§4). It must not touch collection data.

use std::sync::Arc;
use std::time::Duration;

use bson::{doc, spec::BinarySubtype, Binary, Bson, DateTime, Document, Timestamp};

use super::{Cmd, ConnState, Reply};
use crate::auth::{self, Mechanism};
use crate::error::{CmdResult, CommandError};
use crate::server::Shared;
use crate::wire::{MAX_BSON_OBJECT_SIZE, MAX_MESSAGE_SIZE};

fn bin(bytes: Vec<u8>) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::Generic,
        bytes,
    })
}

fn optime(ts: Timestamp, term: i64) -> Document {
    doc! {"ts": ts, "t": term}
}

fn second_precision(ms: i64) -> DateTime {
    DateTime::from_millis(ms - ms.rem_euclid(1000))
}

fn election_id(term: i64) -> bson::oid::ObjectId {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&[0x7f, 0xff, 0xff, 0xff]);
    b[4..].copy_from_slice(&term.to_be_bytes());
    bson::oid::ObjectId::from_bytes(b)
}

/// `hello` / `isMaster` (reference §2.1), including awaitable hello (§2.4).
pub async fn hello(shared: &Arc<Shared>, conn: &mut ConnState, cmd: &Cmd) -> CmdResult<Reply> {
    let topology_version = doc! {"processId": shared.process_id, "counter": 0i64};
    let tv_arg = cmd.doc_arg("topologyVersion")?;
    let max_await = cmd.int_arg("maxAwaitTimeMS")?;
    match (&tv_arg, max_await) {
        (Some(tv), Some(ms)) => {
            if tv.get_object_id("processId").ok() == Some(shared.process_id) {
                let wait = Duration::from_millis(u64::try_from(ms).unwrap_or(0).min(60_000));
                tokio::select! {
                    _ = shared.cancel.cancelled() => {
                        return Err(CommandError::new(91, "The server is in quiesce mode and will shut down"));
                    }
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
        (None, None) => {}
        _ => {
            return Err(CommandError::bad_value(
                "A request with a 'topologyVersion' must include 'maxAwaitTimeMS'",
            ))
        }
    }
    let (ts, last_write_ms, term, majority) =
        shared.with_store(|s| (s.optime(), s.last_write_ms, s.term, s.majority_point()));
    let legacy_name = cmd.name != "hello";
    let mut r = Document::new();
    if cmd.body.contains_key("helloOk") {
        r.insert("helloOk", true);
    }
    r.insert("topologyVersion", topology_version);
    let primary_key = if legacy_name {
        "ismaster"
    } else {
        "isWritablePrimary"
    };
    match &shared.config.replset {
        Some(set) => {
            r.insert("hosts", vec![Bson::String(shared.host.clone())]);
            r.insert("setName", set.clone());
            r.insert("setVersion", 1i32);
            r.insert(primary_key, true);
            r.insert("secondary", false);
            r.insert("primary", shared.host.clone());
            r.insert("me", shared.host.clone());
            r.insert("electionId", election_id(term));
            let date = second_precision(last_write_ms);
            let (mts, mterm, mwall) = majority;
            r.insert(
                "lastWrite",
                doc! {
                    "opTime": optime(ts, term),
                    "lastWriteDate": date,
                    "majorityOpTime": optime(mts, mterm),
                    "majorityWriteDate": second_precision(mwall),
                },
            );
        }
        None => {
            r.insert(primary_key, true);
        }
    }
    r.insert("maxBsonObjectSize", MAX_BSON_OBJECT_SIZE as i32);
    r.insert("maxMessageSizeBytes", MAX_MESSAGE_SIZE as i32);
    r.insert("maxWriteBatchSize", 100_000i32);
    r.insert("localTime", DateTime::now());
    r.insert("logicalSessionTimeoutMinutes", 30i32);
    r.insert("connectionId", conn.id);
    r.insert("minWireVersion", 0i32);
    r.insert("maxWireVersion", shared.config.max_wire_version());
    r.insert("readOnly", false);
    if let Ok(who) = cmd.body.get_str("saslSupportedMechs") {
        let user = who.split_once('.').map(|(_, u)| u).unwrap_or(who);
        if shared.config.users.iter().any(|u| u.name == user) {
            r.insert("saslSupportedMechs", vec!["SCRAM-SHA-1", "SCRAM-SHA-256"]);
        }
    }
    if let Ok(spec) = cmd.body.get_document("speculativeAuthenticate") {
        if let Ok(reply) = start_conversation(shared, conn, spec) {
            r.insert("speculativeAuthenticate", reply);
        }
    }
    r.insert("ok", 1.0);
    Ok(Reply::Doc(r))
}

/// `buildInfo`.
pub fn build_info(shared: &Shared) -> Reply {
    let v = &shared.config.server_version;
    let parts: Vec<i32> = v.split('.').filter_map(|p| p.parse().ok()).collect();
    let mut arr: Vec<Bson> = parts.iter().map(|p| Bson::Int32(*p)).collect();
    while arr.len() < 4 {
        arr.push(Bson::Int32(0));
    }
    Reply::Doc(doc! {
        "version": v.clone(),
        "gitVersion": "0000000000000000000000000000000000000000",
        "modules": [],
        "allocator": "tcmalloc",
        "javascriptEngine": "mozjs",
        "sysInfo": "deprecated",
        "versionArray": arr,
        "openssl": {"running": "disabled", "compiled": "disabled"},
        "buildEnvironment": {"distmod": "mongosim", "target_arch": "x86_64"},
        "bits": 64i32,
        "debug": false,
        "maxBsonObjectSize": MAX_BSON_OBJECT_SIZE as i32,
        "storageEngines": ["devnull", "ephemeralForTest", "wiredTiger"],
        "ok": 1.0,
    })
}

fn payload_of(d: &Document) -> CmdResult<Vec<u8>> {
    match d.get("payload") {
        Some(Bson::Binary(b)) => Ok(b.bytes.clone()),
        Some(Bson::String(s)) => Ok(s.as_bytes().to_vec()),
        _ => Err(CommandError::bad_value(
            "saslStart/saslContinue needs a BinData payload",
        )),
    }
}

fn start_conversation(
    shared: &Shared,
    conn: &mut ConnState,
    spec: &Document,
) -> CmdResult<Document> {
    if shared.config.users.is_empty() {
        return Err(CommandError::new(
            334,
            "Received authentication for mechanism which is not enabled",
        ));
    }
    let mech = Mechanism::parse(spec.get_str("mechanism").unwrap_or(""))?;
    let payload = payload_of(spec)?;
    let skip = spec
        .get_document("options")
        .ok()
        .map(|o| crate::value::truthy(o.get("skipEmptyExchange")))
        .unwrap_or(false);
    let (conv, server_first) = auth::sasl_start(&shared.config.users, mech, &payload, skip)?;
    conn.conversation = Some(conv);
    Ok(doc! {"conversationId": 1i32, "done": false, "payload": bin(server_first)})
}

/// `saslStart`.
pub fn sasl_start(shared: &Shared, conn: &mut ConnState, cmd: &Cmd) -> CmdResult<Reply> {
    let mut r = start_conversation(shared, conn, &cmd.body)?;
    r.insert("ok", 1.0);
    Ok(Reply::Doc(r))
}

/// `saslContinue`.
pub fn sasl_continue(shared: &Shared, conn: &mut ConnState, cmd: &Cmd) -> CmdResult<Reply> {
    let payload = payload_of(&cmd.body)?;
    let Some(conv) = conn.conversation.as_mut() else {
        return Err(CommandError::new(17, "No SASL session state found"));
    };
    let step = match auth::sasl_continue(&shared.config.users, conv, &payload) {
        Ok(s) => s,
        Err(e) => {
            conn.conversation = None;
            return Err(e);
        }
    };
    if let Some(user) = step.authenticated {
        tracing::debug!(conn_id = conn.id, user = %user, "authenticated");
        conn.user = Some(user);
        conn.conversation = None;
    }
    Ok(Reply::Doc(doc! {
        "conversationId": 1i32,
        "done": step.done,
        "payload": bin(step.payload),
        "ok": 1.0,
    }))
}

/// `endSessions`, `refreshSessions`, `startSession`.
pub fn sessions(cmd: &Cmd) -> Reply {
    if cmd.name == "startSession" {
        return Reply::Doc(doc! {
            "id": {"id": bson::Uuid::new()},
            "timeoutMinutes": 30i32,
            "ok": 1.0,
        });
    }
    Reply::Doc(doc! {"ok": 1.0})
}

/// `connectionStatus`.
pub fn connection_status(conn: &ConnState) -> Reply {
    let users: Vec<Bson> = conn
        .user
        .iter()
        .map(|u| Bson::Document(doc! {"user": u.clone(), "db": "admin"}))
        .collect();
    Reply::Doc(
        doc! {"authInfo": {"authenticatedUsers": users, "authenticatedUserRoles": []}, "ok": 1.0},
    )
}

fn oplog_times(shared: &Shared) -> Option<(Timestamp, i64, Timestamp, i64)> {
    shared.with_store(|s| {
        let o = s.oplog.as_ref()?;
        let first = o.first()?;
        let last = o.last()?;
        Some((first.ts, first.wall_ms, last.ts, last.wall_ms))
    })
}

/// `serverStatus` (with `oplog: {earliestOptime, latestOptime}` on replica sets).
pub fn server_status(shared: &Shared, _cmd: &Cmd) -> Reply {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &shared.opcounters;
    let uptime = shared.started.elapsed();
    let open = shared.open_conns.load(Relaxed);
    let mut r = doc! {
        "host": shared.host.clone(),
        "version": shared.config.server_version.clone(),
        "process": "mongod",
        "pid": i64::from(std::process::id()),
        "uptime": uptime.as_secs_f64().floor(),
        "uptimeMillis": uptime.as_millis() as i64,
        "uptimeEstimate": uptime.as_secs() as i64,
        "localTime": DateTime::now(),
        "connections": {"current": open, "available": 51200 - open, "totalCreated": open, "active": 1i32},
        "opcounters": {
            "insert": c[0].load(Relaxed) as i64,
            "query": c[1].load(Relaxed) as i64,
            "update": c[2].load(Relaxed) as i64,
            "delete": c[3].load(Relaxed) as i64,
            "getmore": c[4].load(Relaxed) as i64,
            "command": c[5].load(Relaxed) as i64,
        },
        "metrics": {"cursor": {"open": {"total": shared.with_cursors(|c| c.len()) as i64}}},
        "storageEngine": {"name": "wiredTiger", "supportsCommittedReads": true, "persistent": false},
        "mem": {"bits": 64i32, "resident": 64i32, "virtual": 1024i32},
    };
    if let Some(set) = &shared.config.replset {
        let (ts, term) = shared.with_store(|s| (s.optime(), s.term));
        r.insert(
            "repl",
            doc! {
                "topologyVersion": {"processId": shared.process_id, "counter": 0i64},
                "hosts": [shared.host.clone()],
                "setName": set.clone(),
                "setVersion": 1i32,
                "isWritablePrimary": true,
                "secondary": false,
                "primary": shared.host.clone(),
                "me": shared.host.clone(),
                "electionId": election_id(term),
                "lastWrite": {"opTime": optime(ts, term)},
            },
        );
        if let Some((first, _, last, _)) = oplog_times(shared) {
            r.insert(
                "oplog",
                doc! {"latestOptime": last, "earliestOptime": first},
            );
        }
    }
    r.insert("ok", 1.0);
    Reply::Doc(r)
}

/// `replSetGetStatus`.
pub fn repl_set_get_status(shared: &Shared) -> CmdResult<Reply> {
    let Some(set) = &shared.config.replset else {
        return Err(CommandError::new(76, "not running with --replSet"));
    };
    let (ts, wall, term, (mts, mterm, mwall)) =
        shared.with_store(|s| (s.optime(), s.last_write_ms, s.term, s.majority_point()));
    let wall_date = DateTime::from_millis(wall);
    let majority_date = DateTime::from_millis(mwall);
    let uptime = shared.started.elapsed().as_secs() as i32;
    let mut r = doc! {
        "set": set.clone(),
        "date": DateTime::now(),
        "myState": 1i32,
        "term": term,
        "syncSourceHost": "",
        "syncSourceId": -1i32,
        "heartbeatIntervalMillis": 2000i64,
        "majorityVoteCount": 1i32,
        "writeMajorityCount": 1i32,
        "votingMembersCount": 1i32,
        "writableVotingMembersCount": 1i32,
        "optimes": {
            "lastCommittedOpTime": optime(mts, mterm),
            "lastCommittedWallTime": majority_date,
            "readConcernMajorityOpTime": optime(mts, mterm),
            "appliedOpTime": optime(ts, term),
            "durableOpTime": optime(ts, term),
            "lastAppliedWallTime": wall_date,
            "lastDurableWallTime": wall_date,
        },
        "members": [{
            "_id": 0i32,
            "name": shared.host.clone(),
            "health": 1.0,
            "state": 1i32,
            "stateStr": "PRIMARY",
            "uptime": uptime,
            "optime": optime(ts, term),
            "optimeDate": second_precision(wall),
            "lastAppliedWallTime": wall_date,
            "lastDurableWallTime": wall_date,
            "syncSourceHost": "",
            "syncSourceId": -1i32,
            "infoMessage": "",
            "electionTime": Timestamp { time: ts.time, increment: 1 },
            "configVersion": 1i32,
            "configTerm": term,
            "self": true,
            "lastHeartbeatMessage": "",
        }],
    };
    if let Some((first, first_wall, last, last_wall)) = oplog_times(shared) {
        r.insert(
            "oplog",
            doc! {
                "earliestOptime": first,
                "earliestWallTime": DateTime::from_millis(first_wall),
                "latestOptime": last,
                "latestWallTime": DateTime::from_millis(last_wall),
            },
        );
    }
    r.insert("ok", 1.0);
    Ok(Reply::Doc(r))
}

/// `replSetGetRBID`: `{rbid, ok: 1}` (mongodb/mongo `src/mongo/db/repl/repl_set_commands.cpp`,
/// CmdReplSetGetRBID); the id goes up at each simulated rollback.
pub fn repl_set_get_rbid(shared: &Shared) -> CmdResult<Reply> {
    if shared.config.replset.is_none() {
        return Err(CommandError::new(76, "not running with --replSet"));
    }
    let rbid = shared.with_store(|s| s.rbid);
    Ok(Reply::Doc(doc! {"rbid": rbid, "ok": 1.0}))
}

/// `getParameter` (featureCompatibilityVersion and a few common parameters).
pub fn get_parameter(shared: &Shared, cmd: &Cmd) -> Reply {
    let major = shared.config.major();
    let fcv = format!("{major}.0");
    let all = matches!(cmd.first_value(), Some(Bson::String(s)) if s == "*");
    let mut r = Document::new();
    let params: Vec<(&str, Bson)> = vec![
        (
            "featureCompatibilityVersion",
            Bson::Document(doc! {"version": fcv}),
        ),
        (
            "authenticationMechanisms",
            Bson::Array(vec!["SCRAM-SHA-1".into(), "SCRAM-SHA-256".into()]),
        ),
        ("scramIterationCount", Bson::Int32(auth::ITERATIONS as i32)),
        (
            "scramSHA256IterationCount",
            Bson::Int32(auth::ITERATIONS as i32),
        ),
        ("cursorTimeoutMillis", Bson::Int64(600_000)),
        ("maxBSONDepth", Bson::Int32(200)),
        (
            "periodicNoopIntervalSecs",
            Bson::Int32(shared.config.noop_interval.as_secs() as i32),
        ),
    ];
    for (k, v) in params {
        if all || cmd.body.contains_key(k) {
            r.insert(k, v);
        }
    }
    r.insert("ok", 1.0);
    Reply::Doc(r)
}

/// `hostInfo` (loopback-only, plausible values).
pub fn host_info() -> Reply {
    Reply::Doc(doc! {
        "system": {"currentTime": DateTime::now(), "hostname": "127.0.0.1", "cpuAddrSize": 64i32, "memSizeMB": 4096i64, "numCores": 2i32, "cpuArch": "x86_64"},
        "os": {"type": "Linux", "name": "mongosim", "version": "1"},
        "extra": {},
        "ok": 1.0,
    })
}

/// `getCmdLineOpts`.
pub fn cmd_line_opts(shared: &Shared) -> Reply {
    let mut parsed = doc! {"net": {"bindIp": "127.0.0.1"}};
    if let Some(set) = &shared.config.replset {
        parsed.insert(
            "replication",
            doc! {"replSet": set.clone(), "oplogSizeMB": (shared.config.oplog_bytes / (1024 * 1024)) as i64},
        );
    }
    Reply::Doc(doc! {"argv": ["mongosim"], "parsed": parsed, "ok": 1.0})
}

/// `configureFailPoint: "failCommand"` (only with test commands enabled), mapped onto the
/// fault injection rules.
pub fn configure_fail_point(shared: &Shared, cmd: &Cmd) -> CmdResult<Reply> {
    if !shared.config.test_commands {
        return Err(CommandError::new(
            59,
            "no such command: 'configureFailPoint'",
        ));
    }
    let name = cmd.first_value().and_then(|v| v.as_str()).unwrap_or("");
    if super::ddl::INDEX_BUILD_FAIL_POINTS.contains(&name) {
        // Index build fail points: on (`alwaysOn`, `{times: n}` with n > 0) or off.
        let on = match cmd.body.get("mode") {
            Some(Bson::String(s)) if s == "off" => false,
            Some(Bson::String(s)) if s == "alwaysOn" => true,
            Some(Bson::Document(d)) => d
                .get("times")
                .and_then(crate::value::as_i64)
                .is_some_and(|t| t > 0),
            _ => return Err(CommandError::bad_value("invalid fail point mode")),
        };
        shared.faults.set_fail_point(name, on);
        return Ok(Reply::Doc(doc! {"count": 0i32, "ok": 1.0}));
    }
    if name != "failCommand" {
        return Err(CommandError::bad_value(
            "mongosim only supports the failCommand and index build fail points",
        ));
    }
    let faults = &shared.faults;
    let times = match cmd.body.get("mode") {
        Some(Bson::String(s)) if s == "off" => {
            faults.clear();
            return Ok(Reply::Doc(doc! {"count": 0i32, "ok": 1.0}));
        }
        Some(Bson::String(s)) if s == "alwaysOn" => None,
        Some(Bson::Document(d)) => d
            .get("times")
            .and_then(crate::value::as_i64)
            .map(|t| t.max(0) as u32),
        _ => return Err(CommandError::bad_value("invalid fail point mode")),
    };
    let data = cmd.doc_arg("data")?.unwrap_or_default();
    let names: Vec<String> = data
        .get_array("failCommands")
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let close = crate::value::truthy(data.get("closeConnection"));
    let code = data
        .get("errorCode")
        .and_then(crate::value::as_i64)
        .unwrap_or(8) as i32;
    if let Some(ms) = data.get("blockTimeMS").and_then(crate::value::as_i64) {
        if crate::value::truthy(data.get("blockConnection")) {
            faults.delay_replies(Some(Duration::from_millis(ms.max(0) as u64)));
        }
    }
    for n in names {
        if close {
            faults.close_on_command(&n, times);
        } else if data.contains_key("errorCode") {
            faults.fail_command(&n, code, times);
        }
    }
    Ok(Reply::Doc(doc! {"count": 0i32, "ok": 1.0}))
}
