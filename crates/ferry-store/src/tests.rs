use ferry_core::{Epoch, InstanceInput, TaskKind, TaskSpec, TaskSpecInput};

use super::crypto;

use super::*;

fn spec(password: &str) -> TaskSpec {
    TaskSpec::try_from(TaskSpecInput {
        name: "orders".into(),
        region: "ap-guangzhou".into(),
        kind: Some(TaskKind::PublicNetwork),
        mongo_host: "127.0.0.1".into(),
        port: 27017,
        username: "root".into(),
        password: Secret::new(password),
        destination_instance_id: "cmgo-6wk2mxa1".into(),
        ..Default::default()
    })
    .unwrap()
}

fn raw_files_contain(dir: &Path, needle: &[u8]) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        } else {
            let bytes = std::fs::read(&p).unwrap();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                return true;
            }
        }
    }
    false
}

#[test]
fn tasks_and_instances_survive_reopen_with_passwords_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let password = "S3cret-task-pw-7781";
    let inst_password = "S3cret-inst-pw-9912";
    let mut task = Task::new(TaskId::generate(), spec(password), 1);
    task.epoch = Epoch(4);
    {
        let store = Store::open(dir.path()).unwrap();
        store.put_task(&task).unwrap();
        let inst = Instance::from_input(
            InstanceInput {
                instance_id: "cmgo-6wk2mxa1".into(),
                region: "ap-guangzhou".into(),
                uri: "mongodb://127.0.0.1:27018".into(),
                username: "admin".into(),
                password: Secret::new(inst_password),
                ..Default::default()
            },
            1,
        )
        .unwrap();
        assert!(store.insert_instance(&inst).unwrap());
        assert!(
            !store.insert_instance(&inst).unwrap(),
            "second insert must not overwrite"
        );
    }
    assert!(!raw_files_contain(dir.path(), password.as_bytes()));
    assert!(!raw_files_contain(dir.path(), inst_password.as_bytes()));

    let store = Store::open(dir.path()).unwrap();
    let back = store.get_task(&task.id).unwrap().unwrap();
    assert_eq!(back, task);
    assert_eq!(back.spec.password.expose(), password);
    let inst = store
        .get_instance(&InstanceId::parse("i", "cmgo-6wk2mxa1").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(inst.password.expose(), inst_password);
    assert_eq!(store.list_tasks().unwrap().len(), 1);
    assert!(store.delete_task(&task.id).unwrap());
    assert!(store.get_task(&task.id).unwrap().is_none());
}

#[cfg(unix)]
#[test]
fn key_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let _store = Store::open(dir.path()).unwrap();
    let mode = std::fs::metadata(dir.path().join("secret.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_wrong_key_cannot_open_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let task = Task::new(TaskId::generate(), spec("pw"), 1);
    {
        let store = Store::open(dir.path()).unwrap();
        store.put_task(&task).unwrap();
    }
    std::fs::write(dir.path().join("secret.key"), [7u8; 32]).unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(matches!(store.get_task(&task.id), Err(StoreError::Crypto)));
}

#[test]
fn mismatches_page_by_run_and_go_with_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = TaskId::parse("task_id", "task-aaaaaaaaaaaa").unwrap();
    let b = TaskId::parse("task_id", "task-bbbbbbbbbbbb").unwrap();
    let items: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i]).collect();
    store.put_mismatches(&a, 1, 0, &items).unwrap();
    store.put_mismatches(&a, 2, 0, &items[..2]).unwrap();
    store.put_mismatches(&b, 1, 0, &items[..1]).unwrap();
    let page = store.list_mismatches(&a, 1, 0, 3).unwrap();
    assert_eq!(page.iter().map(|p| p.0).collect::<Vec<_>>(), vec![0, 1, 2]);
    let rest = store.list_mismatches(&a, 1, 3, 10).unwrap();
    assert_eq!(rest, vec![(3, vec![3]), (4, vec![4])]);
    assert_eq!(store.list_mismatches(&a, 2, 0, 10).unwrap().len(), 2);
    store.delete_mismatches(&a).unwrap();
    assert!(store.list_mismatches(&a, 1, 0, 10).unwrap().is_empty());
    assert_eq!(store.list_mismatches(&b, 1, 0, 10).unwrap().len(), 1);
}

