//! The only code that touches sled. Typed trees for tasks, destination instances and agents, one codec (JSON), a
//! schema version, and secrets (task and instance passwords) sealed with ChaCha20-Poly1305 under a key file kept in
//! the data dir with mode 0600, so no password is ever written to sled in clear text.
//!
//! Must not: know about gRPC, decide state transitions (ferry-core does), or log secrets. Calls block (sled IO and
//! fsync): async callers run them on `spawn_blocking`.

mod crypto;

use std::path::Path;

use ferry_core::{AgentId, AgentRecord, Instance, InstanceId, Secret, Task, TaskId};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::crypto::{Sealed, SecretBox};

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

/// Version of the on-disk layout; bumped on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

const TASKS: &str = "tasks";
const INSTANCES: &str = "instances";
const AGENTS: &str = "agents";
const MISMATCHES: &str = "mismatches";
const META: &str = "meta";
const SCHEMA_KEY: &[u8] = b"schema_version";

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("decoding a stored record: {0}")]
    Codec(#[from] serde_json::Error),
    #[error("key file: {0}")]
    KeyFile(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("secret could not be sealed or opened (wrong key file?)")]
    Crypto,
    #[error("data dir has schema version {found}, this build reads {SCHEMA_VERSION}")]
    SchemaVersion { found: u32 },
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
    secrets: SecretBox,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store in `data_dir`: sled in `data_dir/db`, the secret key in `data_dir/secret.key`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir)?;
        let secrets = SecretBox::load_or_create(&data_dir.join("secret.key"))?;
        let db = sled::Config::new()
            .path(data_dir.join("db"))
            .flush_every_ms(Some(1000))
            .open()?;
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
        Ok(Self {
            tasks: db.open_tree(TASKS)?,
            instances: db.open_tree(INSTANCES)?,
            agents: db.open_tree(AGENTS)?,
            mismatches: db.open_tree(MISMATCHES)?,
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
            password: self.seal(&task.spec.password)?,
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
        self.db.flush()?;
        Ok(existed)
    }

    /// Inserts an instance durably unless one with the same id exists; returns whether it was inserted.
    pub fn insert_instance(&self, instance: &Instance) -> Result<bool, StoreError> {
        let stored = StoredInstance {
            instance: instance.clone(),
            password: self.seal(&instance.password)?,
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

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn seal(&self, secret: &Secret) -> Result<Option<Sealed>, StoreError> {
        if !secret.is_set() {
            return Ok(None);
        }
        self.secrets.seal(secret.expose().as_bytes()).map(Some)
    }

    fn open_secret(&self, sealed: Option<&Sealed>) -> Result<Secret, StoreError> {
        match sealed {
            None => Ok(Secret::default()),
            Some(sealed) => {
                let clear = self.secrets.open(sealed)?;
                String::from_utf8(clear)
                    .map(Secret::new)
                    .map_err(|_| StoreError::Crypto)
            }
        }
    }

    fn decode_task(&self, raw: &[u8]) -> Result<Task, StoreError> {
        let stored: StoredTask = decode(raw)?;
        let mut task = stored.task;
        task.spec.password = self.open_secret(stored.password.as_ref())?;
        Ok(task)
    }

    fn decode_instance(&self, raw: &[u8]) -> Result<Instance, StoreError> {
        let stored: StoredInstance = decode(raw)?;
        let mut instance = stored.instance;
        instance.password = self.open_secret(stored.password.as_ref())?;
        Ok(instance)
    }
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
