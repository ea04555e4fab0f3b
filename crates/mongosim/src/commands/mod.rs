//! Command dispatch: argument plumbing, authentication/authorization checks and the table
//! of supported commands.
//!
//! Owns the mapping from command names to handlers and the per-connection state. It must
//! not frame replies (the server does) and must not hold locks across `.await`.

pub(crate) mod admin;
pub(crate) mod agg;
pub(crate) mod crud;
pub(crate) mod cursor;
pub(crate) mod ddl;
pub(crate) mod query;

use std::sync::Arc;

use bson::{Bson, Document, RawDocumentBuf};

use crate::auth::{Conversation, Privilege};
use crate::error::{CmdResult, CommandError};
use crate::server::Shared;

/// Per-connection state.
#[derive(Debug)]
pub struct ConnState {
    /// `connectionId` reported by hello.
    pub id: i32,
    /// Authenticated user.
    pub user: Option<String>,
    /// SASL conversation in progress.
    pub conversation: Option<Conversation>,
}

impl ConnState {
    /// A fresh, unauthenticated connection.
    pub fn new(id: i32) -> Self {
        Self {
            id,
            user: None,
            conversation: None,
        }
    }
}

/// A cursor batch to be framed by the server without decoding documents.
#[derive(Debug)]
pub struct CursorReply {
    /// Cursor id (0 = exhausted).
    pub id: i64,
    /// Namespace.
    pub ns: String,
    /// `firstBatch` (true) or `nextBatch`.
    pub first: bool,
    /// Documents of the batch.
    pub docs: Vec<Arc<RawDocumentBuf>>,
    /// Sum of the documents' sizes.
    pub bytes: usize,
    /// Extra fields in the cursor document (e.g. `postBatchResumeToken`).
    pub extra: Option<Document>,
}

/// A command result.
#[derive(Debug)]
pub enum Reply {
    /// An ordinary reply document (`ok: 1` is added when missing).
    Doc(Document),
    /// A cursor reply.
    Cursor(CursorReply),
}

/// The parsed command with its sequences and target database.
pub struct Cmd {
    /// Command name (first key).
    pub name: String,
    /// Target database (`$db`).
    pub db: String,
    /// The body.
    pub body: Document,
    /// Kind-1 sequences.
    pub sequences: Vec<(String, Vec<RawDocumentBuf>)>,
}

impl Cmd {
    /// The first value (usually the collection name).
    pub fn first_value(&self) -> Option<&Bson> {
        self.body.get(&self.name)
    }

    /// The collection name argument.
    pub fn collection(&self) -> CmdResult<String> {
        match self.first_value() {
            Some(Bson::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(Bson::String(_)) => Err(CommandError::new(73, "Invalid namespace specified")),
            _ => Err(CommandError::new(
                73,
                format!(
                    "collection name has invalid type {}",
                    self.first_value()
                        .map(crate::update::type_name)
                        .unwrap_or("missing")
                ),
            )),
        }
    }

    /// Takes a document sequence or the array of the same name from the body, as raw docs.
    pub fn take_docs(&mut self, ident: &str) -> CmdResult<Vec<RawDocumentBuf>> {
        if let Some(pos) = self.sequences.iter().position(|(i, _)| i == ident) {
            return Ok(self.sequences.swap_remove(pos).1);
        }
        match self.body.get(ident) {
            Some(Bson::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Bson::Document(d) => RawDocumentBuf::try_from(d)
                        .map_err(|e| CommandError::new(22, e.to_string())),
                    _ => Err(CommandError::type_mismatch(format!(
                        "BSON field '{}.{ident}' is the wrong type, expected type 'object'",
                        self.name
                    ))),
                })
                .collect(),
            None => Err(CommandError::new(
                40414,
                format!(
                    "BSON field '{}.{ident}' is missing but a required field",
                    self.name
                ),
            )),
            Some(_) => Err(CommandError::type_mismatch(format!(
                "BSON field '{}.{ident}' is the wrong type, expected type 'array'",
                self.name
            ))),
        }
    }