fn instance(id: &str, password: &str) -> Instance {
    Instance::from_input(
        InstanceInput {
            instance_id: id.into(),
            region: "ap-guangzhou".into(),
            uri: "mongodb://10.0.0.5:27017".into(),
            username: "admin".into(),
            password: Secret::new(password),
            ..Default::default()
        },
        1,
    )
    .unwrap()
}

fn raw_json(tree: &sled::Tree, key: &str) -> serde_json::Value {
    serde_json::from_slice(&tree.get(key).unwrap().unwrap()).unwrap()
}

fn put_raw_json(tree: &sled::Tree, key: &str, value: &serde_json::Value) {
    tree.insert(key, serde_json::to_vec(value).unwrap())
        .unwrap();
}

#[test]
fn a_sealed_password_moved_to_another_record_does_not_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = Task::new(TaskId::generate(), spec("password-of-a"), 1);
    let b = Task::new(TaskId::generate(), spec("password-of-b"), 1);
    store.put_task(&a).unwrap();
    store.put_task(&b).unwrap();
    let inst = instance("cmgo-6wk2mxa1", "password-of-inst");
    assert!(store.insert_instance(&inst).unwrap());

    let mut raw_a = raw_json(&store.tasks, a.id.as_str());
    let mut raw_b = raw_json(&store.tasks, b.id.as_str());
    assert_eq!(raw_a["password"]["version"], 2);
    std::mem::swap(&mut raw_a["password"], &mut raw_b["password"]);
    put_raw_json(&store.tasks, a.id.as_str(), &raw_a);
    put_raw_json(&store.tasks, b.id.as_str(), &raw_b);
    assert!(matches!(store.get_task(&a.id), Err(StoreError::Crypto)));
    assert!(matches!(store.get_task(&b.id), Err(StoreError::Crypto)));
    assert!(matches!(store.list_tasks(), Err(StoreError::Crypto)));

    // A task's sealed password pasted into an instance record does not open either.
    let mut raw_inst = raw_json(&store.instances, inst.instance_id.as_str());
    raw_inst["password"] = raw_a["password"].clone();
    put_raw_json(&store.instances, inst.instance_id.as_str(), &raw_inst);
    assert!(matches!(
        store.get_instance(&inst.instance_id),
        Err(StoreError::Crypto)
    ));
}

#[test]
fn a_legacy_sealed_record_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let task = Task::new(TaskId::generate(), spec("legacy-task-pw"), 1);
    store.put_task(&task).unwrap();
    let inst = instance("cmgo-6wk2mxa1", "legacy-inst-pw");
    assert!(store.insert_instance(&inst).unwrap());

    // Rewrite both records the way the previous build stored them: {nonce, ciphertext}, no AAD, no key id.
    for (tree, key, clear) in [
        (&store.tasks, task.id.as_str(), "legacy-task-pw"),
        (
            &store.instances,
            inst.instance_id.as_str(),
            "legacy-inst-pw",
        ),
    ] {
        let legacy = store.secrets.seal_legacy(clear.as_bytes()).unwrap();
        let mut sealed = serde_json::to_value(&legacy).unwrap();
        let obj = sealed.as_object_mut().unwrap();
        obj.remove("version");
        obj.remove("key_id");
        assert_eq!(obj.len(), 2, "legacy form is exactly nonce + ciphertext");
        let mut raw = raw_json(tree, key);
        raw["password"] = sealed;
        put_raw_json(tree, key, &raw);
    }
    assert_eq!(
        store
            .get_task(&task.id)
            .unwrap()
            .unwrap()
            .spec
            .password
            .expose(),
        "legacy-task-pw"
    );
    assert_eq!(
        store
            .get_instance(&inst.instance_id)
            .unwrap()
            .unwrap()
            .password
            .expose(),
        "legacy-inst-pw"
    );

    // Rewriting the task seals it the new way.
    store.put_task(&task).unwrap();
    let raw = raw_json(&store.tasks, task.id.as_str());
    assert_eq!(raw["password"]["version"], 2);
    assert_eq!(
        raw["password"]["key_id"],
        crypto::key_id(&std::fs::read(dir.path().join("secret.key")).unwrap())
    );
}

