//! The in-memory data: databases, collections (raw BSON keyed by `_id` in BSON order),
//! indexes (unique ones enforced), the oplog and the write paths that log to it.
//!
//! Every mutation goes through this module so that each one appends exactly the oplog
//! entries a 6.0/7.0 primary writes. It must not parse commands or touch the network; it is
//! always used under the server's single state lock (never held across `.await`).

use std::collections::BTreeMap;
use std::sync::Arc;

use bson::{doc, oid::ObjectId, Bson, Document, RawDocument, RawDocumentBuf, Timestamp, Uuid};

use crate::error::{CmdResult, CommandError};
pub use crate::index::{Index, OrdBson};
use crate::oplog::{Clock, Entry, Oplog, TERM};
use crate::rawbuf::RawWriter;

mod ddl;
pub use ddl::{IndexBuild, IndexBuildStart, IndexBuilds};

/// A collection or view.
#[derive(Debug, Clone)]
pub struct Collection {
    /// Collection UUID (`info.uuid`, oplog `ui`).
    pub uuid: Uuid,
    /// Options as given to `create` (echoed by listCollections).
    pub options: Document,
    /// Documents keyed by `_id`.
    pub docs: BTreeMap<OrdBson, Arc<RawDocumentBuf>>,
    /// Indexes, `_id_` first (empty for views).
    pub indexes: Vec<Index>,
    /// Sum of the documents' encoded sizes.
    pub data_bytes: usize,
    /// Insertion order of a capped collection (`$natural` order and eviction); `None` for
    /// other collections, whose `$natural` order is `_id` order in mongosim.
    pub natural: Option<Natural>,
}

/// Insertion order of the documents of a capped collection (the record ids of a real one).
#[derive(Debug, Clone, Default)]
pub struct Natural {
    next: u64,
    by_seq: BTreeMap<u64, OrdBson>,
    seq_of: BTreeMap<OrdBson, u64>,
}

impl Natural {
    fn push(&mut self, id: OrdBson) {
        self.next += 1;
        self.by_seq.insert(self.next, id.clone());
        self.seq_of.insert(id, self.next);
    }

    fn remove(&mut self, id: &OrdBson) {
        if let Some(seq) = self.seq_of.remove(id) {
            self.by_seq.remove(&seq);
        }
    }

    /// `_id`s in insertion order.
    pub fn ids(&self) -> impl DoubleEndedIterator<Item = &OrdBson> {
        self.by_seq.values()
    }
}

impl Collection {
    fn new(options: Document) -> Self {
        let natural = crate::value::truthy(options.get("capped")).then(Natural::default);
        let is_view = options.contains_key("viewOn");
        let indexes = if is_view {
            Vec::new()
        } else {
            let spec = doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"};
            Index::from_spec(spec).map(|i| vec![i]).unwrap_or_default()
        };
        Self {
            uuid: Uuid::new(),
            options,
            docs: BTreeMap::new(),
            indexes,
            data_bytes: 0,
            natural,
        }
    }

    /// The `size` and `max` limits of a capped collection as the server enforces them:
    /// `size` rounded up to a multiple of 256, `max` <= 0 meaning none (mongodb/mongo
    /// `src/mongo/db/catalog/collection_options.cpp`, adjustCappedSize/adjustCappedMaxDocs).
    pub fn capped_limits(&self) -> Option<(i64, Option<i64>)> {
        self.natural.as_ref()?;
        let size = self
            .options
            .get("size")
            .and_then(crate::value::as_i64)
            .unwrap_or(0)
            .max(0);
        let size = size.saturating_add(0xff) & !0xff;
        let max = self
            .options
            .get("max")
            .and_then(crate::value::as_i64)
            .filter(|m| *m > 0 && *m != i64::MAX);
        Some((size, max))
    }

    /// `true` for views.
    pub fn is_view(&self) -> bool {
        self.options.contains_key("viewOn")
    }

    /// `true` for capped collections.
    pub fn is_capped(&self) -> bool {
        crate::value::truthy(self.options.get("capped"))
    }

    /// Approximate on-disk size: data rounded up to 4 KiB pages plus one page.
    pub fn storage_size(&self) -> i64 {
        ((self.data_bytes as i64 + 4095) / 4096 + 1) * 4096
    }

    /// Approximate size of one index.
    pub fn index_size(&self, idx: &Index) -> i64 {
        let per_key = if idx.is_id() { 24 } else { 32 };
        (((self.docs.len() as i64 * per_key) + 4095) / 4096 + 1) * 4096
    }

    /// Average document size (0 when empty).
    pub fn avg_obj_size(&self) -> i64 {
        if self.docs.is_empty() {
            0
        } else {
            (self.data_bytes / self.docs.len()) as i64
        }
    }
}

/// Whether this node keeps an oplog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// Replica-set primary with an oplog.
    ReplicaSet,
    /// Standalone, no oplog.
    Standalone,
}