    /// An optional document argument.
    pub fn doc_arg(&self, key: &str) -> CmdResult<Option<Document>> {
        match self.body.get(key) {
            None | Some(Bson::Null) => Ok(None),
            Some(Bson::Document(d)) => Ok(Some(d.clone())),
            Some(_) => Err(CommandError::type_mismatch(format!(
                "BSON field '{}.{key}' is the wrong type, expected type 'object'",
                self.name
            ))),
        }
    }

    /// An optional integer argument.
    pub fn int_arg(&self, key: &str) -> CmdResult<Option<i64>> {
        match self.body.get(key) {
            None | Some(Bson::Null) => Ok(None),
            Some(v) => crate::value::as_i64(v).map(Some).ok_or_else(|| {
                CommandError::type_mismatch(format!(
                    "BSON field '{}.{key}' is the wrong type, expected a number",
                    self.name
                ))
            }),
        }
    }

    /// A boolean-ish argument.
    pub fn flag(&self, key: &str) -> bool {
        crate::value::truthy(self.body.get(key))
    }
}

fn privilege(name: &str) -> Option<Privilege> {
    Some(match name {
        "hello" | "isMaster" | "ismaster" | "saslStart" | "saslContinue" | "ping" | "buildInfo"
        | "buildinfo" | "logout" | "authenticate" | "getnonce" | "endSessions"
        | "connectionStatus" => return None,
        "find" | "getMore" | "count" | "aggregate" | "listCollections" | "listIndexes"
        | "collStats" | "dbStats" | "dbHash" | "dbhash" | "distinct" | "killCursors" => {
            Privilege::Read
        }
        "insert" | "update" | "delete" | "findAndModify" | "findandmodify" | "create" | "drop"
        | "dropDatabase" | "createIndexes" | "dropIndexes" | "deleteIndexes" | "collMod" => {
            Privilege::Write
        }
        "renameCollection" | "applyOps" | "configureFailPoint" => Privilege::Root,
        "serverStatus" | "replSetGetStatus" | "getParameter" | "hostInfo" | "getCmdLineOpts"
        | "getLog" => Privilege::Cluster,
        _ => Privilege::None,
    })
}