#[test]
fn an_unknown_seal_version_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let task = Task::new(TaskId::generate(), spec("pw"), 1);
    store.put_task(&task).unwrap();
    let mut raw = raw_json(&store.tasks, task.id.as_str());
    raw["password"]["version"] = 9.into();
    put_raw_json(&store.tasks, task.id.as_str(), &raw);
    let err = store.get_task(&task.id).unwrap_err();
    assert!(matches!(err, StoreError::SealedVersion { found: 9 }));
    assert!(err.to_string().contains("version 9"));
}

#[cfg(unix)]
fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[cfg(unix)]
#[test]
fn a_key_file_others_can_access_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    let key = dir.path().join("secret.key");
    assert!(check_private_file(&key).is_ok());
    for mode in [0o644, 0o640, 0o604, 0o660, 0o601] {
        chmod(&key, mode);
        let err = check_private_file(&key).unwrap_err();
        assert!(matches!(err, StoreError::KeyFile(_)));
        let msg = Store::open(dir.path()).unwrap_err().to_string();
        assert!(msg.contains(&key.display().to_string()), "{msg}");
        assert!(msg.contains(&format!("{mode:04o}")), "{msg}");
        assert!(
            msg.contains(&format!("chmod 600 {}", key.display())),
            "{msg}"
        );
    }
    chmod(&key, 0o400);
    assert!(check_private_file(&key).is_ok());
    chmod(&key, 0o600);
    assert!(Store::open(dir.path()).is_ok());

    let missing = dir.path().join("nope.key");
    let msg = check_private_file(&missing).unwrap_err().to_string();
    assert!(msg.contains("nope.key"), "{msg}");
}

#[cfg(unix)]
#[test]
fn a_left_over_new_key_file_must_be_private_too() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    let new_key = dir.path().join("secret.key.new");
    std::fs::write(&new_key, [1u8; 32]).unwrap();
    chmod(&new_key, 0o644);
    let msg = Store::open(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("secret.key.new") && msg.contains("chmod 600"),
        "{msg}"
    );
}

/// A store with two tasks (one without a password) and an instance; returns the tasks' ids.
fn populate(dir: &Path) -> (TaskId, TaskId) {
    let store = Store::open(dir).unwrap();
    let with_pw = Task::new(TaskId::generate(), spec("task-pw-1"), 1);
    let without_pw = Task::new(TaskId::generate(), spec(""), 1);
    store.put_task(&with_pw).unwrap();
    store.put_task(&without_pw).unwrap();
    assert!(store
        .insert_instance(&instance("cmgo-6wk2mxa1", "inst-pw-1"))
        .unwrap());
    (with_pw.id, without_pw.id)
}