/// All the data of one mongosim instance.
#[derive(Debug)]
pub struct Store {
    /// Databases by name; each maps collection names to collections.
    pub dbs: BTreeMap<String, BTreeMap<String, Collection>>,
    /// Cluster clock.
    pub clock: Clock,
    /// The oplog (replica set only).
    pub oplog: Option<Oplog>,
    /// Wall-clock ms of the last write (for hello `lastWrite`).
    pub last_write_ms: i64,
    /// Election term written into `t` and `electionId` (goes up at each simulated failover).
    pub term: i64,
    /// When set, oplog entries are not appended but recorded here as the inner operations of
    /// an `applyOps` (`op`, `ns`, `ui`, `o`, `o2`; no `ts`): a transaction's private copy of
    /// the data and batched writes (TTL deletes) use it.
    pub capture: Option<Vec<RawDocumentBuf>>,
    /// Documents written by open transactions: (namespace, `_id`) -> session id. Other
    /// writers get WriteConflict on them until the transaction ends.
    pub txn_locks: BTreeMap<(String, OrdBson), [u8; 16]>,
    /// The majority commit point while it is held back (test fault), with the data as it
    /// was then (what a rollback restores).
    pub majority_hold: Option<MajorityHold>,
    /// `replSetGetRBID`: goes up at each simulated rollback.
    pub rbid: i32,
    /// Two-phase index builds in progress (`store/ddl.rs`).
    pub builds: IndexBuilds,
}

/// A majority commit point frozen by [`Store::hold_majority`].
#[derive(Debug)]
pub struct MajorityHold {
    /// Optime of the majority point.
    pub ts: Timestamp,
    /// Its term.
    pub term: i64,
    /// Wall clock of the last write at that point (ms).
    pub wall_ms: i64,
    pub(crate) dbs: BTreeMap<String, BTreeMap<String, Collection>>,
}

fn now_ms() -> i64 {
    bson::DateTime::now().timestamp_millis()
}

/// Splits "db.coll" into its parts.
pub fn split_ns(ns: &str) -> CmdResult<(&str, &str)> {
    ns.split_once('.')
        .filter(|(d, c)| !d.is_empty() && !c.is_empty())
        .ok_or_else(|| CommandError::new(73, format!("Invalid namespace specified '{ns}'")))
}

/// Validates a collection name for creation.
pub fn check_coll_name(db: &str, coll: &str) -> CmdResult<()> {
    if coll.is_empty() || coll.contains('\0') || coll.starts_with('.') || coll.contains('$') {
        return Err(CommandError::new(
            73,
            format!("Invalid collection name: {db}.{coll}"),
        ));
    }
    if db.is_empty() || db.contains(['/', '\\', '.', ' ', '"', '$', '\0']) {
        return Err(CommandError::new(
            73,
            format!("Invalid database name: '{db}'"),
        ));
    }
    Ok(())
}

impl Store {
    /// An empty store; a replica set starts its oplog with "initiating set".
    pub fn new(topology: Topology, oplog_bytes: usize) -> Self {
        let mut s = Self {
            dbs: BTreeMap::new(),
            clock: Clock::new(),
            oplog: match topology {
                Topology::ReplicaSet => Some(Oplog::new(oplog_bytes)),
                Topology::Standalone => None,
            },
            last_write_ms: now_ms(),
            term: TERM,
            capture: None,
            txn_locks: BTreeMap::new(),
            majority_hold: None,
            // StorageInterfaceImpl initialises local.system.rollback.id to 1.
            rbid: 1,
            builds: IndexBuilds::default(),
        };
        s.log_noop(doc! {"msg": "initiating set"});
        s.log_noop(doc! {"msg": "new primary"});
        s
    }

    /// The newest optime (`lastWrite`, `operationTime`).
    pub fn optime(&self) -> Timestamp {
        self.clock.now()
    }

    fn append_entry(&mut self, build: impl FnOnce(&mut RawWriter), ts: Timestamp) {
        self.append_entry_sized(256, build, ts);
    }

    /// Like `append_entry`, with room for `cap` bytes (large `o` documents).
    fn append_entry_sized(
        &mut self,
        cap: usize,
        build: impl FnOnce(&mut RawWriter),
        ts: Timestamp,
    ) {
        self.append_entry_at(cap, build, ts, now_ms());
    }

    /// Like `append_entry_sized`, with the entry's wall clock (ms) already read.
    pub(crate) fn append_entry_at(
        &mut self,
        cap: usize,
        build: impl FnOnce(&mut RawWriter),
        ts: Timestamp,
        wall: i64,
    ) {
        self.append_entry_with(cap, build, |_| {}, ts, wall);
    }

    /// Like `append_entry_at`; `after` appends fields that follow `wall` (`prevOpTime`).
    pub(crate) fn append_entry_with(
        &mut self,
        cap: usize,
        build: impl FnOnce(&mut RawWriter),
        after: impl FnOnce(&mut RawWriter),
        ts: Timestamp,
        wall: i64,
    ) {
        if let Some(ops) = self.capture.as_mut() {
            let mut w = RawWriter::with_capacity(cap);
            build(&mut w);
            match RawDocumentBuf::from_bytes(w.finish()) {
                Ok(doc) => ops.push(doc),
                Err(error) => tracing::error!(%error, "could not encode an applyOps operation"),
            }
            return;
        }
        self.last_write_ms = wall;
        let term = self.term;
        let Some(oplog) = self.oplog.as_mut() else {
            return;
        };
        let mut w = RawWriter::with_capacity(cap);
        build(&mut w);
        w.timestamp("ts", ts);
        w.i64("t", term);
        w.i64("v", 2);
        w.datetime("wall", wall);
        after(&mut w);
        let bytes = w.finish();
        match RawDocumentBuf::from_bytes(bytes) {
            Ok(doc) => oplog.push(Entry {
                ts,
                wall_ms: wall,
                doc: Arc::new(doc),
            }),
            Err(error) => tracing::error!(%error, "could not encode an oplog entry"),
        }
    }

    /// Writes a no-op entry (`op: "n"`, `ns: ""`).
    pub fn log_noop(&mut self, o: Document) {
        let ts = self.clock.tick();
        self.append_entry(
            |w| {
                w.str("op", "n");
                w.str("ns", "");
                w.value("o", &Bson::Document(o));
            },
            ts,
        );
    }