/// Runs one command.
pub async fn dispatch(
    shared: &Arc<Shared>,
    conn: &mut ConnState,
    body: Document,
    sequences: Vec<(String, Vec<RawDocumentBuf>)>,
    legacy: bool,
) -> CmdResult<Reply> {
    let Some(name) = body.keys().next().cloned() else {
        return Err(CommandError::failed_to_parse("empty command object"));
    };
    let db = match body.get("$db") {
        Some(Bson::String(db)) => db.clone(),
        _ if legacy => "admin".to_string(),
        _ => {
            return Err(CommandError::new(
                40571,
                "OP_MSG requests require a $db argument",
            ))
        }
    };
    let mut cmd = Cmd {
        name,
        db,
        body,
        sequences,
    };
    shared.count_op(5);
    check_access(shared, conn, &cmd)?;
    if cmd.name == "endSessions" {
        crate::txn::end_sessions(shared, &cmd);
    }
    let txn = crate::txn::begin_command(shared, conn, &cmd)?;
    let result = match cmd.name.as_str() {
        "hello" | "isMaster" | "ismaster" => admin::hello(shared, conn, &cmd).await,
        "ping" => Ok(Reply::Doc(Document::new())),
        "buildInfo" | "buildinfo" => Ok(admin::build_info(shared)),
        "saslStart" => admin::sasl_start(shared, conn, &cmd),
        "saslContinue" => admin::sasl_continue(shared, conn, &cmd),
        "logout" => {
            conn.user = None;
            Ok(Reply::Doc(Document::new()))
        }
        "endSessions" | "refreshSessions" | "startSession" => Ok(admin::sessions(&cmd)),
        "connectionStatus" => Ok(admin::connection_status(conn)),
        "serverStatus" => Ok(admin::server_status(shared, &cmd)),
        "replSetGetStatus" => admin::repl_set_get_status(shared),
        "getParameter" => Ok(admin::get_parameter(shared, &cmd)),
        "hostInfo" => Ok(admin::host_info()),
        "getCmdLineOpts" => Ok(admin::cmd_line_opts(shared)),
        "getLog" => Ok(Reply::Doc(bson::doc! {"totalLinesWritten": 0, "log": []})),
        "whatsmyuri" => Ok(Reply::Doc(bson::doc! {"you": "127.0.0.1:0"})),
        "configureFailPoint" => admin::configure_fail_point(shared, &cmd),
        "listDatabases" => ddl::list_databases(shared, conn, &cmd),
        "listCollections" => ddl::list_collections(shared, &cmd),
        "listIndexes" => ddl::list_indexes(shared, &cmd),
        "create" => ddl::create(shared, &cmd),
        "drop" => ddl::drop(shared, &cmd),
        "dropDatabase" => ddl::drop_database(shared, &cmd),
        "renameCollection" => ddl::rename(shared, &cmd),
        "createIndexes" => ddl::create_indexes(shared, &cmd).await,
        "dropIndexes" | "deleteIndexes" => ddl::drop_indexes(shared, &cmd),
        "collMod" => ddl::coll_mod(shared, &cmd),
        "collStats" => ddl::coll_stats(shared, &cmd),
        "dbStats" => ddl::db_stats(shared, &cmd),
        "dbHash" | "dbhash" => ddl::db_hash(shared, &cmd),
        "insert" => crud::insert(shared, &mut cmd),
        "update" => crud::update(shared, &mut cmd),
        "delete" => crud::delete(shared, &mut cmd),
        "findAndModify" | "findandmodify" => crud::find_and_modify(shared, &cmd),
        "count" => query::count(shared, &cmd),
        "distinct" => query::distinct(shared, &cmd),
        "find" => query::find(shared, conn, &cmd),
        "getMore" => query::get_more(shared, conn, &cmd).await,
        "killCursors" => query::kill_cursors(shared, &cmd),
        "splitVector" => query::split_vector(shared, &cmd),
        "aggregate" => agg::aggregate(shared, conn, &cmd),
        "applyOps" => crud::apply_ops(shared, &cmd),
        "commitTransaction" => crate::txn::commit(shared, &cmd),
        "abortTransaction" => crate::txn::abort(shared, &cmd),
        "replSetGetRBID" => admin::repl_set_get_rbid(shared),
        other => Err(CommandError::new(59, format!("no such command: '{other}'"))),
    };
    match txn {
        Some(running) => crate::txn::end_command(shared, running, result),
        None => result,
    }
}

fn check_access(shared: &Shared, conn: &ConnState, cmd: &Cmd) -> CmdResult<()> {
    if shared.config.users.is_empty() {
        return Ok(());
    }
    let Some(class) = privilege(&cmd.name) else {
        return Ok(());
    };
    let Some(user) = conn
        .user
        .as_ref()
        .and_then(|u| shared.config.users.iter().find(|x| &x.name == u))
    else {
        return Err(CommandError::new(
            13,
            format!("command {} requires authentication", cmd.name),
        ));
    };
    // renameCollection's target database is in the argument.
    let db = if cmd.name == "renameCollection" {
        cmd.first_value()
            .and_then(|v| v.as_str())
            .and_then(|ns| ns.split_once('.'))
            .map(|(d, _)| d.to_string())
            .unwrap_or_else(|| cmd.db.clone())
    } else {
        cmd.db.clone()
    };
    if user.allowed(class, &db) {
        return Ok(());
    }
    let mut shown = Document::new();
    if let Some(v) = cmd.first_value() {
        shown.insert(cmd.name.clone(), v.clone());
    }
    Err(CommandError::new(
        13,
        format!("not authorized on {db} to execute command {shown}"),
    ))
}