fn assert_passwords_read_back(store: &Store, with_pw: &TaskId, without_pw: &TaskId) {
    let t = store.get_task(with_pw).unwrap().unwrap();
    assert_eq!(t.spec.password.expose(), "task-pw-1");
    let t = store.get_task(without_pw).unwrap().unwrap();
    assert!(!t.spec.password.is_set());
    let i = store
        .get_instance(&InstanceId::parse("i", "cmgo-6wk2mxa1").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(i.password.expose(), "inst-pw-1");
}

fn sealed_key_ids(store: &Store) -> Vec<String> {
    let mut ids = Vec::new();
    for tree in [&store.tasks, &store.instances] {
        for raw in tree.iter().values() {
            let v: serde_json::Value = serde_json::from_slice(&raw.unwrap()).unwrap();
            if let Some(id) = v["password"]["key_id"].as_str() {
                ids.push(id.to_owned());
            }
        }
    }
    ids
}

#[test]
fn rotate_key_reseals_every_secret_under_a_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let (with_pw, without_pw) = populate(dir.path());
    let key_path = dir.path().join("secret.key");
    let old_key = std::fs::read(&key_path).unwrap();

    let summary = rotate_key(dir.path()).unwrap();
    assert_eq!(
        summary,
        RotateSummary {
            tasks: 1,
            instances: 1
        }
    );
    let new_key = std::fs::read(&key_path).unwrap();
    assert_eq!(new_key.len(), 32);
    assert_ne!(new_key, old_key, "the key file changed");
    assert!(!dir.path().join("secret.key.new").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        sealed_key_ids(&store),
        vec![crypto::key_id(&new_key); 2],
        "every secret is sealed under the new key"
    );
    assert_passwords_read_back(&store, &with_pw, &without_pw);
    drop(store);

    // Only the new key opens them now: the old one is gone for good.
    std::fs::write(&key_path, &old_key).unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(matches!(store.get_task(&with_pw), Err(StoreError::Crypto)));
}

#[test]
fn rotate_key_refuses_while_the_data_dir_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path());
    let store = Store::open(dir.path()).unwrap();
    let err = rotate_key(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
    assert!(
        err.to_string().contains("stop the coordinator first"),
        "{err}"
    );
    assert!(!dir.path().join("secret.key.new").exists());
    drop(store);
    assert!(rotate_key(dir.path()).is_ok());
}

#[test]
fn rotate_key_refuses_a_dir_that_is_not_a_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let err = rotate_key(&dir.path().join("typo")).unwrap_err();
    assert!(err.to_string().contains("is not a Ferry data dir"), "{err}");
    assert!(!dir.path().join("typo").exists(), "nothing was created");
}

#[test]
fn an_interrupted_rotation_still_opens_and_a_second_rotation_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (with_pw, without_pw) = populate(dir.path());
    let key_path = dir.path().join("secret.key");
    let new_path = dir.path().join("secret.key.new");
    let old_key = std::fs::read(&key_path).unwrap();

    // Crash between re-sealing and the rename.
    let (store, summary) = reseal_under_new_key(dir.path()).unwrap();
    assert_eq!(summary.tasks + summary.instances, 2);
    drop(store);
    let pending_key = std::fs::read(&new_path).unwrap();
    assert_eq!(std::fs::read(&key_path).unwrap(), old_key);

    // The coordinator starts again: everything opens, and what it writes meanwhile opens too.
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        sealed_key_ids(&store),
        vec![crypto::key_id(&pending_key); 2]
    );
    assert_passwords_read_back(&store, &with_pw, &without_pw);
    let later = Task::new(TaskId::generate(), spec("written-mid-rotation"), 1);
    store.put_task(&later).unwrap();
    drop(store);

    let summary = rotate_key(dir.path()).unwrap();
    assert_eq!(
        summary,
        RotateSummary {
            tasks: 2,
            instances: 1
        }
    );
    assert_eq!(
        std::fs::read(&key_path).unwrap(),
        pending_key,
        "the pending key was reused"
    );
    assert!(!new_path.exists());
    let store = Store::open(dir.path()).unwrap();
    assert_passwords_read_back(&store, &with_pw, &without_pw);
    assert_eq!(
        store
            .get_task(&later.id)
            .unwrap()
            .unwrap()
            .spec
            .password
            .expose(),
        "written-mid-rotation"
    );
    assert_eq!(
        sealed_key_ids(&store),
        vec![crypto::key_id(&pending_key); 3]
    );
}

