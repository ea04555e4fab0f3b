//! The only code that touches sled. Typed trees for tasks, destination instances and agents, one codec (JSON), a
//! schema version, and secrets (task and instance passwords) sealed with ChaCha20-Poly1305 under a key file kept in
//! the data dir with mode 0600, so no password is ever written to sled in clear text.
//!
//! Each sealed secret is bound to its record (`task:<id>`, `instance:<id>`) and names the key that sealed it, so the
//! key can be rotated ([`rotate_key`]) while the coordinator is stopped.
//!
//! Also kept here: join tokens, the index from agent credential digests to agent ids, and the audit log.
//!
//! Must not: know about gRPC, decide state transitions (ferry-core does), or log secrets. Calls block (sled IO and
//! fsync): async callers run them on `spawn_blocking`.

mod audit;
mod crypto;
mod events;

use std::path::{Path, PathBuf};

use ferry_core::{
    AgentId, AgentRecord, Instance, InstanceId, JoinTokenRecord, Secret, Task, TaskId,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

pub use crate::audit::AuditRecord;
use crate::crypto::{Sealed, SecretBox, KEY_FILE, NEW_KEY_FILE};
pub use crate::events::TaskEventRecord;

/// Creates `path` for a secret: it must not exist yet, and only the owner may read it (mode 0600 on unix).
pub fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Checks that the secret file at `path` (a key file) is private to its owner: on unix, neither group nor others
/// have any permission on it (`mode & 0o077 == 0`). Elsewhere only checks that the file can be inspected.
pub fn check_private_file(path: &Path) -> Result<(), StoreError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        StoreError::KeyFile(format!(
            "checking the permissions of {}: {e}",
            path.display()
        ))
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(StoreError::KeyFile(format!(
                "{} has mode {mode:04o}: group or others may access this secret file; only its owner may. \
                 Fix: `chmod 600 {}` (and consider the key exposed if others could read it)",
                path.display(),
                path.display()
            )));
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    Ok(())
}

fn task_event_prefix(task: &TaskId) -> Vec<u8> {
    let mut prefix = task.as_str().as_bytes().to_vec();
    prefix.push(0);
    prefix
}

/// Fuzzing hook: arbitrary bytes as every kind of stored record (what a corrupted data dir could hold). Must never
/// panic: a bad record is an error.
#[doc(hidden)]
pub fn fuzz_decode_records(bytes: &[u8]) {
    let _ = decode::<StoredTask>(bytes);
    let _ = decode::<StoredInstance>(bytes);
    let _ = decode::<AgentRecord>(bytes);
    let _ = decode::<ferry_core::JoinTokenRecord>(bytes);
    let _ = decode::<AuditRecord>(bytes);
    let _ = decode::<TaskEventRecord>(bytes);
}

/// Version of the on-disk layout; bumped on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

const TASKS: &str = "tasks";
const INSTANCES: &str = "instances";
const AGENTS: &str = "agents";
const MISMATCHES: &str = "mismatches";
const JOIN_TOKENS: &str = "join_tokens";
const AGENT_CREDENTIALS: &str = "agent_credentials";
const AUDIT: &str = "audit";
const TASK_EVENTS: &str = "task_events";
const META: &str = "meta";
const SCHEMA_KEY: &[u8] = b"schema_version";

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (IO, corruption).
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A stored record is not valid JSON of the expected type.
    #[error("decoding a stored record: {0}")]
    Codec(#[from] serde_json::Error),
    /// A key file is missing, malformed, unreadable or not private; the message names the path and the fix.
    #[error("key file: {0}")]
    KeyFile(String),
    /// Another IO failure.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A secret could not be opened: wrong key, altered value, or a value moved from another record.
    #[error(
        "a stored secret could not be sealed or opened: it was sealed under another key file, altered, or copied \
         from another record; restore the data dir's original secret.key (and secret.key.new if one was left)"
    )]
    Crypto,
    /// A sealed secret has a format version this build does not know.
    #[error(
        "a stored secret has seal format version {found}, this build reads 0 and 2: run the newer ferry build \
         that wrote it"
    )]
    SealedVersion {
        /// The version found.
        found: u8,
    },
    /// The data dir was written by an incompatible build.
    #[error("data dir has schema version {found}, this build reads {SCHEMA_VERSION}")]
    SchemaVersion {
        /// The version found.
        found: u32,
    },
    /// Another process holds the data dir's database lock.
    #[error(
        "the data dir {} is in use by another process (a running coordinator?): stop the coordinator first",
        path.display()
    )]
    InUse {
        /// The data dir.
        path: PathBuf,
    },
    /// A stored record violates an invariant the store relies on; the message names the record.
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

