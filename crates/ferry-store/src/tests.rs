use ferry_core::{Epoch, InstanceInput, TaskKind, TaskSpec, TaskSpecInput};

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