    /// Writes a command entry on `<db>.$cmd`.
    fn log_command(&mut self, db: &str, ui: Option<Uuid>, o: Document, o2: Option<Document>) {
        let ts = self.clock.tick();
        let ns = format!("{db}.$cmd");
        self.append_entry(
            |w| {
                w.str("op", "c");
                w.str("ns", &ns);
                if let Some(ui) = ui {
                    w.value("ui", &Bson::from(ui));
                }
                w.value("o", &Bson::Document(o));
                if let Some(o2) = o2 {
                    w.value("o2", &Bson::Document(o2));
                }
            },
            ts,
        );
    }

    /// Runs `f` as one batch of writes: tailing cursors are woken once at the end instead
    /// of after every oplog entry (they cannot read before the store lock is released).
    pub fn batch<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        if let Some(o) = self.oplog.as_mut() {
            o.begin_batch();
        }
        let out = f(self);
        if let Some(o) = self.oplog.as_mut() {
            o.end_batch();
        }
        out
    }

    /// Looks a collection up.
    pub fn coll(&self, db: &str, coll: &str) -> Option<&Collection> {
        self.dbs.get(db).and_then(|d| d.get(coll))
    }

    fn coll_mut(&mut self, db: &str, coll: &str) -> Option<&mut Collection> {
        self.dbs.get_mut(db).and_then(|d| d.get_mut(coll))
    }

    /// Creates a collection with `options`; logs `create`. 48 if it exists.
    pub fn create_collection(&mut self, db: &str, coll: &str, options: Document) -> CmdResult<()> {
        check_coll_name(db, coll)?;
        if db == "local" && coll == "oplog.rs" || self.coll(db, coll).is_some() {
            return Err(CommandError::new(
                48,
                format!("Collection {db}.{coll} already exists."),
            ));
        }
        // Views and time-series collections are not one `create` entry (store/ddl.rs).
        if options.contains_key("timeseries") && !options.contains_key("viewOn") {
            return self.create_timeseries(db, coll, options);
        }
        if options.contains_key("viewOn") && db != "local" {
            return self.create_view(db, coll, options);
        }
        let c = Collection::new(options.clone());
        let uuid = c.uuid;
        let is_view = c.is_view();
        self.dbs
            .entry(db.to_string())
            .or_default()
            .insert(coll.to_string(), c);
        if db != "local" {
            let mut o = doc! {"create": coll};
            for (k, v) in options {
                o.insert(k, v);
            }
            if !is_view {
                o.insert("idIndex", doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"});
            }
            self.log_command(db, if is_view { None } else { Some(uuid) }, o, None);
        }
        Ok(())
    }

    /// Returns the collection, creating it (and logging `create`) when missing.
    pub fn ensure_collection(&mut self, db: &str, coll: &str) -> CmdResult<()> {
        match self.coll(db, coll) {
            Some(c) if c.is_view() => Err(CommandError::new(
                166,
                format!("Namespace {db}.{coll} is a view, not a collection"),
            )),
            Some(_) => Ok(()),
            None => self.create_collection(db, coll, Document::new()),
        }
    }

    /// Inserts one document (adding an `_id` when missing), enforcing unique indexes.
    ///
    /// The raw bytes go into the store and the oplog entry as they are; the document is only
    /// decoded when the collection has a secondary unique index.
    pub fn insert(&mut self, db: &str, coll: &str, raw: RawDocumentBuf) -> CmdResult<()> {
        if self.is_timeseries(db, coll) {
            return self.insert_measurement(db, coll, raw);
        }
        if self.coll(db, coll).is_none_or(|c| c.is_view()) {
            self.ensure_collection(db, coll)?;
        }
        let (raw, id) = with_id(raw)?;
        if !self.txn_locks.is_empty() {
            self.check_txn_lock(db, coll, &id)?;
        }
        let Some(c) = self.dbs.get_mut(db).and_then(|d| d.get_mut(coll)) else {
            return Err(CommandError::ns_not_found("ns not found"));
        };
        let slot = match c.docs.entry(OrdBson(id.clone())) {
            std::collections::btree_map::Entry::Occupied(_) => {
                let ns = format!("{db}.{coll}");
                return Err(match c.indexes.iter().find(|i| i.is_id()) {
                    Some(idx) => idx.dup_error(&ns, &[OrdBson(id)]),
                    None => CommandError::new(
                        11000,
                        format!("E11000 duplicate key error collection: {ns}"),
                    ),
                });
            }
            std::collections::btree_map::Entry::Vacant(v) => v,
        };
        if c.indexes.iter().any(|i| i.unique && !i.is_id()) {
            let ns = format!("{db}.{coll}");
            let d = crate::commands::query::decode(&raw)?;
            let mut keys = Vec::new();
            for (i, idx) in c.indexes.iter().enumerate() {
                if !idx.unique || idx.is_id() {
                    continue;
                }
                if let Some(k) = idx.key_of(&d) {
                    if idx.entries.contains_key(&k) {
                        return Err(idx.dup_error(&ns, &k));
                    }
                    keys.push((i, k));
                }
            }
            for (i, k) in keys {
                c.indexes[i].entries.insert(k, slot.key().clone());
            }
        }
        let size = raw.as_bytes().len();
        c.data_bytes += size;
        let ui = c.uuid;
        let raw = Arc::new(raw);
        let key = slot.key().clone();
        slot.insert(raw.clone());
        let capped = match c.natural.as_mut() {
            Some(n) => {
                n.push(key.clone());
                true
            }
            None => false,
        };
        // One clock read for both `ts` and `wall`.
        let wall = now_ms();
        let ts = self
            .clock
            .tick_at(u64::try_from(wall.div_euclid(1000)).unwrap_or(0));
        if self.oplog.is_none() && self.capture.is_none() {
            self.last_write_ms = wall;
            if capped {
                self.capped_evict(db, coll, &key)?;
            }
            return Ok(());
        }
        self.append_entry_at(
            size + db.len() + coll.len() + 192,
            |w| {
                w.str("op", "i");
                w.ns("ns", db, coll);
                w.uuid("ui", ui);
                w.doc_bytes("o", raw.as_bytes());
                let o2 = w.begin_sub(0x03, "o2");
                w.value("_id", &id);
                w.end_sub(o2);
            },
            ts,
            wall,
        );
        if capped {
            // The insert is logged first, then one `d` per evicted document (mongodb/mongo
            // `src/mongo/db/catalog/collection_write_path.cpp` insertDocumentsImpl: onInserts,
            // then cappedDeleteUntilBelowConfiguredMaximum, which since 5.0 logs each capped
            // deletion through OpObserver::onDelete: `capped_collection_maintenance.cpp`).
            self.capped_evict(db, coll, &key)?;
        }
        Ok(())
    }

    /// Deletes the oldest documents (insertion order) until the collection is within its
    /// `size` and `max`, never the one just inserted; each deletion is a logged `d`.
    fn capped_evict(&mut self, db: &str, coll: &str, just_inserted: &OrdBson) -> CmdResult<()> {
        let Some(c) = self.coll(db, coll) else {
            return Ok(());
        };
        let Some((size, max)) = c.capped_limits() else {
            return Ok(());
        };
        let data = c.data_bytes as i64;
        let count = c.docs.len() as i64;
        let size_over = (data - size).max(0);
        let docs_over = max.map_or(0, |m| (count - m).max(0));
        let mut victims = Vec::new();
        let mut saved = 0i64;
        let mut removed = 0i64;
        if let Some(n) = c.natural.as_ref() {
            for id in n.ids() {
                if saved >= size_over && removed >= docs_over {
                    break;
                }
                if id == just_inserted {
                    // "We're prohibited from deleting what was just inserted."
                    break;
                }
                removed += 1;
                saved += c.docs.get(id).map_or(0, |d| d.as_bytes().len() as i64);
                victims.push(id.0.clone());
            }
        }
        for id in victims {
            self.delete(db, coll, &id)?;
        }
        Ok(())
    }

    /// WriteConflict when an open transaction wrote `_id` in `db.coll` (a real server makes
    /// the outside writer wait for the transaction; mongosim fails it instead).
    pub fn check_txn_lock(&self, db: &str, coll: &str, id: &Bson) -> CmdResult<()> {
        if self
            .txn_locks
            .contains_key(&(format!("{db}.{coll}"), OrdBson(id.clone())))
        {
            return Err(CommandError::new(
                112,
                "Write conflict during plan execution and yielding is disabled. :: Please retry your operation or multi-document transaction.",
            ));
        }
        Ok(())
    }

    /// Replaces the document `id` with `post`, logging `o` (a diff or the full document).
    pub fn replace(
        &mut self,
        db: &str,
        coll: &str,
        pre: &Document,
        post: &Document,
        o: Document,
    ) -> CmdResult<()> {
        self.replace_inner(db, coll, pre, post, Some(o), None)
    }

    /// A replacement whose new document is given as raw bytes (`post` is its decoded form, for index
    /// keys): stored and logged as the `u` entry's `o` byte for byte, as a real server stores strings
    /// with invalid UTF-8 as given.
    pub fn replace_raw(
        &mut self,
        db: &str,
        coll: &str,
        pre: &Document,
        post: &Document,
        raw: RawDocumentBuf,
    ) -> CmdResult<()> {
        self.replace_inner(db, coll, pre, post, None, Some(raw))
    }

    fn replace_inner(
        &mut self,
        db: &str,
        coll: &str,
        pre: &Document,
        post: &Document,
        o: Option<Document>,
        raw_post: Option<RawDocumentBuf>,
    ) -> CmdResult<()> {
        let ns = format!("{db}.{coll}");
        let id = post.get("_id").cloned().unwrap_or(Bson::Null);
        if !self.txn_locks.is_empty() {
            self.check_txn_lock(db, coll, &id)?;
        }
        let Some(c) = self.coll_mut(db, coll) else {
            return Err(CommandError::ns_not_found("ns not found"));
        };
        let key = OrdBson(id.clone());
        let mut changes = Vec::new();
        for (i, idx) in c.indexes.iter().enumerate() {
            if !idx.unique || idx.is_id() {
                continue;
            }
            let old = idx.key_of(pre);
            let new = idx.key_of(post);
            if old == new {
                continue;
            }
            if let Some(k) = &new {
                if idx.entries.get(k).is_some_and(|owner| owner != &key) {
                    return Err(idx.dup_error(&ns, k));
                }
            }
            changes.push((i, old, new));
        }
        for (i, old, new) in changes {
            if let Some(k) = old {
                c.indexes[i].entries.remove(&k);
            }
            if let Some(k) = new {
                c.indexes[i].entries.insert(k, key.clone());
            }
        }
        let kept = match raw_post {
            Some(raw) => Some(raw),
            None => c
                .docs
                .get(&key)
                .and_then(|old| keep_invalid_strings(old, post)),
        };
        let raw = match kept {
            Some(raw) => raw,
            None => {
                RawDocumentBuf::try_from(post).map_err(|e| CommandError::new(22, e.to_string()))?
            }
        };
        let logged_raw = if o.is_none() { Some(raw.clone()) } else { None };
        let size = raw.as_bytes().len();
        if size > crate::wire::MAX_BSON_OBJECT_SIZE {
            return Err(CommandError::new(
                17419,
                "Resulting document after update is larger than 16777216",
            ));
        }
        if let Some(old) = c.docs.insert(key, Arc::new(raw)) {
            c.data_bytes -= old.as_bytes().len();
        }
        c.data_bytes += size;
        let ui = c.uuid;
        let ts = self.clock.tick();
        self.append_entry(
            |w| {
                w.str("op", "u");
                w.str("ns", &ns);
                w.value("ui", &Bson::from(ui));
                match (&o, &logged_raw) {
                    (Some(o), _) => w.value("o", &Bson::Document(o.clone())),
                    (None, Some(raw)) => w.doc_bytes("o", raw.as_bytes()),
                    (None, None) => w.value("o", &Bson::Document(Document::new())),
                }
                w.value("o2", &Bson::Document(doc! {"_id": id}));
            },
            ts,
        );
        Ok(())
    }

    /// Deletes the document with `_id` `id`; logs `d`.
    pub fn delete(&mut self, db: &str, coll: &str, id: &Bson) -> CmdResult<bool> {
        let ns = format!("{db}.{coll}");
        if !self.txn_locks.is_empty() && self.coll(db, coll).is_some() {
            self.check_txn_lock(db, coll, id)?;
        }
        let Some(c) = self.coll_mut(db, coll) else {
            return Ok(false);
        };
        let key = OrdBson(id.clone());
        let Some(old) = c.docs.remove(&key) else {
            return Ok(false);
        };
        if let Some(n) = c.natural.as_mut() {
            n.remove(&key);
        }
        c.data_bytes -= old.as_bytes().len();
        if c.indexes.iter().any(|i| i.unique && !i.is_id()) {
            if let Ok(d) = crate::commands::query::decode(&old) {
                for idx in c.indexes.iter_mut() {
                    if idx.unique && !idx.is_id() {
                        if let Some(k) = idx.key_of(&d) {
                            idx.entries.remove(&k);
                        }
                    }
                }
            }
        }
        let ui = c.uuid;
        let ts = self.clock.tick();
        self.append_entry(
            |w| {
                w.str("op", "d");
                w.str("ns", &ns);
                w.value("ui", &Bson::from(ui));
                w.value("o", &Bson::Document(doc! {"_id": id.clone()}));
            },
            ts,
        );
        Ok(true)
    }

    /// Drops a collection; logs `drop` with `o2.numRecords`. `false` when missing.
    pub fn drop_collection(&mut self, db: &str, coll: &str) -> bool {
        if self.coll(db, coll).is_some_and(|c| c.is_view()) && db != "local" {
            return self.drop_view(db, coll);
        }
        let Some(c) = self.dbs.get_mut(db).and_then(|d| d.remove(coll)) else {
            return false;
        };
        if self.dbs.get(db).is_some_and(|d| d.is_empty()) {
            self.dbs.remove(db);
        }
        let n = i32::try_from(c.docs.len()).unwrap_or(i32::MAX);
        let ui = if c.is_view() { None } else { Some(c.uuid) };
        self.log_command(db, ui, doc! {"drop": coll}, Some(doc! {"numRecords": n}));
        true
    }

    /// Drops a database: one `drop` per collection, then `dropDatabase`.
    pub fn drop_database(&mut self, db: &str) {
        // Views are no collections: they go with `system.views`.
        let names: Vec<String> = self
            .dbs
            .get(db)
            .map(|d| {
                d.iter()
                    .filter(|(_, c)| !c.is_view())
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default();
        for n in &names {
            self.drop_collection(db, n);
        }
        self.dbs.remove(db);
        self.log_command(db, None, doc! {"dropDatabase": 1}, None);
    }

    /// Renames `from` to `to` (namespaces); `drop_target` replaces an existing target.
    pub fn rename(&mut self, from: &str, to: &str, drop_target: bool) -> CmdResult<()> {
        let (fdb, fcoll) = split_ns(from)?;
        let (tdb, tcoll) = split_ns(to)?;
        check_coll_name(tdb, tcoll)?;
        match self.coll(fdb, fcoll) {
            None => {
                return Err(CommandError::ns_not_found(
                    "Source collection does not exist",
                ))
            }
            Some(c) if c.is_view() => {
                return Err(CommandError::new(
                    166,
                    format!("cannot rename view: {from}"),
                ))
            }
            Some(_) => {}
        }
        // Across databases: temp collection, copy, rename, drop (store/ddl.rs).
        if fdb != tdb {
            return self.rename_across_dbs(fdb, fcoll, tdb, tcoll, drop_target);
        }
        let mut target_uuid = None;
        let mut target_records = 0;
        if let Some(t) = self.coll(tdb, tcoll) {
            if !drop_target {
                return Err(CommandError::new(48, "target namespace exists"));
            }
            target_uuid = Some(t.uuid);
            target_records = i32::try_from(t.docs.len()).unwrap_or(i32::MAX);
            if let Some(d) = self.dbs.get_mut(tdb) {
                d.remove(tcoll);
            }
        }
        let Some(c) = self.dbs.get_mut(fdb).and_then(|d| d.remove(fcoll)) else {
            return Err(CommandError::ns_not_found(
                "Source collection does not exist",
            ));
        };
        if self.dbs.get(fdb).is_some_and(|d| d.is_empty()) {
            self.dbs.remove(fdb);
        }
        let ui = c.uuid;
        self.dbs
            .entry(tdb.to_string())
            .or_default()
            .insert(tcoll.to_string(), c);
        // OpObserverImpl::preRenameCollection (src/mongo/db/op_observer/op_observer_impl.cpp):
        // `dropTarget: <uuid>` and `o2: {numRecords}` of the replaced target.
        let mut o = doc! {"renameCollection": from, "to": to, "stayTemp": false};
        let mut o2 = None;
        if let Some(t) = target_uuid {
            o.insert("dropTarget", Bson::from(t));
            o2 = Some(doc! {"numRecords": target_records});
        }
        self.log_command(fdb, Some(ui), o, o2);
        Ok(())
    }

    /// Creates indexes; returns (before, after, created collection automatically, note).
    pub fn create_indexes(
        &mut self,
        db: &str,
        coll: &str,
        specs: Vec<Document>,
    ) -> CmdResult<(i32, i32, bool, bool)> {
        let created = self.coll(db, coll).is_none();
        self.ensure_collection(db, coll)?;
        let ns = format!("{db}.{coll}");
        let mut to_log = Vec::new();
        let (before, after) = {
            let Some(c) = self.coll_mut(db, coll) else {
                return Err(CommandError::ns_not_found("ns not found"));
            };
            let before = c.indexes.len() as i32;
            for spec in specs {
                let mut norm = doc! {"v": 2};
                for (k, v) in &spec {
                    if k != "v" && k != "ns" {
                        norm.insert(k.clone(), v.clone());
                    }
                }
                let mut idx = Index::from_spec(norm)?;
                if let Some(existing) = c.indexes.iter().find(|i| i.name == idx.name) {
                    if existing.key != idx.key {
                        return Err(CommandError::new(86, format!(
                            "An existing index has the same name as the requested index. When index names are not specified, they are auto generated and can cause conflicts. Please refer to our documentation. Requested index: {}, existing index: {}",
                            idx.spec, existing.spec
                        )));
                    }
                    if !same_options(&existing.spec, &idx.spec) {
                        return Err(CommandError::new(85, format!(
                            "An equivalent index already exists with the same name but different options. Requested index: {}, existing index: {}",
                            idx.spec, existing.spec
                        )));
                    }
                    continue;
                }
                if let Some(existing) = c.indexes.iter().find(|i| i.key == idx.key) {
                    if same_options(&existing.spec, &idx.spec) {
                        // Same key and options under another name: the server refuses (IndexOptionsConflict).
                        return Err(CommandError::new(
                            85,
                            format!(
                                "Index already exists with a different name: {}",
                                existing.name
                            ),
                        ));
                    }
                    return Err(CommandError::new(85, format!(
                        "An equivalent index already exists with a different name and options. Requested index: {}, existing index: {}",
                        idx.spec, existing.spec
                    )));
                }
                if idx.unique {
                    for (id, raw) in &c.docs {
                        let d = Document::try_from(raw.as_ref().as_ref())
                            .map_err(|e| CommandError::new(22, e.to_string()))?;
                        if let Some(k) = idx.key_of(&d) {
                            if idx.entries.contains_key(&k) {
                                return Err(idx.dup_error(&ns, &k));
                            }
                            idx.entries.insert(k, id.clone());
                        }
                    }
                }
                to_log.push(idx.spec.clone());
                c.indexes.push(idx);
            }
            (before, c.indexes.len() as i32)
        };
        let ui = self.coll(db, coll).map(|c| c.uuid);
        for spec in to_log {
            let mut o = doc! {"createIndexes": coll};
            for (k, v) in spec {
                o.insert(k, v);
            }
            self.log_command(db, ui, o, None);
        }
        Ok((before, after, created, before == after))
    }

    /// Drops indexes by name (`"*"` = all but `_id_`) or key pattern.
    pub fn drop_indexes(&mut self, db: &str, coll: &str, which: &Bson) -> CmdResult<i32> {
        // Indexes still building are aborted, not dropped (store/ddl.rs).
        if let Some(was) = self.abort_builds_for_drop(db, coll, which) {
            return Ok(was);
        }
        let Some(c) = self.coll_mut(db, coll) else {
            return Err(CommandError::ns_not_found(format!(
                "ns not found {db}.{coll}"
            )));
        };
        let was = c.indexes.len() as i32;
        let names: Vec<String> = match which {
            Bson::String(s) if s == "*" => c
                .indexes
                .iter()
                .filter(|i| !i.is_id())
                .map(|i| i.name.clone())
                .collect(),
            Bson::String(s) => vec![s.clone()],
            Bson::Array(a) => a
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            Bson::Document(k) => match c.indexes.iter().find(|i| &i.key == k) {
                Some(i) => vec![i.name.clone()],
                None => {
                    return Err(CommandError::new(
                        27,
                        format!("can't find index with key: {k}"),
                    ))
                }
            },
            _ => {
                return Err(CommandError::type_mismatch(
                    "index must be a string, array or document",
                ))
            }
        };
        let mut dropped = Vec::new();
        for n in &names {
            if n == "_id_" {
                return Err(CommandError::new(72, "cannot drop _id index"));
            }
            let Some(pos) = c.indexes.iter().position(|i| &i.name == n) else {
                return Err(CommandError::new(
                    27,
                    format!("index not found with name [{n}]"),
                ));
            };
            dropped.push(c.indexes.remove(pos));
        }
        let ui = c.uuid;
        for idx in dropped {
            self.log_command(
                db,
                Some(ui),
                doc! {"dropIndexes": coll, "index": idx.name.clone()},
                Some(idx.spec),
            );
        }
        Ok(was)
    }

    /// Applies `collMod` options (validator, validationLevel/Action, index TTL/hidden).
    pub fn coll_mod(&mut self, db: &str, coll: &str, cmd: &Document) -> CmdResult<Document> {
        if self.coll(db, coll).is_some_and(|c| c.is_view()) {
            return self.modify_view(db, coll, cmd);
        }
        let ns = format!("{db}.{coll}");
        let Some(c) = self.coll_mut(db, coll) else {
            return Err(CommandError::ns_not_found("ns does not exist"));
        };
        let mut o = doc! {"collMod": coll};
        // `o2.collectionOptions_old` is the whole `CollectionOptions::toBSON()` before the
        // change, `uuid` first; `o2.indexOptions_old` the old values of the changed index
        // options (OpObserverImpl::onCollMod, src/mongo/db/op_observer/op_observer_impl.cpp).
        let mut old_opts = doc! {"uuid": c.uuid};
        old_opts.extend(c.options.clone());
        let mut index_old = None;
        let mut reply = Document::new();
        for (k, v) in cmd {
            match k.as_str() {
                "collMod" | "$db" | "lsid" | "$clusterTime" | "writeConcern" | "txnNumber"
                | "$readPreference" | "comment" | "apiVersion" => {}
                "validator"
                | "validationLevel"
                | "validationAction"
                | "changeStreamPreAndPostImages"
                | "expireAfterSeconds"
                | "viewOn"
                | "pipeline" => {
                    if let Some(old) = c.options.get(k) {
                        old_opts.insert(k.clone(), old.clone());
                    }
                    c.options.insert(k.clone(), v.clone());
                    o.insert(k.clone(), v.clone());
                }
                "index" => {
                    let Bson::Document(spec) = v else {
                        return Err(CommandError::type_mismatch("index must be a document"));
                    };
                    let (oplog_index, old, fields) = Self::coll_mod_index(c, &ns, spec)?;
                    if let Some(i) = oplog_index {
                        o.insert("index", i);
                    }
                    index_old = old;
                    reply.extend(fields);
                }
                other => {
                    return Err(CommandError::new(
                        40415,
                        format!("BSON field 'collMod.{other}' is an unknown field."),
                    ))
                }
            }
        }
        let ui = c.uuid;
        let mut o2 = doc! {"collectionOptions_old": old_opts};
        if let Some(i) = index_old {
            o2.insert("indexOptions_old", i);
        }
        self.log_command(db, Some(ui), o, Some(o2));
        Ok(reply)
    }

    /// MD5 per collection over raw documents in `_id` order, like `dbHash`.
    pub fn db_hash(
        &self,
        db: &str,
        only: Option<&[String]>,
    ) -> (Document, String, Vec<String>, Document) {
        use md5::{Digest, Md5};
        let mut per = Document::new();
        let mut uuids = Document::new();
        let mut capped = Vec::new();
        let mut all = Md5::new();
        if let Some(colls) = self.dbs.get(db) {
            for (name, c) in colls {
                if c.is_view() || name.starts_with("system.") && name != "system.js" {
                    continue;
                }
                if only.is_some_and(|o| !o.iter().any(|n| n == name)) {
                    continue;
                }
                let mut h = Md5::new();
                for raw in c.docs.values() {
                    h.update(raw.as_bytes());
                }
                let hex = hex(&h.finalize());
                all.update(hex.as_bytes());
                per.insert(name.clone(), hex);
                uuids.insert(name.clone(), Bson::from(c.uuid));
                if c.is_capped() {
                    capped.push(name.clone());
                }
            }
        }
        (per, hex(&all.finalize()), capped, uuids)
    }
}

fn same_options(a: &Document, b: &Document) -> bool {
    let strip = |d: &Document| {
        let mut o: Vec<(String, String)> = d
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "v" | "name" | "key" | "background"))
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        o.sort();
        o
    };
    strip(a) == strip(b)
}