#[test]
fn a_crash_while_writing_the_new_key_leaves_a_usable_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let (with_pw, without_pw) = populate(dir.path());
    // A torn temporary file from a crash before the new key was complete.
    std::fs::write(dir.path().join("secret.key.new.tmp"), [1u8; 5]).unwrap();
    assert!(rotate_key(dir.path()).is_ok());
    assert!(!dir.path().join("secret.key.new.tmp").exists());
    let store = Store::open(dir.path()).unwrap();
    assert_passwords_read_back(&store, &with_pw, &without_pw);
}

fn join_token(hash: &str) -> JoinTokenRecord {
    JoinTokenRecord {
        token_id: "jt-3f9a1c2b7d4e".into(),
        hash: hash.into(),
        cvm_id: String::new(),
        region: "ap-guangzhou".into(),
        pool: true,
        tenant: String::new(),
        description: "pool node 1".into(),
        created_by: "ops".into(),
        created_ms: 10,
        expires_ms: 1_000,
        used_ms: None,
        used_by: None,
    }
}

#[test]
fn join_tokens_are_stored_listed_consumed_once_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let hash = "aa".repeat(32);
    {
        let store = Store::open(dir.path()).unwrap();
        store.put_join_token(&join_token(&hash)).unwrap();
        store.put_join_token(&join_token(&"bb".repeat(32))).unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.get_join_token(&hash).unwrap(),
        Some(join_token(&hash))
    );
    assert_eq!(store.get_join_token("cc").unwrap(), None);
    let hashes: Vec<_> = store
        .list_join_tokens()
        .unwrap()
        .into_iter()
        .map(|t| t.hash)
        .collect();
    assert_eq!(hashes, vec!["aa".repeat(32), "bb".repeat(32)]);

    assert_eq!(
        store
            .consume_join_token("cc", 50, "agent-000000000001")
            .unwrap(),
        ConsumeJoinToken::Unknown
    );
    let mut used = join_token(&hash);
    used.used_ms = Some(50);
    used.used_by = Some("agent-000000000001".into());
    assert_eq!(
        store
            .consume_join_token(&hash, 50, "agent-000000000001")
            .unwrap(),
        ConsumeJoinToken::Consumed(used.clone())
    );
    assert_eq!(
        store
            .consume_join_token(&hash, 60, "agent-000000000002")
            .unwrap(),
        ConsumeJoinToken::AlreadyUsed(used.clone()),
        "a second use changes nothing"
    );
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.get_join_token(&hash).unwrap(), Some(used));

    assert!(store.delete_join_token(&hash).unwrap());
    assert!(!store.delete_join_token(&hash).unwrap());
    assert_eq!(store.get_join_token(&hash).unwrap(), None);
    assert_eq!(store.list_join_tokens().unwrap().len(), 1);
}

#[test]
fn concurrent_consumers_of_one_join_token_have_exactly_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for round in 0..20 {
        let hash = format!("{round:064x}");
        store.put_join_token(&join_token(&hash)).unwrap();
        let threads = 8;
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let (store, barrier, hash) = (store.clone(), barrier.clone(), hash.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let me = format!("agent-{i:012x}");
                    (
                        me.clone(),
                        store.consume_join_token(&hash, 100, &me).unwrap(),
                    )
                })
            })
            .collect();
        let outcomes: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: Vec<_> = outcomes
            .iter()
            .filter_map(|(me, o)| match o {
                ConsumeJoinToken::Consumed(rec) => {
                    assert_eq!(rec.used_by.as_deref(), Some(me.as_str()));
                    Some(me.clone())
                }
                ConsumeJoinToken::AlreadyUsed(_) => None,
                ConsumeJoinToken::Unknown => panic!("the token exists"),
            })
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {outcomes:?}");
        for (_, o) in &outcomes {
            if let ConsumeJoinToken::AlreadyUsed(rec) = o {
                assert_eq!(rec.used_by.as_ref(), Some(&winners[0]));
            }
        }
        let stored = store.get_join_token(&hash).unwrap().unwrap();
        assert_eq!(stored.used_by.as_ref(), Some(&winners[0]));
    }
}