#[derive(Serialize, Deserialize)]
struct StoredTask {
    task: Task,
    password: Option<Sealed>,
}

#[derive(Serialize, Deserialize)]
struct StoredInstance {
    instance: Instance,
    password: Option<Sealed>,
}

fn task_label(id: &TaskId) -> String {
    format!("task:{}", id.as_str())
}

fn instance_label(id: &InstanceId) -> String {
    format!("instance:{}", id.as_str())
}

/// Outcome of [`Store::consume_join_token`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumeJoinToken {
    /// No token has this hash.
    Unknown,
    /// The token was used before (the record says when and by whom); nothing changed.
    AlreadyUsed(JoinTokenRecord),
    /// This call used the token: the record as stored now, `used_ms` and `used_by` set.
    Consumed(JoinTokenRecord),
}

/// What [`rotate_key`] re-sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RotateSummary {
    /// Tasks whose password was re-sealed (tasks without a password have nothing to re-seal).
    pub tasks: usize,
    /// Instances whose password was re-sealed.
    pub instances: usize,
}

/// Handle on the coordinator's durable state. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    tasks: sled::Tree,
    instances: sled::Tree,
    agents: sled::Tree,
    /// Verification mismatches: key `<task id> 0x00 <run u64 BE> <seq u64 BE>`, value an encoded
    /// `ferry.v1.Mismatch` (opaque here).
    mismatches: sled::Tree,
    /// Join tokens: key the token's hash (hex), value JSON of [`JoinTokenRecord`].
    join_tokens: sled::Tree,
    /// Credential index: key a credential digest (hex), value the agent id.
    agent_credentials: sled::Tree,
    /// Audit log: key the sequence number (u64 BE), value JSON of [`AuditRecord`].
    audit: sled::Tree,
    /// Task histories: key `<task id> 0x00 <seq u64 BE>`, value JSON of [`TaskEventRecord`].
    task_events: sled::Tree,
    secrets: SecretBox,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store in `data_dir`: sled in `data_dir/db`, the secret key in `data_dir/secret.key`
    /// (created, mode 0600, when missing; refused when group or others may access it). When an interrupted
    /// [`rotate_key`] left `data_dir/secret.key.new`, secrets sealed under either key open.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("creating the data dir {}: {e}", data_dir.display()),
            )
        })?;
        // The database lock first: whoever holds it is the only one touching the key files.
        let db = open_db(data_dir)?;
        let key_path = data_dir.join(KEY_FILE);
        if !key_path.exists() {
            let sealed = count_sealed(&db)?;
            if sealed > 0 {
                return Err(StoreError::KeyFile(format!(
                    "{} is missing but the data dir holds {sealed} secrets sealed with it: restore it from the \
                     backup of this data dir (a new key would not open them)",
                    key_path.display()
                )));
            }
        }
        let secrets = SecretBox::for_data_dir(data_dir)?;
        Self::from_parts(db, secrets)
    }

    fn from_parts(db: sled::Db, secrets: SecretBox) -> Result<Self, StoreError> {
        Ok(Self {
            tasks: db.open_tree(TASKS)?,
            instances: db.open_tree(INSTANCES)?,
            agents: db.open_tree(AGENTS)?,
            mismatches: db.open_tree(MISMATCHES)?,
            join_tokens: db.open_tree(JOIN_TOKENS)?,
            agent_credentials: db.open_tree(AGENT_CREDENTIALS)?,
            audit: db.open_tree(AUDIT)?,
            task_events: db.open_tree(TASK_EVENTS)?,
            db,
            secrets,
        })
    }

    /// Stores mismatches of a task's verification run `run`, numbered from `first_seq` (lazy durability:
    /// the task record that counts them is written with `put_task` right after).
    pub fn put_mismatches(
        &self,
        task: &TaskId,
        run: u64,
        first_seq: u64,
        mismatches: &[Vec<u8>],
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (i, m) in mismatches.iter().enumerate() {
            batch.insert(mismatch_key(task, run, first_seq + i as u64), m.as_slice());
        }
        self.mismatches.apply_batch(batch)?;
        Ok(())
    }

    /// Up to `limit` mismatches of run `run` with a sequence number of at least `from_seq`, in order.
    pub fn list_mismatches(
        &self,
        task: &TaskId,
        run: u64,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let prefix = mismatch_prefix(task, run);
        let mut out = Vec::new();
        for item in self
            .mismatches
            .range(mismatch_key(task, run, from_seq)..)
            .take(limit)
        {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            let seq = k
                .get(prefix.len()..)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            out.push((seq, v.to_vec()));
        }
        Ok(out)
    }

    /// Deletes every stored mismatch of a task (all runs).
    pub fn delete_mismatches(&self, task: &TaskId) -> Result<(), StoreError> {
        let mut prefix = task.as_str().as_bytes().to_vec();
        prefix.push(0);
        let mut batch = sled::Batch::default();
        for item in self.mismatches.scan_prefix(&prefix) {
            let (k, _) = item?;
            batch.remove(k);
        }
        self.mismatches.apply_batch(batch)?;
        Ok(())
    }

    /// Writes a task and makes it durable before returning.
    pub fn put_task(&self, task: &Task) -> Result<(), StoreError> {
        self.put_task_lazy(task)?;
        self.db.flush()?;
        Ok(())
    }

    /// Writes a task without waiting for durability (sled flushes about once a second): for progress reports.
    pub fn put_task_lazy(&self, task: &Task) -> Result<(), StoreError> {
        let stored = StoredTask {
            task: task.clone(),
            password: self.seal(&task.spec.password, &task_label(&task.id))?,
        };
        self.tasks
            .insert(task.id.as_str(), serde_json::to_vec(&stored)?)?;
        Ok(())
    }

    /// Reads a task, password included.
    pub fn get_task(&self, id: &TaskId) -> Result<Option<Task>, StoreError> {
        self.tasks
            .get(id.as_str())?
            .map(|raw| self.decode_task(&raw))
            .transpose()
    }

    /// Every task, ordered by id.
    pub fn list_tasks(&self) -> Result<Vec<Task>, StoreError> {
        self.tasks
            .iter()
            .values()
            .map(|raw| self.decode_task(&raw?))
            .collect()
    }

    /// Removes a task durably; returns whether it existed.
    pub fn delete_task(&self, id: &TaskId) -> Result<bool, StoreError> {
        let existed = self.tasks.remove(id.as_str())?.is_some();
        self.delete_mismatches(id)?;
        let mut batch = sled::Batch::default();
        for item in self.task_events.scan_prefix(task_event_prefix(id)) {
            let (k, _) = item?;
            batch.remove(k);
        }
        self.task_events.apply_batch(batch)?;
        self.db.flush()?;
        Ok(existed)
    }

    /// Inserts an instance durably unless one with the same id exists; returns whether it was inserted.
    pub fn insert_instance(&self, instance: &Instance) -> Result<bool, StoreError> {
        let stored = StoredInstance {
            instance: instance.clone(),
            password: self.seal(&instance.password, &instance_label(&instance.instance_id))?,
        };
        let swapped = self.instances.compare_and_swap(
            instance.instance_id.as_str(),
            None as Option<&[u8]>,
            Some(serde_json::to_vec(&stored)?),
        )?;
        self.db.flush()?;
        Ok(swapped.is_ok())
    }

    /// Reads an instance, password included.
    pub fn get_instance(&self, id: &InstanceId) -> Result<Option<Instance>, StoreError> {
        self.instances
            .get(id.as_str())?
            .map(|raw| self.decode_instance(&raw))
            .transpose()
    }

    /// Every instance, ordered by id.
    pub fn list_instances(&self) -> Result<Vec<Instance>, StoreError> {
        self.instances
            .iter()
            .values()
            .map(|raw| self.decode_instance(&raw?))
            .collect()
    }

    /// Removes an instance durably; returns whether it existed.
    pub fn delete_instance(&self, id: &InstanceId) -> Result<bool, StoreError> {
        let existed = self.instances.remove(id.as_str())?.is_some();
        self.db.flush()?;
        Ok(existed)
    }

    /// Records an agent's identity and last-seen time.
    pub fn put_agent(&self, agent: &AgentRecord) -> Result<(), StoreError> {
        self.agents
            .insert(agent.agent_id.as_str(), serde_json::to_vec(agent)?)?;
        Ok(())
    }

    /// Reads an agent record.
    pub fn get_agent(&self, id: &AgentId) -> Result<Option<AgentRecord>, StoreError> {
        self.agents
            .get(id.as_str())?
            .map(|raw| decode(&raw))
            .transpose()
    }

    /// Every agent ever seen, ordered by id.
    pub fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.agents
            .iter()
            .values()
            .map(|raw| decode(&raw?))
            .collect()
    }

    /// Records an agent and makes it durable before returning (enrollment, revocation, credential changes).
    pub fn put_agent_durable(&self, agent: &AgentRecord) -> Result<(), StoreError> {
        self.put_agent(agent)?;
        self.db.flush()?;
        Ok(())
    }

    /// Removes an agent durably, with every credential index entry listed in its `credentials` that points to it;
    /// returns whether it existed. Record and index entries go in one transaction.
    pub fn delete_agent(&self, id: &AgentId) -> Result<bool, StoreError> {
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        use sled::Transactional;
        let existed = (&self.agents, &self.agent_credentials)
            .transaction(|(agents, credentials)| {
                let Some(raw) = agents.remove(id.as_str())? else {
                    return Ok(false);
                };
                let record: AgentRecord = serde_json::from_slice(&raw)
                    .map_err(|e| ConflictableTransactionError::Abort(StoreError::Codec(e)))?;
                for digest in &record.credentials {
                    if credentials.get(digest.as_bytes())?.as_deref()
                        == Some(id.as_str().as_bytes())
                    {
                        credentials.remove(digest.as_bytes())?;
                    }
                }
                Ok(true)
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => StoreError::Sled(e),
            })?;
        self.db.flush()?;
        Ok(existed)
    }

    /// Indexes a credential digest (hex SHA-256 of a client certificate or secret) to its agent, durably.
    /// Overwrites an existing entry for the same digest.
    pub fn put_credential(&self, digest: &str, agent: &AgentId) -> Result<(), StoreError> {
        self.agent_credentials
            .insert(digest.as_bytes(), agent.as_str().as_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// The agent a credential digest was issued to, if any.
    pub fn agent_by_credential(&self, digest: &str) -> Result<Option<AgentId>, StoreError> {
        let Some(raw) = self.agent_credentials.get(digest.as_bytes())? else {
            return Ok(None);
        };
        let text = std::str::from_utf8(&raw).map_err(|_| {
            StoreError::Corrupt(format!(
                "the credential index entry {digest:?} is not UTF-8: delete the agent it belonged to and enroll it \
                 again"
            ))
        })?;
        AgentId::parse("agent_credentials value", text)
            .map(Some)
            .map_err(|e| {
                StoreError::Corrupt(format!(
                    "the credential index entry {digest:?} does not hold an agent id ({e}): delete the agent it \
                     belonged to and enroll it again"
                ))
            })
    }

    /// Stores a join token under its `hash`, durably (overwrites a token with the same hash).
    pub fn put_join_token(&self, rec: &JoinTokenRecord) -> Result<(), StoreError> {
        self.join_tokens
            .insert(rec.hash.as_bytes(), serde_json::to_vec(rec)?)?;
        self.db.flush()?;
        Ok(())
    }

    /// Reads the join token with this hash.
    pub fn get_join_token(&self, hash: &str) -> Result<Option<JoinTokenRecord>, StoreError> {
        self.join_tokens
            .get(hash.as_bytes())?
            .map(|raw| decode(&raw))
            .transpose()
    }

    /// Uses the join token with this hash for `agent_id`, atomically: of concurrent callers exactly one gets
    /// [`ConsumeJoinToken::Consumed`], the others [`ConsumeJoinToken::AlreadyUsed`]. The use is durable before
    /// this returns. Expiry is not looked at here: the caller checks `expires_ms` (on the record from
    /// [`Store::get_join_token`]) before consuming.
    pub fn consume_join_token(
        &self,
        hash: &str,
        now_ms: i64,
        agent_id: &str,
    ) -> Result<ConsumeJoinToken, StoreError> {
        loop {
            let Some(current) = self.join_tokens.get(hash.as_bytes())? else {
                return Ok(ConsumeJoinToken::Unknown);
            };
            let mut rec: JoinTokenRecord = decode(&current)?;
            if rec.used_ms.is_some() {
                return Ok(ConsumeJoinToken::AlreadyUsed(rec));
            }
            rec.used_ms = Some(now_ms);
            rec.used_by = Some(agent_id.to_owned());
            let swapped = self.join_tokens.compare_and_swap(
                hash.as_bytes(),
                Some(current),
                Some(serde_json::to_vec(&rec)?),
            )?;
            if swapped.is_ok() {
                self.db.flush()?;
                return Ok(ConsumeJoinToken::Consumed(rec));
            }
            // Someone changed the record in between: read it again.
        }
    }

    /// Every join token, ordered by hash.
    pub fn list_join_tokens(&self) -> Result<Vec<JoinTokenRecord>, StoreError> {
        self.join_tokens
            .iter()
            .values()
            .map(|raw| decode(&raw?))
            .collect()
    }

    /// Removes a join token durably; returns whether it existed.
    pub fn delete_join_token(&self, hash: &str) -> Result<bool, StoreError> {
        let existed = self.join_tokens.remove(hash.as_bytes())?.is_some();
        self.db.flush()?;
        Ok(existed)
    }

    /// Appends an audit record, durably: assigns the next sequence number (increasing, starting at 1; the given
    /// `seq` is ignored) and returns the record as stored. Callers must keep secrets out of `detail`.
    pub fn append_audit(&self, mut rec: AuditRecord) -> Result<AuditRecord, StoreError> {
        // sled ids are unique and increase across restarts (with gaps); +1 so that 0 means "from the start".
        rec.seq = self.db.generate_id()?.saturating_add(1);
        self.audit
            .insert(rec.seq.to_be_bytes(), serde_json::to_vec(&rec)?)?;
        self.db.flush()?;
        Ok(rec)
    }

    /// Up to `limit` audit records with a sequence number above `after_seq` that `keep` accepts, in sequence order.
    /// Page with the last returned `seq` as the next `after_seq` (0 starts at the beginning).
    pub fn list_audit(
        &self,
        after_seq: u64,
        limit: usize,
        keep: impl Fn(&AuditRecord) -> bool,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let Some(from) = after_seq.checked_add(1) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        for item in self.audit.range(from.to_be_bytes()..) {
            let (_, raw) = item?;
            let rec: AuditRecord = decode(&raw)?;
            if keep(&rec) {
                out.push(rec);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Appends events to a task's history, numbering them after its last one (not flushed: the task write that
    /// follows, `put_task`, makes them durable with it). Returns the records as stored.
    pub fn append_task_events(
        &self,
        task: &TaskId,
        events: Vec<TaskEventRecord>,
    ) -> Result<Vec<TaskEventRecord>, StoreError> {
        if events.is_empty() {
            return Ok(events);
        }
        let prefix = task_event_prefix(task);
        let next = match self.task_events.scan_prefix(&prefix).next_back() {
            Some(item) => {
                let (k, _) = item?;
                let tail: [u8; 8] = k[prefix.len()..]
                    .try_into()
                    .map_err(|_| StoreError::Corrupt(format!("task event key of {task}")))?;
                u64::from_be_bytes(tail) + 1
            }
            None => 1,
        };
        let mut stored = Vec::with_capacity(events.len());
        let mut batch = sled::Batch::default();
        for (seq, mut event) in (next..).zip(events) {
            event.seq = seq;
            let mut key = prefix.clone();
            key.extend_from_slice(&event.seq.to_be_bytes());
            batch.insert(key, serde_json::to_vec(&event)?);
            stored.push(event);
        }
        self.task_events.apply_batch(batch)?;
        Ok(stored)
    }

    /// Up to `limit` events of a task's history after `after_seq` (0: from the start), in order.
    pub fn list_task_events(
        &self,
        task: &TaskId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<TaskEventRecord>, StoreError> {
        let prefix = task_event_prefix(task);
        let mut from = prefix.clone();
        from.extend_from_slice(&after_seq.saturating_add(1).to_be_bytes());
        let mut out = Vec::new();
        for item in self.task_events.range(from..) {
            let (k, raw) = item?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            out.push(decode(&raw)?);
        }
        Ok(out)
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn seal(&self, secret: &Secret, label: &str) -> Result<Option<Sealed>, StoreError> {
        if !secret.is_set() {
            return Ok(None);
        }
        self.secrets
            .seal(secret.expose().as_bytes(), label)
            .map(Some)
    }

    fn open_secret(&self, sealed: Option<&Sealed>, label: &str) -> Result<Secret, StoreError> {
        match sealed {
            None => Ok(Secret::default()),
            Some(sealed) => {
                let clear = self.secrets.open(sealed, label)?;
                String::from_utf8(clear)
                    .map(Secret::new)
                    .map_err(|_| StoreError::Crypto)
            }
        }
    }

    fn decode_task(&self, raw: &[u8]) -> Result<Task, StoreError> {
        let stored: StoredTask = decode(raw)?;
        let mut task = stored.task;
        task.spec.password = self.open_secret(stored.password.as_ref(), &task_label(&task.id))?;
        Ok(task)
    }

    fn decode_instance(&self, raw: &[u8]) -> Result<Instance, StoreError> {
        let stored: StoredInstance = decode(raw)?;
        let mut instance = stored.instance;
        instance.password = self.open_secret(
            stored.password.as_ref(),
            &instance_label(&instance.instance_id),
        )?;
        Ok(instance)
    }

    /// Re-seals every task and instance secret with the sealing key (lazy writes: the caller flushes). A record
    /// whose secret cannot be opened stops the pass with an error naming it.
    fn reseal_all(&self) -> Result<RotateSummary, StoreError> {
        let mut summary = RotateSummary::default();
        for item in self.tasks.iter() {
            let (key, raw) = item?;
            let stored: StoredTask = decode(&raw)?;
            let label = task_label(&stored.task.id);
            let Some(sealed) = stored.password else {
                continue;
            };
            let secret = self
                .open_secret(Some(&sealed), &label)
                .map_err(|e| reseal_failed(&label, e))?;
            let restored = StoredTask {
                password: self.seal(&secret, &label)?,
                task: stored.task,
            };
            self.tasks.insert(key, serde_json::to_vec(&restored)?)?;
            summary.tasks += 1;
        }
        for item in self.instances.iter() {
            let (key, raw) = item?;
            let stored: StoredInstance = decode(&raw)?;
            let label = instance_label(&stored.instance.instance_id);
            let Some(sealed) = stored.password else {
                continue;
            };
            let secret = self
                .open_secret(Some(&sealed), &label)
                .map_err(|e| reseal_failed(&label, e))?;
            let restored = StoredInstance {
                password: self.seal(&secret, &label)?,
                instance: stored.instance,
            };
            self.instances.insert(key, serde_json::to_vec(&restored)?)?;
            summary.instances += 1;
        }
        Ok(summary)
    }
}

fn reseal_failed(label: &str, e: StoreError) -> StoreError {
    StoreError::KeyFile(format!(
        "re-sealing the secret of {label}: {e}. Nothing is lost: {KEY_FILE} and {NEW_KEY_FILE} are both kept; \
         fix the cause and run the rotation again"
    ))
}

/// How many task and instance records hold a sealed secret.
fn count_sealed(db: &sled::Db) -> Result<usize, StoreError> {
    let mut n = 0;
    for name in [TASKS, INSTANCES] {
        for raw in db.open_tree(name)?.iter().values() {
            let value: serde_json::Value = serde_json::from_slice(&raw?)?;
            if !value["password"].is_null() {
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Opens sled in `data_dir/db` (taking its lock) and checks the schema version.
fn open_db(data_dir: &Path) -> Result<sled::Db, StoreError> {
    // A handle dropped an instant ago (a restart in the same process) releases sled's file lock only once its
    // background flusher has exited: give it up to 2 s before calling the data dir in use.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let db = loop {
        match sled::Config::new()
            .path(data_dir.join("db"))
            .flush_every_ms(Some(1000))
            .open()
        {
            Ok(db) => break db,
            Err(sled::Error::Io(io)) if io.to_string().contains("could not acquire lock") => {
                if std::time::Instant::now() >= deadline {
                    return Err(StoreError::InUse {
                        path: data_dir.to_path_buf(),
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(other) => return Err(StoreError::Sled(other)),
        }
    };
    let meta = db.open_tree(META)?;
    match meta.get(SCHEMA_KEY)? {
        Some(raw) => {
            let found: u32 = serde_json::from_slice(&raw)?;
            if found != SCHEMA_VERSION {
                return Err(StoreError::SchemaVersion { found });
            }
        }
        None => {
            meta.insert(SCHEMA_KEY, serde_json::to_vec(&SCHEMA_VERSION)?)?;
        }
    }
    Ok(db)
}

/// Replaces the data dir's secret key and re-seals every task and instance password with the new one. Run it while
/// the coordinator is stopped: a running coordinator holds the database lock and this fails with
/// [`StoreError::InUse`].
///
/// Crash-safe: the new key is written to `secret.key.new` (mode 0600; reused when an interrupted rotation left
/// it), every secret is re-sealed under it and flushed, and only then is `secret.key.new` renamed over
/// `secret.key`. Until the rename, [`Store::open`] opens secrets sealed under either key, and running this again
/// finishes the rotation.
pub fn rotate_key(data_dir: &Path) -> Result<RotateSummary, StoreError> {
    let (store, summary) = reseal_under_new_key(data_dir)?;
    install_new_key(data_dir)?;
    // The lock is held until the new key is in place.
    drop(store);
    tracing::info!(
        tasks = summary.tasks,
        instances = summary.instances,
        "secret key rotated"
    );
    Ok(summary)
}

/// The first half of [`rotate_key`]: takes the lock, loads (or creates) `secret.key.new` and re-seals everything
/// under it, durably. Returns the store, whose lock is still held.
fn reseal_under_new_key(data_dir: &Path) -> Result<(Store, RotateSummary), StoreError> {
    let key_path = data_dir.join(KEY_FILE);
    let db_path = data_dir.join("db");
    if !db_path.is_dir() || !key_path.exists() {
        return Err(StoreError::KeyFile(format!(
            "{} is not a Ferry data dir ({} or {} is missing): pass the coordinator's --data-dir",
            data_dir.display(),
            db_path.display(),
            key_path.display()
        )));
    }
    let db = open_db(data_dir)?;
    let current = crypto::load_key(&key_path)?;
    let next = crypto::load_or_create_key(&data_dir.join(NEW_KEY_FILE))?;
    let store = Store::from_parts(db, SecretBox::rotating(next, current))?;
    let summary = store.reseal_all()?;
    store.flush()?;
    Ok((store, summary))
}

/// The second half of [`rotate_key`]: atomically renames `secret.key.new` over `secret.key`.
fn install_new_key(data_dir: &Path) -> Result<(), StoreError> {
    let key_path = data_dir.join(KEY_FILE);
    let new_path = data_dir.join(NEW_KEY_FILE);
    std::fs::rename(&new_path, &key_path).map_err(|e| {
        StoreError::KeyFile(format!(
            "renaming {} over {}: {e}; every secret is already sealed under {}, so run the rotation again",
            new_path.display(),
            key_path.display(),
            new_path.display()
        ))
    })?;
    crypto::sync_parent_dir(&key_path)
}

fn mismatch_prefix(task: &TaskId, run: u64) -> Vec<u8> {
    let mut k = task.as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&run.to_be_bytes());
    k
}

fn mismatch_key(task: &TaskId, run: u64, seq: u64) -> Vec<u8> {
    let mut k = mismatch_prefix(task, run);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn decode<T: DeserializeOwned>(raw: &[u8]) -> Result<T, StoreError> {
    Ok(serde_json::from_slice(raw)?)
}

#[cfg(test)]
mod tests;