/// When `old` has top-level strings with invalid UTF-8, encodes `post` keeping those
/// elements byte for byte where the update left them unchanged (they decode lossily, so
/// re-encoding them would replace the bytes); `None` when there is nothing to keep.
fn keep_invalid_strings(old: &RawDocumentBuf, post: &Document) -> Option<RawDocumentBuf> {
    let bytes = old.as_bytes();
    let mut off = 4usize;
    let mut invalid: Vec<(&str, &[u8], Bson)> = Vec::new();
    for el in old.iter_elements() {
        let el = el.ok()?;
        let key = el.key().as_str();
        let len = 2 + key.len() + el.size();
        if el.element_type() == bson::spec::ElementType::String && el.value().is_err() {
            let lossy = Bson::try_from(el.value_utf8_lossy().ok()?).ok()?;
            invalid.push((key, bytes.get(off..off + len)?, lossy));
        }
        off += len;
    }
    if invalid.is_empty() {
        return None;
    }
    let mut w = RawWriter::with_capacity(bytes.len() + 64);
    for (k, v) in post {
        match invalid.iter().find(|(ik, _, lossy)| ik == k && lossy == v) {
            Some((_, element, _)) => w.raw_element(element),
            None => w.value(k, v),
        }
    }
    RawDocumentBuf::from_bytes(w.finish()).ok()
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `_id` of a raw document.
pub fn raw_id(raw: &RawDocument) -> CmdResult<Bson> {
    match raw.get("_id") {
        Ok(Some(v)) => Bson::try_from(v).map_err(|e| CommandError::new(22, e.to_string())),
        Ok(None) => Err(CommandError::bad_value("document has no _id")),
        Err(e) => Err(CommandError::new(22, e.to_string())),
    }
}

/// Like [`ensure_id`] followed by [`raw_id`], reading `_id` once: the document (with an
/// `_id`) and its `_id`.
pub fn with_id(raw: RawDocumentBuf) -> CmdResult<(RawDocumentBuf, Bson)> {
    if let Some(id) = leading_scalar_id(raw.as_bytes()) {
        return Ok((raw, id));
    }
    let id = match raw.get("_id") {
        Ok(Some(bson::RawBsonRef::Array(_))) => {
            return Err(CommandError::new(
                53,
                "The '_id' value cannot be of type array",
            ))
        }
        Ok(Some(bson::RawBsonRef::RegularExpression(_))) => {
            return Err(CommandError::new(53, "can't use a regex for _id"))
        }
        Ok(Some(v)) => Bson::try_from(v).map_err(|e| CommandError::new(22, e.to_string()))?,
        Ok(None) => {
            let id = Bson::ObjectId(ObjectId::new());
            let mut w = RawWriter::with_capacity(raw.as_bytes().len() + 24);
            w.value("_id", &id);
            w.extend_raw(&raw);
            let raw = RawDocumentBuf::from_bytes(w.finish())
                .map_err(|e| CommandError::new(22, e.to_string()))?;
            return Ok((raw, id));
        }
        Err(e) => return Err(CommandError::new(22, e.to_string())),
    };
    Ok((raw, id))
}

/// The `_id` when it is the first element and an Int32, Int64 or ObjectId (what drivers and
/// migrations send); `None` sends the caller to the general lookup.
fn leading_scalar_id(b: &[u8]) -> Option<Bson> {
    let tag = *b.get(4)?;
    if b.get(5..9)? != b"_id\0" {
        return None;
    }
    let v = b.get(9..)?;
    // The value must end before the document's terminating NUL.
    let fits = |n: usize| v.len() > n;
    match tag {
        0x10 if fits(4) => Some(Bson::Int32(i32::from_le_bytes(v[..4].try_into().ok()?))),
        0x12 if fits(8) => Some(Bson::Int64(i64::from_le_bytes(v[..8].try_into().ok()?))),
        0x07 if fits(12) => Some(Bson::ObjectId(ObjectId::from_bytes(
            v[..12].try_into().ok()?,
        ))),
        _ => None,
    }
}

/// Adds a fresh ObjectId `_id` in front when the document has none; rejects array `_id`s.
pub fn ensure_id(raw: RawDocumentBuf) -> CmdResult<RawDocumentBuf> {
    with_id(raw).map(|(raw, _)| raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(d: Document) -> RawDocumentBuf {
        RawDocumentBuf::try_from(&d).unwrap()
    }

    #[test]
    fn inserts_are_logged_and_duplicates_rejected() {
        let mut s = Store::new(Topology::ReplicaSet, 1 << 20);
        s.insert("app", "c", raw(doc! {"_id": 1, "a": "x"}))
            .unwrap();
        let e = s.insert("app", "c", raw(doc! {"_id": 1.0})).unwrap_err();
        assert_eq!(e.code, 11000);
        assert!(e.errmsg.starts_with(
            "E11000 duplicate key error collection: app.c index: _id_ dup key: { _id: "
        ));
        s.create_indexes(
            "app",
            "c",
            vec![doc! {"key": {"a": 1}, "name": "a_1", "unique": true}],
        )
        .unwrap();
        assert_eq!(
            s.insert("app", "c", raw(doc! {"_id": 2, "a": "x"}))
                .unwrap_err()
                .code,
            11000
        );
        s.insert("app", "c", raw(doc! {"b": 1})).unwrap();
        let ops: Vec<String> = s
            .oplog
            .as_ref()
            .unwrap()
            .iter_from(0)
            .map(|e| e.doc.get_str("op").unwrap().to_string())
            .collect();
        assert_eq!(ops, ["n", "n", "c", "i", "c", "i"]);
    }

    #[test]
    fn with_id_matches_the_general_lookup() {
        let oid = ObjectId::new();
        let docs = vec![
            doc! {"_id": 5},
            doc! {"_id": -7i64, "x": 1},
            doc! {"_id": oid, "y": "z"},
            doc! {"_id": "s"},
            doc! {"_id": 1.5},
            doc! {"_id": {"a": 1}},
            doc! {"x": 1, "_id": 3i64},
            doc! {"_idx": 1, "_id": 2},
        ];
        for d in docs {
            let r = raw(d.clone());
            let (back, id) = with_id(r.clone()).unwrap();
            assert_eq!(back, r);
            assert_eq!(id, raw_id(&r).unwrap(), "{d}");
        }
        let (with, id) = with_id(raw(doc! {"x": 1})).unwrap();
        assert_eq!(raw_id(&with).unwrap(), id);
        assert_eq!(with_id(raw(doc! {"_id": [1]})).unwrap_err().code, 53);
    }

    #[test]
    fn standalone_has_no_oplog() {
        let mut s = Store::new(Topology::Standalone, 0);
        s.insert("app", "c", raw(doc! {"x": 1})).unwrap();
        assert!(s.oplog.is_none());
        assert_eq!(s.coll("app", "c").unwrap().docs.len(), 1);
    }
}