fn agent(id: &AgentId, credentials: &[&str]) -> AgentRecord {
    AgentRecord {
        agent_id: id.clone(),
        cvm_instance_id: String::new(),
        region: "ap-guangzhou".into(),
        private_ips: vec![],
        version: "0.1.0".into(),
        hostname: "pool-1".into(),
        pool: true,
        capabilities: vec![],
        last_seen_ms: 5,
        tenant: String::new(),
        enrolled_ms: 5,
        revoked_ms: None,
        credentials: credentials.iter().map(|c| (*c).to_owned()).collect(),
    }
}

#[test]
fn credentials_index_agents_and_go_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let a = AgentId::parse("a", "agent-00000000000a").unwrap();
    let b = AgentId::parse("b", "agent-00000000000b").unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store
            .put_agent_durable(&agent(&a, &["d-cert-a", "d-secret-a", "d-stolen"]))
            .unwrap();
        store.put_agent_durable(&agent(&b, &["d-cert-b"])).unwrap();
        store.put_credential("d-cert-a", &a).unwrap();
        store.put_credential("d-secret-a", &a).unwrap();
        store.put_credential("d-cert-b", &b).unwrap();
        // An entry that a's record lists but that points to b must survive a's deletion.
        store.put_credential("d-stolen", &b).unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.agent_by_credential("d-cert-a").unwrap(),
        Some(a.clone())
    );
    assert_eq!(
        store.agent_by_credential("d-secret-a").unwrap(),
        Some(a.clone())
    );
    assert_eq!(store.agent_by_credential("d-unknown").unwrap(), None);
    assert_eq!(
        store.get_agent(&a).unwrap(),
        Some(agent(&a, &["d-cert-a", "d-secret-a", "d-stolen"]))
    );

    assert!(store.delete_agent(&a).unwrap());
    assert!(!store.delete_agent(&a).unwrap());
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.get_agent(&a).unwrap(), None);
    assert_eq!(store.agent_by_credential("d-cert-a").unwrap(), None);
    assert_eq!(store.agent_by_credential("d-secret-a").unwrap(), None);
    assert_eq!(
        store.agent_by_credential("d-stolen").unwrap(),
        Some(b.clone())
    );
    assert_eq!(
        store.agent_by_credential("d-cert-b").unwrap(),
        Some(b.clone())
    );
    assert_eq!(store.list_agents().unwrap().len(), 1);
}

#[test]
fn a_corrupt_credential_entry_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .agent_credentials
        .insert("d-bad", &b"not-an-agent-id"[..])
        .unwrap();
    let err = store.agent_by_credential("d-bad").unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)));
    assert!(err.to_string().contains("d-bad"), "{err}");
}

fn audit(method: &str, principal: &str) -> AuditRecord {
    AuditRecord {
        seq: 999_999,
        time_ms: 7,
        principal: principal.into(),
        peer: "10.0.0.9:51234".into(),
        method: method.into(),
        targets: vec!["task-aaaaaaaaaaaa".into()],
        code: "OK".into(),
        detail: String::new(),
    }
}

