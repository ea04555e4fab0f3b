//! `ferryctl task check --wait`, `task databases` and `task watch` against a real migration (sandbox agent,
//! mongosim source and destination): watch follows the task live and exits 0 once it SUCCEEDED.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

use std::time::Duration;

use ferry_proto::v1 as pb;
use ferry_testkit::{Sandbox, OPERATOR_TOKEN};
use mongodb::bson::{doc, Document};

const SOURCE_PASSWORD: &str = "src-Watch-2468";
const DEST_PASSWORD: &str = "dst-Watch-1357";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_a_migration_until_it_succeeds() {
    let source = mongosim::MongoSim::builder()
        .replset("rs-src")
        .user("root", SOURCE_PASSWORD)
        .start()
        .await
        .unwrap();
    let dest = mongosim::MongoSim::builder()
        .replset("rs-dst")
        .user("admin", DEST_PASSWORD)
        .start()
        .await
        .unwrap();
    let mut options = mongodb::options::ClientOptions::parse(source.uri())
        .await
        .unwrap();
    options.credential = Some(
        mongodb::options::Credential::builder()
            .username("root".to_owned())
            .password(SOURCE_PASSWORD.to_owned())
            .build(),
    );
    let client = mongodb::Client::with_options(options).unwrap();
    let docs: Vec<Document> = (0..200).map(|i| doc! {"_id": i, "v": i}).collect();
    client
        .database("app")
        .collection::<Document>("things")
        .insert_many(docs)
        .await
        .unwrap();

    let sandbox = Sandbox::builder().agents(1).build().await.unwrap();
    sandbox
        .wait_for_agents(1, Duration::from_secs(30))
        .await
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let token = files.path().join("token");
    std::fs::write(&token, OPERATOR_TOKEN).unwrap();
    let source_pw = files.path().join("source.pw");
    std::fs::write(&source_pw, SOURCE_PASSWORD).unwrap();
    let dest_pw = files.path().join("dest.pw");
    std::fs::write(&dest_pw, DEST_PASSWORD).unwrap();
    let ctl = |args: Vec<String>| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferryctl"));
        command
            .args([
                "--coordinator",
                &sandbox.url(),
                "--plaintext",
                "--token-file",
                token.to_str().unwrap(),
            ])
            .args(args)
            .stdin(std::process::Stdio::null());
        command
    };
    let run = |args: &[&str]| {
        let mut command = ctl(args.iter().map(|a| a.to_string()).collect());
        async move {
            let output = tokio::time::timeout(Duration::from_secs(60), command.output())
                .await
                .unwrap()
                .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout).to_string();
            let stderr = String::from_utf8_lossy(&output.stderr).to_string();
            for secret in [SOURCE_PASSWORD, DEST_PASSWORD] {
                assert!(
                    !stdout.contains(secret) && !stderr.contains(secret),
                    "password leaked: {stdout}{stderr}"
                );
            }
            (output.status.code(), stdout, stderr)
        }
    };

    let (code, _, stderr) = run(&[
        "instance",
        "register",
        "--id",
        "cmgo-watch001",
        "--region",
        "ap-guangzhou",
        "--uri",
        &dest.uri(),
        "--username",
        "admin",
        "--password-file",
        dest_pw.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    let port = source.addr().port().to_string();
    let (code, stdout, stderr) = run(&[
        "-o",
        "json",
        "task",
        "create",
        "--name",
        "watch me",
        "--region",
        "ap-guangzhou",
        "--kind",
        "cvm",
        "--cvm-id",
        "ins-sbx00000",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--username",
        "root",
        "--password-file",
        source_pw.to_str().unwrap(),
        "--destination",
        "cmgo-watch001",
        "--database",
        "app",
    ])
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    let task: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let task_id = task["id"].as_str().unwrap().to_owned();

    let (code, stdout, stderr) = run(&["task", "databases", &task_id]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("app"), "{stdout}");

    let (code, stdout, stderr) = run(&["task", "check", &task_id, "--wait"]).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("CHECK_PASSED") && stdout.contains("source_reachable"),
        "{stdout}"
    );

    let (code, stdout, stderr) = run(&["task", "start", &task_id]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("RUNNING"), "{stdout}");

    // Watch in the background; complete once the migration follows the oplog.
    let watch = ctl(vec!["task".into(), "watch".into(), task_id.clone()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    sandbox
        .wait_for_task(&task_id, Duration::from_secs(60), |t| {
            t.phase == pb::TaskPhase::OplogSync as i32
        })
        .await
        .unwrap();
    let (code, _, stderr) = run(&["task", "complete", &task_id]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let output = tokio::time::timeout(Duration::from_secs(60), watch.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("RUNNING"), "{stdout}");
    assert!(stdout.contains("SUCCEEDED"), "{stdout}");
    sandbox.shutdown().await.unwrap();
}