#[test]
fn audit_records_get_increasing_seqs_and_page_with_a_filter() {
    let dir = tempfile::tempdir().unwrap();
    let mut seqs = Vec::new();
    {
        let store = Store::open(dir.path()).unwrap();
        for i in 0..6 {
            let principal = if i % 2 == 0 { "alice" } else { "bob" };
            let stored = store.append_audit(audit("CreateTask", principal)).unwrap();
            assert_ne!(stored.seq, 999_999, "the given seq is ignored");
            assert_eq!(stored.principal, principal);
            seqs.push(stored.seq);
        }
    }
    assert!(seqs[0] >= 1);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // Durable, and still increasing after a restart.
    let store = Store::open(dir.path()).unwrap();
    let after_restart = store.append_audit(audit("DeleteTask", "alice")).unwrap();
    assert!(after_restart.seq > seqs[5]);

    let all = store.list_audit(0, 100, |_| true).unwrap();
    assert_eq!(all.len(), 7);
    assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>()[..6], seqs[..]);
    assert_eq!(all[6], after_restart);

    let page1 = store.list_audit(0, 2, |_| true).unwrap();
    assert_eq!(page1.iter().map(|r| r.seq).collect::<Vec<_>>(), seqs[..2]);
    let page2 = store.list_audit(page1[1].seq, 2, |_| true).unwrap();
    assert_eq!(page2.iter().map(|r| r.seq).collect::<Vec<_>>(), seqs[2..4]);

    // The filter applies before the limit: two of alice's records, skipping bob's.
    let alice = store.list_audit(0, 2, |r| r.principal == "alice").unwrap();
    assert_eq!(
        alice.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![seqs[0], seqs[2]]
    );
    let deletes = store
        .list_audit(0, 10, |r| r.method == "DeleteTask")
        .unwrap();
    assert_eq!(deletes, vec![after_restart.clone()]);

    assert!(store
        .list_audit(after_restart.seq, 10, |_| true)
        .unwrap()
        .is_empty());
    assert!(store.list_audit(u64::MAX, 10, |_| true).unwrap().is_empty());
    assert!(store.list_audit(0, 0, |_| true).unwrap().is_empty());
}

#[test]
fn a_missing_key_file_is_not_silently_replaced_while_secrets_need_it() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path());
    let key = dir.path().join("secret.key");
    let saved = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    let msg = Store::open(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("secret.key is missing"), "{msg}");
    assert!(msg.contains("2 secrets"), "{msg}");
    assert!(!key.exists(), "no new key was made");

    // Without sealed secrets a fresh key is fine.
    let empty = tempfile::tempdir().unwrap();
    drop(Store::open(empty.path()).unwrap());
    std::fs::remove_file(empty.path().join("secret.key")).unwrap();
    assert!(Store::open(empty.path()).is_ok());

    use std::io::Write;
    create_private_file(&key)
        .unwrap()
        .write_all(&saved)
        .unwrap();
    assert!(Store::open(dir.path()).is_ok());
}

#[test]
fn task_events_are_numbered_per_task_paged_in_order_and_deleted_with_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = Task::new(TaskId::generate(), spec("pw"), 1);
    let b = Task::new(TaskId::generate(), spec("pw"), 1);
    let event = |kind: &str| TaskEventRecord {
        seq: 0,
        time_ms: 1,
        kind: kind.into(),
        principal: "admin".into(),
        detail: String::new(),
        state: "RUNNING".into(),
        phase: String::new(),
        epoch: 1,
    };
    store.put_task(&a).unwrap();
    store.put_task(&b).unwrap();
    let first = store
        .append_task_events(&a.id, vec![event("created"), event("state")])
        .unwrap();
    assert_eq!(first.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
    store
        .append_task_events(&b.id, vec![event("created")])
        .unwrap();
    let more = store
        .append_task_events(&a.id, vec![event("phase")])
        .unwrap();
    assert_eq!(
        more[0].seq, 3,
        "numbering continues after the task's last event"
    );
    store.flush().unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    let all = store.list_task_events(&a.id, 0, 100).unwrap();
    assert_eq!(
        all.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        vec!["created", "state", "phase"]
    );
    let page = store.list_task_events(&a.id, 1, 1).unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].seq, 2);
    assert_eq!(store.list_task_events(&b.id, 0, 100).unwrap().len(), 1);
    store.delete_task(&a.id).unwrap();
    assert!(store.list_task_events(&a.id, 0, 100).unwrap().is_empty());
    assert_eq!(store.list_task_events(&b.id, 0, 100).unwrap().len(), 1);
}
